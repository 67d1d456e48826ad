"""The batched LM of ``moe_theory.estimate`` step by step against a scalar LM written out here.

The reference below follows the documented algorithm (Marquardt's diagonal scaling, Nielsen's
damping update, MINPACK-style ``ftol``/``xtol``/``gtol`` tests, the stall threshold, a box by
an active set) for one data set at a time, with plain loops. The fitter must reproduce its
iterates, RSS, iteration counts and flags, also when capped after every single iteration.
The test problems are hand-made (a Rosenbrock valley with an offset residual, so that steps are
rejected and the optimum has RSS > 0), independent of the prefix-MoE model.
"""

from __future__ import annotations

import numpy as np
import pytest

from moe_theory.estimate import (
    LAMBDA_STALL,
    FitResult,
    _levenberg_marquardt,
    fit_restarts,
    fit_status,
)

# ---------------------------------------------------------------------------------------------
# problems


def rosen_residual(theta: np.ndarray, c: float, s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Residuals ``r(theta)`` and their Jacobian ``dr/dtheta`` of a shifted Rosenbrock valley.

    ``r = [10 (t1 - t0^2), c - t0, 0.25 + 0.125 t0]``: minimum near ``(c, c^2)``, with RSS > 0
    unless ``c = -2``.
    """
    t0, t1 = theta
    r = np.array([10.0 * (t1 - t0**2), c - t0, 0.25 + 0.125 * t0])
    J = np.array([[-20.0 * t0, 10.0], [-1.0, 0.0], [0.125, 0.0]])
    return s * r, s * J


def normal_equations(theta: np.ndarray, c: float, s: float = 1.0
                     ) -> tuple[float, np.ndarray, np.ndarray]:
    """``(RSS, J^T J, J^T (Y - g))`` in the fitter's convention: residual ``Y - g = r``, so
    ``J_g = -dr/dtheta`` and the gradient term is ``-J_r^T r``."""
    r, J = rosen_residual(theta, c, s)
    return float(r @ r), J.T @ J, -J.T @ r


class Rosenbrock:
    """The batched problem interface of ``_levenberg_marquardt`` (``evaluate``), replicate
    ``i`` with offset ``cs[i]``; records every call."""

    def __init__(self, cs: list[float], s: float = 1.0) -> None:
        self.cs = cs
        self.s = s
        self.calls: list[tuple[list[int], bool]] = []
        self.points: list[np.ndarray] = []

    def evaluate(self, theta, rows, jacobian):
        self.calls.append((list(rows), jacobian))
        self.points.append(np.array(theta))
        out = [normal_equations(th, self.cs[r], self.s) for th, r in zip(theta, rows, strict=True)]
        rss = np.array([o[0] for o in out])
        if not jacobian:
            return rss, None, None
        return rss, np.stack([o[1] for o in out]), np.stack([o[2] for o in out])


# ---------------------------------------------------------------------------------------------
# the reference LM, one data set, loops written out


def reference_lm(c, theta0, *, max_iter, ftol, xtol, gtol, bound=None, s=1.0):
    """Scalar LM; returns theta, rss, n_iter, converged, stalled and a trace of the damping."""
    th = np.array(theta0, dtype=float)
    if bound is not None:
        th = np.clip(th, -bound, bound)
    P = th.size
    rss, A, b = normal_equations(th, c, s)
    n_iter, lam, nu = 1, 1e-3, 2.0
    trace = {"lam": [], "accepted": []}

    def gradient_small(rss, A, b):
        col = np.sqrt(np.maximum(np.diag(A), 1e-300))
        return np.max(np.abs(b) / col) / np.sqrt(max(rss, 1e-300)) <= gtol

    if gradient_small(rss, A, b):
        return th, rss, n_iter, True, False, trace
    while True:
        Am, bm = A.copy(), b.copy()
        if bound is not None:
            for i in range(P):
                if (th[i] <= -bound and b[i] < 0) or (th[i] >= bound and b[i] > 0):
                    Am[i, :] = 0.0
                    Am[:, i] = 0.0
                    Am[i, i] = 1.0
                    bm[i] = 0.0
        d = np.diag(Am)
        scale = np.maximum(d, 1e-12 * d.max() + 1e-300)
        step = np.linalg.solve(Am + lam * np.diag(scale), bm)
        trial = th + step
        if bound is not None:
            trial = np.clip(trial, -bound, bound)
            step = trial - th
        new_rss, new_A, new_b = normal_equations(trial, c, s)
        predicted = 2.0 * step @ bm - step @ Am @ step
        actual = rss - new_rss
        rho = actual / predicted if predicted > 0 else -1.0
        accept = rho > 0 and np.isfinite(new_rss)
        if accept:
            lam *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
            nu = 2.0
        else:
            lam *= nu
            nu *= 2.0
        trace["lam"].append(lam)
        trace["accepted"].append(bool(accept))
        x_small = np.linalg.norm(step) <= xtol * (xtol + np.linalg.norm(th))
        f_small = accept and actual <= ftol * max(new_rss, 1e-300) and rho > 0.25
        if accept:
            th, rss, A, b = trial, new_rss, new_A, new_b
        blown = not np.isfinite(lam) or lam > 1e16
        dead = not np.isfinite(lam) or lam > 1e300
        if f_small or (x_small and not blown):
            return th, rss, n_iter, True, False, trace
        if dead or (x_small and blown):
            return th, rss, n_iter, False, True, trace
        if n_iter >= max_iter and (accept or blown):
            return th, rss, n_iter, False, False, trace
        if accept:
            n_iter += 1
            if gradient_small(rss, A, b):
                return th, rss, n_iter, True, False, trace


CS = [1.0, 0.5, -0.7, 1.3]
STARTS = np.array([[-1.2, 1.0], [0.0, 0.0], [2.0, -1.0], [-0.5, 2.5]])


def run(cs, starts, s=1.0, **kw) -> tuple[FitResult, Rosenbrock]:
    prob = Rosenbrock(cs, s)
    kw = {"bound": None, "max_iter": 400, "ftol": 1e-12, "xtol": 1e-12, "gtol": 1e-12} | kw
    return _levenberg_marquardt(prob, starts, **kw), prob


def assert_matches_reference(res: FitResult, cs, starts, **kw) -> list[dict]:
    kw = {"max_iter": 400, "ftol": 1e-12, "xtol": 1e-12, "gtol": 1e-12} | kw
    traces = []
    for r, (c, s) in enumerate(zip(cs, starts, strict=True)):
        th, rss, n_iter, conv, stall, trace = reference_lm(c, s, **kw)
        np.testing.assert_allclose(res.theta[r], th, rtol=1e-9, atol=1e-12)
        assert res.rss[r] == pytest.approx(rss, rel=1e-9, abs=1e-300)
        assert (res.n_iter[r], res.converged[r], res.stalled[r]) == (n_iter, conv, stall), r
        traces.append(trace)
    return traces


# ---------------------------------------------------------------------------------------------
# tests


def test_full_fits_follow_the_reference_lm_replicate_by_replicate():
    res, prob = run(CS, STARTS)
    traces = assert_matches_reference(res, CS, STARTS)
    # the problem exercises both branches of the damping update, and ends at RSS > 0
    assert any(not a for t in traces for a in t["accepted"])
    assert res.converged.all() and not res.stalled.any()
    assert (res.rss > 0.01).all()
    np.testing.assert_allclose(res.theta[:, 1], res.theta[:, 0] ** 2, atol=1e-3)
    assert res.status.tolist() == ["converged"] * 4
    assert not res.at_bound.any() and res.at_bound.shape == (4,)
    # replicates stop at different iterations, so later passes evaluate only the running rows
    assert len(set(res.n_iter.tolist())) > 1
    assert any(len(rows) < 4 for rows, _ in prob.calls)
    assert prob.calls[0] == ([0, 1, 2, 3], True)


@pytest.mark.parametrize("max_iter", [1, 2, 3, 4, 6, 9])
def test_every_iterate_is_the_reference_one_when_capped(max_iter):
    """Capped after k Jacobian evaluations: pins the first damping, the update schedule and
    the step of every iteration, not only the optimum."""
    res, _ = run(CS, STARTS, max_iter=max_iter)
    assert_matches_reference(res, CS, STARTS, max_iter=max_iter)
    assert (res.n_iter <= max_iter).all()
    capped = ~res.converged & ~res.stalled
    assert capped.any()
    assert (res.n_iter[capped] == max_iter).all()
    assert set(res.status[capped]) == {"capped"}


def test_first_step_uses_the_first_damping_relative_to_the_diagonal():
    """After one capped iteration from a point where the step is accepted, theta is the
    Marquardt step with lambda = 1e-3 times diag(J^T J)."""
    start = np.array([[0.5, 0.5]])
    res, _ = run([1.0], start, max_iter=1)
    rss, A, b = normal_equations(start[0], 1.0)
    step = np.linalg.solve(A + 1e-3 * np.diag(np.diag(A)), b)
    np.testing.assert_allclose(res.theta[0], start[0] + step, rtol=1e-12)
    assert normal_equations(res.theta[0], 1.0)[0] < rss  # accepted
    assert res.rss[0] == pytest.approx(normal_equations(res.theta[0], 1.0)[0], rel=1e-14)


@pytest.mark.parametrize(
    "tols",
    [
        {"ftol": 1e-6, "xtol": 0.0, "gtol": 0.0},
        {"ftol": 0.0, "xtol": 1e-5, "gtol": 0.0},
        {"ftol": 0.0, "xtol": 0.0, "gtol": 1e-4},
        {"ftol": 1e-3, "xtol": 1e-3, "gtol": 1e-3},
    ],
)
def test_each_convergence_test_alone_stops_where_the_reference_stops(tols):
    res, _ = run(CS, STARTS, **tols)
    assert_matches_reference(res, CS, STARTS, **tols)
    assert res.converged.all()


def test_loose_tolerances_stop_earlier_than_tight_ones():
    loose, _ = run(CS, STARTS, ftol=1e-4, xtol=1e-4, gtol=1e-4)
    tight, _ = run(CS, STARTS)
    assert (loose.n_iter <= tight.n_iter).all() and (loose.n_iter < tight.n_iter).any()


def test_a_start_at_a_stationary_point_converges_by_the_gradient_test_at_once():
    # c = -2 and theta = (-2, 4) zero all three residuals exactly: gradient 0
    res, prob = run([-2.0], np.array([[-2.0, 4.0]]))
    assert res.converged[0] and res.n_iter[0] == 1 and res.rss[0] == 0.0
    np.testing.assert_array_equal(res.theta, [[-2.0, 4.0]])
    assert prob.calls == [([0], True)]


@pytest.mark.parametrize("bound", [0.8, 1.1])
def test_box_constrained_fits_follow_the_reference_active_set(bound):
    cs = [1.0, 1.2, -0.9, 0.3]  # (c, c^2) outside the box for the first three
    starts = np.array([[0.0, 0.0], [0.5, 0.5], [0.5, 0.2], [2.0, 3.0]])  # the last one clipped
    res, prob = run(cs, starts, bound=bound)
    assert_matches_reference(res, cs, starts, bound=bound)
    assert np.abs(res.theta).max() <= bound
    np.testing.assert_array_equal(res.at_bound, np.any(np.abs(res.theta) >= bound - 1e-9, axis=1))
    assert res.at_bound[1] and res.at_bound.sum() < 4
    np.testing.assert_array_equal(prob.points[0], starts.clip(-bound, bound))


def test_unbounded_fits_never_report_the_bound():
    res, _ = run([1.0, 5.0], np.array([[4.0, 20.0], [4.5, 21.0]]))
    assert not res.at_bound.any() and res.at_bound.dtype == bool


class RejectEverything:
    """Every step raises the RSS: the damping grows until the fit stalls."""

    def __init__(self, start):
        self.start = start
        self.jac_calls = 0

    def evaluate(self, theta, rows, jacobian):
        rss = 1.0 + 1e6 * np.sum((theta - self.start[rows]) ** 2, axis=1)
        k, P = theta.shape
        if not jacobian:
            return rss, None, None
        self.jac_calls += 1
        return rss, np.broadcast_to(np.eye(P), (k, P, P)).copy(), np.ones((k, P))


def test_rejected_steps_grow_the_damping_geometrically_until_the_fit_stalls():
    """lambda_k = 1e-3 * 2 * 4 * ... * 2^k: the fit stalls at the first k where the step is
    x-small with lambda > LAMBDA_STALL; the trial after a rejection is evaluated without the
    Jacobian, and the iteration count stays 1."""
    start = np.array([[1.0, -2.0, 0.5]])
    prob = RejectEverything(start)
    res = _levenberg_marquardt(prob, start, bound=None, max_iter=3, ftol=1e-12, xtol=1e-12,
                               gtol=1e-12)
    lam, nu, k = 1e-3, 2.0, 0
    while True:  # step = 1 / (1 + lam) per coordinate, theta norm fixed
        lam, nu, k = lam * nu, nu * 2, k + 1
        step = np.sqrt(3) / (1 + lam)
        if step <= 1e-12 * (1e-12 + np.linalg.norm(start)) and lam > 1e16:
            break
    assert res.stalled[0] and not res.converged[0] and res.status[0] == "stalled"
    assert res.n_iter[0] == 1
    assert prob.jac_calls == 2  # the start, and the first (speculative) trial
    np.testing.assert_array_equal(res.theta, start)
    assert res.rss[0] == 1.0
    assert LAMBDA_STALL == 1e16
    assert k > 5


def test_rejections_never_end_a_capped_fit_early():
    """max_iter counts Jacobian evaluations: at the cap a rejected step is retried."""
    res, _ = run(CS, STARTS, max_iter=2)
    traces = assert_matches_reference(res, CS, STARTS, max_iter=2)
    assert any(not all(t["accepted"]) for t in traces)


def test_fit_status_of_each_combination():
    got = fit_status(np.array([True, True, False, False]), np.array([True, False, True, False]))
    assert got.tolist() == ["converged", "converged", "stalled", "capped"]
    assert fit_status([0, 1], [1, 0]).tolist() == ["stalled", "converged"]


# ---------------------------------------------------------------------------------------------
# restarts


class Quartic:
    """One parameter, ``r = [t^2 - 1, 0.3 t + s]``: two minima near t = +-1 with different RSS
    (the ``0.3 t`` term tilts the valley by replicate offset ``s``)."""

    def __init__(self, shifts):
        self.shifts = np.asarray(shifts, dtype=float)

    def evaluate(self, theta, rows, jacobian):
        t = theta[:, 0]
        r = np.stack([t**2 - 1, 0.3 * t + self.shifts[rows]], axis=1)
        J = np.stack([2 * t, np.full_like(t, 0.3)], axis=1)[:, :, None]  # dr/dt (k, 2, 1)
        rss = np.sum(r * r, axis=1)
        if not jacobian:
            return rss, None, None
        return rss, np.matmul(np.swapaxes(J, 1, 2), J), -np.matmul(np.swapaxes(J, 1, 2),
                                                                   r[:, :, None])[..., 0]


def test_restarts_keep_the_lower_rss_per_replicate(monkeypatch):
    from moe_theory import estimate

    prob = Quartic([0.2, -0.2, 0.0])
    monkeypatch.setattr(estimate, "_make_problem", lambda *a, **k: prob)
    starts = np.array([[[1.5], [-1.5]], [[1.5], [-1.5]], [[0.9], [-0.9]]])
    best = fit_restarts(None, None, starts, None, max_iter=50, tol=1e-10)
    singles = [
        _levenberg_marquardt(prob, starts[:, k], bound=None, max_iter=50, ftol=1e-10, xtol=1e-10,
                             gtol=1e-10)
        for k in range(2)
    ]
    # shift +0.2 prefers t ~ -1, shift -0.2 prefers t ~ +1, no shift: a tie, keep the first
    assert singles[0].rss[0] > singles[1].rss[0] and singles[0].rss[1] < singles[1].rss[1]
    assert singles[0].rss[2] == singles[1].rss[2]
    for r, k in enumerate([1, 0, 0]):
        np.testing.assert_array_equal(best.theta[r], singles[k].theta[r])
        assert best.rss[r] == singles[k].rss[r] and best.n_iter[r] == singles[k].n_iter[r]
    assert best.theta[2, 0] > 0


def test_restarts_pass_the_tolerance_and_cap_on(monkeypatch):
    from moe_theory import estimate

    prob = Rosenbrock(CS)
    monkeypatch.setattr(estimate, "_make_problem", lambda *a, **k: prob)
    for kw in ({"max_iter": 3, "tol": 1e-12}, {"max_iter": 400, "tol": 1e-3}):
        best = fit_restarts(None, None, STARTS[:, None], None, bound=None, **kw)
        assert_matches_reference(best, CS, STARTS, max_iter=kw["max_iter"], ftol=kw["tol"],
                                 xtol=kw["tol"], gtol=kw["tol"])
    best = fit_restarts(None, None, STARTS[:, None], None, bound=0.8)
    assert np.abs(best.theta).max() <= 0.8


def test_restarts_without_any_start_are_refused(monkeypatch):
    from moe_theory import estimate

    monkeypatch.setattr(estimate, "_make_problem", lambda *a, **k: Rosenbrock(CS))
    with pytest.raises(ValueError, match="^starts must hold at least one starting point per "
                                         "replicate$"):
        fit_restarts(None, None, np.zeros((4, 0, 2)), None)


def _spy_on_problem_and_lm(monkeypatch) -> dict:
    """Record what the fitters hand to ``_make_problem`` and ``_levenberg_marquardt`` (which
    still run, on the Rosenbrock problem)."""
    from moe_theory import estimate

    seen = {}

    def make(X, Y, shape, structure, chunk, backend, threads):
        seen.update(shape=shape, chunk=chunk, backend=backend, threads=threads)
        return Rosenbrock(CS)

    real_lm = estimate._levenberg_marquardt

    def lm(problem, theta0, **kw):
        seen.update(kw, dtype=theta0.dtype)
        return real_lm(problem, theta0, **kw)

    monkeypatch.setattr(estimate, "_make_problem", make)
    monkeypatch.setattr(estimate, "_levenberg_marquardt", lm)
    return seen


def test_restart_defaults_reach_the_problem_and_the_lm(monkeypatch):
    from moe_theory import estimate

    seen = _spy_on_problem_and_lm(monkeypatch)
    fit_restarts(None, None, STARTS[:, None].tolist(), None)
    assert seen == {"shape": (4, 2), "chunk": estimate.SAMPLE_CHUNK, "backend": "auto",
                    "threads": 1, "bound": None, "max_iter": 400, "ftol": 1e-12,
                    "xtol": 1e-12, "gtol": 1e-12, "dtype": np.float64}


@pytest.mark.parametrize("tols", [{}, {"ftol": 0.0, "xtol": 0.0, "gtol": 1e-4}])
def test_a_problem_with_tiny_curvature_follows_the_reference(tols):
    """Residuals scaled by 1e-3: diag(J^T J) far below 1, so no floor of the scaling or of
    the gradient test may be of order one."""
    res, _ = run(CS, STARTS, s=1e-3, **tols)
    traces = assert_matches_reference(res, CS, STARTS, s=1e-3, **tols)
    assert res.converged.all() and len(traces) == 4
    assert res.n_iter.dtype.kind == "i" and res.converged.dtype == bool


def test_fit_batched_defaults_reach_the_problem_and_the_lm(monkeypatch):
    from moe_theory import estimate

    seen = _spy_on_problem_and_lm(monkeypatch)
    estimate.fit_batched(None, None, STARTS.tolist(), None)
    assert seen == {"shape": (4, 2), "chunk": estimate.SAMPLE_CHUNK, "backend": "auto",
                    "threads": 1, "bound": None, "max_iter": 400, "ftol": 1e-12,
                    "xtol": 1e-12, "gtol": 1e-12, "dtype": np.float64}
