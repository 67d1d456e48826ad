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


def values_per_n(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, np.ndarray]]:
    """``(n, values)`` per sample size in increasing n: the positive, finite ``record[key]`` of
    the records with that ``record["n"]`` (an n left with none is dropped)."""
    by_n: dict[int, list[float]] = {}
    for rec in records:
        by_n.setdefault(int(rec["n"]), []).append(float(rec[key]))
    kept = ((n, positive_finite(by_n[n])) for n in sorted(by_n))
    return [(n, vals) for n, vals in kept if vals.size]


def quantile_curve(records: Sequence[Mapping[str, Any]], key: str) -> QuantileCurve:
    """Median and IQR of ``record[key]`` per ``record["n"]`` (non-positive values ignored).

    Parameters
    ----------
    records:
        Fit rows of one curve (one gate of one setting).
    key:
        Column to summarise, e.g. ``"voronoi_loss"``.
    """
    ns, med, lo, hi, cnt = [], [], [], [], []
    for n, vals in values_per_n(records, key):
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


#: Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (standard tables).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (to about 1e-4).

    A table up to 30 degrees of freedom, then the Cornish-Fisher expansion around the normal
    quantile (the figures half does not depend on scipy).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class MeanCurve:
    """Per-n mean of a loss over replicates with the 95 % t confidence interval of the mean."""

    n: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray


def mean_curve(records: Sequence[Mapping[str, Any]], key: str) -> MeanCurve:
    """Mean and 95 % t confidence interval of ``record[key]`` per ``record["n"]``.

    The statistic of the slopes in ``summary.json`` (a fit of the per-n means) and of the
    Fisher check (the mean at the largest n). Non-positive and non-finite values are left out,
    as on a log axis; the interval is clipped below at a tenth of the mean so that it stays
    drawable on a log axis (``lo`` is then not the lower confidence limit; one replicate gives
    ``lo = hi = mean``).

    Parameters
    ----------
    records:
        Fit rows of one curve (one gate of one setting).
    key:
        Column to summarise, e.g. ``"voronoi_loss"``.
    """
    ns, mean, lo, hi, cnt = [], [], [], [], []
    for n, vals in values_per_n(records, key):
        m = float(np.mean(vals))
        half = (float(t_quantile_975(vals.size - 1) * np.std(vals, ddof=1)
                      / math.sqrt(vals.size)) if vals.size > 1 else 0.0)
        ns.append(n)
        mean.append(m)
        lo.append(max(m - half, m / 10))
        hi.append(m + half)
        cnt.append(vals.size)
    return MeanCurve(n=np.asarray(ns, dtype=float), mean=np.asarray(mean), lo=np.asarray(lo),
                     hi=np.asarray(hi), count=np.asarray(cnt, dtype=int))


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
