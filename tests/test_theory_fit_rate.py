"""fit_rate: its slope CI covers the true slope at the nominal rate in the designs of issue 13.

Coverage is checked by simulation (2000 seeded data sets per design) through the vectorised
:func:`rate_slope_intervals`, which is itself checked against :func:`fit_rate` and against an
independent weighted least-squares computation written here.
"""

import warnings

import numpy as np
import pytest
from scipy import stats

from moe_theory.inference import WLS_MIN_REPLICATES, fit_rate, rate_slope_intervals
from moe_theory.rates.sweep import n_grid

TRUE_SLOPE = -0.5
DRAWS = 2000
# The n that enter the slope fits (n >= 1000) of the quick (G = 5) and paper (G = 13) presets.
QUICK_N = np.array([v for v in n_grid(100, 100_000, 7) if v >= 1000], dtype=float)
PAPER_N = np.array([v for v in n_grid(100, 100_000, 20) if v >= 1000], dtype=float)


def simulate(n_values, reps, noise, seed, draws=DRAWS):
    """``(draws, G, R)`` values of log L_1 under a true power law with slope -1/2."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    G = len(n_values)
    if noise == "gaussian":
        e = rng.normal(0.0, 0.6, (draws, G, reps))
    elif noise in ("hetero-up", "hetero-down"):
        # sd from 0.6/sqrt(3) to 0.6*sqrt(3): a factor 3 across n
        sd = 0.6 * 3.0 ** np.linspace(-0.5, 0.5, G)
        e = rng.normal(0.0, 1.0, (draws, G, reps)) * (sd if noise == "hetero-up" else sd[::-1])[
            None, :, None]
    elif noise == "student-t3":
        e = rng.standard_t(3, (draws, G, reps)) * 0.6 / np.sqrt(3.0)  # sd 0.6
    else:
        raise ValueError(noise)
    return 0.7 + TRUE_SLOPE * np.log(n_values)[None, :, None] + e


DESIGNS = [
    (name, n_values, reps, noise)
    for name, n_values, reps in (("G5-R12", QUICK_N, 12), ("G13-R40", PAPER_N, 40))
    for noise in ("gaussian", "hetero-up", "hetero-down", "student-t3")
]


@pytest.mark.parametrize("name, n_values, reps, noise", DESIGNS,
                         ids=[f"{d[0]}-{d[3]}" for d in DESIGNS])
def test_slope_ci_covers_the_true_slope_93_to_97_percent(name, n_values, reps, noise):
    assert len(n_values) == {"G5-R12": 5, "G13-R40": 13}[name]
    log_loss = simulate(n_values, reps, noise, seed=[13, len(n_values), reps, len(noise)])
    slope, lo, hi = rate_slope_intervals(n_values, log_loss)
    coverage = np.mean((lo <= TRUE_SLOPE) & (TRUE_SLOPE <= hi))
    assert 0.93 <= coverage <= 0.97, f"{name} {noise}: coverage {coverage:.3f}"
    assert abs(np.mean(slope) - TRUE_SLOPE) < 0.01  # unbiased


def test_few_replicates_fall_back_to_equal_weights_and_still_cover():
    log_loss = simulate(QUICK_N, 3, "gaussian", seed=5)
    _, lo, hi = rate_slope_intervals(QUICK_N, log_loss)
    assert 0.93 <= np.mean((lo <= TRUE_SLOPE) & (TRUE_SLOPE <= hi)) <= 0.97


def test_90_percent_level_covers_90_percent():
    log_loss = simulate(PAPER_N, 40, "gaussian", seed=7)
    _, lo, hi = rate_slope_intervals(PAPER_N, log_loss, level=0.90)
    assert 0.88 <= np.mean((lo <= TRUE_SLOPE) & (TRUE_SLOPE <= hi)) <= 0.92


def independent_wls(n_values, log_loss, weighted, alpha=0.05):
    """Weighted LS of per-n means on log n by the normal equations, t(G-2) interval."""
    x = np.log(n_values)
    means = log_loss.mean(axis=1)
    R = log_loss.shape[1]
    w = R / log_loss.var(axis=1, ddof=1) if weighted else np.ones(len(x))
    A = np.column_stack([np.ones_like(x), x])
    cov_unscaled = np.linalg.inv(A.T @ (w[:, None] * A))
    beta = cov_unscaled @ A.T @ (w * means)
    resid = means - A @ beta
    scale = (w * resid**2).sum() / (len(x) - 2)
    half = stats.t.ppf(1 - alpha / 2, len(x) - 2) * np.sqrt(scale * cov_unscaled[1, 1])
    return beta, (beta[1] - half, beta[1] + half)


@pytest.mark.parametrize("reps", [3, 12])
def test_fit_rate_matches_an_independent_computation_and_the_batched_version(reps):
    log_loss = simulate(QUICK_N, reps, "hetero-up", seed=3, draws=5)
    slope_b, lo_b, hi_b = rate_slope_intervals(QUICK_N, log_loss)
    for k in range(5):
        n = np.repeat(QUICK_N, reps)
        fit = fit_rate(n, np.exp(log_loss[k].ravel()))
        assert fit.method == ("wls-means" if reps >= WLS_MIN_REPLICATES else "ols-means")
        beta, ci = independent_wls(QUICK_N, log_loss[k], weighted=reps >= WLS_MIN_REPLICATES)
        assert fit.slope == pytest.approx(beta[1], rel=1e-10)
        assert fit.intercept == pytest.approx(beta[0], rel=1e-10)
        np.testing.assert_allclose(fit.conf_int(), ci, rtol=1e-10)
        np.testing.assert_allclose(fit.conf_int(0.05), (lo_b[k], hi_b[k]), rtol=1e-10)
        assert fit.slope == pytest.approx(slope_b[k], rel=1e-10)
        np.testing.assert_allclose(fit.conf_int(), fit.results.conf_int(0.05)[1], rtol=1e-12)


def test_rate_fit_api():
    rng = np.random.default_rng(0)
    n = np.repeat(QUICK_N, 12)
    loss = 3.0 * n**-0.5 * np.exp(rng.normal(0, 0.6, n.size))
    shuffled = rng.permutation(n.size)  # row order does not matter
    fit = fit_rate(n[shuffled], loss[shuffled], level=0.9)
    ref = fit_rate(n, loss)
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
    lo90, hi90 = fit.conf_int()
    lo95, hi95 = fit.conf_int(alpha=0.05)
    assert lo95 < lo90 < fit.slope < hi90 < hi95
    np.testing.assert_allclose((lo95, hi95), ref.conf_int(), rtol=1e-12)
    assert fit.df_resid == 3 and fit.bse > 0
    assert fit.n_values == tuple(QUICK_N) and fit.replicates == (12,) * 5
    text = fit.summary()
    assert f"{fit.slope:+.3f}" in text and "90% CI" in text and "t(3)" in text
    # exact power law: zero residuals, the CI collapses on the slope
    exact = fit_rate(n, 3.0 * n**-0.5 * np.tile(np.exp(np.linspace(-1, 1, 12)), 5))
    assert exact.slope == pytest.approx(-0.5, abs=1e-12)
    np.testing.assert_allclose(exact.conf_int(), -0.5, atol=1e-10)


def test_fit_rate_rejects_bad_input():
    n = np.repeat(QUICK_N, 3)
    with pytest.raises(ValueError, match="three distinct n"):
        fit_rate(np.full(4, 100.0), np.ones(4))
    with pytest.raises(ValueError, match="finite and positive"):
        fit_rate(n, np.r_[0.0, np.ones(n.size - 1)])
    with pytest.raises(ValueError, match="equal length"):
        fit_rate(n, np.ones(n.size - 1))
    with pytest.raises(ValueError, match="level must be in"):
        fit_rate(n, np.ones(n.size), level=95)


def test_two_values_of_n_are_refused_with_the_values_named():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # G = 2 used to give an infinite CI and a 0-division
        with pytest.raises(ValueError, match=r"three distinct n values .* got 2 \(100, 1000\)"):
            fit_rate(np.repeat([100.0, 1000.0], 3), np.exp(np.arange(6.0)))


def _weighted_by_hand(n_values, log_loss, floor_fraction):
    """Slope of the per-n means with weights R / max(s^2, floor_fraction * median s^2)."""
    x = np.log(n_values)
    var = log_loss.var(axis=1, ddof=1)
    w = log_loss.shape[1] / np.maximum(var, floor_fraction * np.median(var))
    means = log_loss.mean(axis=1)
    xm, ym = np.average(x, weights=w), np.average(means, weights=w)
    return np.sum(w * (x - xm) * (means - ym)) / np.sum(w * (x - xm) ** 2)


def test_a_zero_or_tiny_variance_at_one_n_neither_switches_nor_dominates_the_fit():
    rng = np.random.default_rng(11)
    log_loss = 0.7 - 0.5 * np.log(QUICK_N)[:, None] + rng.normal(0, 0.6, (len(QUICK_N), 12))
    log_loss[-1] = log_loss[-1].mean() + 0.9  # the largest n: all replicates equal, off the line
    n = np.repeat(QUICK_N, 12)
    zero = fit_rate(n, np.exp(log_loss.ravel()))
    jitter = log_loss.copy()
    jitter[-1] += 1e-12 * np.arange(12)
    tiny = fit_rate(n, np.exp(jitter.ravel()))
    assert zero.method == tiny.method == "wls-means"  # no silent switch to equal weights
    assert zero.slope == pytest.approx(tiny.slope, abs=1e-9)  # the floor binds for both
    assert zero.slope == pytest.approx(_weighted_by_hand(QUICK_N, log_loss, 0.1), rel=1e-9)
    assert zero.variance_floor == pytest.approx(0.1 * np.median(log_loss.var(axis=1, ddof=1)))
    # the floored n weighs 10x a median n, not 1e20x: the slope stays between the fits
    # without that n and the one the n alone would force
    rest = fit_rate(n[:-12], np.exp(log_loss[:-1].ravel()))
    assert rest.slope < zero.slope < rest.slope + 0.9 / np.log(QUICK_N[-1] / QUICK_N[0]) * 2


def test_all_or_mostly_capped_input_is_flagged():
    n = np.repeat(QUICK_N, 8)
    flat = np.full(n.size, 0.3) * np.exp(np.tile(np.linspace(-0.01, 0.01, 8), len(QUICK_N)))
    assert fit_rate(n, flat).capped_flag is None  # nothing said about the fits
    every = fit_rate(n, flat, capped=np.ones(n.size, bool))
    assert every.capped_flag == "all capped" and every.capped_fraction == 1.0
    assert "all capped (100%)" in every.summary()
    most = np.arange(n.size) % 4 != 0  # 75%
    assert fit_rate(n, flat, capped=most).capped_flag == "mostly capped"
    assert fit_rate(n, flat, capped=~most).capped_flag is None  # 25%
    with pytest.raises(ValueError, match="one entry per fit"):
        fit_rate(n, flat, capped=most[:-1])
