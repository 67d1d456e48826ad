"""Analysis of a rate sweep (docs/theory-background.md#rate-inference): typed, frozen records per
(setting, gate).

:func:`analyse_group` fits the ``L_1`` and L2-error rates (:func:`~moe_theory.inference.fit_rate`),
bootstrap slopes, the rate-model comparison and, for the exact setting, the Fisher check of
docs/theory-background.md#fisher-check; :func:`rate_verdict` words the outcome.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from statsmodels.regression.linear_model import RegressionResultsWrapper

from moe_theory.estimate import FIT_STATUSES
from moe_theory.fit_record import FitRecord
from moe_theory.gates import GateKind
from moe_theory.inference import (
    RateFit,
    SlopeFit,
    bootstrap_slope,
    compare_rate_models,
    fit_rate,
    local_slopes,
    mean_ratio_ci,
)
from moe_theory.mechanism import fisher_prediction
from moe_theory.rates.config import EXPECTED_SLOPE, FISHER_BAND, RateConfig
from moe_theory.settings import get_setting


@dataclass(frozen=True)
class PerNStats:
    """Replicate statistics of one (setting, gate) at one n (``per_n`` of ``summary.json``)."""

    mean: float
    median: float
    l2_median: float
    mass_median: float
    beta1_median: float
    eta_median: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FisherCheck:
    """The Fisher check of docs/theory-background.md#fisher-check (exact setting): mean ``L_1`` at
    the largest n over the prediction ``C / sqrt(n)``, with a 95% t CI over the replicates."""

    criterion: str
    C: float
    C_sum: float
    lambda_min: float
    cond: float
    n: int
    predicted: float
    measured_mean: float
    ratio: float
    ratio_ci: tuple[float, float]
    consistent: bool
    #: Second, labelled criterion: mean_r(L_1) * sqrt(n) / C averaged over the n used.
    ratio_pooled: float

    def to_dict(self) -> dict[str, object]:
        """The ``fisher_*`` keys of ``summary.json``."""
        return {
            "fisher_criterion": self.criterion,
            "fisher_C": self.C,
            "fisher_C_sum": self.C_sum,
            "fisher_lambda_min": self.lambda_min,
            "fisher_cond": self.cond,
            "fisher_n": self.n,
            "fisher_predicted": self.predicted,
            "fisher_measured_mean": self.measured_mean,
            "fisher_ratio": self.ratio,
            "fisher_ratio_ci": list(self.ratio_ci),
            "fisher_consistent": self.consistent,
            "fisher_ratio_pooled": self.ratio_pooled,
        }


@dataclass(frozen=True)
class GroupAnalysis:
    """Rate inference of one (setting, gate): one entry of ``summary.json``.

    Attributes
    ----------
    setting, gate, activation, expert, theorem:
        What was fitted and what the theory predicts.
    fit, l2_fit:
        :class:`~moe_theory.inference.RateFit` of ``L_1`` and of the L2 error on the n used
        (their statsmodels results, ``params``, ``conf_int(alpha)`` and ``summary()``; the
        record itself passes ``params``, ``level``, ``conf_int`` and ``summary`` on to
        ``fit``).
    mean_fit, median_fit:
        Bootstrap slopes (:class:`~moe_theory.inference.SlopeFit`) of the per-n mean and median
        of ``L_1``.
    part_slopes:
        Slope of each loss part (``loss_mass``, ``loss_beta1``, ``loss_eta``; ``None`` with
        fewer than two n of positive values).
    model_comparison, local_slopes:
        :func:`~moe_theory.inference.compare_rate_models` and
        :func:`~moe_theory.inference.local_slopes` of the per-n medians.
    n_all, n_used, n_used_note:
        The n of the grid, those entering the fits, and why all n entered (or ``None``).
    per_n:
        :class:`PerNStats` for each n of ``n_all``, in order.
    status_counts:
        Fits per status of :data:`~moe_theory.estimate.FIT_STATUSES`, in that order.
    n_fits, n_at_bound:
        Fits, and fits that ended at the parameter bound.
    n_excluded:
        Fits left out of the slopes and statistics: non-finite or zero ``L_1`` or L2 error
        (:func:`usable_fit`).
    fisher:
        :class:`FisherCheck` (exact setting) or ``None``.
    verdict:
        :func:`rate_verdict`.
    """

    setting: str
    gate: GateKind
    activation: str
    expert: str
    theorem: str
    fit: RateFit
    l2_fit: RateFit
    mean_fit: SlopeFit
    median_fit: SlopeFit
    part_slopes: dict[str, float | None]
    model_comparison: dict[str, object]
    local_slopes: list[dict[str, float]]
    n_all: tuple[int, ...]
    n_used: tuple[int, ...]
    n_used_note: str | None
    per_n: tuple[PerNStats, ...]
    status_counts: tuple[tuple[str, int], ...]
    n_fits: int
    n_at_bound: int
    fisher: FisherCheck | None
    verdict: str
    n_excluded: int = 0

    # The StatFit protocol of moe_theory.stat_fit, passed on to the L_1 slope fit ``fit``.
    @property
    def params(self) -> dict[str, float]:
        """The estimates of the ``L_1`` slope fit (:attr:`RateFit.params`)."""
        return self.fit.params

    @property
    def level(self) -> float:
        """Confidence level of the ``L_1`` slope fit."""
        return self.fit.level

    def conf_int(self, alpha: float | None = None) -> tuple[float, float]:
        """CI of the ``L_1`` slope at the fit's level (95%) or ``1 - alpha``."""
        return self.fit.conf_int(alpha)

    def summary(self) -> str:
        """One line on the ``L_1`` slope (:meth:`RateFit.summary`)."""
        return self.fit.summary()

    @property
    def results(self) -> RegressionResultsWrapper:
        """The statsmodels results of the ``L_1`` slope fit."""
        return self.fit.results

    def to_dict(self) -> dict[str, object]:
        """This entry as written to ``summary.json`` (key order included)."""
        entry: dict[str, object] = {
            "activation": self.activation,
            "expert": self.expert,
            "theorem": self.theorem,
            "slope": self.fit.slope,
            "slope_ci": list(self.fit.conf_int()),
            "slope_method": self.fit.method,
            "slope_df": self.fit.df_resid,
            "slope_mean": self.mean_fit.slope,
            "slope_mean_ci": list(self.mean_fit.conf_int()),
            "slope_median": self.median_fit.slope,
            "slope_median_ci": list(self.median_fit.conf_int()),
            "l2_slope": self.l2_fit.slope,
            "l2_slope_ci": list(self.l2_fit.conf_int()),
            "part_slopes": dict(self.part_slopes),
            "model_comparison": self.model_comparison,
            "local_slopes": self.local_slopes,
            "n_all": list(self.n_all),
            "n_used": list(self.n_used),
            "n_used_note": self.n_used_note,
            "per_n": {str(v): s.to_dict() for v, s in zip(self.n_all, self.per_n, strict=True)},
            "n_fits": self.n_fits,
            **{f"n_{status}": count for status, count in self.status_counts},
            "n_at_bound": self.n_at_bound,
        }
        if self.n_excluded:  # (absent when 0: the summary.json of every clean sweep is unchanged)
            entry["n_excluded"] = self.n_excluded
        if self.fisher is None:
            entry.update({"fisher_C": None, "fisher_C_sum": None})
        else:
            fisher = self.fisher.to_dict()
            # fisher_C and fisher_C_sum come first (the key order of summary.json version 2)
            entry.update({"fisher_C": fisher.pop("fisher_C"),
                          "fisher_C_sum": fisher.pop("fisher_C_sum"), **fisher})
        entry["verdict"] = self.verdict
        return entry


