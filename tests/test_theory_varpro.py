"""Variable projection (``moe_theory.varpro``) against independent references.

* the reduced (Kaufman) Jacobian against central differences of the projected residual
  ``r(gamma) = (I - Phi Phi^+)(y - f0)``, built here from the explicit matrix ``Phi`` and
  ``numpy.linalg.lstsq``; where ``r = 0`` Kaufman's Jacobian is the exact one, elsewhere the
  exact one adds Golub and Pereyra's second term, written out here for the linear gate;
* the reduced normal equations of the solver (a Schur complement of the full Gram matrix)
  against ``J_K^T J_K`` and ``J_K^T r`` of that explicit Jacobian;
* the linear solve: minimum norm (``lstsq``'s SVD solution) on the flat manifold, and the box-
  constrained solve against scipy's bounded linear least squares;
* the whole fit: the same RSS as the full LM on seeded E1 fits where the LM converges.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from moe_theory.estimate import (
    SAMPLE_CHUNK,
    _levenberg_marquardt,
    _make_problem,
    fit_restarts,
    near_truth_starts,
)
from moe_theory.gates import Gate
from moe_theory.model import PrefixMoE, n_params, regression_and_jacobian
from moe_theory.settings import default_truth
from moe_theory.simulate import simulate
from moe_theory.varpro import (
    RCOND,
    box_solve,
    global_starts,
    linear_solve,
    parameter_split,
    reduced_normal_equations,
    resolve_solver,
    variable_projection,
)
from moe_theory.voronoi import voronoi_loss

# ---------------------------------------------------------------------------------------------
# explicit references for one data set


def _structure(truth: PrefixMoE, n_fitted: int) -> PrefixMoE:
    return truth.with_theta(np.zeros(n_params(n_fitted, truth.dim)))


def explicit_parts(X, gamma, structure):
    """``f0`` ``(n,)`` and ``Phi`` ``(n, M)`` at the gate parameters ``gamma`` (any linear part
    gives them: ``g`` is affine in it)."""
    gi, li = parameter_split(structure.n_prompts, structure.dim)
    theta = np.zeros(gi.size + li.size)
    theta[gi] = gamma
    f0, J = regression_and_jacobian(X, theta, structure)
    return f0, J[:, li]


def projected_residual(X, Y, gamma, structure):
    """``r(gamma) = y - f0 - Phi c*``, ``c*`` from ``lstsq`` (SVD, minimum norm)."""
    f0, Phi = explicit_parts(X, gamma, structure)
    c, *_ = np.linalg.lstsq(Phi, Y - f0, rcond=None)
    return Y - f0 - Phi @ c, c


def kaufman_jacobian(X, Y, gamma, structure):
    """``dr/dgamma ~ -(I - Phi Phi^+) dg/dgamma`` at ``(gamma, c*)``, materialised."""
    gi, li = parameter_split(structure.n_prompts, structure.dim)
    r, c = projected_residual(X, Y, gamma, structure)
    theta = np.zeros(gi.size + li.size)
    theta[gi], theta[li] = gamma, c
    _, J = regression_and_jacobian(X, theta, structure)
    Jg, Phi = J[:, gi], J[:, li]
    Q, _ = np.linalg.qr(Phi)
    return -(Jg - Q @ (Q.T @ Jg)), r, J


def central_differences(X, Y, gamma, structure, h=1e-6):
    cols = []
    for k in range(gamma.size):
        e = np.zeros_like(gamma)
        e[k] = h
        up = projected_residual(X, Y, gamma + e, structure)[0]
        down = projected_residual(X, Y, gamma - e, structure)[0]
        cols.append((up - down) / (2 * h))
    return np.stack(cols, axis=1)


def two_atom_linear_truth() -> PrefixMoE:
    truth = default_truth(Gate("linear"))
    return truth.with_theta(np.array([-0.7, 2.0, -2.0, 1.0, -0.7, -1.0, 1.5, 0.5]))


# ---------------------------------------------------------------------------------------------
# the reduced Jacobian


@pytest.mark.parametrize("gate", ["norga", "linear"])
def test_kaufman_jacobian_is_the_derivative_of_the_projected_residual_where_it_vanishes(gate):
    """Noise-free data of a two-atom truth: at the true gates ``r = 0`` and Kaufman's
    Jacobian equals the exact derivative."""
    truth = default_truth(Gate(gate)).with_theta(
        np.array([-0.7, 2.0, -2.0, 1.0, -0.7, -1.0, 1.5, 0.5]))
    structure = _structure(truth, 2)
    X = np.random.default_rng(0).uniform(-1, 1, size=(400, 1))
    Y = regression_and_jacobian(X, truth.theta, structure, jacobian=False)[0]
    gi, _ = parameter_split(2, 1)
    gamma = truth.theta[gi]
    JK, r, _ = kaufman_jacobian(X, Y, gamma, structure)
    assert np.abs(r).max() < 1e-12
    fd = central_differences(X, Y, gamma, structure)
    assert np.abs(JK - fd).max() < 1e-7 * np.abs(fd).max()


def test_exact_reduced_jacobian_adds_golub_pereyra_term_to_kaufman():
    """Noisy data, gates away from the optimum (linear gate): central differences equal
    Kaufman's Jacobian plus ``-(Phi^+)^T (dPhi/dgamma_k)^T r``; Kaufman's alone is off by that
    term, which is not small here (so the comparison can tell them apart)."""
    truth = two_atom_linear_truth()
    structure = _structure(truth, 2)
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, size=(300, 1))
    Y = regression_and_jacobian(X, truth.theta, structure, jacobian=False)[0]
    Y = Y + rng.normal(0, 0.3, size=Y.shape)
    gamma = np.array([-0.2, 1.2, -1.0, -0.4])
    JK, r, J = kaufman_jacobian(X, Y, gamma, structure)
    _, li = parameter_split(2, 1)
    Phi = J[:, li]
    # dPhi/dgamma by hand: Phi columns w_l x and w_l; dw_l/dp_m = w_l (delta_lm - w_m),
    # dp_m/dbeta0_m = 1 and dp_m/dbeta1_m = x (linear gate)
    x = X[:, 0]
    w = np.stack([Phi[:, 1], Phi[:, 3]], axis=1)  # the w_l columns
    pinv = np.linalg.pinv(Phi)
    extra = []
    for m in range(2):
        for dp in (np.ones_like(x), x):
            dw = w * ((np.arange(2) == m)[None, :] - w[:, [m]]) * dp[:, None]
            dPhi = np.stack([dw[:, 0] * x, dw[:, 0], dw[:, 1] * x, dw[:, 1]], axis=1)
            extra.append(-pinv.T @ (dPhi.T @ r))
    exact = JK + np.stack(extra, axis=1)
    fd = central_differences(X, Y, gamma, structure)
    scale = np.abs(fd).max()
    assert np.abs(exact - fd).max() < 1e-6 * scale
    assert np.abs(JK - fd).max() > 1e-3 * scale


@pytest.mark.slow  # compiles the numba kernels on a fresh cache
@pytest.mark.parametrize("gate", ["norga", "linear"])
def test_reduced_normal_equations_are_those_of_the_kaufman_jacobian(gate):
    """The Schur complement of the full Gram matrix at ``(gamma, c*)`` equals ``J_K^T J_K`` and
    ``J_K^T r`` of the explicit Jacobian (both backends)."""
    truth = default_truth(Gate(gate)).with_theta(
        np.array([-0.7, 2.0, -2.0, 1.0, -0.7, -1.0, 1.5, 0.5]))
    structure = _structure(truth, 2)
    X, Y = simulate(truth, 500, [0], seed=2, setting="test", noise_sd=0.2)
    gi, li = parameter_split(2, 1)
    gamma = np.array([-0.3, 1.5, -1.1, -0.6])
    JK, r, _ = kaufman_jacobian(X[0], Y[0], gamma, structure)
    _, c = projected_residual(X[0], Y[0], gamma, structure)
    theta = np.zeros(8)
    theta[gi], theta[li] = gamma, c
    for backend in ("numpy", "numba"):
        problem = _make_problem(X, Y, (1, 8), structure, SAMPLE_CHUNK, backend, 1)
        _, jtj, jtr = problem.evaluate(theta[None], np.array([0]), jacobian=True)
        H = jtj[:, li][:, :, li]
        _, _, free, Hinv = linear_solve(H, jtr[:, li], np.array([r @ r]), c[None], None)
        A, b = reduced_normal_equations(jtj, jtr, gi, li, free, Hinv)
        ref_A, ref_b = JK.T @ JK, -JK.T @ r
        assert np.allclose(A[0], ref_A, rtol=1e-8, atol=1e-8 * np.abs(ref_A).max())
        assert np.allclose(b[0], ref_b, rtol=1e-6, atol=1e-8 * np.abs(ref_A).max())


# ---------------------------------------------------------------------------------------------
# the linear solve


def test_linear_solve_returns_the_minimum_norm_point_of_the_flat_manifold():
    """Two atoms with the same gate: ``Phi`` has two equal column pairs, every split
    ``c_1 + c_2 = const`` fits equally well. The solve returns ``lstsq``'s minimum-norm point
    (the equal split), and moving along the null space keeps the RSS and grows the norm."""
    truth = default_truth(Gate("norga"))
    structure = _structure(truth, 2)
    X, Y = simulate(truth, 800, [0], seed=5, setting="test", noise_sd=0.1)
    gi, li = parameter_split(2, 1)
    gamma = np.array([-np.log(2), 2.0, -np.log(2), 2.0])
    f0, Phi = explicit_parts(X[0], gamma, structure)
    ref, *_ = np.linalg.lstsq(Phi, Y[0] - f0, rcond=None)
    start = np.array([3.0, -1.0, -4.0, 2.5])  # an arbitrary evaluation point
    theta = np.zeros(8)
    theta[gi], theta[li] = gamma, start
    problem = _make_problem(X, Y, (1, 8), structure, SAMPLE_CHUNK, "numpy", 1)
    rss_c, jtj, jtr = problem.evaluate(theta[None], np.array([0]), jacobian=True)
    c, F, _, _ = linear_solve(jtj[:, li][:, :, li], jtr[:, li], rss_c, start[None], None)
    assert np.allclose(c[0], ref, atol=1e-9)
    assert np.allclose(c[0, :2], c[0, 2:], atol=1e-9)  # the equal split
    resid = Y[0] - f0 - Phi @ ref
    assert F[0] == pytest.approx(resid @ resid, rel=1e-10)
    null = np.array([1.0, 0.5, -1.0, -0.5])  # along the flat manifold
    other = c[0] + null
    assert np.sum((Y[0] - f0 - Phi @ other) ** 2) == pytest.approx(F[0], rel=1e-10)
    # minimum norm: c* is orthogonal to the null space (Pythagoras)
    assert other @ other == pytest.approx(c[0] @ c[0] + null @ null, rel=1e-10)


def test_box_solve_matches_bounded_least_squares():
    """The box-constrained linear part against scipy's ``lsq_linear`` (BVLS) on random
    well-posed problems, most of whose unconstrained optima leave the box."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        Phi = rng.normal(size=(60, 4))
        y = Phi @ rng.normal(0, 6, size=4) + rng.normal(size=60)
        H, rhs = (Phi.T @ Phi)[None], (Phi.T @ y)[None]
        c, free, _ = box_solve(H, rhs, 5.0)
        ref = lsq_linear(Phi, y, bounds=(-5.0, 5.0), method="bvls", tol=1e-14).x
        rss, rss_ref = (np.sum((y - Phi @ v) ** 2) for v in (c[0], ref))
        assert rss == pytest.approx(rss_ref, rel=1e-10)
        assert np.allclose(c[0], ref, atol=1e-7)
        assert np.all(np.abs(c[0][~free[0]]) == 5.0)
        outside = np.abs(np.linalg.lstsq(Phi, y, rcond=None)[0]).max() > 5.0
        assert (~free[0]).any() == outside


