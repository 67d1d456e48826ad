"""How the CL methods are wired together: masks against the task schedule, prompt momentum and
the end-of-task prompt ensemble against hand-computed pools (and where gradients flow), the
Gaussian sample counts of the alignment stages, and the resume guards of the engine.

The schedule used throughout has classes that do not divide evenly and are not in natural
order, so that an off-by-one task or a mask built from the wrong list shows.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import cl.methods.hide as hide_module
import cl.methods.training as training_module
from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data.synthetic import make_synthetic
from cl.methods import Task, get_method
from cl.models.prompts import PrefixPrompt
from cl.run.engine import _latest_good_checkpoint
from cl.run.files import torch_save_atomic, verify_result_file, write_result_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 8 classes in 3 tasks of 3, 3, 2 (ceil(8 / 3) = 3), shuffled ids
SCHEDULE = [[5, 2, 7], [0, 6, 3], [4, 1]]
NUM_CLASSES = 8
IMAGE = 16


def _seen(t: int) -> list[int]:
    return sorted(c for task in SCHEDULE[: t + 1] for c in task)


def _method(name: str, **overrides):
    cfg = resolve_config("synthetic", name, overrides={
        "seed": 5, "batch_size": 4, "epochs": 1, "tii_epochs": 1, "tii_ca_epochs": 1,
        "tap_epochs": 1, "tap_samples_mult": 2, "prompt_momentum": 0.25, **overrides},
        allow_unused=True)  # one budget for every method, whatever phases it has
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=5).model
    return get_method(name)(cfg, vit, NUM_CLASSES, SCHEDULE)


def _images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def _fixed_logits(logits: list[float]):
    """A stand-in TII forward: the same logits for every sample."""
    row = torch.tensor(logits)
    return lambda feats: row.expand(feats.shape[0], -1)


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name", ["hide", "norga"])
def test_tii_is_restricted_to_the_tasks_seen_at_each_begin_task(name: str, monkeypatch) -> None:
    """Logits rank: a class of task t+1 (unseen) > a class of task t > a class of task 0."""
    method = _method(name)
    images = _images(3)
    for t in range(len(SCHEDULE)):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
        assert method._seen_mask().nonzero().flatten().tolist() == _seen(t)
        logits = [0.0] * NUM_CLASSES
        if t + 1 < len(SCHEDULE):
            logits[SCHEDULE[t + 1][0]] = 9.0  # leaks if the next task counted as seen
        logits[SCHEDULE[t][1]] = 5.0  # the right answer
        if t > 0:
            logits[SCHEDULE[0][2]] = 1.0  # wins if task t were left out
        monkeypatch.setattr(method.tii, "forward", _fixed_logits(logits))
        assert method.predict_tasks(images).tolist() == [t] * 3


@pytest.mark.parametrize("name", ["hide", "coda-prompt", "smope"])
def test_til_logits_keep_exactly_each_samples_true_task(name: str) -> None:
    method = _method(name)
    for t in range(len(SCHEDULE)):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
    images = _images(3)
    task_ids = torch.tensor([2, 0, 1])
    out = method.predict_oracle(images, task_ids)
    for row, task in zip(out, task_ids.tolist(), strict=True):
        assert torch.isfinite(row).nonzero().flatten().tolist() == sorted(SCHEDULE[task])


@pytest.mark.parametrize("name", ["coda-prompt", "smope"])
def test_single_pass_predict_masks_to_seen_classes_at_each_task(name: str) -> None:
    method = _method(name)
    images = _images(2)
    for t in range(len(SCHEDULE)):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
        finite = torch.isfinite(method.predict(images))
        for row in finite:
            assert row.nonzero().flatten().tolist() == _seen(t)


def test_task_seen_and_old_classes_follow_the_schedule() -> None:
    for t in range(len(SCHEDULE)):
        task = Task(t, SCHEDULE[t], SCHEDULE)
        assert sorted(task.seen_classes) == _seen(t)
        assert sorted(task.old_classes) == (_seen(t - 1) if t > 0 else [])


def _train_one_task(method, t: int, monkeypatch) -> dict[str, list]:
    """begin/train/end task ``t`` on a few synthetic images; records the class masks built by
    the training and alignment stages and the Gaussian sample counts."""
    seen: dict[str, list] = {"train_masks": [], "align_masks": [], "samples": []}

    def recording(bucket):
        def class_mask(num_classes, allowed, device):
            seen[bucket].append(sorted(int(c) for c in allowed))
            return original(num_classes, allowed, device)
        return class_mask

    original = hide_module.class_mask
    monkeypatch.setattr(hide_module, "class_mask", recording("train_masks"))
    monkeypatch.setattr(training_module, "class_mask", recording("align_masks"))
    for stats_name in ("tii_stats", "prompt_stats"):
        stats = getattr(method, stats_name)
        draw = stats.sample

        def sample(classes, n, gen, _draw=draw, _name=stats_name):
            seen["samples"].append((_name, sorted(classes), n))
            return _draw(classes, n, gen)

        monkeypatch.setattr(stats, "sample", sample)
    x, y = make_synthetic(NUM_CLASSES, 2, split="train", image_size=IMAGE)
    keep = torch.isin(y, torch.tensor(SCHEDULE[t]))
    data = TensorDataset(x[keep], y[keep])
    task = Task(t, SCHEDULE[t], SCHEDULE, DataLoader(data, batch_size=4))
    method.begin_task(task)
    method.train_task(DataLoader(data, batch_size=4))
    method.end_task(task)
    monkeypatch.undo()
    return seen


def test_training_masks_and_alignment_samples_follow_the_schedule(monkeypatch) -> None:
    method = _method("norga")
    cfg = method.config
    for t in range(len(SCHEDULE)):
        rec = _train_one_task(method, t, monkeypatch)
        # TII and prompt training: the current task's classes only
        assert rec["train_masks"] == [sorted(SCHEDULE[t])] * 2
        if t == 0:
            assert rec["align_masks"] == [] and rec["samples"] == []
            continue
        # alignment of the TII model, then of the head: every seen class
        assert rec["align_masks"] == [_seen(t)] * 2
        assert rec["samples"] == [
            ("tii_stats", _seen(t), cfg.batch_size),
            ("prompt_stats", _seen(t), cfg.method_options.tap_samples_mult * cfg.batch_size),
        ]


# ---------------------------------------------------------------------------- prompt pool


def _pool(pool_size: int = 3) -> PrefixPrompt:
    pool = PrefixPrompt(2, pool_size, 2, 2, 3, generator=torch.Generator().manual_seed(1))
    return pool


def test_blended_prompt_is_the_hand_computed_mix_with_gradient_on_the_current_prompt_only():
    pool = _pool()
    m, t, batch = 0.25, 2, 3
    p = pool.prompt.detach().clone()
    expected = (1 - m) * p[:, :, 2] + m * (p[:, :, 0] + p[:, :, 1]) / 2  # (layers, 2, L, H, D)
    got = pool.blended(t, batch, m)  # (layers, B, 2, L, H, D)
    assert got.shape == (2, batch, 2, 2, 2, 3)
    for b in range(batch):
        torch.testing.assert_close(got[:, b], expected, rtol=0, atol=1e-7)
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(2))
    (got * weights).sum().backward()
    grad = pool.prompt.grad
    torch.testing.assert_close(grad[:, :, 2], (1 - m) * weights.sum(dim=1), rtol=1e-6,
                               atol=1e-6)
    assert torch.count_nonzero(grad[:, :, :2]) == 0  # older prompts: stop-gradient
    # task 0 and momentum 0 use the prompt itself
    torch.testing.assert_close(pool.blended(0, 1, m)[:, 0], p[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(pool.blended(2, 1, 0.0)[:, 0], p[:, :, 2], rtol=0, atol=0)


def test_gathered_prompts_are_per_sample_and_keys_values_stay_apart():
    pool = _pool()
    p = pool.prompt.detach()
    got = pool.gather(torch.tensor([2, 0, 2]))
    for b, task in enumerate([2, 0, 2]):
        torch.testing.assert_close(got[:, b], p[:, :, task], rtol=0, atol=0)


def test_prompt_ensemble_and_copy_are_the_hand_computed_pools():
    pool = _pool(4)
    before = pool.prompt.detach().clone()
    pool.apply_momentum(2, 0.1)
    after = pool.prompt.detach()
    torch.testing.assert_close(after[:, :, 2], 0.9 * before[:, :, 2]
                               + 0.1 * (before[:, :, 0] + before[:, :, 1]) / 2, rtol=0,
                               atol=1e-7)
    for other in (0, 1, 3):
        assert torch.equal(after[:, :, other], before[:, :, other])
    pool.apply_momentum(0, 0.1)  # task 0 has nothing to blend with
    assert torch.equal(pool.prompt.detach()[:, :, 0], before[:, :, 0])
    pool.copy_prompt(2, 3)
    assert torch.equal(pool.prompt.detach()[:, :, 3], pool.prompt.detach()[:, :, 2])


def test_hide_trains_with_momentum_and_ensembles_at_the_end_of_each_task(monkeypatch):
    method = _method("hide")
    m = method.options.prompt_momentum
    calls: list[tuple] = []
    pool = method.model.prompt
    blended, apply_momentum = pool.blended, pool.apply_momentum

    def spy_blended(task, batch_size, momentum):
        calls.append(("blended", task, momentum))
        return blended(task, batch_size, momentum)

    def spy_apply(task, momentum):
        calls.append(("ensemble", task, momentum))
        trained = pool.prompt.detach().clone()
        apply_momentum(task, momentum)
        if task > 0:  # the stored prompt is the hand-computed blend of the trained ones
            want = (1 - m) * trained[:, :, task] + m * trained[:, :, :task].mean(dim=2)
            torch.testing.assert_close(pool.prompt.detach()[:, :, task], want, rtol=0,
                                       atol=1e-6)

    for t in range(2):
        if t == 1:  # the new prompt starts as a copy of the previous one
            pre = pool.prompt.detach()[:, :, 0].clone()
        monkeypatch.setattr(pool, "blended", spy_blended)
        monkeypatch.setattr(pool, "apply_momentum", spy_apply)
        rec = _train_one_task(method, t, monkeypatch)
        assert rec["train_masks"]
        if t == 1:
            assert not torch.equal(pool.prompt.detach()[:, :, 1], pre)  # trained since
    # one epoch of one or more batches per task, then one ensemble per task
    assert {c for c in calls if c[0] == "blended"} == {("blended", 0, 0.0), ("blended", 1, m)}
    assert [c for c in calls if c[0] == "ensemble"] == [("ensemble", 0, m), ("ensemble", 1, m)]


def test_begin_task_initialises_the_new_prompt_from_the_previous_one():
    method = _method("hide")
    pool = method.model.prompt
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    with torch.no_grad():
        pool.prompt[:, :, 0] += 1.0  # "trained"
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    assert torch.equal(pool.prompt[:, :, 1], pool.prompt[:, :, 0])
    assert not torch.equal(pool.prompt[:, :, 2], pool.prompt[:, :, 0])


# ---------------------------------------------------------------------------- resume guards


def test_result_file_without_a_checksum_entry_is_rejected(tmp_path):
    write_result_file(tmp_path, "accuracy_matrix.csv", "after_task,task_0\n0,1.0\n")
    (tmp_path / "metrics.json").write_text("{}")  # written, but never listed
    assert verify_result_file(tmp_path, "accuracy_matrix.csv") is None
    problem = verify_result_file(tmp_path, "metrics.json")
    assert problem is not None and "no entry" in problem
    (tmp_path / "accuracy_matrix.csv").write_text("after_task,task_0\n0,2.0\n")
    assert "does not match" in verify_result_file(tmp_path, "accuracy_matrix.csv")


def test_checkpoint_holding_another_task_than_its_name_is_rejected(tmp_path):
    ckpts = tmp_path / "checkpoints"
    torch_save_atomic(ckpts / "task_0.pt", {"task": 0})
    torch_save_atomic(ckpts / "task_1.pt", {"task": 0})  # valid checksum, wrong content
    t, path, ckpt, problems = _latest_good_checkpoint(tmp_path, num_tasks=3)
    assert (t, path.name, ckpt) == (0, "task_0.pt", {"task": 0})
    assert len(problems) == 1 and "task_1.pt" in problems[0]
    assert (ckpts / "task_1.pt.corrupt").exists() and not (ckpts / "task_1.pt").exists()
    # a checkpoint of a task beyond the run's tasks is not considered at all
    torch_save_atomic(ckpts / "task_5.pt", {"task": 5})
    assert _latest_good_checkpoint(tmp_path, num_tasks=3)[0] == 0


def test_prompt_pool_initialisation_and_gate_scalars():
    shape = (2, 2, 3, 2, 2, 3)
    pool = PrefixPrompt(2, 3, 2, 2, 3, generator=torch.Generator().manual_seed(4))
    want = torch.rand(shape, generator=torch.Generator().manual_seed(4)) * 2.0 - 1.0  # U(-1, 1)
    assert torch.equal(pool.prompt.detach(), want)
    assert torch.equal(pool.act_scale.detach(), torch.ones(2, 2))
    assert (pool.n_layers, pool.pool_size) == (2, 3)
    with torch.no_grad():
        pool.act_scale.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert [float(pool.tau(i).detach()) for i in (0, 1)] == [1.0, 3.0]
    assert [float(pool.alpha(i).detach()) for i in (0, 1)] == [2.0, 4.0]


def test_task_one_blends_with_task_zero_and_legacy_reshape_mixes_the_batch():
    pool = _pool()
    p = pool.prompt.detach().clone()
    got = pool.blended(1, 1, 0.5)[:, 0]
    torch.testing.assert_close(got, 0.5 * p[:, :, 1] + 0.5 * p[:, :, 0], rtol=0, atol=1e-7)
    legacy = PrefixPrompt(2, 3, 2, 2, 3, generator=torch.Generator().manual_seed(1),
                          legacy_kv_reshape=True)
    assert legacy.legacy_kv_reshape is True
    ids = torch.tensor([2, 0, 1])
    selected = legacy.prompt.detach()[:, :, ids]  # (layers, 2, B, L, H, D)
    assert torch.equal(legacy.gather(ids), selected.reshape(2, 3, 2, 2, 2, 3))
    assert not torch.equal(legacy.gather(ids), pool.gather(ids))


@pytest.mark.parametrize("name, after_first, trainable", [
    ("norga", False, [True, False, False]), ("norga", True, [True, True, True]),
    ("hide", True, [False, False, False]),
])
def test_gate_scalars_train_only_where_the_schedule_says(name, after_first, trainable):
    """NoRGa's (tau, alpha) train with the first task's prompt and freeze afterwards unless
    gate_trainable_after_first_task; HiDe-Prompt's linear gate has none to train."""
    method = _method(name, gate_trainable_after_first_task=after_first)
    scale = method.model.prompt.act_scale
    for t, want in enumerate(trainable):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
        groups = method.wtp_optimizer.param_groups
        in_optimizer = any(p is scale for p in groups[0]["params"])
        assert (scale.requires_grad, in_optimizer) == (want, want), t
        head = {id(p) for p in (*method.model.head.parameters(),
                                *method.model.fc_norm.parameters())}
        assert {id(p) for p in groups[1]["params"]} == head
        assert groups[0]["params"][0] is method.model.prompt.prompt
