"""Unit tests of ``cl/methods/smope.py`` on a tiny ViT (docs/cl-background.md#smope): the router and
prototype losses, frequency flags and the per-iteration cosine against hand computations; the seeded
model and optimizer groups; the flags and old keys of each task start; training steps against a
hand-made AdamW run on a twin model (router and prototype terms, adaptive noise, coswm with the
legacy quirks); the dense warm-up of task 0; expert counts and statistics of ``end_task``; the
settings handed to the head alignment; inference with the unused-expert penalty; checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from cl_helpers import PoisonedLoader
from torch.utils.data import DataLoader, TensorDataset

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, get_method
from cl.methods.smope import (
    coswm_factor,
    first_at,
    frequent_experts,
    prototype_loss,
    router_loss,
)
from cl.models.smope_prefix import SMoPEViT, adaptive_noise
from cl.run.seeding import torch_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = [[3, 0], [5, 1], [2, 4]]
NUM_CLASSES = 6
IMAGE = 16
BATCH = 4
OPTIONS = {"layers": [0, 2], "num_experts": 4, "top_k": 2, "router_coef": 0.1,
           "proto_coef": 0.2, "noise_eps": 0.4, "prompt_lr_mult": 5.0, "warmup_fraction": 0.5}


def _method(options: dict | None = None, *, log=None, **overrides):
    cfg = resolve_config("synthetic", "smope", overrides={
        "seed": 2, "batch_size": BATCH, "epochs": 1, "lr": 0.01, "clip_grad": 0.5,
        "tap_epochs": 2, "ca_lr": 1e-3, "tap_samples_mult": 2,
        "method_options": {**OPTIONS, **(options or {})}, **overrides})
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=2).model
    return get_method("smope")(cfg, vit, NUM_CLASSES, SCHEDULE, log=log)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _labels(task: int, n: int) -> torch.Tensor:
    return torch.tensor([SCHEDULE[task][i % 2] for i in range(n)])


def _loader(task: int, n: int = 8, seed: int = 0, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(_images(n, seed), _labels(task, n)), batch_size=BATCH,
                      **kwargs)


# ---------------------------------------------------------------------------- formulas


def test_router_loss_by_hand() -> None:
    """One (sample, head): scores (1, 2, 0), expert 1 chosen, eps 0.5: the others get +1."""
    scores = torch.tensor([[[1.0, 2.0, 0.0]]], requires_grad=True)
    got = router_loss(scores, torch.tensor([[[1]]]), 0.5)
    want = -math.log(math.exp(2) / (math.exp(2) + math.exp(2) + math.exp(1)))
    assert float(got.detach()) == pytest.approx(want, rel=1e-6)
    got.backward()  # the range is detached: the gradient is the plain softmax one
    p = [math.exp(2) / (2 * math.exp(2) + math.exp(1)), 0.0, math.exp(1) / (
        2 * math.exp(2) + math.exp(1))]
    p[1] = p[0] - 1.0
    torch.testing.assert_close(scores.grad[0, 0], torch.tensor(p), rtol=1e-5, atol=1e-6)


def test_router_loss_sums_heads_and_selections_and_averages_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    selected = torch.tensor([[[0, 3], [4, 1]], [[2, 1], [0, 4]], [[3, 2], [1, 0]]])
    eps = 0.3
    total = 0.0
    for b in range(3):
        for h in range(2):
            s = scores[b, h].tolist()
            margin = eps * (max(s) - min(s))
            chosen = selected[b, h].tolist()
            logits = [v + (0.0 if j in chosen else margin) for j, v in enumerate(s)]
            lse = math.log(sum(math.exp(v) for v in logits))
            total += sum(lse - logits[j] for j in chosen)
    assert float(router_loss(scores, selected, eps)) == pytest.approx(total / 3, rel=1e-12)


def _prototype_by_hand(old, cur, flags, k) -> float:
    total = 0.0
    for h in range(old.shape[0]):
        used = [p for p in range(old.shape[1]) if flags[h, p]]
        if not used:
            continue
        head = 0.0
        for p in used:
            sims = [float(old[h, p] @ old[h, j]) for j in range(old.shape[1])]
            targets = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
            logits = [float(old[h, p] @ cur[h, j]) for j in range(old.shape[1])]
            lse = math.log(sum(math.exp(v) for v in logits))
            head += sum(lse - logits[t] for t in targets)
        total += head / len(used)
    return total


def test_prototype_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    old = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    cur = old + 0.3 * torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    flags = torch.tensor([[True, False, True, False], [False] * 4, [False, False, True, False]])
    for k in (1, 2, 7):  # k above N_p: every old key is a target
        got = prototype_loss(old, cur.clone().requires_grad_(), flags, k)
        assert float(got.detach()) == pytest.approx(_prototype_by_hand(old, cur, flags, min(k, 4)),
                                           rel=1e-10)
    cur_param = cur.clone().requires_grad_()
    old_param = old.clone().requires_grad_()
    prototype_loss(old_param, cur_param, flags, 2).backward()
    assert old_param.grad is None and cur_param.grad.abs().sum() > 0  # old keys are detached
    assert float(prototype_loss(old, cur, torch.zeros(3, 4, dtype=torch.bool), 2)) == 0.0


def test_frequent_experts_by_hand() -> None:
    # head 0: total 12, mean over 5 = 2.4, over the 3 used = 4; head 1: nothing counted
    counts = torch.tensor([[[6, 3, 0, 0, 3], [0, 0, 0, 0, 0]]])
    assert frequent_experts(counts).tolist() == [[[True, True, False, False, True],
                                                  [False] * 5]]
    assert frequent_experts(counts, legacy=True).tolist() == [[[True, False, False, False,
                                                                False], [False] * 5]]
    # exactly at the threshold counts as frequent; integer counts are not floor-divided
    assert frequent_experts(torch.tensor([[[2, 1]]])).tolist() == [[[True, False]]]
    assert frequent_experts(torch.tensor([[[1, 1, 0]]]), legacy=True).tolist() == [
        [[True, True, False]]]
    # a single selection in a head already flags its expert
    assert frequent_experts(torch.tensor([[[0, 1, 0]]])).tolist() == [[[False, True, False]]]


def test_coswm_factor_closed_form() -> None:
    base, total, freeze = 0.1, 10, 3
    f = coswm_factor(base, total, freeze)
    for i in range(14):
        if i < freeze:
            want = 1e-6
        else:
            progress = min(i - freeze, total - freeze) / (total - freeze)
            want = 1e-6 + 0.5 * (base - 1e-6) * (1 + math.cos(math.pi * progress))
        assert f(i) * base == pytest.approx(want, rel=1e-12), i
    g = coswm_factor(0.5, 2, 2)  # no iteration left after the freeze: a span of one
    assert [g(i) * 0.5 for i in range(4)] == pytest.approx([1e-6, 1e-6, 0.5, 1e-6])
    quirky = first_at(10.0, f)
    assert quirky(0) == 10.0 and quirky(5) == f(5) and quirky(1) == f(1)


# ---------------------------------------------------------------------------- options + build


def test_option_checks() -> None:
    cls = get_method("smope")
    assert cls.resolve_options({"top_k": 4, "num_experts": 4, "iter_step": 0,
                                "freeze_iters": 0}).top_k == 4
    assert cls.resolve_options({"top_k": 1}).top_k == 1
    for k in (0, 5):
        with pytest.raises(ValueError) as info:
            cls.resolve_options({"top_k": k, "num_experts": 4})
        assert str(info.value) == f"method_options.top_k: must be in [1, num_experts], got {k}"
    for name in ("iter_step", "freeze_iters"):
        with pytest.raises(ValueError) as info:
            cls.resolve_options({name: -1})
        assert str(info.value) == f"method_options.{name}: must be >= 0, got -1"


def test_model_state_and_optimizer_groups() -> None:
    method = _method()
    model = method.model
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=2).model
    twin = SMoPEViT(vit, NUM_CLASSES, num_experts=4, prompt_layers=[0, 2],
                    generator=torch_generator(2, "smope-init"))
    for name in ("experts.key", "experts.value", "head.weight"):
        torch.testing.assert_close(model.get_parameter(name), twin.get_parameter(name),
                                   rtol=0, atol=0)
    assert not model.training and method.top_k == 2 and model.prompt_layers == [0, 2]
    assert {model.vit.blocks[i].attn.fused for i in (0, 2)} == {True}
    assert method.counts.shape == (2, 4, 4) and method.counts.dtype == torch.long
    assert method.counts.sum() == 0
    assert method.frequent.dtype == torch.bool and not method.frequent.any()
    assert method.frequent.shape == (2, 4, 4) and method.old_keys is None
    assert method.stats.method == "variance" and method.stats.dim == 128
    assert torch.equal(method.sample_gen.get_state(),
                       torch_generator(2, "gaussian-replay").get_state())
    assert method.optimizer is None and method.expert_selection() is None
    reference = _method(attention="reference")
    assert {reference.model.vit.blocks[i].attn.fused for i in (0, 2)} == {False}

    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    opt = method.optimizer
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    experts, head = opt.param_groups
    assert [id(p) for p in experts["params"]] == [id(p) for p in model.experts.parameters()]
    assert [id(p) for p in head["params"]] == [id(p) for p in model.head.parameters()]
    assert (experts["lr"], head["lr"]) == pytest.approx((0.05, 0.01))
    assert experts["weight_decay"] == 0.0 and head["weight_decay"] == 0.0
    assert method.old_keys is None and not method.frequent.any()  # task 0: nothing to keep


@pytest.mark.parametrize("legacy", [False, True])
def test_task_start_flags_frequent_experts_and_snapshots_the_keys(legacy: bool) -> None:
    method = _method({"legacy_frequency_flags": legacy})
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    first = torch.zeros(2, 4, 4, dtype=torch.long)
    first[0, 0] = torch.tensor([6, 3, 0, 3])
    first[1, 2] = torch.tensor([0, 1, 1, 0])
    method.counts = first.clone()
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    assert torch.equal(method.frequent, frequent_experts(first, legacy))
    assert method.frequent[0, 0].tolist() == ([True, False, False, False] if legacy
                                              else [True, True, False, True])
    torch.testing.assert_close(method.old_keys, method.model.experts.key, rtol=0, atol=0)
    with torch.no_grad():
        method.model.experts.key += 1.0  # training moves the keys, not the snapshot
    assert not torch.allclose(method.old_keys, method.model.experts.key)
    assert not method.old_keys.requires_grad
    second = first.clone()
    second[0, 0] = torch.tensor([4, 3, 12, 3])  # head (0, 0): now only expert 2 is frequent
    method.counts = second
    method.begin_task(Task(2, SCHEDULE[2], SCHEDULE))
    if legacy:  # flags are sticky: expert 0 stays flagged
        assert method.frequent[0, 0].tolist() == [True, False, True, False]
    else:
        assert method.frequent[0, 0].tolist() == [False, False, True, False]
    torch.testing.assert_close(method.old_keys, method.model.experts.key, rtol=0, atol=0)


def test_training_penalties_are_the_adaptive_noise_of_the_flags() -> None:
    method = _method()
    method.frequent = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3)) < 0.5
    scores = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(4))
    penalties = method._penalties()
    assert len(penalties) == 2
    for j, fn in enumerate(penalties):
        spread = scores.amax(-1, keepdim=True) - scores.amin(-1, keepdim=True)
        want = 0.4 * method.frequent[j].float() * spread
        torch.testing.assert_close(fn(scores), want)


# ---------------------------------------------------------------------------- schedules


def test_phase_schedulers() -> None:
    constant = _method({"schedule": "constant"})
    constant.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert constant._scheduler(3, 7) == (None, False)

    cosine = _method({"schedule": "cosine"})
    cosine.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    sched, per_iter = cosine._scheduler(5, 7)
    assert per_iter is False
    assert sched.lr_lambdas[0](2) == pytest.approx(math.cos(99 * math.pi * 2 / (200 * 4)))

    for opts, total, freeze in (({}, 3 * 7, 0), ({"iter_step": 11, "freeze_iters": 4}, 33, 4),
                                ({"iter_step": 1}, 3, 0)):
        method = _method({"schedule": "coswm", **opts})
        method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
        sched, per_iter = method._scheduler(3, 7)
        assert per_iter is True
        for lam, base in zip(sched.lr_lambdas, (0.05, 0.01), strict=True):
            for i in (0, 1, freeze, freeze + 3, total - 1, total, total + 5):
                assert lam(i) == pytest.approx(coswm_factor(base, total, freeze)(i), rel=1e-12)

    quirks = _method({"legacy_scheduler_quirks": True, "freeze_iters": 2})
    quirks.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    sched, _ = quirks._scheduler(2, 4)
    assert [g["lr"] for g in quirks.optimizer.param_groups] == pytest.approx([0.05, 0.01])
    assert sched.lr_lambdas[1](1) == pytest.approx(1e-6 / 0.01)  # then the freeze


# ---------------------------------------------------------------------------- training


def _hand_made_phase(twin, task: int, batches, *, top_k: int, flags, old_keys, router: bool,
                     proto: bool, legacy: bool, freeze: int) -> list[dict]:
    """One top-K (or dense, ``top_k=-1``) phase of one epoch as docs/cl-background.md#smope-losses /
    7.5 says."""
    groups = [{"params": list(twin.experts.parameters()), "lr": 0.05},
              {"params": list(twin.head.parameters()), "lr": 0.01}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    params = [*twin.experts.parameters(), *twin.head.parameters()]
    total = len(batches)
    outside = [c for c in range(NUM_CLASSES) if c not in SCHEDULE[task]]
    out = []
    for i, (x, y) in enumerate(batches):
        for group, base in zip(opt.param_groups, (0.05, 0.01), strict=True):
            if legacy and i == 0:
                group["lr"] = base
            elif i < freeze:
                group["lr"] = 1e-6
            else:
                progress = min(i - freeze, max(total - freeze, 1)) / max(total - freeze, 1)
                group["lr"] = 1e-6 + 0.5 * (base - 1e-6) * (1 + math.cos(math.pi * progress))
        fns = None if top_k < 0 else [
            (lambda s, f=flags[j]: adaptive_noise(s, f, 0.4)) for j in range(2)]
        tokens, routing = twin.forward_features(x, top_k=top_k, penalty_fns=fns)
        logits = twin.forward_head(tokens)
        logits[:, outside] = -math.inf
        ce = F.cross_entropy(logits, y)
        loss = ce
        rterm = pterm = None
        if router:
            scale = math.sqrt(32) if legacy else 1.0
            rterm = sum(router_loss(r.scores * scale, r.selected, 0.4) for r in routing)
            loss = loss + 0.1 * rterm
        if proto:
            keys = twin.experts.key
            pterm = sum(prototype_loss(old_keys[j], keys[j], flags[j], 2) for j in range(2))
            loss = loss + 0.2 * pterm
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        out.append({"loss": float(loss.detach()), "ce": float(ce.detach()),
                    "router": 0.0 if rterm is None else float(rterm.detach()),
                    "proto": 0.0 if pterm is None else float(pterm.detach())})
    return out


@pytest.mark.parametrize("legacy", [False, True])
def test_top_k_phase_equals_a_hand_made_adamw_run(legacy: bool) -> None:
    freeze = 1 if legacy else 0
    options = {"legacy_unscaled_router": legacy, "legacy_scheduler_quirks": legacy,
               "freeze_iters": freeze}
    records: list[dict] = []
    method = _method(options, log=records.append)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    counts = torch.zeros(2, 4, 4, dtype=torch.long)
    counts[:, :, 0] = 5
    counts[0, 1, 3] = 9
    counts[1, :, 2] = 4
    method.counts = counts
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    with torch.no_grad():  # as if task 1 had already moved the keys away from the snapshot
        method.model.experts.key.add_(0.05 * torch.randn(2, 4, 4, 32,
                                                         generator=torch.Generator().manual_seed(5)))
    flags, old_keys = method.frequent.clone(), method.old_keys.clone()
    assert flags.any() and not flags.all()
    twin = copy.deepcopy(method.model)
    batches = [(_images(BATCH, 1), _labels(1, BATCH)), (_images(BATCH, 2), _labels(1, BATCH)),
               (_images(BATCH, 3), _labels(1, BATCH))]
    want = _hand_made_phase(twin, 1, batches, top_k=2, flags=flags, old_keys=old_keys,
                            router=True, proto=True, legacy=legacy, freeze=freeze)
    method.train_task(batches)
    for (n, a), (_, b) in zip(method.model.named_parameters(), twin.named_parameters(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    (record,) = records
    assert (record["phase"], record["task"], record["epoch"]) == ("smope", 1, 0)
    for term in ("loss", "ce", "router", "proto"):
        assert record[term] == pytest.approx(sum(w[term] for w in want) / 3, rel=1e-5), term
    assert record["lr"] == pytest.approx(1e-6)  # the head group at the end of the cosine


def test_task_0_starts_with_a_dense_warm_up_then_a_fresh_optimizer() -> None:
    records: list[dict] = []
    method = _method({"schedule": "constant"}, log=records.append, epochs=3)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    twin = copy.deepcopy(method.model)
    batches = [(_images(BATCH, 1), _labels(0, BATCH))]
    no_flags = torch.zeros(2, 4, 4, dtype=torch.bool)
    method.train_task(batches)
    # round(0.5 * 3) = 2 dense epochs, then 3 top-K epochs with a fresh optimizer
    assert [(r["phase"], r["epoch"]) for r in records] == [
        ("smope_warmup", 0), ("smope_warmup", 1), ("smope", 0), ("smope", 1), ("smope", 2)]
    assert all(r["router"] == 0.0 and r["proto"] == 0.0 for r in records[:2])
    assert all(r["router"] > 0.0 and r["proto"] == 0.0 for r in records[2:])
    assert all(r["lr"] == pytest.approx(0.01) for r in records)
    # by hand: two dense epochs with one AdamW, three top-K ones with another (constant lr)
    for top_k, epochs in ((-1, 2), (2, 3)):
        groups = [{"params": list(twin.experts.parameters()), "lr": 0.05},
                  {"params": list(twin.head.parameters()), "lr": 0.01}]
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        params = [*twin.experts.parameters(), *twin.head.parameters()]
        for _ in range(epochs):
            x, y = batches[0]
            fns = None if top_k < 0 else [
                (lambda s, f=no_flags[j]: adaptive_noise(s, f, 0.4)) for j in range(2)]
            tokens, routing = twin.forward_features(x, top_k=top_k, penalty_fns=fns)
            logits = twin.forward_head(tokens)
            logits[:, [1, 2, 4, 5]] = -math.inf
            loss = F.cross_entropy(logits, y)
            if top_k > 0:
                loss = loss + 0.1 * sum(router_loss(r.scores, r.selected, 0.4) for r in routing)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
    for (n, a), (_, b) in zip(method.model.named_parameters(), twin.named_parameters(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_no_warm_up_without_a_fraction_or_after_task_0() -> None:
    records: list[dict] = []
    method = _method({"warmup_fraction": 0.0, "schedule": "constant"}, log=records.append,
                     epochs=2)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    method.train_task([(_images(BATCH, 1), _labels(0, BATCH))])
    assert [r["phase"] for r in records] == ["smope", "smope"]
    records.clear()
    warm = _method({"schedule": "constant"}, log=records.append, epochs=2)
    warm.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    warm.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    warm.train_task([(_images(BATCH, 1), _labels(1, BATCH))])
    assert [r["phase"] for r in records] == ["smope", "smope"]
    # no expert counted before task 1, so no flag: the prototype term is zero
    assert not warm.frequent.any() and records[0]["proto"] == 0.0


# ---------------------------------------------------------------------------- end of task


def _hand_counts_and_means(model, loader, top_k: int = 2):
    counts = torch.zeros(2, 4, 4, dtype=torch.long)
    feats, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            tokens, routing = model.forward_features(x, top_k=top_k)
            for j, r in enumerate(routing):
                for b in range(x.shape[0]):
                    for h in range(4):
                        for e in r.selected[b, h].tolist():
                            counts[j, h, e] += 1
            feats.append(tokens[:, 0].double())
            labels.append(y)
    feats, labels = torch.cat(feats), torch.cat(labels)
    means = {c: feats[labels == c].mean(0) for c in labels.unique().tolist()}
    return counts, means


def test_end_task_counts_experts_and_collects_statistics_from_the_stats_loader(
        monkeypatch) -> None:
    method = _method()
    calls: list[tuple] = []
    monkeypatch.setattr(method, "_align_head", lambda task: calls.append(("align", task.index)))

    def hook(task):
        calls.append(("before", task.index))

    with pytest.raises(ValueError) as info:
        method.end_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert str(info.value) == "end_task needs task.stats_loader for counts and statistics"
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    stats0 = _loader(0, seed=4)
    method.end_task(Task(0, SCHEDULE[0], SCHEDULE, stats0, hook))
    counts0, means0 = _hand_counts_and_means(method.model, stats0)
    assert torch.equal(method.counts, counts0) and calls == []  # task 0: no alignment
    assert int(method.counts.sum()) == 8 * 2 * 4 * 2  # samples x layers x heads x K
    for c, mean in means0.items():
        torch.testing.assert_close(method.stats.mean(c), mean, rtol=1e-6, atol=1e-6)
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    stats1 = _loader(1, seed=5)
    method.end_task(Task(1, SCHEDULE[1], SCHEDULE, stats1, hook))
    counts1, _ = _hand_counts_and_means(method.model, stats1)
    assert torch.equal(method.counts, counts0 + counts1)  # accumulated over tasks
    assert calls == [("before", 1), ("align", 1)]
    assert method.stats.classes == [0, 1, 3, 5]


def test_end_task_in_a_one_process_group_counts_the_same(tmp_path) -> None:
    method = _method()
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    loader = _loader(0, seed=4)
    counts0, _ = _hand_counts_and_means(method.model, loader)
    method.counts += 7  # counts of earlier tasks must survive the all-reduce
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        method.end_task(Task(0, SCHEDULE[0], SCHEDULE, loader))
    finally:
        dist.destroy_process_group()
    assert torch.equal(method.counts, counts0 + 7)


def test_legacy_statistics_use_the_training_loader(monkeypatch) -> None:
    method = _method({"legacy_stats_train_transform": True, "schedule": "constant"}, epochs=1)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    with pytest.raises(ValueError) as info:
        method.end_task(Task(0, SCHEDULE[0], SCHEDULE, _loader(0)))
    assert str(info.value) == "legacy_stats_train_transform needs train_task to run first"
    train = _loader(0, n=8, seed=6, shuffle=True, generator=torch.Generator().manual_seed(0),
                    drop_last=True)
    method.train_task(train)
    ordered_batches: list[torch.Tensor] = []
    real_update = method.stats.update
    monkeypatch.setattr(method.stats, "update",
                        lambda f, y: (ordered_batches.append(y.clone()), real_update(f, y)))
    gen_state = train.generator.get_state()
    method.end_task(Task(0, SCHEDULE[0], SCHEDULE, _loader(0, seed=9)))
    # statistics: every training image in order (no shuffle) in batches of the training size
    assert [b.tolist() for b in ordered_batches] == [_labels(0, 8)[:4].tolist(),
                                                     _labels(0, 8)[4:].tolist()]
    _, means = _hand_counts_and_means(method.model, _loader(0, n=8, seed=6))
    for c, mean in means.items():
        torch.testing.assert_close(method.stats.mean(c), mean, rtol=1e-6, atol=1e-6)
    # counts: the shuffled training loader (its order comes from the same generator state)
    train.generator.set_state(gen_state)
    counts, _ = _hand_counts_and_means(method.model, train)
    assert torch.equal(method.counts, counts)


@pytest.mark.parametrize("legacy", [False, True])
def test_head_alignment_settings(legacy: bool, monkeypatch) -> None:
    method = _method({"legacy_scheduler_quirks": legacy, "tap_weight_decay": 0.03}, ca_lr=4e-3)
    seen: dict = {}

    def capture(forward, optimizer, scheduler, **kwargs):
        seen.update(forward=forward, optimizer=optimizer, scheduler=scheduler, **kwargs)

    monkeypatch.setattr(method, "_align_on_gaussians", capture)
    task = Task(2, SCHEDULE[2], SCHEDULE)
    method._align_head(task)
    opt = seen["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    (group,) = opt.param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in method.model.head.parameters()]
    assert group["weight_decay"] == 0.03
    total = 2 * 4  # tap_epochs x old classes
    lam = seen["scheduler"].lr_lambdas[0]
    assert lam(0) == (10.0 if legacy else 1.0)
    for i in (1, 3, total, total + 2):
        assert lam(i) == pytest.approx(coswm_factor(4e-3, total, 0)(i), rel=1e-12)
    assert group["lr"] == pytest.approx(4e-3 * lam(0))  # set by the scheduler's constructor
    assert seen["stats"] is method.stats and seen["task"] is task
    assert (seen["epochs"], seen["n_per_class"], seen["phase"]) == (2, BATCH * 2, "tap")
    assert seen["step_per_iteration"] is True
    f = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(seen["forward"](f), method.model.head(f))


def test_head_alignment_with_no_old_class_still_has_a_schedule(monkeypatch) -> None:
    method = _method()
    seen: dict = {}
    monkeypatch.setattr(method, "_align_on_gaussians",
                        lambda forward, optimizer, scheduler, **kw: seen.update(s=scheduler))
    method._align_head(Task(0, SCHEDULE[0], SCHEDULE))  # tap_epochs x 0 old classes -> span 1
    assert seen["s"].lr_lambdas[0](1) == pytest.approx(1e-6 / 1e-3)


# ---------------------------------------------------------------------------- inference


def test_prediction_selection_counts_and_the_unused_penalty() -> None:
    method = _method()
    with pytest.raises(AssertionError, match="no task"):
        method.predict(_images(1))
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    x = _images(5, 7)
    with torch.no_grad():
        tokens, routing = method.model.forward_features(x, top_k=2)
        want = method.model.forward_head(tokens)
    got = method.predict(x)
    for c in range(NUM_CLASSES):
        if c in SCHEDULE[0]:
            torch.testing.assert_close(got[:, c], want[:, c], rtol=0, atol=0)
        else:
            assert (got[:, c] == -math.inf).all()
    selection = method.expert_selection()
    hand = torch.zeros(2, 4, 4, dtype=torch.long)
    for j, r in enumerate(routing):
        for b in range(5):
            for h in range(4):
                for e in r.selected[b, h].tolist():
                    hand[j, h, e] += 1
    assert torch.equal(selection, hand) and selection.sum() == 5 * 2 * 4 * 2

    # counts from training where expert 0 of every head was never used: a large penalty
    # keeps it out, the default penalty 0 does not
    counts = torch.ones(2, 4, 4, dtype=torch.long)
    counts[:, :, 0] = 0
    method.counts = counts
    assert method._eval_penalties() is None
    method.predict(x)
    assert method.expert_selection()[:, :, 0].sum() > 0
    penalised = _method({"eval_unused_penalty": 5.0})
    penalised.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    penalised.counts = counts
    penalties = penalised._eval_penalties()
    scores = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(8))
    spread = scores.amax(-1, keepdim=True) - scores.amin(-1, keepdim=True)
    for fn in penalties:
        torch.testing.assert_close(fn(scores), 5.0 * (counts[0] == 0).float() * spread)
    penalised.predict(x)
    assert penalised.expert_selection()[:, :, 0].sum() == 0
    with torch.no_grad():
        fns = [lambda s, j=j: adaptive_noise(s, counts[j] == 0, 5.0) for j in range(2)]
        tokens, _ = penalised.model.forward_features(x, top_k=2, penalty_fns=fns)
        torch.testing.assert_close(penalised.predict(x)[:, 3],
                                   penalised.model.forward_head(tokens)[:, 3], rtol=0, atol=0)


def test_expert_frequency_file() -> None:
    method = _method()
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    method.counts = torch.arange(32).reshape(2, 4, 4)
    files = method.run_files()
    assert list(files) == ["expert_frequency.json"]
    assert files["expert_frequency.json"] == {
        "kind": "expert_frequency", "version": 1, "layer_ids": [0, 2], "after_task": 0,
        "top_k": 2, "layers": torch.arange(32).reshape(2, 4, 4).tolist()}


# ---------------------------------------------------------------------------- state


def test_checkpoint_round_trip_continues_identically() -> None:
    method = _method({"schedule": "constant"})
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    method.train_task([(_images(BATCH, 1), _labels(0, BATCH))])
    method.end_task(Task(0, SCHEDULE[0], SCHEDULE, _loader(0, seed=4)))
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    method.train_task([(_images(BATCH, 2), _labels(1, BATCH))])
    raw = method.state_dict()
    state = copy.deepcopy(raw)  # as if through torch.save / torch.load
    assert state["method"] == "smope" and state["task_index"] == 1
    assert torch.equal(state["counts"], method.counts) and state["counts"] is not method.counts
    assert torch.equal(state["frequent"], method.frequent)
    assert raw["frequent"] is not method.frequent
    torch.testing.assert_close(state["old_keys"], method.old_keys, rtol=0, atol=0)
    assert raw["old_keys"] is not method.old_keys
    assert state["stats"]["classes"] == [0, 3] and state["optimizer"]["state"]
    fresh = _method({"schedule": "constant"})
    fresh.load_state_dict(state)
    assert fresh.task_index == 1 and fresh.task.classes == SCHEDULE[1]
    for name in ("counts", "frequent", "old_keys"):
        assert torch.equal(getattr(fresh, name), getattr(method, name)), name
    x = _images(3, 3)
    torch.testing.assert_close(fresh.predict(x), method.predict(x), rtol=0, atol=0)
    batch = [(_images(BATCH, 5), _labels(1, BATCH))]
    for m in (method, fresh):  # training, counts, statistics and the alignment's samples
        m.train_task(batch)
        m.end_task(Task(1, SCHEDULE[1], SCHEDULE, _loader(1, seed=6)))
    for (n, a), (_, b) in zip(method.model.named_parameters(), fresh.model.named_parameters(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, n=n: f"{n}: {m}")
    assert torch.equal(fresh.counts, method.counts)
    # the loaded tensors are copies: changing the checkpoint later changes nothing
    state["counts"] += 100
    state["frequent"] |= True
    state["old_keys"] += 1.0
    assert fresh.counts.max() < 100 and not fresh.frequent.all()
    assert torch.equal(fresh.old_keys, method.old_keys)
    with pytest.raises(ValueError, match="checkpoint is for method 'l2p', not 'smope'"):
        fresh.load_state_dict({**state, "method": "l2p"})


def test_checkpoint_before_any_task() -> None:
    state = _method().state_dict()
    assert state["old_keys"] is None and state["optimizer"] is None
    fresh = _method()
    fresh.old_keys = torch.zeros(1)
    fresh.load_state_dict(state)
    assert fresh.old_keys is None and fresh.optimizer is None and fresh.task_index == -1


def test_a_small_unused_penalty_is_applied_and_lives_on_the_method_device() -> None:
    method = _method({"eval_unused_penalty": 0.5})
    method.counts = torch.ones(2, 4, 4, dtype=torch.long)
    method.counts[1, 2, 3] = 0
    scores = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(9))
    spread = scores.amax(-1, keepdim=True) - scores.amin(-1, keepdim=True)
    penalty = method._eval_penalties()[1](scores)
    torch.testing.assert_close(penalty, 0.5 * (method.counts[1] == 0).float() * spread)
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=2).model
    cfg = resolve_config("synthetic", "smope", overrides={
        "method_options": {**OPTIONS, "eval_unused_penalty": 0.5}})
    meta = get_method("smope")(cfg, vit, NUM_CLASSES, SCHEDULE, device="meta")
    assert {p.device.type for p in meta.model.parameters()} == {"meta"}
    out = meta._eval_penalties()[0](torch.zeros(3, 4, 4, device="meta"))
    assert out.device.type == "meta"
    meta.frequent[0, 1, 2] = True
    out = meta._penalties()[0](torch.zeros(3, 4, 4, device="meta"))
    assert out.device.type == "meta"


def test_multi_centroid_statistics_get_the_seed_and_the_centroid_count() -> None:
    method = _method(stats_method="multi-centroid", n_centroids=3, seed=11)
    assert type(method.stats).__name__ == "MultiCentroidClassStats"
    assert (method.stats.n_centroids, method.stats.seed, method.stats.dim) == (3, 11, 128)


def _poisoned(task: int, epoch: int, step: int) -> PoisonedLoader:
    """Clean batches of ``task``, except a NaN image at ``step`` of epoch ``epoch``."""
    return PoisonedLoader(lambda i: (_images(2, 10 + i), _labels(task, 2)), epoch, step)


@pytest.mark.parametrize(("task", "poisoned_pass", "phase"), [
    (0, 1, "smope_warmup"), (0, 3, "smope"), (1, 1, "smope")])
def test_a_non_finite_loss_names_phase_task_epoch_and_step(task: int, poisoned_pass: int,
                                                          phase: str) -> None:
    """Task 0 runs 2 warm-up passes then 4 top-K ones: each poisoned pass is epoch 1 of its
    phase."""
    method = _method(epochs=4)
    for t in range(task + 1):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    with pytest.raises(FloatingPointError) as info:
        method.train_task(_poisoned(task, poisoned_pass, 1))
    assert str(info.value) == (f"non-finite loss (nan) in {phase} training at task {task}, "
                               "epoch 1, step 1")


def test_training_needs_begin_task() -> None:
    with pytest.raises(AssertionError, match="^begin_task must be called first$"):
        _method().train_task([(_images(2), _labels(0, 2))])


def test_a_single_warm_up_epoch_is_run() -> None:
    records: list[dict] = []
    method = _method({"schedule": "constant"}, log=records.append, epochs=2)  # round(0.5 x 2)
    descs: list[str] = []
    method.progress = lambda iterable, desc: (descs.append(desc), iterable)[1]
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    method.train_task([(_images(BATCH, 1), _labels(0, BATCH))])
    assert [r["phase"] for r in records] == ["smope_warmup", "smope", "smope"]
    assert descs == ["task 0 smope_warmup epoch 0", "task 0 smope epoch 0",
                     "task 0 smope epoch 1"]


def test_cosine_schedule_steps_once_per_epoch() -> None:
    records: list[dict] = []
    method = _method({"schedule": "cosine"}, log=records.append, epochs=3)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    batches = [(_images(2, 1), _labels(1, 2)), (_images(2, 2), _labels(1, 2))]
    method.train_task(batches)
    # logged after the epoch's step: epoch e reports the rate of epoch e + 1 (head group)
    want = [0.01 * math.cos(99 * math.pi * (e + 1) / (200 * 2)) for e in range(3)]
    assert [r["lr"] for r in records] == pytest.approx(want, rel=1e-9)
