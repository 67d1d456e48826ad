"""Small, explicit aggregations shared by the plots and the tables.

Kept apart from the plotting code so that tests can check the plotted numbers against an
independent computation and so that tables and figures agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class QuantileCurve:
    """Per-n summary of a loss over replicates: median and inter-quartile range."""

    n: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    count: np.ndarray


def positive_finite(values: Iterable[float]) -> np.ndarray:
    """The values that can be drawn on a log axis (finite and > 0)."""
    arr = np.asarray(list(values), dtype=float)
    return arr[np.isfinite(arr) & (arr > 0)]


def quantile_curve(records: Sequence[Mapping[str, Any]], key: str) -> QuantileCurve:
    """Median and IQR of ``record[key]`` per ``record["n"]`` (non-positive values ignored).

    Parameters
    ----------
    records:
        Fit rows of one curve (one gate of one setting).
    key:
        Column to summarise, e.g. ``"voronoi_loss"``.
    """
    by_n: dict[int, list[float]] = {}
    for rec in records:
        by_n.setdefault(int(rec["n"]), []).append(float(rec[key]))
    ns, med, lo, hi, cnt = [], [], [], [], []
    for n in sorted(by_n):
        vals = positive_finite(by_n[n])
        if vals.size == 0:
            continue
        ns.append(n)
        med.append(np.median(vals))
        lo.append(np.quantile(vals, 0.25))
        hi.append(np.quantile(vals, 0.75))
        cnt.append(vals.size)
    return QuantileCurve(
        n=np.asarray(ns, dtype=float),
        median=np.asarray(med),
        q25=np.asarray(lo),
        q75=np.asarray(hi),
        count=np.asarray(cnt, dtype=int),
    )


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1) over seeds; ``std`` is nan for one seed."""

    mean: float
    std: float
    count: int


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean and sample std (ddof = 1) of the finite values; nan entries are ignored."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return MeanStd(math.nan, math.nan, 0)
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else math.nan
    return MeanStd(float(np.mean(arr)), std, int(arr.size))


def seen_task_average(matrix: np.ndarray) -> np.ndarray:
    """Average accuracy over the tasks seen so far, one value per finished task.

    ``out[t] = mean_{i <= t} A[t, i]``: the accuracy plotted against the number of tasks seen
    (its mean over t is the CA of docs/cl-background.md#metrics).
    """
    matrix = np.asarray(matrix, dtype=float)
    return np.asarray([np.nanmean(matrix[t, : t + 1]) for t in range(matrix.shape[0])])
