"""Unit tests of HiDe-Prompt's wiring (``cl/methods/hide.py``) on a tiny random ViT: what
``_build`` seeds from which stream, the optimizers' hyper-parameters and schedules
(docs/cl-background.md#training-conventions), the training steps and log records of the TII and WTP
stages, the end-of-task order (prompt ensemble, statistics, TII alignment, before-alignment hook,
head alignment) and the alignment stages' optimizers, the task prediction modes, and the checkpoint
round trip (a method resumed from ``state_dict`` continues exactly like the uninterrupted one).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import cl.methods.hide as hide_module
from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data.synthetic import make_synthetic
from cl.methods import Task, get_method
from cl.methods.losses import contrastive_regulariser
from cl.methods.schedules import MIN_LR
from cl.models.tii import TIIHead
from cl.models.vit import PromptedViT
from cl.run.seeding import derive_seed, seeded_global_rng, torch_generator
from cl.stats.centroids import MultiCentroidClassStats
from cl.stats.gaussian import GaussianClassStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 8 classes in 3 tasks of 3, 3, 2, shuffled ids
SCHEDULE = [[5, 2, 7], [0, 6, 3], [4, 1]]
NUM_CLASSES = 8
IMAGE = 16
SMALL = {"batch_size": 4, "epochs": 1, "tii_epochs": 1, "tii_ca_epochs": 1, "tap_epochs": 1,
         "tap_samples_mult": 2, "prompt_momentum": 0.25}


def _config(seed: int = 5, **overrides):
    return resolve_config("synthetic", "hide", overrides={"seed": seed, **SMALL, **overrides},
                          allow_unused=True)


def _vit():
    return build_backbone("vit-tiny-random", img_size=IMAGE, seed=5).model


def _method(seed: int = 5, log=None, **overrides):
    return get_method("hide")(_config(seed, **overrides), _vit(), NUM_CLASSES, SCHEDULE, log=log)


def _task_data(t: int) -> TensorDataset:
    x, y = make_synthetic(NUM_CLASSES, 2, split="train", image_size=IMAGE)
    keep = torch.isin(y, torch.tensor(SCHEDULE[t]))
    return TensorDataset(x[keep], y[keep])  # 6 (or 4) images: batches of 4 and 2


def _run_task(method, t: int, before_alignment=None) -> Task:
    data = _task_data(t)
    task = Task(t, SCHEDULE[t], SCHEDULE, DataLoader(data, batch_size=4), before_alignment)
    method.begin_task(task)
    method.train_task(DataLoader(data, batch_size=4))
    method.end_task(task)
    return task


def _images(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- construction


def test_build_draws_prompts_head_tii_and_replay_from_their_own_seed_streams():
    method = _method(seed=5, prompt_length=3, prompt_layers=[1, 3], legacy_kv_reshape=True,
                     tii_mlp=[3])
    want = PromptedViT(_vit(), NUM_CLASSES, pool_size=3, prompt_length=3, prompt_layers=[1, 3],
                       gate="linear", generator=torch_generator(5, "prompt-init"),
                       legacy_kv_reshape=True)
    assert method.model.prompt.prompt.shape == (2, 2, 3, 3, 4, 32)  # layers, k/v, pool, L, H, D
    assert torch.equal(method.model.prompt.prompt, want.prompt.prompt)
    assert torch.equal(method.model.head.weight, want.head.weight)
    assert method.model.prompt.legacy_kv_reshape is True
    assert method.model.training is False
    with seeded_global_rng(derive_seed(5, "tii-init")):
        tii = TIIHead(128, NUM_CLASSES, [3], fc_norm=False)
    got = method.tii.state_dict()
    assert got["mlp.body.0.weight"].shape == (3 * 128, 128)
    assert got.keys() == tii.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in tii.state_dict().items())
    assert torch.equal(method.sample_gen.get_state(),
                       torch_generator(5, "gaussian-replay").get_state())
    assert method.scale == 4 / 256
    assert method.wtp_optimizer is None and method.tii_optimizer is None
    for stats in (method.tii_stats, method.prompt_stats):
        assert type(stats) is GaussianClassStats
        assert (stats.dim, stats.method) == (128, "covariance")


@pytest.mark.parametrize("attention, act", [("fused", "sigmoid"), ("reference", "gelu")])
def test_build_passes_the_attention_path_and_gate_to_the_prompted_blocks(attention, act):
    # HiDe-Prompt has no gate activation (the linear gate ignores the one it is given)
    method = _method(attention=attention, gate_act=act)
    assert not hasattr(method.options, "gate_act")
    for i in method.model.prompt_layers:
        attn = method.model.vit.blocks[i].attn
        assert (attn.fused, attn.gate, attn.activation) == (attention == "fused", "linear",
                                                            "tanh")


def test_build_seeds_the_multi_centroid_statistics_per_model():
    method = _method(seed=7, stats_method="multi-centroid", n_centroids=3)
    tii, prompt = method.tii_stats, method.prompt_stats
    assert type(tii) is MultiCentroidClassStats and type(prompt) is MultiCentroidClassStats
    assert (tii.dim, tii.n_centroids, tii.seed) == (128, 3, derive_seed(7, "tii"))
    assert (prompt.dim, prompt.n_centroids, prompt.seed) == (128, 3, 7)


def test_same_seed_same_method_other_seed_other_draws():
    a, b, c = _method(seed=5), _method(seed=5), _method(seed=6)
    assert torch.equal(a.model.prompt.prompt, b.model.prompt.prompt)
    assert torch.equal(a.tii.head.weight, b.tii.head.weight)
    assert torch.equal(a.sample_gen.get_state(), b.sample_gen.get_state())
    assert not torch.equal(a.model.prompt.prompt, c.model.prompt.prompt)
    assert not torch.equal(a.tii.head.weight, c.tii.head.weight)
    assert not torch.equal(a.model.head.weight, c.model.head.weight)
    assert not torch.equal(a.sample_gen.get_state(), c.sample_gen.get_state())


# ---------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("larger", [True, False])
def test_optimizers_have_the_spec_hyper_parameters_and_groups(larger: bool):
    method = _method(lr=0.2, tii_lr=0.004, larger_prompt_lr=larger, batch_size=32)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    wtp, tii = method.wtp_optimizer, method.tii_optimizer
    assert type(wtp) is torch.optim.Adam and type(tii) is torch.optim.Adam
    lr = 0.2 * 32 / 256
    prompt_group, head_group = wtp.param_groups
    assert prompt_group["params"] == [method.model.prompt.prompt]  # linear gate: no act_scale
    assert head_group["params"] == [*method.model.head.parameters()]  # fc_norm: Identity
    assert prompt_group["lr"] == pytest.approx(lr, rel=1e-12)
    assert head_group["lr"] == pytest.approx(0.1 * lr if larger else lr, rel=1e-12)
    for group in (prompt_group, head_group, tii.param_groups[0]):
        assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.0)
    assert len(tii.param_groups) == 1
    assert tii.param_groups[0]["params"] == list(method.tii.parameters())
    assert tii.param_groups[0]["lr"] == pytest.approx(0.004 * 32 / 256, rel=1e-12)
    assert method.wtp_scheduler is None and method.tii_scheduler is None  # constant


def _cosine(base: float, k: int, epochs: int) -> float:
    """The lagged cosine of docs/cl-background.md#training-conventions: epoch k runs at f(k - 1),
    epoch 0 at the base rate."""
    if k == 0:
        return base
    return MIN_LR + 0.5 * (base - MIN_LR) * (1 + math.cos(math.pi * (k - 1) / epochs))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_schedulers_follow_each_stage_own_kind_and_length():
    method = _method(scheduler="cosine", epochs=4, tii_scheduler="cosine", tii_epochs=3,
                     lr=0.2, tii_lr=0.004)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    lr, tii_lr = 0.2 * 4 / 256, 0.004 * 4 / 256
    for k in range(1, 4):
        method.wtp_scheduler.step()
        method.tii_scheduler.step()
        groups = method.wtp_optimizer.param_groups
        assert groups[0]["lr"] == pytest.approx(_cosine(lr, k, 4), rel=1e-9)
        assert groups[1]["lr"] == pytest.approx(_cosine(0.1 * lr, k, 4), rel=1e-9)
        assert method.tii_optimizer.param_groups[0]["lr"] == pytest.approx(
            _cosine(tii_lr, k, 3), rel=1e-9)
    only_tii = _method(scheduler="constant", tii_scheduler="cosine")
    only_tii.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert only_tii.wtp_scheduler is None and only_tii.tii_scheduler is not None


def test_begin_task_rebuilds_fresh_optimizers_each_task():
    method = _method()
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    first = method.wtp_optimizer, method.tii_optimizer
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    assert method.task_index == 1 and method.task.classes == SCHEDULE[1]
    assert method.wtp_optimizer is not first[0] and method.tii_optimizer is not first[1]


# ---------------------------------------------------------------------------- training


def test_training_steps_and_log_records_follow_the_stage_settings(monkeypatch):
    records: list[dict] = []
    method = _method(log=records.append, epochs=3, tii_epochs=3, scheduler="cosine",
                     tii_scheduler="cosine", clip_grad=2.0, tii_clip_grad=0.5)
    steps: list[dict] = []
    step = hide_module.optimizer_step

    def spy(optimizer, loss, **kwargs):
        steps.append({**kwargs, "lr": optimizer.param_groups[0]["lr"],
                      "tii_mode": method.tii.training, "optimizer": optimizer})
        step(optimizer, loss, **kwargs)

    monkeypatch.setattr(hide_module, "optimizer_step", spy)
    descs: list[str] = []

    def progress(iterable, desc):
        descs.append(desc)
        return iterable

    method.progress = progress
    t = 0
    method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    base_lr = method.wtp_optimizer.param_groups[0]["lr"]
    base_tii = method.tii_optimizer.param_groups[0]["lr"]
    method.train_task(DataLoader(_task_data(t), batch_size=4))
    assert method.tii.training is False
    tii_params = list(method.tii.parameters())
    wtp_params = [method.model.prompt.prompt, *method.model.head.parameters()]
    want = [("tii", e, s) for e in range(3) for s in range(2)]
    want += [("wtp", e, s) for e in range(3) for s in range(2)]
    assert [(s["phase"], s["epoch"], s["step"]) for s in steps] == want
    for s in steps:
        assert s["task"] == t
        if s["phase"] == "tii":
            assert s["optimizer"] is method.tii_optimizer and s["clip_grad"] == 0.5
            assert s["params"] == tii_params and s["tii_mode"] is True
            assert s["lr"] == pytest.approx(_cosine(base_tii, s["epoch"], 3), rel=1e-9)
        else:
            assert s["optimizer"] is method.wtp_optimizer and s["clip_grad"] == 2.0
            assert s["params"] == wtp_params and s["tii_mode"] is False
            assert s["lr"] == pytest.approx(_cosine(base_lr, s["epoch"], 3), rel=1e-9)
    assert descs == [f"task 0 TII epoch {e}" for e in range(3)] + [
        f"task 0 WTP epoch {e}" for e in range(3)]
    assert [list(r) for r in records] == [["phase", "task", "epoch", "loss", "train_acc"]] * 3 + [
        ["phase", "task", "epoch", "loss", "train_acc", "lr"]] * 3
    assert [(r["phase"], r["task"], r["epoch"]) for r in records] == [
        (p, t, e) for p in ("tii", "wtp") for e in range(3)]
    for e, r in enumerate(records[3:]):  # the rate of the next epoch (logged after the step)
        assert r["lr"] == pytest.approx(_cosine(base_lr, e + 1, 3), rel=1e-9)


def _frozen_lrs(method) -> None:
    for opt in (method.wtp_optimizer, method.tii_optimizer):
        for group in opt.param_groups:
            group["lr"] = 0.0


def test_logged_losses_and_accuracies_are_the_hand_computed_ones(monkeypatch):
    """With every rate at 0 nothing moves, so each epoch's record is computable from scratch:
    TII: CE of the masked TII logits on prompt-free features; WTP: CE of the masked head on
    features prompted with the hand-blended prompt, plus reg x the contrastive term against
    the old classes' means, weighted by batch size."""
    records: list[dict] = []
    # a high temperature keeps the contrastive term far from 0 (at 0.8 it underflows here)
    method = _method(log=records.append, reg=0.3, contrastive_temperature=100.0)
    _run_task(method, 0)
    t, m = 1, method.options.prompt_momentum
    data = _task_data(t)
    method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    _frozen_lrs(method)
    records.clear()
    method.train_task(DataLoader(data, batch_size=4))
    tii_rec, wtp_rec = records
    x, y = data.tensors
    mask = torch.full((NUM_CLASSES,), float("-inf"))
    mask[SCHEDULE[t]] = 0.0
    with torch.no_grad():
        tii_logits = method.tii(method.model.backbone_features(x)) + mask
        assert tii_rec["loss"] == pytest.approx(F.cross_entropy(tii_logits, y).item(), rel=1e-5)
        assert tii_rec["train_acc"] == pytest.approx(
            100.0 * (tii_logits.argmax(1) == y).float().mean().item())
        pool = method.model.prompt.prompt
        saved = pool.detach().clone()
        pool[:, :, t] = (1 - m) * saved[:, :, t] + m * saved[:, :, 0]  # the blend for task 1
        old_means = torch.stack([method.prompt_stats.mean(c) for c in SCHEDULE[0]]).float()
        total, reg_total, correct = 0.0, 0.0, 0
        for lo, hi in ((0, 4), (4, 6)):
            ids = torch.full((hi - lo,), t)
            feats = method.model.pre_logits(method.model.forward_features(x[lo:hi], ids))
            logits = method.model.head(feats) + mask
            reg = 0.3 * contrastive_regulariser(feats, old_means, 100.0)
            loss = F.cross_entropy(logits, y[lo:hi]) + reg
            total += loss.item() * (hi - lo)
            reg_total += reg.item() * (hi - lo)
            correct += int((logits.argmax(1) == y[lo:hi]).sum())
        pool.copy_(saved)
    assert reg_total / 6 > 0.1  # the regulariser is a visible part of the loss
    assert wtp_rec["loss"] == pytest.approx(total / 6, rel=1e-4)
    assert wtp_rec["train_acc"] == pytest.approx(100.0 * correct / 6)
    assert wtp_rec["lr"] == 0.0


