"""Every statistical fit follows one convention (moe_theory.stat_fit.StatFit): ``params``
(headline first), ``level``, ``conf_int(alpha)`` at the fit's level or at ``1 - alpha``,
``summary()``. The intervals at other levels are checked against independent computations:
statsmodels' OLS for the t intervals of the exponents, a hand-written percentile and a fit made
at that level for the bootstrap slope."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import statsmodels.api as sm

from moe_theory.fit_record import FitRecord
from moe_theory.fit_result import FitResult
from moe_theory.inference import RateFit, SlopeFit, bootstrap_slope, fit_rate
from moe_theory.near import cluster_law as law
from moe_theory.near import mechanism as near
from moe_theory.stat_fit import StatFit, check_alpha

N_VALUES = np.logspace(2, 4, 5)
TS = np.geomspace(0.01, 0.4, 8)


def _losses(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [2.0 * v**-0.5 * np.exp(rng.normal(0, 0.3, 12)) for v in N_VALUES]


def _bent_log_lambda() -> np.ndarray:
    """An eigenvalue curve with curvature in log-log, so the t intervals have width."""
    x = np.log(TS)
    return np.log(3.0) + 4.0 * x + 0.2 * x**2


def rate_fit() -> RateFit:
    losses = _losses()
    return fit_rate(np.repeat(N_VALUES, 12), np.concatenate(losses))


def slope_fit() -> SlopeFit:
    return bootstrap_slope(N_VALUES, _losses(), "median", n_boot=400, seed=3)


def exponent_fit() -> near.ExponentFit:
    fit = near.fit_exponent(TS, np.exp(_bent_log_lambda()), n_fit=6)
    assert fit is not None
    return fit


def cluster_exponent() -> law.Exponent:
    return law.fit_exponent(TS, _bent_log_lambda())


FITS = {"RateFit": rate_fit, "SlopeFit": slope_fit, "ExponentFit": exponent_fit,
        "Exponent": cluster_exponent}


@pytest.mark.parametrize("make", FITS.values(), ids=FITS.keys())
def test_every_fit_type_follows_the_protocol(make):
    fit = make()
    assert isinstance(fit, StatFit)
    params = fit.params
    assert isinstance(params, Mapping) and len(params) == 2
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in params.items())
    headline = next(iter(params.values()))
    lo, hi = fit.conf_int()
    assert lo < headline < hi
    assert fit.level == pytest.approx(0.95)
    # a narrower level gives a nested interval around the same estimate
    lo90, hi90 = fit.conf_int(0.1)
    assert lo < lo90 < headline < hi90 < hi
    text = fit.summary()
    assert isinstance(text, str) and "\n" not in text
    assert f"{headline:+.3f}" in text or f"{headline:.3f}" in text
    assert "95% " in text


@pytest.mark.parametrize("make", FITS.values(), ids=FITS.keys())
@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_every_fit_type_refuses_an_alpha_outside_0_1_naming_it(make, alpha):
    with pytest.raises(ValueError, match=rf"alpha must be in \(0, 1\); got {alpha}"):
        make().conf_int(alpha)


def test_results_that_are_not_fits_do_not_claim_the_protocol():
    """The optimiser's output keeps ``theta`` (no ``params`` alias); a fits.csv row is data."""
    z = np.zeros(1)
    result = FitResult(np.zeros((1, 2)), z, z, z.astype(bool), z.astype(bool), z.astype(bool))
    assert not isinstance(result, StatFit) and not hasattr(result, "params")
    assert not any(hasattr(FitRecord, m) for m in ("params", "conf_int", "summary"))


@pytest.mark.parametrize("make", [exponent_fit, cluster_exponent], ids=["ExponentFit", "Exponent"])
def test_exponent_intervals_match_statsmodels_ols_at_every_level(make):
    fit = make()
    x = np.log(fit.t_used) if hasattr(fit, "t_used") else np.array(fit.log_t)
    y = np.array(fit.log_lambda)
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    np.testing.assert_allclose([fit.params["log_c"], fit.params["p"]], ols.params, rtol=1e-10)
    np.testing.assert_allclose(fit.conf_int(), ols.conf_int(0.05)[1], rtol=1e-10)
    for alpha in (0.01, 0.1, 0.32, 0.5):
        np.testing.assert_allclose(fit.conf_int(alpha), ols.conf_int(alpha)[1], rtol=1e-10)


def test_cluster_exponent_keeps_its_level_and_its_json_entry():
    y = _bent_log_lambda()
    e90 = law.fit_exponent(TS, y, level=0.9)
    assert e90.level == 0.9 and e90.conf_int() == law.fit_exponent(TS, y).conf_int(0.1)
    entry = law.fit_exponent(TS, y).to_dict()
    assert list(entry) == ["p", "ci", "resid_sd"] and entry["ci"] == list(
        law.fit_exponent(TS, y).conf_int())
    with pytest.raises(ValueError, match="level must be in"):
        law.fit_exponent(TS, y, level=95)


def _percentile(values: np.ndarray, q: float) -> float:
    """Linear interpolation between order statistics at position q (n - 1), by hand."""
    d = np.sort(values)
    h = q * (len(d) - 1)
    k = math.floor(h)
    return float(d[k] + (h - k) * (d[min(k + 1, len(d) - 1)] - d[k]))


def test_bootstrap_slope_interval_at_other_levels_matches_a_fit_made_at_that_level():
    fit = slope_fit()
    assert fit.alpha == 0.05 and len(fit.draws) == 400
    for alpha in (0.05, 0.1, 0.2, 0.5):
        direct = bootstrap_slope(N_VALUES, _losses(), "median", n_boot=400, seed=3, alpha=alpha)
        assert fit.conf_int(alpha) == direct.conf_int()
        np.testing.assert_allclose(
            fit.conf_int(alpha),
            (_percentile(fit.draws, alpha / 2), _percentile(fit.draws, 1 - alpha / 2)),
            rtol=1e-12)
    assert fit.params == {"slope": fit.slope, "intercept": fit.intercept}
    with pytest.raises(ValueError):  # the draws are read-only
        fit.draws[0] = 0.0


def test_bootstrap_slope_refuses_a_level_its_draws_cannot_give():
    fit = slope_fit()  # 400 draws: a tail of alpha / 2 needs alpha >= 0.005
    lo, hi = fit.conf_int(0.005)  # one draw per tail: still given
    assert fit.draws.min() <= lo < hi <= fit.draws.max()
    with pytest.raises(ValueError, match=r"alpha=0\.001 needs at least 2000 bootstrap slopes "
                                         r"for a percentile interval; this fit has 400"):
        fit.conf_int(0.001)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\); got 2"):
        bootstrap_slope(N_VALUES, _losses(), alpha=2)


def test_check_alpha_returns_a_float():
    assert check_alpha(np.float32(0.25)) == 0.25 and type(check_alpha(0.5)) is float
