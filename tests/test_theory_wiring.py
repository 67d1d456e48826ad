"""How the theory pieces are wired: restarts on a problem with distinct local minima, and the
``L_{1,r}`` loss term by term (``|a|^r + |b|^r``, not ``||(a, b)||^r``)."""

from __future__ import annotations

import numpy as np
import pytest

from moe_theory.estimate import FitResult, _keep_better, fit_batched, fit_restarts
from moe_theory.gates import Gate
from moe_theory.settings import default_truth
from moe_theory.simulate import simulate
from moe_theory.voronoi import voronoi_loss

TRUE = np.array([0.0, 2.0, -2.0, 1.0])  # one atom in d = 1: (beta0, beta1, a, b)


@pytest.fixture(scope="module")
def two_minima():
    """Data of the NoRGa-gate truth and two starts that converge to different minima."""
    truth = default_truth(Gate("norga"), "affine")
    X, Y = simulate(truth, 300, [0], seed=3, setting="test")
    starts = np.random.default_rng(0).uniform(-4, 4, size=(12, 4))
    good, bad = starts[0], starts[4]
    fits = [fit_batched(X, Y, s[None], truth, backend="numpy") for s in (good, bad)]
    return truth, X, Y, good, bad, fits


def test_the_two_starts_reach_distinct_minima(two_minima):
    _, _, _, _, _, (good, bad) = two_minima
    assert good.converged[0] and bad.converged[0]
    assert bad.rss[0] > 10 * good.rss[0]
    assert np.abs(bad.theta - good.theta).max() > 1.0


def test_restarts_keep_the_lower_minimum_whatever_the_order(two_minima):
    truth, X, Y, good_start, bad_start, (good, _) = two_minima
    starts = np.stack([[good_start, bad_start], [bad_start, good_start]])  # (R=2, 2, P)
    best = fit_restarts(np.concatenate([X, X]), np.concatenate([Y, Y]), starts, truth,
                        backend="numpy")
    for r in range(2):
        np.testing.assert_array_equal(best.theta[r], good.theta[0])
        assert best.rss[r] == good.rss[0] and best.n_iter[r] == good.n_iter[0]
        assert best.converged[r]


def _result(rss: list[float], tag: float) -> FitResult:
    R = len(rss)
    return FitResult(theta=np.full((R, 4), tag), rss=np.array(rss), n_iter=np.full(R, int(tag)),
                     converged=np.full(R, tag > 1), at_bound=np.full(R, tag > 1),
                     stalled=np.full(R, tag > 1))


def test_keep_better_picks_per_replicate_and_keeps_the_first_on_ties():
    a, b = _result([1.0, 2.0, 3.0], 1.0), _result([2.0, 1.0, 3.0], 2.0)
    kept = _keep_better(a, b)
    np.testing.assert_array_equal(kept.rss, [1.0, 1.0, 3.0])
    np.testing.assert_array_equal(kept.theta[:, 0], [1.0, 2.0, 1.0])  # tie -> a
    np.testing.assert_array_equal(kept.n_iter, [1, 2, 1])
    np.testing.assert_array_equal(kept.converged, [False, True, False])
    np.testing.assert_array_equal(kept.at_bound, [False, True, False])
    np.testing.assert_array_equal(kept.stalled, [False, True, False])


@pytest.mark.parametrize("r", [1.0, 3.0])
def test_l1r_sums_each_coordinate_group_to_the_power_r(r):
    """beta1, a and b off by 0.1, 0.3, 0.4 and the mass doubled: with r != 2,
    ``|0.3|^r + |0.4|^r`` differs from ``||(0.3, 0.4)||^r = 0.5^r``."""
    atoms = TRUE + np.array([np.log(2.0), 0.1, 0.3, 0.4])
    w = 2.0
    want = abs(w - 1.0) + w * (0.1**r + 0.3**r + 0.4**r)
    not_this = abs(w - 1.0) + w * (0.1**r + 0.5**r)
    got = voronoi_loss(atoms, TRUE, 1, r=r).loss_r[0]
    assert got == pytest.approx(want, rel=1e-12)
    assert abs(got - not_this) > 0.01


def test_l1r_uses_vector_norms_within_a_group_in_two_dimensions():
    """d = 2: ``||delta a||^r`` is the Euclidean norm of the a-vector, to the power r."""
    true2 = np.array([0.0, 1.0, 2.0, -1.0, 0.5, 0.3])  # beta0, beta1 (2), a (2), b
    fitted = true2 + np.array([0.0, 0.3, 0.4, 0.6, 0.8, 0.2])
    got = voronoi_loss(fitted, true2, 2, r=1.0).loss_r[0]
    assert got == pytest.approx(0.5 + 1.0 + 0.2, rel=1e-12)