def test_train_task_needs_begin_task():
    with pytest.raises(AssertionError, match="^begin_task must be called first$"):
        _method().train_task(DataLoader(_task_data(0), batch_size=4))


# ---------------------------------------------------------------------------- end of task


def test_end_task_needs_the_statistics_loader():
    method = _method()
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    with pytest.raises(ValueError, match="^end_task needs task.stats_loader for the class "
                                         "statistics$"):
        method.end_task(Task(0, SCHEDULE[0], SCHEDULE))


def test_end_task_order_ensemble_statistics_tii_alignment_hook_head_alignment(monkeypatch):
    method = _method()
    calls: list[tuple] = []
    for name in ("_collect_statistics", "_align_tii", "_align_head"):
        original = getattr(method, name)

        def spy(task, _name=name, _original=original):
            calls.append((_name, task.index))
            _original(task)

        monkeypatch.setattr(method, name, spy)
    apply = method.model.prompt.apply_momentum
    monkeypatch.setattr(method.model.prompt, "apply_momentum",
                        lambda t, m: (calls.append(("ensemble", t, m)), apply(t, m)))
    for t in range(2):
        _run_task(method, t, before_alignment=lambda task: calls.append(("hook", task.index)))
    assert calls == [("ensemble", 0, 0.25), ("_collect_statistics", 0),
                     ("ensemble", 1, 0.25), ("_collect_statistics", 1), ("_align_tii", 1),
                     ("hook", 1), ("_align_head", 1)]


