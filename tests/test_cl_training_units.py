"""Unit tests of the shared method machinery (``cl/methods/training.py`` and
``cl/methods/base.py``): the training step, the epoch meter's log records, the Gaussian
alignment loop's sample counts, batches, shuffling, scheduler steps and log records, the masks
and checkpoint helpers of :class:`FrozenViTMethod`, and the :class:`Method` interface and
registry. Everything runs on tiny hand-built tensors, without a ViT.
"""

from __future__ import annotations

import dataclasses
import typing
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cl.methods.training as training_module
from cl.config import resolve_config
from cl.methods import Task
from cl.methods.base import Method, _no_log, _no_progress, available_methods, get_method
from cl.methods.base import register_method as register
from cl.methods.training import EpochMeter, FrozenViTMethod, optimizer_step
from cl.numerics import NonFiniteLossError
from cl.options import MethodOptions
from cl.stats.gaussian import GaussianClassStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 7 classes in 3 tasks, shuffled ids; class 6 belongs to no task
SCHEDULE = [[4, 1], [0, 5, 2], [3]]
NUM_CLASSES = 7


# ---------------------------------------------------------------------------- optimizer_step


def _quadratic(w: nn.Parameter, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((w - target) ** 2).sum()


def test_optimizer_step_takes_one_plain_gradient_step_from_fresh_gradients():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    stale = nn.Parameter(torch.tensor([3.0]))  # not in the loss, holds an old gradient
    w.grad = torch.tensor([100.0, 100.0])
    stale.grad = torch.tensor([7.0])
    opt = torch.optim.SGD([w, stale], lr=0.5)
    loss = _quadratic(w, torch.tensor([0.0, 0.0]))  # gradient = w
    optimizer_step(opt, loss, phase="p", task=0, epoch=0, step=0)
    # w - 0.5 * w: the stale 100s were zeroed before backward
    assert torch.equal(w.detach(), torch.tensor([0.5, -1.0]))
    # set_to_none: a parameter outside the loss has no gradient afterwards and is untouched
    assert stale.grad is None and torch.equal(stale.detach(), torch.tensor([3.0]))


@pytest.mark.parametrize("clip, scale", [(0.0, 1.0), (1.0, 0.2), (10.0, 1.0)])
def test_optimizer_step_clips_the_gradient_norm_only_when_asked(clip: float, scale: float):
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # gradient (3, 4): norm 5
    opt = torch.optim.SGD([w], lr=1.0)
    optimizer_step(opt, _quadratic(w, torch.zeros(2)), phase="p", task=0, epoch=0, step=0,
                   clip_grad=clip, params=[w])
    want = torch.tensor([3.0, 4.0]) * (1 - scale)  # clip 1: gradient (0.6, 0.8)
    torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_optimizer_step_refuses_a_non_finite_loss_before_touching_the_parameters(bad: float):
    w = nn.Parameter(torch.tensor([1.0]))
    w.grad = torch.tensor([2.0])
    opt = torch.optim.SGD([w], lr=1.0)
    with pytest.raises(NonFiniteLossError) as info:
        optimizer_step(opt, (w * bad).sum(), phase="tap", task=3, epoch=4, step=5)
    assert (info.value.phase, info.value.task, info.value.epoch, info.value.step) == (
        "tap", 3, 4, 5)
    assert "tap training at task 3, epoch 4, step 5" in str(info.value)
    assert torch.equal(w.detach(), torch.tensor([1.0])) and torch.equal(w.grad, torch.tensor([2.0]))


# ---------------------------------------------------------------------------- EpochMeter


def test_epoch_meter_record_holds_sample_weighted_means_and_accuracy():
    meter = EpochMeter("loss", "reg")
    # batch 1: 3 samples, 2 correct; batch 2: 1 sample, 1 correct
    meter.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 1.0]]), torch.tensor([0, 1, 1]),
                 loss=torch.tensor(1.0), reg=torch.tensor(0.5, requires_grad=True))
    meter.update(torch.tensor([[0.0, 3.0]]), torch.tensor([1]), loss=torch.tensor(3.0),
                 reg=None)
    record = meter.record("wtp", 2, 7, lr=0.25)
    assert list(record) == ["phase", "task", "epoch", "loss", "reg", "train_acc", "lr"]
    assert record == {"phase": "wtp", "task": 2, "epoch": 7, "loss": (3 * 1.0 + 3.0) / 4,
                      "reg": 3 * 0.5 / 4, "train_acc": 75.0, "lr": 0.25}
    assert (meter.correct, meter.total) == (3, 4)


