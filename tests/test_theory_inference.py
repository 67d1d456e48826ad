"""Rate inference recovers known slopes and classifies known curve shapes."""

import numpy as np
import pytest

from moe_theory.inference import bootstrap_slope, compare_rate_models, local_slopes

N_VALUES = np.logspace(2, 5, 7)


def power_law_data(slope, reps=12, sd=0.3, seed=0):
    rng = np.random.default_rng(seed)
    n = np.repeat(N_VALUES, reps)
    return n, 2.0 * n**slope * np.exp(rng.normal(0, sd, n.size))


@pytest.mark.parametrize("stat", ["mean", "median"])
def test_bootstrap_slope_ci_covers_the_truth(stat):
    covered = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        losses = [2.0 * v**-0.5 * np.exp(rng.normal(0, 0.3, 40)) for v in N_VALUES]
        fit = bootstrap_slope(N_VALUES, losses, stat, n_boot=400, seed=seed)
        lo, hi = fit.conf_int()
        assert hi - lo < 0.1
        covered += lo <= -0.5 <= hi
    assert covered >= 8  # nominal 95%
    with pytest.raises(ValueError, match="mean' or 'median"):
        bootstrap_slope(N_VALUES, losses, "mode")


def test_model_comparison_classifies_power_law_log_rate_and_plateau():
    assert compare_rate_models(N_VALUES, 3 * N_VALUES**-0.5)["classification"] == "power law"
    log_rate = compare_rate_models(N_VALUES, 1.0 / np.log(N_VALUES))
    assert log_rate["classification"] == "sub-polynomial (log-like)"
    assert log_rate["kappa"] == pytest.approx(1.0, abs=1e-9)
    flat = 1.0 + 0.01 * np.random.default_rng(2).normal(size=N_VALUES.size)
    assert compare_rate_models(N_VALUES, flat)["classification"] == "plateau"
    assert compare_rate_models(N_VALUES[:3], N_VALUES[:3] ** -0.5)["classification"] == (
        "inconclusive")


def test_local_slopes_constant_for_power_law_and_shrinking_for_log_rate():
    power = [s["slope"] for s in local_slopes(N_VALUES, N_VALUES**-0.5)]
    np.testing.assert_allclose(power, -0.5, atol=1e-12)
    log_rate = [s["slope"] for s in local_slopes(N_VALUES, 1 / np.log(N_VALUES) ** 2)]
    assert np.all(np.diff(np.abs(log_rate)) < 0)  # -kappa / ln n shrinks in magnitude


def test_too_noisy_flat_curve_is_inconclusive_not_plateau():
    rng = np.random.default_rng(3)
    noisy = np.exp(rng.normal(0, 1.5, N_VALUES.size))  # no trend, but huge scatter
    res = compare_rate_models(N_VALUES, noisy)
    assert res["slope_ci"][0] < -0.25
    assert res["classification"] == "inconclusive"