def test_box_solve_first_guess_and_full_search_agree():
    rng = np.random.default_rng(8)
    Phi = rng.normal(size=(30, 4))
    ys = [Phi @ rng.normal(0, 8, size=4) for _ in range(10)]
    H = np.broadcast_to(Phi.T @ Phi, (10, 4, 4))
    rhs = np.stack([Phi.T @ y for y in ys])
    guess = np.linalg.solve(H, rhs[..., None])[..., 0]
    a = box_solve(H, rhs, 5.0, guess=guess)[0]
    b = box_solve(H, rhs, 5.0)[0]
    assert np.allclose(a, b, atol=1e-9)


def _random_linear_problems(rng, k=6):
    """Gram matrices of random designs (every third one rank-deficient: two equal columns,
    as on the flat manifold), residual products scaled so that the box often binds."""
    for trial in range(40):
        M = int(rng.choice([2, 4, 6]))
        Phi = rng.normal(size=(k, 30, M))
        if trial % 3 == 0:
            Phi[:, :, 1] = Phi[:, :, 0]
        r = rng.normal(size=(k, 30))
        H = np.einsum("kni,knj->kij", Phi, Phi)
        s = np.einsum("kni,kn->ki", Phi, r) * rng.choice([1.0, 10.0, 100.0])
        yield H, s, np.sum(r * r, axis=1), rng.normal(size=(k, M))