def test_epoch_meter_defaults_to_one_loss_term_and_an_empty_epoch_is_zero():
    meter = EpochMeter()
    assert meter.sums == {"loss": 0.0} and (meter.correct, meter.total) == (0, 0)
    assert meter.record("tii", 0, 0) == {"phase": "tii", "task": 0, "epoch": 0, "loss": 0.0,
                                         "train_acc": 0.0}
    meter.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]),
                 loss=torch.tensor(0.5))
    assert meter.record("tii", 1, 2) == {"phase": "tii", "task": 1, "epoch": 2, "loss": 0.5,
                                         "train_acc": 50.0}
    single = EpochMeter()
    single.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), loss=torch.tensor(0.25))
    assert single.record("tii", 0, 0) == {"phase": "tii", "task": 0, "epoch": 0, "loss": 0.25,
                                          "train_acc": 100.0}


# ---------------------------------------------------------------------------- FrozenViTMethod


class _Probe(FrozenViTMethod):
    """The smallest concrete FrozenViTMethod: fixed logits, a sample generator."""

    name = "probe"

    def _build(self, vit: nn.Module) -> None:
        self.built_with = vit
        self.sample_gen = torch.Generator().manual_seed(11)
        self.fixed = torch.arange(NUM_CLASSES, dtype=torch.float32)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(x.shape[0], -1).clone()

    def begin_task(self, task: Task) -> None:
        self.task, self.task_index = task, task.index

    def train_task(self, loader) -> None:
        return None

    def end_task(self, task: Task) -> None:
        return None

    def state_dict(self) -> dict:
        return {"method": self.name, "task_index": self.task_index}

    def load_state_dict(self, state: dict) -> None:
        self._check_checkpoint(state)
        self._restore_task(state)


def _probe_config():
    """A run config with the probe's own (empty) options."""
    return dataclasses.replace(resolve_config("synthetic", "hide"),
                               method_options=MethodOptions())


def _probe(**kwargs) -> _Probe:
    return _Probe(_probe_config(), "vit", NUM_CLASSES, SCHEDULE, **kwargs)


def test_frozen_vit_method_construction():
    records: list[dict] = []
    method = _probe(log=records.append)
    assert method.built_with == "vit" and method.options == MethodOptions()
    assert method.device == torch.device("cpu") and method.num_classes == NUM_CLASSES
    assert method.task_classes == SCHEDULE and method.task_classes is not SCHEDULE
    assert method.class_to_task.tolist() == [1, 0, 1, 2, 0, 1, -1]
    assert method.task is None and method.task_index == -1
    method.log({"a": 1})
    assert records == [{"a": 1}]
    tensor_ids = _Probe(_probe_config(), None, NUM_CLASSES,
                        [torch.tensor(c) for c in SCHEDULE])
    assert tensor_ids.task_classes == SCHEDULE
    assert all(type(c) is int for cs in tensor_ids.task_classes for c in cs)


