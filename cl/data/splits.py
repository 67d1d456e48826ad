"""Class order and task split shared by the offline benchmarks."""

from __future__ import annotations

import math
import random

import numpy as np


def seeded_class_order(num_classes: int, seed: int) -> list[int]:
    """Class order for ``seed``: ``random.Random(seed).shuffle(range(C))``.

    Identical to the original code's ``random.seed(seed); random.shuffle(labels)`` (spec 3.1),
    without touching the global ``random`` state.
    """
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    return order


def split_into_tasks(order: list[int], num_tasks: int) -> list[list[int]]:
    """Consecutive chunks of ``ceil(C / T)`` classes; the last task may be smaller."""
    if num_tasks <= 0 or num_tasks > len(order):
        raise ValueError(f"num_tasks must be in [1, {len(order)}], got {num_tasks}")
    per_task = math.ceil(len(order) / num_tasks)
    tasks = [order[t * per_task:(t + 1) * per_task] for t in range(num_tasks)]
    if any(len(t) == 0 for t in tasks):
        raise ValueError(f"{len(order)} classes cannot fill {num_tasks} tasks")
    return tasks


def array_sha256(*arrays: np.ndarray) -> str:
    """SHA-256 of the raw bytes of ``arrays`` (the checksum of generated data)."""
    import hashlib

    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()