@pytest.mark.slow  # compiles the kernel on a fresh cache
def test_compiled_linear_solve_agrees_with_the_numpy_reference():
    """The compiled linear solve (numba backend) and the batched numpy reference: same point,
    same RSS, same held coordinates, same pseudo-inverse, with and without a box."""
    rng = np.random.default_rng(21)
    held = 0
    for H, s, rss, c_eval in _random_linear_problems(rng):
        for bound in (None, 1.0, 5.0):
            ref = linear_solve(H, s, rss, c_eval, bound)
            out = linear_solve(H, s, rss, c_eval, bound, compiled=True)
            scale = max(1.0, np.abs(ref[0]).max())
            assert np.allclose(out[0], ref[0], rtol=0, atol=1e-10 * scale)
            assert np.allclose(out[1], ref[1], rtol=1e-10)
            assert np.array_equal(out[2], ref[2])
            assert np.allclose(out[3], ref[3], rtol=1e-8,
                               atol=1e-10 * np.abs(ref[3]).max())
            held += int((~out[2]).sum())
    assert held > 50  # the box bound often enough to test the active set


@pytest.mark.slow  # compiles the kernel on a fresh cache
def test_compiled_search_over_every_face_matches_the_reference():
    """The compiled fallback (every face of the box) against the numpy one, including the
    tie rule of a rank-deficient problem (the smaller norm wins), and against BVLS."""
    from moe_theory import varpro_kernels

    rng = np.random.default_rng(22)
    for trial in range(12):
        Phi = rng.normal(size=(40, 4))
        if trial % 2:
            Phi[:, 3] = Phi[:, 2]  # a flat direction: many optimal points, one of least norm
        y = Phi @ rng.normal(0, 6, size=4) + rng.normal(size=40)
        H, rhs = Phi.T @ Phi, Phi.T @ y
        c, free, inv = np.empty(4), np.empty(4, dtype=bool), np.empty((4, 4))
        varpro_kernels._every_face(H, rhs, 5.0, RCOND, c, free, inv)
        ref_c, ref_free, _ = box_solve(H[None], rhs[None], 5.0)
        assert np.allclose(c, ref_c[0], atol=1e-9)
        assert np.array_equal(free, ref_free[0])
        bvls = lsq_linear(Phi, y, bounds=(-5.0, 5.0), method="bvls", tol=1e-14).x
        rss = np.sum((y - Phi @ c) ** 2)
        assert rss == pytest.approx(np.sum((y - Phi @ bvls) ** 2), rel=1e-10)


