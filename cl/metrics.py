"""Continual-learning metrics from an accuracy matrix (docs/cl-background.md#metrics).

Orientation used throughout: ``acc[t, i]`` is the accuracy (percent) on task ``i``'s test set
after training task ``t`` -- one row per finished task, like ``accuracy_matrix.csv``. Entries with
``i > t`` are ``nan``. (docs/cl-background.md#metrics writes the same quantity as ``A[i, t]``.)
"""

from __future__ import annotations

import numpy as np


def _square(acc: np.ndarray) -> np.ndarray:
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T, got shape {a.shape}")
    return a


def final_average_accuracy(acc: np.ndarray) -> float:
    """FA: mean of the last row, tasks weighted equally."""
    a = _square(acc)
    return float(np.mean(a[-1]))


def cumulative_average_accuracy(acc: np.ndarray) -> float:
    """CA: mean over t of the average accuracy on tasks ``0..t`` after task ``t``."""
    a = _square(acc)
    return float(np.mean([np.mean(a[t, : t + 1]) for t in range(a.shape[0])]))


def forgetting(acc: np.ndarray) -> float:
    """FM: mean over ``i < T-1`` of ``max_{t >= i} acc[t, i] - acc[T-1, i]`` (0 for T = 1)."""
    a = _square(acc)
    T = a.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([np.max(a[i:, i]) - a[-1, i] for i in range(T - 1)]))


def backward_transfer(acc: np.ndarray) -> float:
    """Mean over ``i < T-1`` of ``acc[T-1, i] - acc[i, i]`` (0 for T = 1)."""
    a = _square(acc)
    T = a.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([a[-1, i] - a[i, i] for i in range(T - 1)]))


def summarize(acc: np.ndarray) -> dict[str, float]:
    """FA, CA, FM and backward transfer of a full accuracy matrix."""
    return {
        "FA": final_average_accuracy(acc),
        "CA": cumulative_average_accuracy(acc),
        "FM": forgetting(acc),
        "BWT": backward_transfer(acc),
    }
