"""The Fisher prediction C of E[L_1] ~ C/sqrt(n), and the ratio CI built on it
(docs/theory-background.md#experiments and #fisher-check).

The reference is computed here, independently of moe_theory.mechanism: the Fisher information
by central differences of the regression function on a midpoint grid, the first-order
parameter error drawn from N(0, nu I^-1 / n) at a very large n, and the real Voronoi loss of
the perturbed atoms averaged and multiplied by sqrt(n).
"""

import numpy as np
import pytest

from moe_theory.inference import mean_ratio_ci
from moe_theory.mechanism import fisher_prediction
from moe_theory.model import regression
from moe_theory.settings import get_setting
from moe_theory.voronoi import voronoi_loss

NOISE_SD = 0.1


def independent_C(truth, noise_sd=NOISE_SD, n=1e10, draws=40_000, seed=2024):
    """Monte Carlo of sqrt(n) E[L_1(theta* + dtheta)], dtheta ~ N(0, nu I^-1 / n)."""
    theta = truth.theta
    x = (np.arange(4000) + 0.5) / 4000 * 2 - 1  # midpoint rule for U[-1, 1]
    X = x[:, None]
    h = 1e-6
    J = np.empty((x.size, theta.size))
    for k in range(theta.size):
        e = np.zeros(theta.size)
        e[k] = h
        J[:, k] = (regression(X, truth.with_theta(theta + e))
                   - regression(X, truth.with_theta(theta - e))) / (2 * h)
    info = J.T @ J / x.size
    cov = noise_sd**2 * np.linalg.inv(info) / n
    rng = np.random.default_rng(seed)
    dtheta = rng.multivariate_normal(np.zeros(theta.size), cov, size=draws)
    losses = voronoi_loss(theta + dtheta, theta, truth.dim).total
    return float(np.mean(losses) * np.sqrt(n)), float(np.std(losses) * np.sqrt(n / draws))


@pytest.mark.parametrize("gate", ["linear", "norga"])
@pytest.mark.parametrize("expert", ["affine", "tanh"])
def test_fisher_C_matches_an_independent_monte_carlo(gate, expert):
    from dataclasses import replace

    truth = replace(get_setting("exact").truth(gate, "tanh"), expert=expert)
    C_ref, C_se = independent_C(truth)
    C = fisher_prediction(truth, NOISE_SD)["C"]
    # MC standard error of the reference is ~0.3%; quadrature vs midpoint grid ~0.1%
    assert C == pytest.approx(C_ref, rel=0.02), (C, C_ref, C_se)


def test_fisher_ratio_ci_covers_one_under_the_first_order_distribution():
    """R = 12 draws of L_1 from its asymptotic law: the 95% CI of mean/C covers 1 ~95%."""
    truth = get_setting("exact").truth("norga", "tanh")
    C = fisher_prediction(truth, NOISE_SD)["C"]
    n, reps, sets = 1e10, 12, 2000
    from moe_theory.mechanism import fisher_information

    cov = NOISE_SD**2 * np.linalg.inv(fisher_information(truth)) / n
    rng = np.random.default_rng(7)
    dtheta = rng.multivariate_normal(np.zeros(cov.shape[0]), cov, size=reps * sets)
    losses = voronoi_loss(truth.theta + dtheta, truth.theta, truth.dim).total.reshape(sets, reps)
    predicted = C / np.sqrt(n)
    cover = 0
    for row in losses:
        _, lo, hi = mean_ratio_ci(row, predicted)
        cover += lo <= 1.0 <= hi
    assert 0.93 <= cover / sets <= 0.97


def test_mean_ratio_ci_by_hand():
    ratio, lo, hi = mean_ratio_ci(np.array([1.0, 2.0, 3.0]), 2.0)
    # mean 2, sd 1; the t(2) quantile has a closed form: (2p - 1) / sqrt(2 p (1 - p))
    p = 0.975
    half = (2 * p - 1) / np.sqrt(2 * p * (1 - p)) / np.sqrt(3) / 2.0
    assert ratio == 1.0
    assert (lo, hi) == pytest.approx((1 - half, 1 + half), rel=1e-12)
    assert np.isnan(mean_ratio_ci(np.array([1.0]), 2.0)[1])
    with pytest.raises(ValueError, match="reference must be positive"):
        mean_ratio_ci(np.ones(3), 0.0)
