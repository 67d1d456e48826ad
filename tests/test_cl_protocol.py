"""Protocol parity with the official HiDe-Prompt / NoRGa code (issue 16, point 1).

Each test compares against a hand-computed value or the official formula: gradient clipping of
the TII optimiser step, the ``--task_inc`` TIL accuracy, the before-alignment matrix, strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cl.backbones import build_backbone
from cl.config import resolve_config
from cl.data.registry import build_benchmark
from cl.methods import get_method
from cl.methods.base import Task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hide(seed: int = 5, **overrides):
    cfg = resolve_config("synthetic", "hide", overrides={"seed": seed, "batch_size": 8,
                                                          "tii_epochs": 2, **overrides})
    bench = build_benchmark("synthetic", seed=seed, num_classes=4, num_tasks=2,
                            train_per_class=6, test_per_class=4)
    vit = build_backbone("vit-tiny-random", img_size=bench.image_size, seed=seed).model
    method = get_method("hide")(cfg, vit, bench.num_classes, bench.task_classes)
    return method, bench


def _tii_grad_norms(clip: float) -> list[float]:
    """Gradient norms of the TII parameters at every optimiser step of task 0 (after any
    clipping), with the head scaled up so that the raw norms are far above 1."""
    method, bench = _hide(tii_clip_grad=clip)
    with torch.no_grad():
        method.tii.head.weight.mul_(200.0)
    classes = bench.task_classes[0]
    idx = bench.train.indices_of(classes)
    x = torch.stack([bench.train.dataset[int(i)][0] for i in idx])
    y = torch.tensor([bench.train.dataset[int(i)][1] for i in idx])
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    method.begin_task(Task(0, classes, bench.task_classes))
    norms: list[float] = []
    step = method.tii_optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in method.tii.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    method.tii_optimizer.step = recording_step
    method._train_tii(loader)
    return norms


def test_tii_optimiser_step_is_clipped_at_clip_grad() -> None:
    raw = _tii_grad_norms(clip=0.0)
    assert len(raw) == 2 * 2 and max(raw) > 5.0, raw  # 2 epochs x 2 batches, big gradients
    clipped = _tii_grad_norms(clip=1.0)
    assert len(clipped) == len(raw)
    # clip_grad_norm_ rescales by max_norm / (norm + 1e-6): the norm is 1 up to that epsilon
    for n in clipped:
        assert n == pytest.approx(1.0, abs=1e-5), clipped
    assert resolve_config("synthetic", "hide").tii_clip_grad == 1.0  # the official value