def test_statistics_are_the_class_means_of_the_prompt_free_and_the_ensembled_prompted_features():
    descs: list[str] = []
    method = _method()
    for t in range(2):
        _run_task(method, t)
    method.progress = lambda it, desc: (descs.append(desc), it)[1]
    x, y = _task_data(1).tensors
    with torch.no_grad():
        free = method.model.backbone_features(x).double()
        # the prompt of task 1 after its ensemble (momentum 0.25 with prompt 0)
        prompted = method.model.pre_logits(
            method.model.forward_features(x, torch.full((len(y),), 1))).double()
    for c in SCHEDULE[1]:
        assert float(method.tii_stats.count[c]) == 2 and float(method.prompt_stats.count[c]) == 2
        torch.testing.assert_close(method.tii_stats.mean(c), free[y == c].mean(0), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(method.prompt_stats.mean(c), prompted[y == c].mean(0),
                                   rtol=1e-5, atol=1e-5)
    assert sorted(method.prompt_stats.classes) == sorted(SCHEDULE[0] + SCHEDULE[1])
    task = Task(1, SCHEDULE[1], SCHEDULE, DataLoader(_task_data(1), batch_size=4))
    method._collect_statistics(task)
    assert descs == ["task 1 statistics"]
    assert float(method.tii_stats.count[SCHEDULE[1][0]]) == 4  # accumulated


def test_alignment_stages_use_sgd_cosine_and_the_spec_rates_counts_and_models(monkeypatch):
    method = _method(tii_ca_lr=0.05, ca_lr=0.02, tii_ca_epochs=3, tap_epochs=2,
                     tap_samples_mult=3, batch_size=8)
    _run_task(method, 0)
    seen: list[dict] = []
    align = method._align_on_gaussians

    def spy(forward, optimizer, scheduler, **kwargs):
        probe = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            seen.append({**kwargs, "type": type(optimizer), "groups": optimizer.param_groups,
                         "t_max": scheduler.T_max, "sched": type(scheduler),
                         "tii_mode": method.tii.training, "out": forward(probe),
                         "tii_out": method.tii(probe),
                         "head_out": method.model.head(method.model.fc_norm(probe))})
        align(forward, optimizer, scheduler, **kwargs)

    monkeypatch.setattr(method, "_align_on_gaussians", spy)
    task = _run_task(method, 1)
    tii_call, tap_call = seen
    assert method.tii.training is False
    for call, phase, lr, epochs, n, stats, params, out in (
        (tii_call, "tii_ca", 0.05 * 8 / 256, 3, 8, method.tii_stats,
         list(method.tii.parameters()), "tii_out"),
        (tap_call, "tap", 0.02, 2, 24, method.prompt_stats,
         list(method.model.head.parameters()), "head_out"),
    ):
        assert call["phase"] == phase and call["task"] is task
        assert (call["epochs"], call["n_per_class"]) == (epochs, n)
        assert call["stats"] is stats and call["step_per_iteration"] is False
        assert call["type"] is torch.optim.SGD and len(call["groups"]) == 1
        group = call["groups"][0]
        assert group["params"] == params
        assert group["initial_lr"] == pytest.approx(lr, rel=1e-12)
        assert (group["momentum"], group["weight_decay"]) == (0.9, 0.0)
        assert call["sched"] is torch.optim.lr_scheduler.CosineAnnealingLR
        assert call["t_max"] == epochs
        assert torch.equal(call["out"], call[out])
    assert tii_call["tii_mode"] is True and tap_call["tii_mode"] is False


def test_alignment_with_no_epochs_builds_a_one_step_cosine(monkeypatch):
    method = _method()
    got: list = []
    monkeypatch.setattr(method, "_align_on_gaussians",
                        lambda forward, optimizer, scheduler, **kw: got.append(scheduler.T_max))
    method._align_sgd(method.tii, list(method.tii.parameters()), method.tii_stats,
                      Task(1, SCHEDULE[1], SCHEDULE), lr=0.1, epochs=0, n_per_class=2,
                      phase="tii_ca")
    assert got == [1]


# ---------------------------------------------------------------------------- inference


def _fixed_tii(method, monkeypatch, per_sample: list[int]) -> None:
    """A stand-in TII forward: sample b's highest logit is the first class of its task."""
    rows = torch.zeros(len(per_sample), NUM_CLASSES)
    for b, task in enumerate(per_sample):
        rows[b, SCHEDULE[task][0]] = 5.0
    monkeypatch.setattr(method.tii, "forward", lambda feats: rows[: feats.shape[0]])


def test_predict_tasks_needs_a_task():
    with pytest.raises(AssertionError, match="^no task has been learned yet$"):
        _method().predict_tasks(_images(1))


def test_predictions_use_each_samples_predicted_task_prompt(monkeypatch):
    method = _method()
    for t in range(3):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    _fixed_tii(method, monkeypatch, [2, 0, 1, 0, 2])
    x = _images()
    tasks = method.predict_tasks(x)
    assert tasks.tolist() == [2, 0, 1, 0, 2]
    logits, got_tasks = method.predict_with_tasks(x)
    assert torch.equal(got_tasks, tasks)
    with torch.no_grad():
        want = method.model(x, tasks)
    assert torch.equal(logits, want) and torch.equal(method.predict(x), want)
    oracle = method.predict_oracle(x, torch.tensor([1, 1, 0, 2, 0]))
    with torch.no_grad():
        raw = method.model(x, torch.tensor([1, 1, 0, 2, 0]))
    for b, task in enumerate([1, 1, 0, 2, 0]):
        keep = torch.tensor(sorted(SCHEDULE[task]))
        assert torch.isfinite(oracle[b]).nonzero().flatten().tolist() == keep.tolist()
        assert torch.equal(oracle[b, keep], raw[b, keep])


@pytest.mark.parametrize("ties", [False, True])
def test_batchwise_prompt_gives_every_sample_the_batch_majority_task(ties, monkeypatch):
    method = _method(batchwise_prompt=True, legacy_vote_ties=ties)
    for t in range(3):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    _fixed_tii(method, monkeypatch, [2, 0, 1, 1, 2, 1])
    assert method.predict_tasks(_images(6)).tolist() == [1] * 6


@pytest.mark.parametrize("ties", [False, True])
def test_batch_vote_rule_follows_legacy_vote_ties(ties, monkeypatch):
    method = _method(batchwise_prompt=True, legacy_vote_ties=ties)
    for t in range(3):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    _fixed_tii(method, monkeypatch, [2, 0, 2])
    votes: list[tuple] = []

    def official_vote(ids, top_k, pool_size):
        votes.append((ids.tolist(), top_k, pool_size))
        return torch.full((ids.shape[0], top_k), 1)  # not the majority: shows it was used

    monkeypatch.setattr(hide_module, "official_vote", official_vote)
    got = method.predict_tasks(_images(3)).tolist()
    if ties:
        assert votes == [([[2], [0], [2]], 1, 3)] and got == [1, 1, 1]
    else:
        assert votes == [] and got == [2, 2, 2]


# ---------------------------------------------------------------------------- checkpoints


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _assert_same(a, b, path: str = "state") -> None:
    """Recursive equality of nested dicts / lists / tensors / scalars, every leaf compared."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


STATE_KEYS = ["method", "task_index", "prompt", "head", "fc_norm", "tii", "tii_stats",
              "prompt_stats", "wtp_optimizer", "tii_optimizer", "sample_gen"]


def test_state_dict_of_a_fresh_method_round_trips():
    a, b = _method(seed=5), _method(seed=6)
    state = _roundtrip(a.state_dict())
    assert list(state) == STATE_KEYS
    assert (state["method"], state["task_index"]) == ("hide", -1)
    assert state["wtp_optimizer"] is None and state["tii_optimizer"] is None
    b.load_state_dict(state)
    _assert_same(b.state_dict(), state)
    assert b.task is None and b.wtp_optimizer is None and b.tii_optimizer is None


def test_a_method_resumed_from_its_state_dict_continues_exactly_like_the_original():
    a = _method(seed=5)
    _run_task(a, 0)
    state = _roundtrip(a.state_dict())
    assert state["task_index"] == 0 and state["wtp_optimizer"]["state"]
    assert state["tii_optimizer"]["state"] and state["tii_stats"]["classes"]
    b = _method(seed=6)  # other prompts, heads and replay stream until the load
    b.load_state_dict(state)
    _assert_same(b.state_dict(), state)
    assert b.task_index == 0 and b.task == Task(0, SCHEDULE[0], SCHEDULE)
    for t in (1, 2):
        _run_task(a, t)
        _run_task(b, t)
    _assert_same(b.state_dict(), a.state_dict())
    x = _images()
    assert torch.equal(a.predict(x), b.predict(x))


def test_a_checkpoint_of_another_method_is_refused():
    state = _method().state_dict()
    state["method"] = "norga"
    with pytest.raises(ValueError, match="checkpoint is for method 'norga', not 'hide'"):
        _method().load_state_dict(state)


def test_an_fc_norm_backbone_gets_trainable_norms_in_the_head_group_and_the_tii_model():
    """MoCo v3 style backbone (timm ``fc_norm=True``): the prompted model's fresh fc_norm is
    trained with the head (WTP group 2 and TAP), and the TII model gets its own LayerNorm."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=0, global_pool="token", fc_norm=True)
    method = get_method("hide")(_config(prompt_layers=[0, 1], prompt_length=2), vit,
                                NUM_CLASSES, SCHEDULE)
    assert isinstance(method.tii.fc_norm, torch.nn.LayerNorm)
    norm = list(method.model.fc_norm.parameters())
    assert len(norm) == 2
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert method.wtp_optimizer.param_groups[1]["params"] == [*method.model.head.parameters(),
                                                              *norm]
    seen: list = []
    method._align_sgd = lambda forward, params, *a, **kw: seen.append(params)
    method._align_head(Task(1, SCHEDULE[1], SCHEDULE))
    assert seen == [[*method.model.head.parameters(), *norm]]


def test_the_first_task_keeps_its_initial_prompt_at_begin_task():
    method = _method()
    before = method.model.prompt.prompt.detach().clone()
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert torch.equal(method.model.prompt.prompt, before)


def test_norga_builds_its_gate_into_every_prompted_block_and_resumes_after_its_first_task():
    """NoRGa reuses HiDe-Prompt's wiring with its own gate; at task 0 its (tau, alpha) train
    with the prompt, so the restored optimizer must be rebuilt for that task."""
    cfg = resolve_config("synthetic", "norga", overrides={"seed": 5, **SMALL, "gate_act": "gelu"},
                         allow_unused=True)
    a = get_method("norga")(cfg, _vit(), NUM_CLASSES, SCHEDULE)
    for i in a.model.prompt_layers:
        attn = a.model.vit.blocks[i].attn
        assert (attn.gate, attn.activation) == ("norga", "gelu")
    _run_task(a, 0)
    state = _roundtrip(a.state_dict())
    assert len(state["wtp_optimizer"]["param_groups"][0]["params"]) == 2  # prompt, act_scale
    b = get_method("norga")(cfg, _vit(), NUM_CLASSES, SCHEDULE)
    b.load_state_dict(state)
    _assert_same(b.state_dict(), state)
    assert b.model.prompt.act_scale.requires_grad


def test_everything_built_lives_on_the_method_device():
    """On the meta device (no data, no compute) every module and mask follows ``device``."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        vit = VisionTransformer(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                num_classes=0)
    method = get_method("hide")(_config(prompt_layers=[0, 1]), vit, NUM_CLASSES, SCHEDULE,
                                device="meta")
    assert {p.device.type for p in method.model.parameters()} == {"meta"}
    assert {p.device.type for p in method.tii.parameters()} == {"meta"}
    assert method.class_to_task.device.type == "meta"