def test_frozen_vit_method_refuses_unknown_method_options():
    cfg = _probe_config()
    object.__setattr__(cfg, "method_options", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown key"):
        _Probe(cfg, None, NUM_CLASSES, SCHEDULE)


def test_predict_masks_to_the_tasks_begun_and_oracle_to_each_samples_task():
    method = _probe()
    x = torch.zeros(3, 1)
    for t, seen in enumerate([[1, 4], [0, 1, 2, 4, 5], [0, 1, 2, 3, 4, 5]]):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
        out = method.predict(x)
        for row in out:
            assert torch.isfinite(row).nonzero().flatten().tolist() == seen
            assert torch.equal(row[seen], torch.tensor(seen, dtype=torch.float32))
    out = method.predict_oracle(x, torch.tensor([2, 0, 1]))
    for row, task in zip(out, [2, 0, 1], strict=True):
        assert torch.isfinite(row).nonzero().flatten().tolist() == sorted(SCHEDULE[task])
    logits, tasks = method.predict_with_tasks(x)  # Method's default: no task prediction
    assert tasks is None and torch.equal(logits, method.predict(x))


def test_logits_must_be_defined_by_a_single_pass_method():
    method = _probe()
    with pytest.raises(NotImplementedError, match="^_Probe must define _logits or predict$"):
        FrozenViTMethod._logits(method, torch.zeros(1, 1))


def test_batches_move_to_the_device_number_the_steps_and_label_the_progress_bar():
    descs: list[str] = []

    def progress(iterable, desc):
        descs.append(desc)
        return iterable

    method = _probe(progress=progress)
    loader = [(torch.ones(2, 1), torch.tensor([0, 1])), (torch.zeros(1, 1), torch.tensor([2]))]
    got = list(method._batches(loader, "task 3 TII epoch 1"))
    assert descs == ["task 3 TII epoch 1"]
    assert [s for s, _, _ in got] == [0, 1]
    assert torch.equal(got[1][1], torch.zeros(1, 1)) and got[1][2].tolist() == [2]


def test_batches_masks_and_task_map_follow_the_method_device():
    """On the meta device (no data, no compute): CPU batches are moved, masks are built there."""
    method = _probe(device="meta")
    assert method.device == torch.device("meta") and method.class_to_task.device.type == "meta"
    (_, x, y), = method._batches([(torch.ones(2, 1), torch.tensor([0, 1]))], "d")
    assert (x.device.type, y.device.type) == ("meta", "meta")
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    assert method._seen_mask().device.type == "meta"
    out = method._restrict_to_tasks(torch.zeros(2, NUM_CLASSES, device="meta"),
                                    torch.tensor([0, 2]))
    assert out.device.type == "meta" and out.shape == (2, NUM_CLASSES)


def test_checkpoint_guard_and_task_restore():
    method = _probe()
    with pytest.raises(ValueError, match=r"^checkpoint is for method 'hide', not 'probe'$"):
        method.load_state_dict({"method": "hide", "task_index": 0})
    assert method._restore_task({"task_index": -1}) is False
    assert method.task is None and method.task_index == -1
    assert method._restore_task({"task_index": 1}) is True
    assert method.task_index == 1 and method.task == Task(1, SCHEDULE[1], SCHEDULE)
    fresh = _probe()
    fresh.load_state_dict(method.state_dict())
    assert fresh.task_index == 1 and fresh.task.classes == [0, 5, 2]


# ---------------------------------------------------------------------------- alignment loop


class _CountingScheduler:
    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1


def _separated_stats() -> GaussianClassStats:
    """Class c sits at 10 * c on the first coordinate (unit-ish spread), dim 3."""
    stats = GaussianClassStats(3)
    gen = torch.Generator().manual_seed(3)
    for c in range(NUM_CLASSES):
        x = 0.1 * torch.randn(20, 3, generator=gen)
        x[:, 0] += 10.0 * c
        stats.update(x, torch.full((20,), c))
    return stats


@pytest.mark.parametrize("per_iteration", [False, True])
def test_alignment_loop_draws_shuffles_batches_and_logs_as_specified(per_iteration, monkeypatch):
    records: list[dict] = []
    method = _probe(log=records.append)
    stats = _separated_stats()
    task = Task(2, SCHEDULE[2], SCHEDULE)  # seen: 4 1 0 5 2 3, old: 5 classes
    draws: list[tuple] = []
    draw = stats.sample

    def sample(classes, n, gen):
        assert gen is method.sample_gen
        draws.append((list(classes), n))
        return draw(classes, n, gen)

    monkeypatch.setattr(stats, "sample", sample)
    ce_calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def cross_entropy(logits, y):
        ce_calls.append((logits.detach().clone(), y.clone()))
        return F.cross_entropy(logits, y)

    monkeypatch.setattr(training_module, "F", SimpleNamespace(cross_entropy=cross_entropy))
    steps: list[dict] = []
    step = training_module.optimizer_step

    def spy_step(optimizer, loss, **kwargs):
        steps.append({**kwargs, "loss": float(loss.detach())})
        step(optimizer, loss, **kwargs)

    monkeypatch.setattr(training_module, "optimizer_step", spy_step)
    lin = nn.Linear(3, NUM_CLASSES)
    with torch.no_grad():  # logits = 1st coordinate * class id: the right class scores highest
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[:, 0] = torch.arange(NUM_CLASSES) - 3.0
    inputs: list[torch.Tensor] = []

    def forward(x):
        inputs.append(x)
        return lin(x)

    opt = torch.optim.SGD(lin.parameters(), lr=0.0)
    sched = _CountingScheduler()
    epochs, n = 2, 4
    method._align_on_gaussians(forward, opt, sched, stats=stats, task=task, epochs=epochs,
                               n_per_class=n, phase="tap", step_per_iteration=per_iteration)
    seen, n_old = task.seen_classes, len(task.old_classes)
    assert (seen, n_old) == ([4, 1, 0, 5, 2, 3], 5)
    assert draws == [(seen, n)] * epochs
    assert len(inputs) == len(ce_calls) == len(steps) == epochs * n_old
    assert sched.steps == (epochs * n_old if per_iteration else epochs)
    for e in range(epochs):
        labels = torch.cat([y for _, y in ce_calls[e * n_old:(e + 1) * n_old]])
        assert labels.shape == (n_old * n,)  # n_old batches of n: the tail is unused
        assert not torch.equal(labels, labels.sort().values)  # shuffled
        counts = torch.bincount(labels, minlength=NUM_CLASSES)
        assert counts[6] == 0 and int(counts.max()) <= n  # at most the n drawn per class
    for x, (logits, y) in zip(inputs, ce_calls, strict=True):
        assert x.shape == (n, 3)
        # features stay with their labels through the shuffle: class c sits near 10 c
        assert torch.equal(torch.round(x[:, 0] / 10).long(), y)
        assert torch.isinf(logits[:, 6]).all() and torch.isfinite(logits[:, seen]).all()
    assert [(s["phase"], s["task"], s["epoch"], s["step"]) for s in steps] == [
        ("tap", 2, e, i) for e in range(epochs) for i in range(n_old)]
    assert [list(r) for r in records] == [["phase", "task", "epoch", "loss"]] * epochs
    for e, record in enumerate(records):
        losses = [s["loss"] for s in steps[e * n_old:(e + 1) * n_old]]
        want = sum(F.cross_entropy(lg, y).item() for lg, y in ce_calls[e * n_old:(e + 1) * n_old])
        assert (record["phase"], record["task"], record["epoch"]) == ("tap", 2, e)
        assert record["loss"] == pytest.approx(sum(losses) / n_old, rel=1e-6)
        assert record["loss"] == pytest.approx(want / n_old, rel=1e-5)


def test_alignment_loop_of_the_first_task_has_no_iterations_but_logs_each_epoch(monkeypatch):
    records: list[dict] = []
    method = _probe(log=records.append)
    stats = _separated_stats()
    sched = _CountingScheduler()
    lin = nn.Linear(3, NUM_CLASSES)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    before = [p.detach().clone() for p in lin.parameters()]
    method._align_on_gaussians(lin, opt, sched, stats=stats, task=Task(0, SCHEDULE[0], SCHEDULE),
                               epochs=3, n_per_class=2, phase="tii_ca", step_per_iteration=True)
    assert records == [{"phase": "tii_ca", "task": 0, "epoch": e, "loss": 0.0} for e in range(3)]
    assert sched.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters(), strict=True))