@pytest.mark.slow  # compiles the kernels on a fresh cache
def test_variable_projection_gives_the_same_fits_on_both_backends():
    """Whole bounded two-atom fits, numpy reference vs compiled evaluations and linear solve:
    the same optimum (RSS to 1e-9 relative, parameters to 1e-5) where both converge (at
    n = 5000; at a few hundred samples the profile is so flat that rounding alone moves
    where the tolerances stop a fit, by ~1e-7 in RSS)."""
    truth = two_atom_linear_truth()
    structure = _structure(truth, 2)
    X, Y = simulate(truth, 5000, list(range(4)), seed=4, setting="test", noise_sd=0.1)
    starts = np.stack([truth.theta + 0.1 * k for k in range(4)])
    fits = {}
    for backend in ("numpy", "numba"):
        problem = _make_problem(X, Y, starts.shape, structure, SAMPLE_CHUNK, backend, 1)
        fits[backend] = variable_projection(problem, starts, bound=5.0, max_iter=200,
                                            ftol=1e-12, xtol=1e-12, gtol=1e-12)
    a, b = fits["numpy"], fits["numba"]
    both = a.converged & b.converged
    assert both.sum() >= 3 and (~a.converged | a.at_bound).any()  # the box is active
    assert np.allclose(a.rss[both], b.rss[both], rtol=1e-9)
    assert np.allclose(a.theta[both], b.theta[both], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# whole fits


def test_solver_choice():
    affine = default_truth(Gate("norga"))
    tanh = default_truth(Gate("norga"), "tanh")
    two = affine.with_theta(np.zeros(8))
    assert resolve_solver("auto", two) == "varpro"
    assert resolve_solver("auto", affine) == "lm"  # one atom: the full LM is faster
    assert resolve_solver("varpro", affine) == "varpro"
    assert resolve_solver("auto", tanh) == "lm"
    assert resolve_solver("auto", tanh.with_theta(np.zeros(8))) == "lm"
    assert resolve_solver("lm", affine) == "lm"
    with pytest.raises(ValueError, match="affine experts"):
        resolve_solver("varpro", tanh)
    with pytest.raises(ValueError, match="solver"):
        resolve_solver("gn", affine)


@pytest.mark.parametrize("gate", ["norga", "linear"])
def test_same_rss_and_loss_as_the_full_lm_on_converged_e1_fits(gate):
    """E1 (one atom, affine, unbounded), 16 seeded replicates at n = 1000: where the LM
    converges, the RSS agrees to 1e-10 relative and L_1 to 1e-3 relative: both stop by
    tolerances of 1e-12 on the RSS, which leave the parameters (and L_1) free to about 1e-5
    in the weakly curved directions of the linear gate."""
    truth = default_truth(Gate(gate))
    X, Y = simulate(truth, 1000, list(range(16)), seed=11, setting="exact", noise_sd=0.1)
    rng = np.random.default_rng(11)
    starts = np.stack([near_truth_starts(truth, 1, 1, rng) for _ in range(16)])
    lm = fit_restarts(X, Y, starts, truth, solver="lm")
    vp = fit_restarts(X, Y, starts, truth, solver="varpro")
    ok = lm.converged
    assert ok.sum() >= 12 and vp.converged[ok].all()
    assert np.allclose(vp.rss[ok], lm.rss[ok], rtol=1e-10, atol=0)
    l_lm = voronoi_loss(lm.theta, truth.theta, 1).total
    l_vp = voronoi_loss(vp.theta, truth.theta, 1).total
    assert np.allclose(l_vp[ok], l_lm[ok], rtol=1e-3)


@pytest.mark.slow
def test_varpro_result_holds_the_linear_optimum_of_its_gates():
    """The returned linear part is the least-squares optimum at the returned gates, the RSS is
    the one recomputed there, and a bounded fit stays in the box."""
    truth = two_atom_linear_truth()
    structure = _structure(truth, 2)
    X, Y = simulate(truth, 300, [0, 1, 2], seed=3, setting="test", noise_sd=0.1)
    starts = np.stack([truth.theta + 0.1] * 3)
    problem = _make_problem(X, Y, starts.shape, structure, SAMPLE_CHUNK, "numpy", 1)
    res = variable_projection(problem, starts, bound=5.0, max_iter=200, ftol=1e-12,
                              xtol=1e-12, gtol=1e-12)
    gi, li = parameter_split(2, 1)
    for i in range(3):
        f0, Phi = explicit_parts(X[i], res.theta[i, gi], structure)
        ref = lsq_linear(Phi, Y[i] - f0, bounds=(-5.0, 5.0), method="bvls", tol=1e-14).x
        assert np.allclose(res.theta[i, li], ref, atol=1e-7)
        r = Y[i] - f0 - Phi @ res.theta[i, li]
        assert res.rss[i] == pytest.approx(r @ r, rel=1e-12)
    assert np.all(np.abs(res.theta) <= 5.0) and res.at_bound.any()
    lm = _levenberg_marquardt(problem, starts, bound=5.0, max_iter=400, ftol=1e-12,
                              xtol=1e-12, gtol=1e-12)
    both = res.converged & lm.converged
    assert both.sum() >= 2 and np.all(res.rss[both] <= lm.rss[both] * (1 + 1e-8))


@pytest.mark.slow
def test_auto_refits_what_variable_projection_leaves_unconverged_with_the_full_lm():
    """``solver="auto"``: replicates that variable projection brings to convergence are its
    fits, bit for bit; the others get the lower RSS of variable projection and of the full LM
    from the same start (the LM fit of a replicate does not depend on the batch)."""
    truth = two_atom_linear_truth()
    structure = _structure(truth, 2)
    X, Y = simulate(truth, 400, list(range(8)), seed=4, setting="test", noise_sd=0.1)
    starts = np.stack([truth.theta + 0.1 * k for k in range(8)])[:, None]
    options = {"bound": 5.0, "max_iter": 140, "backend": "numpy"}
    vp = fit_restarts(X, Y, starts, structure, solver="varpro", **options)
    lm = fit_restarts(X, Y, starts, structure, solver="lm", **options)
    auto = fit_restarts(X, Y, starts, structure, solver="auto", **options)
    redo = ~vp.converged
    assert redo.any() and (~redo).any()
    assert np.array_equal(auto.theta[~redo], vp.theta[~redo])
    assert np.array_equal(auto.n_iter[~redo], vp.n_iter[~redo])
    take_lm = redo & (lm.rss < vp.rss)
    assert take_lm.any() and (redo & ~take_lm).any()  # both outcomes of the comparison
    assert np.array_equal(auto.theta[take_lm], lm.theta[take_lm])
    assert np.array_equal(auto.converged[take_lm], lm.converged[take_lm])
    assert np.array_equal(auto.rss[redo], np.minimum(vp.rss, lm.rss)[redo])
    assert np.array_equal(auto.theta[redo & ~take_lm], vp.theta[redo & ~take_lm])


# ---------------------------------------------------------------------------------------------
# global mode


def test_global_starts_fill_the_gate_box_by_a_latin_hypercube():
    starts = global_starts(2, 1, 10, np.random.default_rng(0), 5.0)
    gi, li = parameter_split(2, 1)
    assert starts.shape == (10, 8) and np.all(starts[:, li] == 0.0)
    strata = np.floor((starts[:, gi] + 5.0) / 10.0 * 10).astype(int)
    for k in range(gi.size):  # one start per stratum of every gate coordinate
        assert sorted(strata[:, k]) == list(range(10))
    again = global_starts(2, 1, 10, np.random.default_rng(0), 5.0)
    assert np.array_equal(starts, again)
    with pytest.raises(ValueError, match="n_starts"):
        global_starts(2, 1, 0, np.random.default_rng(0), 5.0)


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["norga", "linear"])
def test_global_mode_finds_a_planted_optimum_that_a_near_truth_start_misses(gate):
    """Data of the E1 truth (beta_1 = 2); the oracle is handed a decoy truth whose gate
    points the other way (beta_1 = -4). Fits from starts near the decoy stop in a local
    optimum with a far larger RSS; 16 global starts find the planted optimum: an RSS no
    larger than that of a fit started at the truth itself, and parameters near the truth."""
    truth = default_truth(Gate(gate))
    X, Y = simulate(truth, 2000, [0, 1], seed=3, setting="test", noise_sd=0.1)
    decoy = truth.with_theta(np.array([0.0, -4.0, -2.0, 1.0]))
    rng = np.random.default_rng(5)
    near_decoy = np.stack([near_truth_starts(decoy, 1, 1, rng, bound=5.0) for _ in range(2)])
    kw = {"bound": 5.0, "solver": "varpro"}
    missed = fit_restarts(X, Y, near_decoy, truth, **kw)
    glob = np.stack([global_starts(1, 1, 16, rng, 5.0) for _ in range(2)])
    found = fit_restarts(X, Y, glob, truth, **kw)
    at_truth = fit_restarts(X, Y, np.broadcast_to(truth.theta, (2, 1, 4)), truth, **kw)
    assert np.all(missed.rss > 2.0 * found.rss)
    assert np.all(found.rss <= at_truth.rss * (1 + 1e-9))
    assert np.all(voronoi_loss(found.theta, truth.theta, 1).total < 1.5)
    assert np.all(voronoi_loss(missed.theta, truth.theta, 1).total > 2.0)


