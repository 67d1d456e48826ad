"""Numerical fault detection for training loops."""

from __future__ import annotations

import torch
import torch.distributed as dist


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names phase, task, epoch and step."""

    def __init__(self, phase: str, task: int, epoch: int, step: int, value: float) -> None:
        self.phase, self.task, self.epoch, self.step, self.value = phase, task, epoch, step, value
        super().__init__(f"non-finite loss ({value}) in {phase} training at task {task}, "
                         f"epoch {epoch}, step {step}")


def check_finite_loss(loss: torch.Tensor, *, phase: str, task: int, epoch: int,
                      step: int) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN or +-inf (on any rank).

    Under ``torch.distributed`` the decision is taken jointly (an all-reduce of one flag), so
    every rank stops at the same step instead of the healthy ones waiting forever for the
    gradients of the failed one.
    """
    finite = bool(torch.isfinite(loss.detach()).all())
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([1 if finite else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    if not finite:
        raise NonFiniteLossError(phase, task, epoch, step, float(loss.detach().float().mean()))