def test_alignment_loop_with_one_old_class_logs_the_loss_of_its_one_iteration(monkeypatch):
    records: list[dict] = []
    method = _probe(log=records.append)
    losses: list[float] = []
    step = training_module.optimizer_step

    def spy_step(optimizer, loss, **kwargs):
        losses.append(float(loss.detach()))
        step(optimizer, loss, **kwargs)

    monkeypatch.setattr(training_module, "optimizer_step", spy_step)
    lin = nn.Linear(3, NUM_CLASSES)
    method._align_on_gaussians(lin, torch.optim.SGD(lin.parameters(), lr=0.0),
                               _CountingScheduler(), stats=_separated_stats(),
                               task=Task(1, [3], [[6], [3]]), epochs=1, n_per_class=2,
                               phase="tap", step_per_iteration=False)
    assert len(losses) == 1 and records[0]["loss"] == pytest.approx(losses[0], rel=1e-6)


def test_alignment_loop_trains_with_the_optimizer_and_the_same_generator_draws_the_same():
    def run(seed: int) -> tuple[list[float], torch.Tensor]:
        records: list[dict] = []
        method = _probe(log=records.append)
        method.sample_gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed + 100)  # the global RNG must play no part
        lin = nn.Linear(3, NUM_CLASSES)
        with torch.no_grad():
            lin.weight.fill_(0.01)
            lin.bias.zero_()
        opt = torch.optim.SGD(lin.parameters(), lr=1e-3)
        method._align_on_gaussians(lin, opt, _CountingScheduler(), stats=_separated_stats(),
                                   task=Task(1, SCHEDULE[1], SCHEDULE), epochs=3,
                                   n_per_class=3, phase="tap", step_per_iteration=False)
        return [r["loss"] for r in records], lin.weight.detach().clone()

    losses_a, w_a = run(1)
    losses_b, w_b = run(1)
    losses_c, _ = run(2)
    assert losses_a == losses_b and torch.equal(w_a, w_b)
    assert losses_a != losses_c
    assert losses_a[-1] < losses_a[0]  # the optimizer really trains the head