class NoRateError(ValueError):
    """Too few usable fits of one (setting, gate) to fit a slope; the fits themselves are kept."""


def usable_fit(record: FitRecord) -> bool:
    """Whether a fit enters the slopes: its ``L_1`` and L2 error are finite and positive.

    A diverged fit (``nan``/``inf``) or an exact one (zero loss, e.g. at a vanishing noise
    level) has no logarithm; it stays in ``fits.csv`` and is counted as ``n_excluded``.
    """
    values = (record.voronoi_loss, record.l2_error)
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


def analyse_group(config: RateConfig, rows: list[FitRecord]) -> GroupAnalysis:
    """Rate inference (docs/theory-background.md#rate-inference) of the fits ``rows`` of one
    (setting, gate) of ``config``.

    Fits that are not :func:`usable_fit` are left out of every slope and statistic and counted
    (``n_excluded``); ``n_fits`` and the status counts cover all fits.

    Raises
    ------
    NoRateError
        Fewer than two values of n keep a usable fit.
    """
    setting, gate = rows[0].setting, rows[0].gate
    all_rows, rows = rows, [r for r in rows if usable_fit(r)]
    if len({r.n for r in rows}) < 2:
        raise NoRateError(
            f"{setting}/{gate}: only {len(rows)} of {len(all_rows)} fits have a finite, "
            f"positive L_1 and L2 error, at {len({r.n for r in rows})} value(s) of n; a slope "
            "needs two")
    n = np.array([r.n for r in rows])
    n_all = np.unique(n)
    n_used = n_all[n_all >= config.fit_n_min]
    note = None
    if len(n_used) < 3:
        n_used, note = (
            n_all,
            (f"fewer than 3 values of n >= {config.fit_n_min}; all n entered the fit"),
        )
    used = np.isin(n, n_used)

    def col(name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in rows], dtype=float)

    loss, l2 = col("voronoi_loss"), col("l2_error")
    per_n = [loss[(n == v)] for v in n_used]
    main = fit_rate(n[used], loss[used])
    l2_fit = fit_rate(n[used], l2[used])
    medians = np.array([np.median(v) for v in per_n])
    means = np.array([np.mean(v) for v in per_n])
    comparison = compare_rate_models(n_used, medians)
    parts = {}
    for part in ("loss_mass", "loss_beta1", "loss_eta"):
        vals = col(part)
        pos = vals[used] > 0
        parts[part] = (
            fit_rate(n[used][pos], vals[used][pos]).slope
            if len(np.unique(n[used][pos])) >= 3
            else None
        )
    status = [r.status for r in all_rows]
    fisher = None
    if setting == "exact":
        pred = fisher_prediction(config.truth(setting, gate), config.noise_sd)
        n_max = int(n_all.max())
        predicted = pred["C"] / np.sqrt(n_max)
        ratio, lo, hi = mean_ratio_ci(loss[n == n_max], predicted)
        fisher = FisherCheck(
            criterion="mean L_1 at the largest n / (C/sqrt(n)), 95% t CI over the replicates; "
            f"consistent when the CI overlaps [{FISHER_BAND[0]}, {FISHER_BAND[1]}] "
            "(docs/theory-background.md#fisher-check)",
            C=pred["C"],
            C_sum=pred["C_sum"],
            lambda_min=pred["lambda_min"],
            cond=pred["cond"],
            n=n_max,
            predicted=float(predicted),
            measured_mean=float(np.mean(loss[n == n_max])),
            ratio=ratio,
            ratio_ci=(lo, hi),
            consistent=bool(lo <= FISHER_BAND[1] and hi >= FISHER_BAND[0]),
            ratio_pooled=float(np.mean(means * np.sqrt(n_used)) / pred["C"]),
        )
    return GroupAnalysis(
        setting=setting,
        gate=gate,
        activation=rows[0].activation,
        expert=rows[0].expert,
        theorem=get_setting(setting).theorem,
        fit=main,
        l2_fit=l2_fit,
        mean_fit=bootstrap_slope(n_used, per_n, "mean", seed=config.seed),
        median_fit=bootstrap_slope(n_used, per_n, "median", seed=config.seed),
        part_slopes=parts,
        model_comparison=comparison,
        local_slopes=local_slopes(n_used, medians) if len(n_used) >= 3 else [],
        n_all=tuple(int(v) for v in n_all),
        n_used=tuple(int(v) for v in n_used),
        n_used_note=note,
        per_n=tuple(
            PerNStats(
                mean=float(np.mean(loss[n == v])),
                median=float(np.median(loss[n == v])),
                l2_median=float(np.median(l2[n == v])),
                mass_median=float(np.median(col("loss_mass")[n == v])),
                beta1_median=float(np.median(col("loss_beta1")[n == v])),
                eta_median=float(np.median(col("loss_eta")[n == v])),
            )
            for v in n_all
        ),
        status_counts=tuple((s, status.count(s)) for s in FIT_STATUSES),
        n_fits=len(all_rows),
        n_at_bound=sum(bool(r.at_bound) for r in all_rows),
        n_excluded=len(all_rows) - len(rows),
        fisher=fisher,
        verdict=rate_verdict(
            expected=EXPECTED_SLOPE[setting],
            slope_ci=main.conf_int(),
            l2_slope=l2_fit.slope,
            l2_ci=l2_fit.conf_int(),
            model=comparison,
            fisher=fisher.to_dict() if fisher is not None else None,
        ),
    )


