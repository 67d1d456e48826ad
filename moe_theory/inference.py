"""Rate inference on (n, loss) data.

* :func:`fit_rate`: the slope of log(loss) on log(n) with a calibrated CI (weighted least
  squares on the per-n means of log loss, t(G - 2) reference), returned as a :class:`RateFit`;
  :func:`rate_slope_intervals` computes the same for many simulated data sets at once.
* :func:`bootstrap_slope`: slope of log(mean) or log(median) per n, with a percentile bootstrap
  CI from resampling replicates within each n, returned as a :class:`SlopeFit`.

Both fit types follow :class:`moe_theory.stat_fit.StatFit` (``params``, ``level``,
``conf_int(alpha)``, ``summary()``).
* :func:`compare_rate_models`: power law vs log rate vs curvature vs flat, on per-n medians,
  by AICc, and the resulting label (one model only when it is decisively best).
* :func:`mean_ratio_ci`: a mean over replicates relative to a prediction, with a t CI (the
  Fisher check).
* :func:`local_slopes`: slopes over windows of consecutive n.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import statsmodels.api as sm
from scipy import stats
from statsmodels.regression.linear_model import RegressionResultsWrapper

from moe_theory.stat_fit import check_alpha

# A rate-model label names one model only when its AICc beats every other model's by this much.
AICC_DECISIVE = 4.0
# A "plateau" must also rule out the slowest polynomial rate of interest (n^-1/4); a CI too wide
# to do so is reported as inconclusive instead.
PLATEAU_MIN_SLOPE = -0.25


@dataclass(frozen=True)
class SlopeFit:
    """A log-log slope with a percentile bootstrap interval (:func:`bootstrap_slope`; a
    :class:`~moe_theory.stat_fit.StatFit`).

    Attributes
    ----------
    slope, intercept:
        The least-squares line through ``(log n, log stat)`` of the per-n statistic.
    statistic:
        ``"mean"`` or ``"median"``: the per-n statistic of the replicate losses.
    alpha:
        ``1 - level``: :meth:`conf_int` without ``alpha`` uses it (as given, not recomputed
        from ``level``, so the interval is the one the fit was asked for to the last bit).
    draws:
        The finite bootstrap slopes (read-only), from which :meth:`conf_int` takes percentiles.
    """

    slope: float
    intercept: float
    statistic: str
    alpha: float
    draws: np.ndarray = field(repr=False, compare=False)

    @property
    def params(self) -> dict[str, float]:
        """``{"slope": ..., "intercept": ...}``."""
        return {"slope": self.slope, "intercept": self.intercept}

    @property
    def level(self) -> float:
        """Confidence level of :meth:`conf_int` without ``alpha``."""
        return 1.0 - self.alpha

    def conf_int(self, alpha: float | None = None) -> tuple[float, float]:
        """Percentile interval ``(lo, hi)`` of the slope at level ``1 - alpha``.

        ``alpha=None`` uses the fit's own :attr:`alpha`. Refused (``ValueError``) when a tail
        of ``alpha / 2`` holds less than one bootstrap slope: the percentiles would only repeat
        the extreme draws.
        """
        alpha = self.alpha if alpha is None else check_alpha(alpha)
        if alpha / 2 * len(self.draws) < 1:
            raise ValueError(f"alpha={alpha} needs at least {math.ceil(2 / alpha)} bootstrap "
                             f"slopes for a percentile interval; this fit has {len(self.draws)}")
        lo, hi = np.quantile(self.draws, [alpha / 2, 1 - alpha / 2])
        return (float(lo), float(hi))

    def summary(self) -> str:
        """One line: slope, interval and the bootstrap behind it."""
        lo, hi = self.conf_int()
        return (f"slope {self.slope:+.3f} [{lo:+.3f}, {hi:+.3f}] ({self.level:.0%} percentile "
                f"bootstrap CI of the per-n {self.statistic}, {len(self.draws)} resamples)")


def _positive_log(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name} must be finite and positive to take logs")
    return np.log(values)


# Minimum replicates at every n for inverse-variance weights: with fewer, the per-n variances
# (R - 1 degrees of freedom) are too noisy and the weighted CI undercovers (simulated: 89% at
# R = 3, 93% at R = 5, 94% at R = 8); the equal-weight fit on the means is used instead.
WLS_MIN_REPLICATES = 8
# Floor of the per-n variances of log loss in the weights, as a fraction of their median: an n
# whose replicates happen to agree closely (or exactly: a zero variance) gets at most 1 /
# VARIANCE_FLOOR times the weight of a typical n instead of dominating the fit (or, at zero,
# silently switching to equal weights). In the coverage designs no variance comes near it.
VARIANCE_FLOOR = 0.1
# Fraction of capped fits (stopped at the evaluation cap) from which a rate fit is flagged.
MOSTLY_CAPPED = 0.5


@dataclass(frozen=True)
class RateFit:
    """A power-law rate ``log L = intercept + slope * log n`` fitted by :func:`fit_rate` (a
    :class:`~moe_theory.stat_fit.StatFit`).

    Attributes
    ----------
    slope, intercept:
        The fitted line through the per-n means of ``log L``.
    level:
        Default confidence level of :meth:`conf_int`.
    method:
        ``"wls-means"`` (inverse-variance weights) or ``"ols-means"`` (equal weights).
    n_values:
        The distinct n, ascending.
    replicates:
        Fits at each n.
    capped_fraction:
        Fraction of the fits that stopped at their evaluation cap (``None``: not given). A
        capped fit may sit near its start, so its loss need not shrink with n.
    variance_floor:
        The floor applied to the per-n variances of ``log L`` in the weights (0 for equal
        weights).
    results:
        The statsmodels results of the regression of the per-n means on ``log n``; its
        covariance uses the residual scale and its intervals a t(G - 2) reference.
    """

    slope: float
    intercept: float
    level: float
    method: str
    n_values: tuple[float, ...]
    replicates: tuple[int, ...]
    results: RegressionResultsWrapper = field(repr=False, compare=False)
    capped_fraction: float | None = None
    variance_floor: float = 0.0

    @property
    def params(self) -> dict[str, float]:
        """``{"slope": ..., "intercept": ...}`` (the statsmodels ``results.params`` by name)."""
        return {"slope": self.slope, "intercept": self.intercept}

    @property
    def capped_flag(self) -> str | None:
        """``"all capped"``, ``"mostly capped"`` (at least :data:`MOSTLY_CAPPED`) or None."""
        if self.capped_fraction is None or self.capped_fraction < MOSTLY_CAPPED:
            return None
        return "all capped" if self.capped_fraction >= 1.0 else "mostly capped"

    @property
    def bse(self) -> float:
        """Standard error of the slope."""
        return float(self.results.bse[1])

    @property
    def df_resid(self) -> float:
        """Degrees of freedom of the t reference (G - 2)."""
        return float(self.results.df_resid)

    def conf_int(self, alpha: float | None = None) -> tuple[float, float]:
        """Confidence interval ``(lo, hi)`` for the slope at level ``1 - alpha``.

        ``alpha=None`` uses ``1 - level``.
        """
        alpha = 1.0 - self.level if alpha is None else check_alpha(alpha)
        lo, hi = self.results.conf_int(alpha)[1]
        return (float(lo), float(hi))

    def summary(self) -> str:
        """One line: slope, CI, method, the n used and the replicates."""
        lo, hi = self.conf_int()
        reps = sorted(set(self.replicates))
        rep_text = str(reps[0]) if len(reps) == 1 else f"{reps[0]}..{reps[-1]}"
        flag = f"; {self.capped_flag} ({self.capped_fraction:.0%})" if self.capped_flag else ""
        return (
            f"slope {self.slope:+.3f} [{lo:+.3f}, {hi:+.3f}] ({self.level:.0%} CI, {self.method}, "
            f"t({self.df_resid:g})); G = {len(self.n_values)} values of n in "
            f"{min(self.n_values):g}..{max(self.n_values):g}, R = {rep_text} fits each{flag}"
        )


def _group_moments(
    n: np.ndarray, loss: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct n, and per n the mean and variance of ``log loss`` and the count."""
    logn = _positive_log(n, "n")
    y = _positive_log(loss, "loss")
    if logn.ndim != 1 or logn.shape != y.shape:
        raise ValueError(f"n and loss must be 1-D of equal length; got {logn.shape}, {y.shape}")
    n_values, inverse, counts = np.unique(np.asarray(n, dtype=float), return_inverse=True,
                                          return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    sq = np.bincount(inverse, weights=(y - means[inverse]) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = sq / (counts - 1)
    return n_values, means, var, counts


def fit_rate(
    n: np.ndarray, loss: np.ndarray, *, level: float = 0.95, capped: np.ndarray | None = None
) -> RateFit:
    """Fit ``loss ~ n^slope`` to replicate-level data with a calibrated slope CI.

    The slope is that of the **geometric mean** of the loss, ``exp(mean log L)``, per n (for a
    power law with a fixed spread the arithmetic mean has the same slope, but not in general);
    plots and predictions compared with it should use the geometric mean too.

    The per-n means of ``log loss`` are regressed on ``log n`` by weighted least squares with
    weights ``R_i / max(s_i^2, f)`` (the inverse estimated variance of each mean), where the
    floor ``f`` is :data:`VARIANCE_FLOOR` times the median per-n variance, the covariance
    scaled by the residuals and a t(G - 2) reference (G distinct n). Scaling by the residuals
    keeps the interval honest when the per-n means scatter more than their replicates suggest
    (pre-asymptotic curvature). With fewer than :data:`WLS_MIN_REPLICATES` fits at some n the
    means get equal weights (``method`` says which). Simulated coverage of the 95% CI for a
    true power law, with 5 or 13 values of n and 12 or 40 replicates, Gaussian,
    heteroscedastic (sd x3 across n) and Student-t(3) noise: 94.1-95.5% with 2000 draws per design
    (``tests/test_theory_fit_rate.py``), 94.2-94.9% with 20 000; the former replicate-level OLS
    clustered by n covered 83-92%.

    Parameters
    ----------
    n, loss:
        1-D arrays, one entry per fit (several fits per n); both positive and finite.
    level:
        Confidence level of :meth:`RateFit.conf_int` when called without ``alpha``.
    capped:
        Optional booleans, one per fit: stopped at the evaluation cap. Sets
        :attr:`RateFit.capped_fraction` and so :attr:`RateFit.capped_flag` (flat data from
        fits that never moved would otherwise pass as a measured rate).

    Returns
    -------
    RateFit

    Raises
    ------
    ValueError
        Fewer than three distinct n (two leave no degrees of freedom for the CI), non-positive
        values, ``capped`` of another length, or ``level`` outside (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    n_values, means, var, counts = _group_moments(np.asarray(n), np.asarray(loss))
    if n_values.size < 3:
        raise ValueError(f"need at least three distinct n values to fit a slope with a CI; got "
                         f"{n_values.size} ({', '.join(f'{v:g}' for v in n_values)})")
    capped_fraction = None
    if capped is not None:
        capped = np.asarray(capped, dtype=bool)
        if capped.shape != np.shape(n):
            raise ValueError(f"capped must have one entry per fit; got {capped.shape}, "
                             f"{np.shape(n)}")
        capped_fraction = float(capped.mean())
    design = sm.add_constant(np.log(n_values))
    weighted = counts.min() >= WLS_MIN_REPLICATES
    floor = 0.0
    if weighted:
        floor = max(VARIANCE_FLOOR * float(np.median(var)), np.finfo(float).tiny)
        results = sm.WLS(means, design, weights=counts / np.maximum(var, floor)).fit()
    else:
        results = sm.OLS(means, design).fit()
    return RateFit(
        slope=float(results.params[1]),
        intercept=float(results.params[0]),
        level=float(level),
        method="wls-means" if weighted else "ols-means",
        n_values=tuple(float(v) for v in n_values),
        replicates=tuple(int(c) for c in counts),
        results=results,
        capped_fraction=capped_fraction,
        variance_floor=floor,
    )


def rate_slope_intervals(
    n_values: np.ndarray, log_loss: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fit_rate` for many data sets at once (simulation studies of its coverage).

    Parameters
    ----------
    n_values:
        ``(G,)`` distinct n.
    log_loss:
        ``(B, G, R)``: B data sets, R replicate values of ``log loss`` at each n.
    level:
        Confidence level.

    Returns
    -------
    slope, lo, hi:
        ``(B,)`` each: the values ``fit_rate(...).slope`` and ``.conf_int()`` would give.
    """
    x = _positive_log(n_values, "n")
    log_loss = np.asarray(log_loss, dtype=float)
    B, G, R = log_loss.shape
    if G != x.size or G < 3:
        raise ValueError(f"need (B, G, R) with G = len(n_values) >= 3; got {log_loss.shape}")
    means = log_loss.mean(axis=2)
    var = log_loss.var(axis=2, ddof=1) if R > 1 else np.zeros((B, G))
    floor = np.maximum(VARIANCE_FLOOR * np.median(var, axis=1), np.finfo(float).tiny)
    w = R / np.maximum(var, floor[:, None]) if R >= WLS_MIN_REPLICATES else np.ones((B, G))
    sw = w.sum(axis=1)
    xm = (w * x).sum(axis=1) / sw
    ym = (w * means).sum(axis=1) / sw
    xc = x[None] - xm[:, None]
    sxx = (w * xc**2).sum(axis=1)
    slope = (w * xc * (means - ym[:, None])).sum(axis=1) / sxx
    resid = means - (ym - slope * xm)[:, None] - slope[:, None] * x
    se = np.sqrt((w * resid**2).sum(axis=1) / (G - 2) / sxx)
    half = stats.t.ppf(0.5 + level / 2, G - 2) * se
    return slope, slope - half, slope + half


def mean_ratio_ci(
    values: np.ndarray, reference: float, level: float = 0.95
) -> tuple[float, float, float]:
    """``mean(values) / reference`` with a t(R - 1) confidence interval.

    Used for the Fisher check: the mean ``L_1`` of the R fits at the largest n
    divided by the predicted ``C / sqrt(n)``.

    Returns
    -------
    ratio, lo, hi:
        ``lo = hi = nan`` with fewer than two values.
    """
    values = np.asarray(values, dtype=float)
    if not (reference > 0 and np.isfinite(reference)):
        raise ValueError(f"reference must be positive and finite; got {reference}")
    ratio = float(values.mean() / reference)
    if values.size < 2:
        return ratio, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1)
    half /= np.sqrt(values.size) * reference
    return ratio, ratio - half, ratio + half


def _slopes_closed_form(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """OLS slopes of every row of ``Y`` ``(B, m)`` on ``x`` ``(m,)``."""
    xc = x - x.mean()
    return (Y - Y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)


def bootstrap_slope(
    n_values: np.ndarray,
    losses: list[np.ndarray],
    statistic: str = "median",
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> SlopeFit:
    """Slope of ``log(stat_r loss)`` on ``log n`` with a percentile bootstrap CI.

    Parameters
    ----------
    n_values:
        The distinct n, ``(m,)``.
    losses:
        ``losses[i]`` holds the replicate losses at ``n_values[i]``.
    statistic:
        ``"mean"`` or ``"median"``.
    n_boot:
        Bootstrap resamples (replicates resampled within each n).
    seed:
        Seed of the resampling.
    alpha:
        ``1 - level`` of the interval :meth:`SlopeFit.conf_int` gives by default.
    """
    check_alpha(alpha)
    stats_by_name: dict[str, Callable[..., Any]] = {"mean": np.mean, "median": np.median}
    stat = stats_by_name.get(statistic)
    if stat is None:
        raise ValueError(f"statistic must be 'mean' or 'median'; got {statistic!r}")
    x = _positive_log(n_values, "n")
    point = _positive_log(np.array([stat(v) for v in losses]), "loss")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    boot = np.empty((n_boot, len(losses)))
    for i, v in enumerate(losses):
        v = np.asarray(v, dtype=float)
        boot[:, i] = stat(v[rng.integers(0, len(v), size=(n_boot, len(v)))], axis=1)
    with np.errstate(divide="ignore"):
        slopes = _slopes_closed_form(x, np.log(boot))
    slopes = slopes[np.isfinite(slopes)]
    slope = float(_slopes_closed_form(x, point[None])[0])
    slopes.setflags(write=False)
    return SlopeFit(slope, float(point.mean() - slope * x.mean()), statistic, float(alpha),
                    slopes)


def aicc(results: RegressionResultsWrapper) -> float:
    """Small-sample AIC of a Gaussian least-squares fit, counting the noise variance.

    ``AICc = -2 log L + 2k + 2k(k+1)/(m-k-1)`` with ``k`` = regression coefficients + 1 and
    ``m`` observations; ``nan`` when ``m - k - 1 <= 0`` (too few points for the model).
    """
    m = float(results.nobs)
    k = float(results.df_model + results.k_constant + 1)
    if m - k - 1 <= 0:
        return float("nan")
    return float(-2.0 * results.llf + 2.0 * k + 2.0 * k * (k + 1.0) / (m - k - 1.0))


MODEL_NAMES = {"pow": "power law", "loglog": "log rate", "curv": "curved power law",
               "flat": "flat"}


def range_note(n_values: np.ndarray) -> str:
    """What the n range can tell apart: the span of ``ln n`` and ``ln ln n`` over the grid."""
    lo, hi = float(np.min(n_values)), float(np.max(n_values))
    return (
        f"over n = {lo:g}..{hi:g}, ln n spans {np.log(lo):.2f}..{np.log(hi):.2f} and ln ln n "
        f"only {np.log(np.log(lo)):.2f}..{np.log(np.log(hi)):.2f}: power law and log rate are "
        "nearly collinear there"
    )


def compare_rate_models(n_values: np.ndarray, level: np.ndarray) -> dict[str, object]:
    """Power law vs log rate vs curvature vs flat on per-n levels (medians), by AICc.

    Models (docs/theory-background.md#rate-inference): ``M_pow: log L = c + s log n``, ``M_loglog:
    log L = c - kappa log log n``, ``M_curv: log L = c + s log n + q (log n)^2``, ``M_flat: log L =
    c``. A label names one model only when its AICc is lower than every other model's (those with
    enough points) by at least :data:`AICC_DECISIVE`; otherwise the models are indistinguishable
    over this range and the label is ``"inconclusive"``. A ``"plateau"`` (flat model decisive) also
    needs the power slope CI to exclude :data:`PLATEAU_MIN_SLOPE`.

    Returns
    -------
    dict with ``aicc`` (``None`` where undefined) and ``aic`` of each model, ``best``,
    ``margin`` (AICc of the runner-up minus the best), ``slope`` and ``slope_ci`` of M_pow
    (OLS on the levels, t(G-2)), ``kappa``, ``q`` and ``q_ci``, ``d_aicc_loglog_vs_pow``
    (positive when the log rate fits better), ``classification`` in {"power law",
    "sub-polynomial (log-like)", "plateau", "curved", "inconclusive"}, a ``reason`` and the
    ``range_note``.
    """
    logn = _positive_log(n_values, "n")
    y = _positive_log(level, "loss level")
    m = len(y)
    if m < 4:
        return {"classification": "inconclusive", "reason": f"only {m} values of n (need >= 4)",
                "range_note": range_note(np.asarray(n_values))}
    fits = {
        "pow": sm.OLS(y, sm.add_constant(logn)).fit(),
        "loglog": sm.OLS(y, sm.add_constant(np.log(logn))).fit(),
        "curv": sm.OLS(y, np.column_stack([np.ones(m), logn, logn**2])).fit(),
        "flat": sm.OLS(y, np.ones((m, 1))).fit(),
    }
    crit = {k: aicc(v) for k, v in fits.items()}
    defined = {k: v for k, v in crit.items() if np.isfinite(v)}
    ranked = sorted(defined, key=defined.__getitem__)
    slope = float(fits["pow"].params[1])
    slope_ci = [float(c) for c in fits["pow"].conf_int(0.05)[1]]
    q = float(fits["curv"].params[2])
    q_ci = [float(c) for c in fits["curv"].conf_int(0.05)[2]]
    if len(ranked) < 2:
        best, margin = None, float("nan")
        label, reason = "inconclusive", f"{m} values of n are too few to compare models by AICc"
    else:
        best = ranked[0]
        margin = defined[ranked[1]] - defined[best]
        label = {"pow": "power law", "loglog": "sub-polynomial (log-like)", "flat": "plateau",
                 "curv": "curved"}[best]
        reason = f"{MODEL_NAMES[best]} has the lowest AICc by {margin:.1f}"
    close = [MODEL_NAMES[k] for k in ranked if best and defined[k] - defined[best] < AICC_DECISIVE]
    if best is None:
        pass
    elif margin < AICC_DECISIVE:
        label = "inconclusive"
        reason = (f"{' / '.join(close)} indistinguishable (AICc within {AICC_DECISIVE:g} of the "
                  f"best, {MODEL_NAMES[best]})")
    elif best == "flat" and slope_ci[0] <= PLATEAU_MIN_SLOPE:
        label = "inconclusive"
        reason += (f", but the power slope CI [{slope_ci[0]:.2f}, {slope_ci[1]:.2f}] reaches "
                   f"{PLATEAU_MIN_SLOPE} or below: a decay is not ruled out")
    if best == "pow" and label == "power law":
        reason += f"; slope {slope:.2f} [{slope_ci[0]:.2f}, {slope_ci[1]:.2f}]"
    undefined = sorted(set(crit) - set(defined))
    if undefined and best is not None:
        reason += f" ({', '.join(MODEL_NAMES[k] for k in undefined)}: too few n for AICc)"
    return {
        "aicc": {k: (v if np.isfinite(v) else None) for k, v in crit.items()},
        "aic": {k: float(v.aic) for k, v in fits.items()},
        "best": best,
        "margin": float(margin),
        "slope": slope,
        "slope_ci": slope_ci,
        "kappa": float(-fits["loglog"].params[1]),
        "q": q,
        "q_ci": q_ci,
        "d_aicc_loglog_vs_pow": float(crit["pow"] - crit["loglog"]),
        "classification": label,
        "reason": reason,
        "range_note": range_note(np.asarray(n_values)),
    }


def local_slopes(
    n_values: np.ndarray, level: np.ndarray, window: int = 3
) -> list[dict[str, float]]:
    """Slopes of log(level) on log(n) over windows of ``window`` consecutive n.

    A power law keeps them constant; a log rate ``(log n)^-kappa`` has local slope
    ``-kappa / ln n``, shrinking in magnitude as n grows.
    """
    x = _positive_log(n_values, "n")
    y = _positive_log(level, "loss level")
    out = []
    for start in range(len(x) - window + 1):
        xs, ys = x[start : start + window], y[start : start + window]
        out.append(
            {
                "n_center": float(np.exp(xs.mean())),
                "slope": float(_slopes_closed_form(xs, ys[None])[0]),
            }
        )
    return out