# ---------------------------------------------------------------------------- Method / registry


def test_method_defaults():
    assert list(_no_progress([1, 2], "x")) == [1, 2] and _no_log({"a": 1}) is None
    method = _probe()
    assert method.progress is _no_progress and method.log is _no_log
    assert not hasattr(method, "before_alignment")  # the hook comes with the task
    method._notify_before_alignment(Task(0, [1], [[1]]))  # nothing to call: no error
    seen: list[Task] = []
    task = Task(1, SCHEDULE[1], SCHEDULE, before_alignment=seen.append)
    method._notify_before_alignment(task)
    assert seen == [task] and seen[0] is task
    assert task == Task(1, SCHEDULE[1], SCHEDULE)  # the hook is not part of the task's identity
    assert Method.predict_oracle(method, torch.zeros(1, 1), torch.zeros(1)) is None
    assert method.expert_selection() is None and method.run_files() == {}


@dataclasses.dataclass
class _ProbeOptions(MethodOptions):
    alpha: int = 1
    mode: typing.Literal["a", "b"] = "a"


class _Options(Method):
    options_type = _ProbeOptions


def test_resolve_options_merges_defaults_and_refuses_unknown_keys_and_values():
    _Options.name = "opt-probe"
    assert _Options.resolve_options({}) == _ProbeOptions(alpha=1, mode="a")
    assert _Options.resolve_options({"mode": "b"}) == _ProbeOptions(alpha=1, mode="b")
    assert _ProbeOptions() == _ProbeOptions(alpha=1, mode="a")  # not modified
    with pytest.raises(ValueError) as info:
        _Options.resolve_options({"zeta": 1, "beta": 2})
    assert str(info.value) == ("method_options: unknown key(s) beta, zeta for opt-probe; "
                               "allowed: alpha, mode")
    with pytest.raises(ValueError) as info:
        _Options.resolve_options({"mode": "c"})
    assert str(info.value) == "method_options.mode: must be one of a, b; got 'c'"
    with pytest.raises(ValueError) as info:
        _Options.resolve_options({"alpha": "1"})
    assert str(info.value) == "method_options.alpha: expected an integer, got '1'"
    with pytest.raises(ValueError) as info:
        _Options.resolve_options(MethodOptions())  # another method's (here: the base) options
    assert "are not the options of opt-probe" in str(info.value)
    with pytest.raises(ValueError) as info:
        _Probe.resolve_options({"x": 1})
    assert str(info.value) == ("method_options: unknown key(s) x for probe; allowed: "
                               "none (probe has no options)")


def test_registry_registers_names_refuses_clashes_and_lists_the_allowed():
    builtin = available_methods()
    assert builtin == sorted(builtin) and {"hide", "norga"} <= set(builtin)
    assert get_method("hide").name == "hide"

    class Tmp(_Probe):
        pass

    try:
        assert register("zz-tmp-probe")(Tmp) is Tmp
        assert Tmp.name == "zz-tmp-probe" and get_method("zz-tmp-probe") is Tmp
        assert register("zz-tmp-probe")(Tmp) is Tmp  # the same class again: fine
        assert available_methods()[-1] == "zz-tmp-probe"

        class Other(_Probe):
            pass

        with pytest.raises(ValueError) as info:
            register("zz-tmp-probe")(Other)
        assert str(info.value) == "method 'zz-tmp-probe' is already registered"
        assert get_method("zz-tmp-probe") is Tmp
    finally:
        import cl.methods.base as base_module

        base_module._METHODS.pop("zz-tmp-probe", None)
    with pytest.raises(ValueError) as info:
        get_method("nope")
    assert str(info.value) == f"method must be one of {', '.join(builtin)}; got 'nope'"
