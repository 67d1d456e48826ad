"""Typed rate results: RateResult.analysis (cached once), GroupAnalysis records, rate_fit()
with conf_int(alpha)/summary()/results checked against a by-hand weighted least squares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats
from test_rates_byte_identity import reference_result

import moe_theory.rates.sweep as rates
from moe_theory.inference import RateFit
from moe_theory.rates.sweep import FisherCheck, GroupAnalysis, PerNStats, RateResult
from moe_theory.stat_fit import StatFit


@pytest.fixture(scope="module")
def result() -> RateResult:
    return reference_result(fit_n_min=100)


def by_hand_interval(n: np.ndarray, loss: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Slope and CI of the per-n means of log loss on log n, weights R / s^2, residual scale."""
    values = np.unique(n)
    x = np.log(values)
    groups = [np.log(loss[n == v]) for v in values]
    y = np.array([g.mean() for g in groups])
    w = np.array([len(g) / g.var(ddof=1) for g in groups])
    X = np.column_stack([np.ones_like(x), x])
    xtwx = X.T @ (w[:, None] * X)
    beta = np.linalg.solve(xtwx, X.T @ (w * y))
    resid = y - X @ beta
    dof = len(values) - 2
    scale = (w * resid**2).sum() / dof
    se = np.sqrt(scale * np.linalg.inv(xtwx)[1, 1])
    t = stats.t.ppf(1 - alpha / 2, dof)
    return float(beta[1]), float(beta[1] - t * se), float(beta[1] + t * se)


def test_rate_fit_is_the_fit_of_summary_json_and_gives_other_levels(result):
    rows = result.rows("exact", "norga")
    n = np.array([r.n for r in rows], dtype=float)
    loss = np.array([r.voronoi_loss for r in rows])
    fit = result.rate_fit("exact", "norga")
    assert isinstance(fit, RateFit) and fit.method == "wls-means"
    entry = result.summary_dict()["settings"]["exact"]["norga"]
    assert entry["slope"] == fit.slope and entry["slope_ci"] == list(fit.conf_int())
    for alpha in (0.05, 0.1, 0.5):
        slope, lo, hi = by_hand_interval(n, loss, alpha)
        np.testing.assert_allclose(fit.conf_int(alpha), (lo, hi), rtol=1e-10)
        np.testing.assert_allclose(fit.slope, slope, rtol=1e-12)
    narrow, wide = fit.conf_int(0.1), fit.conf_int(0.05)
    assert wide[0] < narrow[0] < fit.slope < narrow[1] < wide[1]
    group = result.group("exact", "norga")
    assert group.conf_int(0.1) == narrow and group.summary() == fit.summary()
    assert group.results is fit.results and fit.results.df_resid == 3
    assert entry["l2_slope_ci"] == list(group.l2_fit.conf_int())
    # the record follows the fits' convention by passing it on to its L_1 fit
    assert isinstance(group, StatFit) and group.level == fit.level == 0.95
    assert group.params == fit.params == {"slope": fit.slope, "intercept": fit.intercept}
    assert entry["slope_median_ci"] == list(group.median_fit.conf_int())
    assert entry["slope_mean_ci"] == list(group.mean_fit.conf_int())


def test_analysis_is_typed_frozen_and_computed_once(result, monkeypatch):
    fresh = RateResult(config=result.config, records=result.records)
    calls = []
    real = rates.analyse_group
    monkeypatch.setattr(rates, "analyse_group", lambda *a: calls.append(a) or real(*a))
    first = fresh.analysis
    assert fresh.analysis is first and len(calls) == len(fresh.groups()) == 6
    fresh.summary_dict(), fresh.summary(), fresh.rate_fit("over", "linear")
    assert len(calls) == 6  # everything after the first use reads the cached records
    assert "_cache" not in {f.name for f in dataclasses.fields(RateResult)}
    exact = first[("exact", "linear")]
    assert isinstance(exact, GroupAnalysis) and isinstance(exact.fisher, FisherCheck)
    assert first[("over", "linear")].fisher is None
    assert all(isinstance(p, PerNStats) for p in exact.per_n)
    assert dict(exact.status_counts) == {"converged": 20, "capped": 10, "stalled": 10}
    for record in (exact, exact.fisher, exact.per_n[0]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.verdict = "changed"  # type: ignore[misc]


def test_group_of_a_missing_pair_names_the_pairs_present(result):
    with pytest.raises(KeyError, match="'over-tanh'.*'none'.*present"):
        result.group("over-tanh", "none")


# Every public name moe_theory/rates/sweep.py defined before it was split (issue 17, point 5).
DEFINED_BEFORE_THE_SPLIT = (
    "BACKENDS", "DASK_CONNECT_TIMEOUT", "EXPECTED_SLOPE", "FISHER_BAND", "FIT_COLUMNS", "PRESETS",
    "RECORD_KEYS", "TIMING_COLUMNS", "RateConfig", "RateResult", "SchedulerUnreachableError",
    "connect_dask", "exit_with_parent", "fit_outcome", "fit_task", "l2_error",
    "mechanism_report", "n_grid", "plan_tasks", "rate_verdict", "run_rates",
)


def test_every_public_name_stays_importable_from_moe_theory_rates():
    for name in (*DEFINED_BEFORE_THE_SPLIT, *rates.__all__):
        assert hasattr(rates, name), name
    assert set(DEFINED_BEFORE_THE_SPLIT) <= set(rates.__all__)
