"""Unit tests of ``cl/methods/losses.py`` and ``cl/methods/schedules.py`` against hand-computed
values: the class masks, the ``-inf`` masking, the WTP contrastive regulariser
(docs/cl-background.md#wtp, temperature 0.8) and the epoch schedules with the original code's
one-epoch lag (docs/cl-background.md#training-conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cl.methods.losses import class_mask, contrastive_regulariser, masked_logits
from cl.methods.schedules import build_epoch_scheduler

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- losses


def test_class_mask_marks_exactly_the_allowed_classes() -> None:
    mask = class_mask(6, [4, 1, 1], CPU)
    assert mask.dtype == torch.bool and mask.shape == (6,)
    assert mask.tolist() == [False, True, False, False, True, False]
    # no allowed class at all: an all-False mask (an empty list is not a float index)
    assert class_mask(3, [], CPU).tolist() == [False, False, False]


def test_class_mask_lives_on_the_given_device() -> None:
    mask = class_mask(5, [2], torch.device("meta"))
    assert mask.device.type == "meta" and mask.dtype == torch.bool and mask.shape == (5,)


def test_masked_logits_sets_only_the_disallowed_classes_to_minus_infinity() -> None:
    logits = torch.tensor([[1.0, -2.0, 3.0], [0.5, 7.0, -1.0]])
    out = masked_logits(logits, torch.tensor([True, False, True]))
    assert out.tolist() == [[1.0, -math.inf, 3.0], [0.5, -math.inf, -1.0]]
    assert logits[0, 1] == -2.0  # the input is not modified


def _contrastive_by_hand(features: np.ndarray, means: np.ndarray, temperature: float) -> float:
    stacked = np.concatenate([means, features])
    sims = stacked @ stacked.T / temperature
    total = 0.0
    for i, row in enumerate(sims):
        total += -(row[i] - math.log(np.exp(row).sum()))
    return total / len(stacked)


def test_contrastive_regulariser_against_a_hand_computed_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, 3, generator=g)
    old_means = torch.randn(2, 3, generator=g, dtype=torch.float64)  # converted to features'
    value = contrastive_regulariser(features, old_means)
    assert value.dtype == torch.float32 and value.shape == ()
    want = _contrastive_by_hand(features.double().numpy(), old_means.float().double().numpy(),
                                0.8)  # docs/cl-background.md#wtp: S = M M^T / 0.8
    assert float(value) == pytest.approx(want, rel=1e-5)
    other = contrastive_regulariser(features, old_means, temperature=2.0)
    assert float(other) == pytest.approx(
        _contrastive_by_hand(features.double().numpy(), old_means.float().numpy(), 2.0),
        rel=1e-5)
    # gradients reach the features only (the means are statistics)
    feats = features.clone().requires_grad_(True)
    contrastive_regulariser(feats, old_means).backward()
    assert feats.grad is not None and torch.count_nonzero(feats.grad) > 0


def test_contrastive_regulariser_runs_on_the_features_device() -> None:
    features = torch.zeros(4, 3, device="meta")
    value = contrastive_regulariser(features, torch.zeros(2, 3, dtype=torch.float64))
    assert value.device.type == "meta" and value.dtype == torch.float32


# ---------------------------------------------------------------------------- schedules


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs_after_each_epoch(optimizer, scheduler, epochs: int) -> list[list[float]]:
    """The learning rates every group runs at in epochs 0 .. epochs - 1."""
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_constant_schedule_is_no_scheduler() -> None:
    assert build_epoch_scheduler(_optimizer(0.1), "constant", 10) is None


def test_step_schedule_with_the_one_epoch_lag() -> None:
    """x0.1 every 30 epochs: epochs 0-30 at the base rate, 31-60 at x0.1, 61- at x0.01."""
    opt = _optimizer(0.5, 0.05)
    sched = build_epoch_scheduler(opt, "step", 80)
    lrs = _lrs_after_each_epoch(opt, sched, 70)
    for epoch, (lr, head) in enumerate(lrs):
        factor = 1.0 if epoch <= 30 else (0.1 if epoch <= 60 else 0.01)
        assert lr == pytest.approx(0.5 * factor, rel=1e-12), epoch
        assert head == pytest.approx(0.05 * factor, rel=1e-12), epoch


@pytest.mark.parametrize("epochs", [4, 7])
def test_cosine_schedule_per_group_with_the_one_epoch_lag(epochs: int) -> None:
    """Epoch 0 and 1 at the base rate, epoch e >= 1 at 1e-5 + (b - 1e-5)(1 + cos(pi (e-1)/E))/2
    with each group's own base b."""
    bases = (0.3, 0.02)
    opt = _optimizer(*bases)
    sched = build_epoch_scheduler(opt, "cosine", epochs)
    lrs = _lrs_after_each_epoch(opt, sched, epochs + 2)
    for epoch, row in enumerate(lrs):
        for base, lr in zip(bases, row, strict=True):
            if epoch == 0:
                want = base
            else:
                t = epoch - 1
                want = 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * t / epochs))
            assert lr == pytest.approx(want, rel=1e-12), (epoch, base)
    assert lrs[epochs + 1][0] == pytest.approx(1e-5, rel=1e-9)  # the end of the cycle


def test_cosine_schedule_with_zero_epochs_spans_one() -> None:
    opt = _optimizer(0.4)
    sched = build_epoch_scheduler(opt, "cosine", 0)
    lrs = [lr for (lr,) in _lrs_after_each_epoch(opt, sched, 3)]
    assert lrs == pytest.approx([0.4, 0.4, 1e-5], rel=1e-12)


def test_unknown_scheduler_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(ValueError) as info:
        build_epoch_scheduler(_optimizer(0.1), "linear", 5)
    assert str(info.value) == "scheduler must be one of constant, step, cosine; got 'linear'"
