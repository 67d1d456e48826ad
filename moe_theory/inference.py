"""Rate inference on (n, loss) data (spec moe-theory.md section 5.4).

* :func:`ols_slope`: log(loss) on log(n) over replicate-level rows, statsmodels OLS with
  cluster-robust standard errors clustered by n (t reference with G - 1 degrees of freedom).
* :func:`bootstrap_slope`: slope of log(mean) or log(median) per n, with a percentile bootstrap
  CI from resampling replicates within each n.
* :func:`compare_rate_models`: power law vs log rate vs curvature vs flat, on per-n medians,
  by AIC, and the resulting classification.
* :func:`local_slopes`: slopes over windows of consecutive n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm

# Thresholds of spec section 5.4.
SUBPOLY_DAIC = 10.0
SUBPOLY_MAX_SLOPE = -0.2
PLATEAU_DAIC = 2.0
# Beyond spec 5.4: a "plateau" must also rule out the slowest polynomial rate of interest
# (n^-1/4); a CI too wide to do so is reported as inconclusive instead.
PLATEAU_MIN_SLOPE = -0.25


@dataclass(frozen=True)
class SlopeFit:
    """A fitted log-log slope with its 95% confidence interval."""

    slope: float
    ci: tuple[float, float]
    intercept: float
    r2: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "slope": self.slope,
            "ci": list(self.ci),
            "intercept": self.intercept,
            "r2": self.r2,
        }


def _positive_log(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name} must be finite and positive to take logs")
    return np.log(values)


def ols_slope(n: np.ndarray, loss: np.ndarray, alpha: float = 0.05) -> SlopeFit:
    """Slope of ``log(loss)`` on ``log(n)`` with cluster-robust (by n) CI.

    Parameters
    ----------
    n, loss:
        One entry per replicate-level observation.
    alpha:
        1 - confidence level.
    """
    logn = _positive_log(n, "n")
    y = _positive_log(loss, "loss")
    groups = np.unique(np.asarray(n), return_inverse=True)[1]
    if groups.max() < 1:
        raise ValueError("need at least two distinct n values to fit a slope")
    design = sm.add_constant(logn)
    model = sm.OLS(y, design)
    if groups.max() >= 2:
        res = model.fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    else:  # two clusters: cluster-robust SEs are undefined; fall back to classical SEs
        res = model.fit()
    lo, hi = res.conf_int(alpha)[1]
    return SlopeFit(
        float(res.params[1]), (float(lo), float(hi)), float(res.params[0]), float(res.rsquared)
    )


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
    """
    stat = {"mean": np.mean, "median": np.median}.get(statistic)
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
    lo, hi = np.quantile(slopes, [alpha / 2, 1 - alpha / 2])
    return SlopeFit(slope, (float(lo), float(hi)), float(point.mean() - slope * x.mean()))


def compare_rate_models(n_values: np.ndarray, level: np.ndarray) -> dict[str, object]:
    """Power law vs log rate vs curvature vs flat on per-n levels (medians).

    Models (spec 5.4): ``M_pow: log L = c + s log n``, ``M_loglog: log L = c - kappa log log n``,
    ``M_curv: log L = c + s log n + q (log n)^2``, ``M_flat: log L = c``.

    Returns
    -------
    dict with the AIC of each model, ``slope`` and ``slope_ci`` of M_pow, ``kappa``, ``q`` and
    ``q_ci``, ``d_aic_loglog_vs_pow`` (positive when the log rate fits better), and
    ``classification`` in {"sub-polynomial (log-like)", "plateau", "power law", "inconclusive"}
    with a ``reason``.
    """
    logn = _positive_log(n_values, "n")
    y = _positive_log(level, "loss level")
    m = len(y)
    if m < 4:
        return {"classification": "inconclusive", "reason": f"only {m} values of n (need >= 4)"}
    fits = {
        "pow": sm.OLS(y, sm.add_constant(logn)).fit(),
        "loglog": sm.OLS(y, sm.add_constant(np.log(logn))).fit(),
        "curv": sm.OLS(y, np.column_stack([np.ones(m), logn, logn**2])).fit(),
        "flat": sm.OLS(y, np.ones((m, 1))).fit(),
    }
    aic = {k: float(v.aic) for k, v in fits.items()}
    slope = float(fits["pow"].params[1])
    slope_ci = [float(c) for c in fits["pow"].conf_int(0.05)[1]]
    q = float(fits["curv"].params[2])
    q_ci = [float(c) for c in fits["curv"].conf_int(0.05)[2]]
    d_aic = aic["pow"] - aic["loglog"]
    flattening = q_ci[0] > 0
    if flattening and d_aic > SUBPOLY_DAIC and slope > SUBPOLY_MAX_SLOPE:
        label, reason = (
            "sub-polynomial (log-like)",
            (
                f"curvature q={q:.3g} > 0 (CI excludes 0), log-rate model better by "
                f"dAIC={d_aic:.1f}, "
                f"power slope {slope:.2f} > {SUBPOLY_MAX_SLOPE}"
            ),
        )
    elif (slope_ci[0] <= 0 <= slope_ci[1] and aic["flat"] - aic["pow"] <= PLATEAU_DAIC
          and slope_ci[0] > PLATEAU_MIN_SLOPE):
        label, reason = (
            "plateau",
            (
                f"power slope CI [{slope_ci[0]:.2f}, {slope_ci[1]:.2f}] contains 0 and the flat "
                f"model "
                f"is within {PLATEAU_DAIC:g} AIC; the CI excludes {PLATEAU_MIN_SLOPE}"
            ),
        )
    elif slope_ci[1] < 0 and not (flattening and d_aic > PLATEAU_DAIC):
        label, reason = "power law", f"slope {slope:.2f} [{slope_ci[0]:.2f}, {slope_ci[1]:.2f}]"
    else:
        label, reason = (
            "inconclusive",
            (
                f"power slope {slope:.2f} [{slope_ci[0]:.2f}, {slope_ci[1]:.2f}], "
                f"curvature q={q:.3g} "
                f"[{q_ci[0]:.3g}, {q_ci[1]:.3g}], dAIC(loglog vs pow)={d_aic:.1f}: neither a clean "
                "power law nor a plateau nor a decisive log rate"
            ),
        )
    return {
        "aic": aic,
        "slope": slope,
        "slope_ci": slope_ci,
        "kappa": float(-fits["loglog"].params[1]),
        "q": q,
        "q_ci": q_ci,
        "d_aic_loglog_vs_pow": float(d_aic),
        "classification": label,
        "reason": reason,
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
