"""SMoPE: proxy score, top-K with adaptive noise, router and prototype losses against explicit
formulas written here; fused vs reference; batch invariance; end to end with exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_helpers import check_stop_and_resume, head_qkv, learnable_on_vit_b16, saved_bytes
from timm.models.vision_transformer import Attention  # timm 0.9 and 1.x

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data import build_benchmark
from cl.methods import Task, get_method
from cl.methods.smope import frequent_experts, prototype_loss, router_loss
from cl.models.smope_prefix import (
    ExpertPrefixAttention,
    adaptive_noise,
    proxy_scores,
    select_experts,
)
from cl.run.engine import run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


B, N, C, H, NP, K = 3, 6, 16, 4, 7, 3
D = C // H


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _top(values: list[float], k: int) -> set[int]:
    """Indices of the k largest values, by plain sorting."""
    return set(sorted(range(len(values)), key=lambda j: -values[j])[:k])


# ----------------------------------------------------------------------------- formulas
def test_proxy_score_is_the_mean_query_dot_key() -> None:
    g = _gen(0)
    q = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    keys = torch.randn(H, NP, D, generator=g, dtype=torch.float64)
    got = proxy_scores(q, keys, D**-0.5)
    for b in range(B):
        for h in range(H):
            for j in range(NP):
                # mean over tokens of the per-token prefix logit q_i . p_j / sqrt(D)
                per_token = [sum(float(q[b, h, i, d] * keys[h, j, d]) for d in range(D))
                             for i in range(N)]
                expected = sum(per_token) / N / math.sqrt(D)
                assert abs(float(got[b, h, j]) - expected) < 1e-10


def test_top_k_with_adaptive_noise() -> None:
    g = _gen(1)
    scores = torch.randn(B, H, NP, generator=g, dtype=torch.float64)
    flags = torch.rand(H, NP, generator=g) < 0.5
    eps = 0.4
    penalty = adaptive_noise(scores, flags, eps)
    chosen = select_experts(scores, K, penalty)
    for b in range(B):
        for h in range(H):
            s = scores[b, h].tolist()
            spread = max(s) - min(s)
            noisy = [s[j] - eps * spread * float(flags[h, j]) for j in range(NP)]
            assert set(chosen[b, h].tolist()) == _top(noisy, K)
            for j in range(NP):
                assert abs(float(penalty[b, h, j]) - eps * spread * float(flags[h, j])) < 1e-12
    # no flags (or eps = 0): plain top-K of the proxy score
    assert adaptive_noise(scores, None, eps) is None
    plain = select_experts(scores, K, adaptive_noise(scores, flags, 0.0))
    assert all(set(plain[b, h].tolist()) == _top(scores[b, h].tolist(), K)
               for b in range(B) for h in range(H))
    # a flagged best expert loses to an unflagged one within eps * range of it
    s = torch.tensor([[[1.0, 0.9, -1.0, -2.0]]], dtype=torch.float64)
    f = torch.tensor([[True, False, False, False]])
    assert select_experts(s, 1, adaptive_noise(s, f, 0.1)).item() == 1  # 1.0 - 0.3 < 0.9
    assert select_experts(s, 1, adaptive_noise(s, f, 0.01)).item() == 0  # 1.0 - 0.03 > 0.9


def test_router_loss_against_explicit_cross_entropies() -> None:
    g = _gen(2)
    scores = torch.randn(B, H, NP, generator=g, dtype=torch.float64, requires_grad=True)
    selected = torch.stack([torch.randperm(NP, generator=g)[:K] for _ in range(B * H)])
    selected = selected.reshape(B, H, K)
    eps = 0.5
    got = router_loss(scores, selected, eps)
    total = 0.0
    for b in range(B):
        for h in range(H):
            s = scores[b, h].tolist()
            sel = set(selected[b, h].tolist())
            margin = eps * (max(s) - min(s))
            logits = [s[j] + (0.0 if j in sel else margin) for j in range(NP)]
            lse = math.log(sum(math.exp(v) for v in logits))
            total += sum(lse - logits[j] for j in sel)  # summed over heads and the K targets
    assert abs(float(got.detach()) - total / B) < 1e-10  # batch mean
    got.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_prototype_loss_against_explicit_cross_entropies() -> None:
    g = _gen(3)
    old = torch.randn(H, NP, D, generator=g, dtype=torch.float64)
    cur = (old + 0.3 * torch.randn(H, NP, D, generator=g, dtype=torch.float64)).requires_grad_()
    flags = torch.rand(H, NP, generator=g) < 0.4
    flags[0] = False  # a head without prototypes contributes nothing
    got = prototype_loss(old, cur, flags, K)
    total = 0.0
    for h in range(H):
        used = [p for p in range(NP) if flags[h, p]]
        if not used:
            continue
        head_sum = 0.0
        for p in used:
            sims = [float(old[h, p] @ old[h, j]) for j in range(NP)]
            targets = _top(sims, K)
            logits = [float(old[h, p] @ cur.detach()[h, j]) for j in range(NP)]
            lse = math.log(sum(math.exp(v) for v in logits))
            head_sum += sum(lse - logits[t] for t in targets)
        total += head_sum / len(used)
    assert abs(float(got.detach()) - total) < 1e-9
    got.backward()
    assert cur.grad is not None and cur.grad.abs().sum() > 0


def test_frequent_expert_thresholds() -> None:
    counts = torch.tensor([[[6, 3, 0, 0, 3]]])  # total 12: mean over all 2.4, over used 4
    assert frequent_experts(counts).tolist() == [[[True, True, False, False, True]]]
    assert frequent_experts(counts, legacy=True).tolist() == [[[True, False, False, False, False]]]
    assert not frequent_experts(torch.zeros(1, 1, 5)).any()


# ----------------------------------------------------------------------------- attention
@torch.no_grad()
def _textbook_expert_attention(x, attn, keys, values, top_k, flags, eps):
    """The SMoPE layer token by token (float64) and the chosen experts per (b, h)."""
    w_qkv, b_qkv = attn.qkv.weight, attn.qkv.bias
    qkv = x @ w_qkv.T + b_qkv
    out = torch.zeros(B, N, C, dtype=torch.float64)
    chosen = {}
    for b in range(B):
        heads = []
        for h in range(H):
            q, k, v = head_qkv(qkv[b], h, C, D)
            q_bar = q.sum(0) / N
            s = [float(q_bar @ keys[h, j]) / math.sqrt(D) for j in range(NP)]
            spread = max(s) - min(s)
            noisy = [s[j] - eps * spread * float(flags[h, j]) for j in range(NP)]
            sel = sorted(_top(noisy, top_k))
            chosen[b, h] = set(sel)
            rows = []
            for i in range(N):
                logits = torch.tensor([s[j] for j in sel]
                                      + [float(q[i] @ k[n]) / math.sqrt(D) for n in range(N)],
                                      dtype=torch.float64)
                w = torch.exp(logits - logits.max())
                w = w / w.sum()
                vals = torch.cat([values[h, sel], v], dim=0)
                rows.append(w @ vals)
            heads.append(torch.stack(rows))
        out[b] = torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias
    return out, chosen


@pytest.mark.parametrize("fused", [False, True])
def test_expert_attention_matches_textbook(fused: bool) -> None:
    torch.manual_seed(4)
    timm_attn = Attention(C, num_heads=H, qkv_bias=True).double()
    attn = ExpertPrefixAttention.from_timm(timm_attn, gate="linear", activation="tanh",
                                           fused=fused)
    g = _gen(5)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    keys = torch.rand(H, NP, D, generator=g, dtype=torch.float64) * 2 - 1
    values = torch.rand(H, NP, D, generator=g, dtype=torch.float64)
    flags = torch.rand(H, NP, generator=g) < 0.5
    eps = 0.4
    out, routing = attn.forward_experts(
        x, keys, values, top_k=K, penalty_fn=lambda s: adaptive_noise(s, flags, eps))
    expected, chosen = _textbook_expert_attention(x, attn, keys, values, K, flags, eps)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    for (b, h), sel in chosen.items():
        assert set(routing.selected[b, h].tolist()) == sel
    # dense mode (task-0 warm-up): all experts, no selection
    dense, r = attn.forward_experts(x, keys, values, top_k=-1)
    expected_dense, _ = _textbook_expert_attention(x, attn, keys, values, NP, flags, 0.0)
    assert r.selected is None
    torch.testing.assert_close(dense, expected_dense, rtol=0, atol=1e-10)


def test_fused_and_reference_model_agree_with_gradients() -> None:
    method, images = _method()
    model = method.model
    x = images[:5]
    grads = {}
    for fused in (True, False):
        model.set_fused(fused)
        model.zero_grad(set_to_none=True)
        tokens, routing = model.forward_features(x, top_k=method.top_k)
        logits = model.forward_head(tokens)
        (logits.square().mean() + sum(r.scores.mean() for r in routing)).backward()
        grads[fused] = (logits.detach(), model.experts.key.grad.clone(),
                        model.experts.value.grad.clone(), [r.selected for r in routing])
    model.set_fused(True)
    for a, b in zip(grads[True][:3], grads[False][:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(grads[True][3], grads[False][3], strict=True))


# ----------------------------------------------------------------------------- invariance
def _method():
    cfg = resolve_config("synthetic", "smope", overrides={"seed": 3})
    bench = build_benchmark("synthetic", seed=3, num_classes=8, num_tasks=4, test_per_class=10,
                            train_per_class=4)
    vit = build_backbone("vit-tiny-random", img_size=bench.image_size, seed=3).model
    method = get_method("smope")(cfg, vit, bench.num_classes, bench.task_classes)
    for t in range(bench.num_tasks):  # "learned" all tasks without training
        method.begin_task(Task(t, bench.task_classes[t], bench.task_classes))
    g = _gen(0)
    with torch.no_grad():  # spread the experts so that samples route differently
        method.model.experts.key.uniform_(-2, 2, generator=g)
        method.model.experts.value.normal_(0, 1, generator=g)
    return method, bench.test.dataset.images


def _predict(method, images, batch_size):
    return torch.cat([method.predict(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])


@pytest.mark.slow
def test_batch_size_and_composition_invariance() -> None:
    method, images = _method()
    with torch.no_grad():
        _, routing = method.model.forward_features(images, top_k=method.top_k)
    sets = {tuple(sorted(r.selected[b, 0].tolist())) for r in routing
            for b in range(len(images))}
    assert len(sets) > 3, "samples must choose different experts"
    ref = _predict(method, images, 128)
    for bs in (1, 7):
        torch.testing.assert_close(_predict(method, images, bs), ref, rtol=0, atol=1e-5)
    perm = torch.randperm(len(images), generator=_gen(1))
    torch.testing.assert_close(_predict(method, images[perm], 16)[torch.argsort(perm)], ref,
                               rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- end to end
def _small_config(**extra):
    overrides = {"epochs": 2, "tap_epochs": 2, "batch_size": 16,
                 "dataset_options": {"num_classes": 6, "num_tasks": 3, "train_per_class": 12,
                                     "test_per_class": 8},
                 "seed": 7, **extra}
    return resolve_config("synthetic", "smope", overrides=overrides)


def _state(out: Path, t: int) -> dict[str, torch.Tensor]:
    s = torch.load(out / f"checkpoints/task_{t}.pt", weights_only=False)["method"]
    flat = {f"experts.{k}": v for k, v in s["experts"].items()}
    flat.update({f"head.{k}": v for k, v in s["head"].items()})
    flat.update(counts=s["counts"], frequent=s["frequent"], old_keys=s["old_keys"],
                stats=torch.stack(s["stats"]["sum"]))
    return flat


@pytest.mark.slow
def test_end_to_end_run_and_exact_resume(tmp_path: Path) -> None:
    cfg = _small_config()
    full = run_experiment(cfg, tmp_path / "full")
    out = tmp_path / "full"
    for name in ("config.json", "env.json", "metrics.json", "accuracy_matrix.csv", "log.jsonl",
                 "expert_frequency.json", "checkpoints/task_2.pt"):
        assert (out / name).exists(), name
    assert full.metrics["FA"] > 100 / 6  # better than chance over 6 classes
    phases = {json.loads(x).get("phase") for x in (out / "log.jsonl").read_text().splitlines()}
    assert {"smope_warmup", "smope", "tap", "eval"} <= phases
    freq = json.loads((out / "expert_frequency.json").read_text())
    assert freq["kind"] == "expert_frequency" and freq["version"] == 1
    assert freq["layer_ids"] == [0, 1, 2, 3, 4, 5] and freq["after_task"] == 2
    counts = np.array(freq["layers"])
    assert counts.shape == (6, 4, 25)  # tiny ViT: 6 layers, 4 heads, N_p = 25
    # every training image of the 3 tasks picked K = 5 experts in every (layer, head)
    assert (counts.sum(-1) == 3 * 2 * 12 * 5).all()
    from figures.runs import read_cl_run  # the figures package reads the file as written

    assert np.array_equal(np.array(read_cl_run(out).expert_frequency["layers"]), counts)

    check_stop_and_resume(cfg, tmp_path, full)
    a, b = _state(out, 2), _state(tmp_path / "split", 2)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert ((tmp_path / "split/expert_frequency.json").read_text()
            == (out / "expert_frequency.json").read_text())


def test_learnable_parameters_on_vit_b16_by_hand() -> None:
    """ImageNet-R preset (200 classes, 10 tasks) on ViT-B/16, built on the meta device."""
    count = sum(learnable_on_vit_b16("smope", "imagenet-r", 200, 10, "vit-b16-random").values())
    # docs/cl-background.md#prompt-experts: 6 layers x 12 heads x N_p = 25 experts x (key + value) x
    # 64, head 768 -> 200
    expected = 6 * 12 * 25 * 2 * 64 + (768 * 200 + 200)
    assert expected == 384_200  # the poster's "0.38M"
    assert count == expected


def test_fused_expert_attention_keeps_the_flash_kernel_in_training() -> None:
    # The proxy-score bias needs a gradient; as an attn_mask it would send SDPA to its math
    # kernel, which keeps the (B, H, N, K + N) attention matrix for backward.
    torch.manual_seed(6)
    n_tokens = 64  # the attention matrix must dominate what is saved
    timm_attn = Attention(C, num_heads=H, qkv_bias=True)
    g = _gen(7)
    x = torch.randn(B, n_tokens, C, generator=g)
    keys = torch.nn.Parameter(torch.rand(H, NP, D, generator=g))
    values = torch.nn.Parameter(torch.rand(H, NP, D, generator=g))
    saved = {}
    for fused in (True, False):
        attn = ExpertPrefixAttention.from_timm(timm_attn, gate="linear", activation="tanh",
                                               fused=fused).train()
        saved[fused] = saved_bytes(
            lambda a=attn: a.forward_experts(x, keys, values, top_k=K)[0],
            exclude=list(attn.parameters()),
        )
    attention_matrix = B * H * n_tokens * (K + n_tokens) * 4
    assert saved[False] - saved[True] > attention_matrix // 2, (saved, attention_matrix)
