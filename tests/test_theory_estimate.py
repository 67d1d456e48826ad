"""The batched Levenberg-Marquardt fitter and the scikit-learn style estimator."""

import warnings

import numpy as np
import pytest
from scipy.optimize import least_squares

from moe_theory.estimate import (
    ConvergenceWarning,
    LeastSquaresMoE,
    fit_batched,
    near_truth_starts,
)
from moe_theory.gates import Gate
from moe_theory.model import regression, regression_and_jacobian
from moe_theory.settings import default_truth
from moe_theory.simulate import simulate


def data(gate="norga", n=2000, reps=4, expert="affine", seed=3):
    truth = default_truth(Gate(gate), expert)
    X, Y = simulate(truth, n, list(range(reps)), seed=seed, setting="test")
    rng = np.random.default_rng(seed)
    starts = np.stack([near_truth_starts(truth, 1, 1, rng)[0] for _ in range(reps)])
    return truth, X, Y, starts


@pytest.mark.parametrize("gate", ["linear", "norga"])
def test_batched_fit_equals_fitting_each_replicate_alone(gate):
    truth, X, Y, starts = data(gate)
    batch = fit_batched(X, Y, starts, truth)
    for r in range(len(X)):
        alone = fit_batched(X[r : r + 1], Y[r : r + 1], starts[r : r + 1], truth)
        np.testing.assert_array_equal(alone.theta[0], batch.theta[r])
        assert alone.n_iter[0] == batch.n_iter[r]


@pytest.mark.parametrize("expert", ["affine", "tanh"])
@pytest.mark.parametrize("gate", ["linear", "norga"])
def test_fit_reaches_scipy_least_squares_optimum(gate, expert):
    truth, X, Y, starts = data(gate, n=500, reps=3, expert=expert)
    ours = fit_batched(X, Y, starts, truth)
    for r in range(3):
        def resid(th, r=r):
            return regression(X[r], truth.with_theta(th)) - Y[r]

        def jac(th, r=r):
            return regression_and_jacobian(X[r], th, truth)[1]

        ref = least_squares(resid, starts[r], jac=jac, method="lm", xtol=1e-12, ftol=1e-12,
                            gtol=1e-12, max_nfev=400)
        assert ours.converged[r]
        assert ours.rss[r] == pytest.approx(2 * ref.cost, rel=1e-9)
        np.testing.assert_allclose(ours.theta[r], ref.x, atol=1e-5)


def test_fit_recovers_the_truth_at_large_n():
    truth, X, Y, starts = data("norga", n=200_000, reps=2)
    res = fit_batched(X, Y, starts, truth)
    assert res.converged.all()
    np.testing.assert_allclose(res.theta, np.tile(truth.theta, (2, 1)), atol=0.05)
    # RSS / n estimates the noise variance 0.1^2
    np.testing.assert_allclose(res.rss / X.shape[1], 0.01, rtol=0.02)


def test_bounded_fit_stays_in_the_box_and_flags_the_bound():
    truth, X, Y, starts = data("norga", n=300, reps=3)
    res = fit_batched(X, Y, starts, truth, bound=1.5)  # the truth (beta1=2, a=-2) is outside
    assert np.all(np.abs(res.theta) <= 1.5)
    assert res.at_bound.all()


def test_iteration_cap_is_flagged_and_warned_never_dropped():
    truth, X, Y, _ = data("linear", n=300, reps=3)
    est = LeastSquaresMoE("linear", truth=truth, max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        est.fit(X, Y)
    assert est.theta_.shape == (3, 4) and not est.converged_.any()
    assert np.all(est.n_iter_ == 2)


def test_estimator_follows_sklearn_conventions():
    truth, X, Y, _ = data("norga", n=1000, reps=1)
    est = LeastSquaresMoE("norga", "tanh", truth=truth, n_init=3, random_state=7)
    assert not hasattr(est, "theta_")  # __init__ only stores
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert est.fit(X[0], Y[0]) is est
    assert est.theta_.shape == (4,) and est.converged_ and est.loss_ > 0
    np.testing.assert_allclose(est.predict(X[0]), regression(X[0], est.params_))
    # the best of 3 restarts is at least as good as each single restart
    for k in range(3):
        starts = near_truth_starts(truth, 1, 3, np.random.default_rng(7))
        single = LeastSquaresMoE("norga", truth=truth, n_init=1, init=starts[k : k + 1])
        assert est.loss_ <= single.fit(X[0], Y[0]).loss_ + 1e-12


def test_near_truth_starts_cover_every_true_atom_and_split_masses():
    truth = default_truth(Gate("norga"))
    starts = near_truth_starts(truth, 3, 50, np.random.default_rng(0), scale=0.0)
    atoms = starts.reshape(50, 3, 4)
    np.testing.assert_allclose(np.exp(atoms[:, :, 0]).sum(axis=1), 1.0)  # masses add up
    np.testing.assert_allclose(atoms[:, :, 1:], np.broadcast_to(truth.theta[1:], (50, 3, 3)))
    with pytest.raises(ValueError, match="n_fitted"):
        near_truth_starts(truth, 0, 1, np.random.default_rng(0))