def rate_verdict(
    *,
    expected: float | None,
    slope_ci: tuple[float, float],
    l2_slope: float,
    l2_ci: tuple[float, float],
    model: dict[str, object],
    fisher: dict[str, object] | None,
) -> str:
    """The verdict line of one (setting, gate).

    Parameters
    ----------
    expected:
        The predicted slope of ``L_1`` (``None``: no rate guaranteed, the verdict is heuristic).
    slope_ci:
        95% CI of the ``L_1`` slope (:func:`fit_rate`).
    l2_slope, l2_ci:
        Slope of the L2 error and its CI; it agrees with Thm 4.1 when the CI contains -1/2 or
        the slope lies in [-0.6, -0.4].
    model:
        :func:`compare_rate_models` output (its ``classification`` and ``reason``).
    fisher:
        The Fisher check (keys ``fisher_ratio``, ``fisher_ratio_ci``, ``fisher_n``; exact
        setting only) or ``None``.
    """
    l2_ok = l2_ci[0] <= -0.5 <= l2_ci[1] or -0.6 <= l2_slope <= -0.4
    l2_text = (
        f"regression error agrees with Thm 4.1 (L2 slope {l2_slope:.2f})"
        if l2_ok
        else f"regression error slope {l2_slope:.2f} departs from -1/2"
    )
    kind = str(model.get("classification", "inconclusive"))
    if kind == "inconclusive":
        kind = f"rate model inconclusive ({model.get('reason', '')})"
    if expected is None:
        return (
            f"{kind}; no parameter rate is guaranteed here (non-identifiable expert part); "
            f"{l2_text}; heuristic"
        )
    lo, hi = slope_ci
    agree = lo <= expected <= hi
    text = (
        f"slope CI [{lo:.2f}, {hi:.2f}] {'contains' if agree else 'excludes'} {expected}; "
        f"{kind}; {l2_text}"
    )
    if fisher is not None:
        rlo, rhi = fisher["fisher_ratio_ci"]  # type: ignore[misc]
        band = f"[{FISHER_BAND[0]}, {FISHER_BAND[1]}]"
        if np.isnan(rlo):
            consistent, how = False, "no CI with one fit"
        elif rlo <= FISHER_BAND[1] and rhi >= FISHER_BAND[0]:
            consistent, how = True, f"CI overlaps {band}"
        else:
            consistent, how = False, f"CI misses {band}"
        text += (
            f"; level {'consistent' if consistent else 'not consistent'} with the Fisher "
            f"prediction C/sqrt(n) (mean L_1 at n={fisher['fisher_n']} is "
            f"{fisher['fisher_ratio']:.2f} "
            f"[{rlo:.2f}, {rhi:.2f}] x C/sqrt(n): {how})"
        )
    return text
