"""L2P: cosine top-N key matching, the pull loss, prompt tuning, end to end, resume, invariance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from prompt_baseline_checks import (
    check_batch_invariance,
    check_batchwise_vote_leaks,
    check_cli_quick_run,
    check_resume,
    learnable_on_vit_b16,
    learned_method,
)

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, get_method
from cl.models.prompt_pools import cosine_match, key_pull, majority_vote

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _numpy_top_n(query: np.ndarray, keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    sim = qn @ kn.T
    return np.argsort(-sim, axis=1, kind="stable")[:, :n], sim


def test_cosine_top_n_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    query = torch.randn(9, 16, generator=g) * 3.0  # norms far from 1: cosine, not dot product
    keys = torch.randn(12, 16, generator=g) * torch.rand(12, 1, generator=g) * 5
    ids, sim = cosine_match(query, keys, 5)
    want_ids, want_sim = _numpy_top_n(query.double().numpy(), keys.double().numpy(), 5)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_allclose(sim.numpy(), want_sim, atol=1e-6)
    # restricted to a subset of keys: the best allowed ones, in order
    allowed = torch.zeros(12, dtype=torch.bool)
    allowed[[1, 4, 5, 8]] = True
    ids, _ = cosine_match(query, keys, 2, allowed)
    sub = np.array([1, 4, 5, 8])
    sub_ids, _ = _numpy_top_n(query.double().numpy(), keys.double().numpy()[sub], 2)
    np.testing.assert_array_equal(ids.numpy(), sub[sub_ids])
    with pytest.raises(ValueError, match="top_k"):
        cosine_match(query, keys, 5, allowed)


def test_pull_loss_matches_loop_and_only_moves_keys() -> None:
    g = torch.Generator().manual_seed(1)
    query = torch.randn(4, 8, generator=g, requires_grad=True)
    keys = torch.randn(6, 8, generator=g, requires_grad=True)
    ids = torch.tensor([[0, 2], [5, 1], [2, 3], [4, 4]])
    value = key_pull(query, keys, ids)
    want = 0.0
    q, k = query.detach().numpy(), keys.detach().numpy()
    for b in range(4):
        for j in ids[b].tolist():
            want += q[b] @ k[j] / (np.linalg.norm(q[b]) * np.linalg.norm(k[j]))
    assert float(value.detach()) == pytest.approx(want / 4, abs=1e-6)
    value.backward()
    assert query.grad is None and keys.grad is not None
    assert torch.count_nonzero(keys.grad.abs().sum(1)) == 6


def test_majority_vote_reproduces_the_original_choice() -> None:
    ids = torch.tensor([[3, 1], [3, 2], [2, 3], [0, 1]])  # counts: 3 x3, 1 x2, 2 x2, 0 x1
    assert majority_vote(ids, 2).tolist() == [[3, 1]] * 4  # tie 1 vs 2 -> smaller id


def _manual_features(vit, prompts: torch.Tensor, ids: torch.Tensor, x: torch.Tensor):
    """Prompt tuning written out: [chosen prompts..., CLS + pos, patches + pos] -> CLS out."""
    B = x.shape[0]
    patches = vit.patch_embed(x)
    h = torch.cat([vit.cls_token.expand(B, -1, -1), patches], dim=1) + vit.pos_embed
    chosen = torch.stack([torch.cat([prompts[j] for j in row.tolist()]) for row in ids])
    h = torch.cat([chosen, h], dim=1)
    for block in vit.blocks:
        h = block(h)
    n_prompt = chosen.shape[1]
    return vit.norm(h)[:, n_prompt]


def test_training_loss_is_ce_minus_pull_with_top_n_prompts_prepended() -> None:
    """The logged loss of one batch equals the formula computed independently here."""
    cfg = resolve_config("synthetic", "l2p", overrides={
        "epochs": 1, "seed": 5,
        "method_options": {"pool_size": 7, "length": 3, "top_k": 2, "pull_coeff": 0.3}})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=5).model
    reference = build_backbone("vit-tiny-random", img_size=32, seed=5).model  # untouched copy
    task_classes = [[0, 1], [2, 3]]
    records: list[dict] = []
    method = get_method("l2p")(cfg, vit, 4, task_classes, log=records.append)
    method.begin_task(Task(0, [0, 1], task_classes))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1])
    model = method.model
    with torch.no_grad():
        query = reference.forward_features(x)[:, 0]
        model.key.copy_(query[[0, 1, 2, 3, 4, 0, 2]] + 0.3 * torch.randn(7, 128, generator=g))
        prompts, keys = model.prompt.clone(), model.key.clone()
        ids = torch.from_numpy(_numpy_top_n(query.double().numpy(), keys.double().numpy(), 2)[0])
        assert len({tuple(r) for r in ids.tolist()}) >= 3  # samples pick different prompts
        feats = _manual_features(reference, prompts, ids, x)
        logits = model.head(feats)
        logits[:, 2:] = float("-inf")  # train mask: current task's classes only
        ce = F.cross_entropy(logits, y)
        qn, kn = F.normalize(query, dim=1), F.normalize(keys, dim=1)
        pull = sum(float(qn[b] @ kn[j]) for b in range(5) for j in ids[b].tolist()) / 5
    method.train_task([(x, y)])
    (record,) = [r for r in records if r.get("phase") == "train"]
    assert record["key_similarity"] == pytest.approx(pull, abs=1e-5)
    assert record["loss"] == pytest.approx(float(ce) - 0.3 * pull, abs=1e-5)
    # test time: the same features through the method's own path
    with torch.no_grad():
        model.prompt.copy_(prompts)
        model.key.copy_(keys)
    torch.testing.assert_close(method.select(x), ids)
    torch.testing.assert_close(model.features(x, ids), feats, rtol=0, atol=1e-5)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="pool_size"):  # when the config is resolved
        resolve_config("synthetic", "l2p", overrides={"method_options": {"pool": 3}})
    # a config that skipped validation is still refused when the method is built
    cfg = dataclasses.replace(resolve_config("synthetic", "l2p"), method_options={"pool": 3})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model
    with pytest.raises(ValueError, match="pool_size"):
        get_method("l2p")(cfg, vit, 4, [[0, 1], [2, 3]])


# a smaller pool keeps the end-to-end tests fast; the formula tests use other sizes
LIGHT = {"method_options": {"pool_size": 8, "length": 2, "top_k": 3}}


def test_cli_quick_run_writes_the_run_directory(tmp_path: Path) -> None:
    metrics = check_cli_quick_run("l2p", tmp_path, "--set",
                                  'method_options={"pool_size": 8, "length": 2, "top_k": 3}')
    assert metrics["TII_accuracy"] is None  # L2P has no task identity (JSON null)


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    check_resume("l2p", tmp_path, **LIGHT)


@pytest.mark.slow
def test_batch_size_and_composition_invariance() -> None:
    check_batch_invariance("l2p", **LIGHT)


def test_batchwise_vote_is_batch_dependent() -> None:
    check_batchwise_vote_leaks("l2p", **LIGHT)


def test_presets() -> None:
    cfg = resolve_config("cifar100", "l2p", "sup21k")
    o = cfg.method_options
    assert (cfg.epochs, cfg.lr, o.scheduler, o.batchwise_prompt) == (10, 0.005, "constant", False)
    assert (o.pool_size, o.length, o.top_k, o.pull_coeff) == (30, 5, 5, 0.1)
    cfg = resolve_config("5datasets", "l2p", "sup21k")
    assert cfg.method_options.to_dict().items() >= {
        "pool_size": 20, "length": 10, "top_k": 4, "pull_coeff": 0.5}.items()
    assert resolve_config("cub200", "l2p", "sup21k").method_options.scheduler == "step"
    method, _ = learned_method("l2p")
    assert method.model.prompt.shape[0] == 30


def test_parameter_count_on_vit_b16() -> None:
    """CIFAR-100: pool 30 x length 5 x 768 prompts, 30 x 768 keys, 768 x 100 + 100 head."""
    counts = learnable_on_vit_b16("l2p", "cifar100", 100, 10)
    assert counts == {"prompt": 30 * 5 * 768, "key": 30 * 768, "head.weight": 768 * 100,
                      "head.bias": 100}
    assert sum(counts.values()) == 215_140
