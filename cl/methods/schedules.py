"""Epoch-level learning-rate schedules with the original code's one-epoch lag.

The original engine calls ``scheduler.step(epoch)`` *after* epoch ``epoch``, so epoch ``e + 1``
runs at ``f(e)`` and epoch 0 at the base rate (docs/cl-background.md#training-conventions and
#scheduler-lag).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from norga.choices import ChoiceError

MIN_LR = 1e-5
DECAY_EPOCHS = 30
DECAY_RATE = 0.1


def build_epoch_scheduler(optimizer: Optimizer, kind: str, epochs: int) -> LambdaLR | None:
    """``constant`` -> ``None``; ``step`` (x0.1 every 30 epochs); ``cosine`` (to 1e-5)."""
    if kind == "constant":
        return None
    if kind == "step":

        def step(k: int) -> float:
            return DECAY_RATE ** ((k - 1) // DECAY_EPOCHS) if k > 0 else 1.0

        return LambdaLR(optimizer, step)
    if kind == "cosine":
        lambdas = []
        for group in optimizer.param_groups:
            base = group["lr"]

            def cosine(k: int, base: float = base) -> float:
                if k == 0:
                    return 1.0
                t = k - 1
                lr = MIN_LR + 0.5 * (base - MIN_LR) * (1 + math.cos(math.pi * t / max(epochs, 1)))
                return lr / base

            lambdas.append(cosine)
        return LambdaLR(optimizer, lambdas)
    raise ChoiceError("scheduler", kind, ("constant", "step", "cosine"))
