"""Class order and class-to-task split shared by every benchmark (docs/cl-background.md#splits).

The one implementation used by the offline benchmarks (synthetic, digits) and the real-image
ones (CIFAR-100, ImageNet-R, CUB-200, 5-Datasets' dataset order), re-exported by
:mod:`cl.data.realdata`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np

ClassOrder = Literal["seeded", "standard"]


def class_order(num_classes: int, seed: int, order: ClassOrder = "seeded") -> list[int]:
    """Order in which classes are assigned to tasks.

    ``"seeded"`` reproduces the NoRGa / HiDe code exactly: Python's ``random`` seeded with
    ``seed`` shuffles ``list(range(num_classes))`` (a private ``random.Random`` is used, so the
    global RNG is untouched; the sequence is the same). ``"standard"`` is the natural order.
    """
    labels = list(range(num_classes))
    if order == "seeded":
        random.Random(seed).shuffle(labels)
    elif order != "standard":
        raise ValueError(f"class order must be 'seeded' or 'standard'; got {order!r}")
    return labels


def split_into_tasks(order: Sequence[int], num_tasks: int) -> list[list[int]]:
    """Consecutive chunks of ``ceil(C / num_tasks)`` classes (docs/cl-background.md#splits).

    Every class lands in exactly one task; when ``C`` is not a multiple of ``num_tasks`` the
    last task is smaller (10 classes, 4 tasks: 3, 3, 3, 1). A split that would leave a task
    empty (10 classes, 6 tasks: chunks of 2 fill only 5 tasks) is refused.
    """
    if not 1 <= num_tasks <= len(order):
        raise ValueError(f"num_tasks must be in [1, {len(order)}], got {num_tasks}")
    per_task = math.ceil(len(order) / num_tasks)
    tasks = [list(order[t * per_task:(t + 1) * per_task]) for t in range(num_tasks)]
    if not tasks[-1]:
        raise ValueError(f"{len(order)} classes in chunks of ceil({len(order)}/{num_tasks}) = "
                         f"{per_task} cannot fill {num_tasks} tasks; choose num_tasks with "
                         f"ceil(C/num_tasks) * (num_tasks - 1) < C")
    return tasks


def array_sha256(*arrays: np.ndarray) -> str:
    """SHA-256 of the raw bytes of ``arrays`` (the checksum of generated data)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()