# ---------------------------------------------------------------------------------------------
# configuration and cache


def test_sweep_configs_check_the_solver_and_key_the_cache_by_it(tmp_path):
    from moe_theory.cache import FitCache
    from moe_theory.near.sweep import NEAR_FIT_FIELDS, NearConfig
    from moe_theory.rates.config import RateConfig

    with pytest.raises(ValueError, match="solver"):
        RateConfig(solver="gn")
    with pytest.raises(ValueError, match="affine"):
        RateConfig(settings=("over-tanh",), solver="varpro")
    with pytest.raises(ValueError, match="global_starts"):
        RateConfig(global_starts=-1)
    with pytest.raises(ValueError, match="solver"):
        NearConfig(solver="gn")
    assert RateConfig().solver == "auto" and NearConfig().solver == "auto"
    cache = FitCache(tmp_path, ("x",))
    paths = {cache.path(cache.key_inputs(RateConfig(solver=s, global_starts=k), "over",
                                         "norga", 100, (0,), "f"))
             for s in ("lm", "varpro", "auto") for k in (0, 8)}
    assert len(paths) == 6
    near = FitCache(tmp_path, ("x",), NEAR_FIT_FIELDS)
    keys = [near.path(near.key_inputs(NearConfig(solver=s), "fixed", "linear", 100, (0,), "f"))
            for s in ("lm", "varpro")]
    assert keys[0] != keys[1]


def test_the_rates_summary_says_the_solver_and_the_starts():
    """summary.txt names the solver, and global starts where they replaced near-truth ones."""
    from moe_theory.rates.config import RateConfig
    from moe_theory.rates.report import summary_text

    head = summary_text(RateConfig(solver="lm"), [], None).splitlines()[:2]
    assert "near-truth starts" in head[0] and head[1].endswith(" solver=lm")
    head = summary_text(RateConfig(global_starts=8), [], None).splitlines()[:2]
    assert "8 global starts over the gate box" in head[0] and "near-truth" not in head[0]
    assert head[1].endswith(" solver=auto")
