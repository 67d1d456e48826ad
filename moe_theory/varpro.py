"""Variable projection for affine prompt experts, batched over replicates.

With affine experts ``h(x, (a, b)) = a^T x + b`` the regression function is linear in the expert
parameters once the gate parameters ``gamma = (beta_0, beta_1)`` of every atom are fixed::

    g(x) = f0(x; gamma) + Phi(x; gamma) c,    c = (a_1, b_1, ..., a_L, b_L)

with ``f0 = w_0 * (pretrained mean output)`` and the columns of ``Phi`` the prompt weights
``w_l x_k`` and ``w_l``. Those columns are exactly the expert columns of the full Jacobian, so
the fitter's normal equations ``J^T J`` and ``J^T r`` at any point ``(gamma, c)`` already hold
everything variable projection needs: ``H = Phi^T Phi``, ``Phi^T r``, the gate block and the
cross block. No new kernel is needed; both backends of :mod:`moe_theory.estimate` serve.

The solver minimises the *profile* RSS ``F(gamma) = min_c ||y - f0 - Phi c||^2`` with
Levenberg-Marquardt over ``gamma`` only:

* **Linear solve.** ``c*(gamma)`` is the minimum-norm least-squares solution
  ``H^+ Phi^T (y - f0)``, with the pseudo-inverse from an eigen-decomposition of ``H`` in which
  eigenvalues below :data:`RCOND` times the largest count as zero. On the flat manifold of an
  over-specified fit (two atoms with the same gate) ``H`` is singular and the minimum-norm point
  splits the expert equally between the atoms. With a box ``|theta| <= bound`` the linear part
  solves the box-constrained problem exactly (:func:`_box_solve`): the unconstrained
  minimum-norm point when it lies in the box, else the best of the face-wise minimum-norm
  points (every pattern of coordinates held at a bound).
* **Reduced Jacobian (Kaufman).** The outer step uses ``J_K = P_perp J_gamma`` (``P_perp`` the
  projector off the columns of ``Phi``): normal equations
  ``A = J_gamma^T J_gamma - C H^+ C^T`` and ``b = J_gamma^T r - C H^+ Phi^T r``
  (``C = J_gamma^T Phi``), a Schur complement of the full Gram matrix.
* **Passes.** A trial gate point is evaluated at the linear part a Gauss-Newton step predicts
  for it; ``c*`` and ``F`` there follow exactly from that Gram matrix (``F`` is a quadratic in
  ``c``, so the prediction only has to be close for precision). An accepted step gets a second
  pass at ``(gamma, c*(gamma))``, whose Gram matrix gives Kaufman's normal equations for the
  next step (the trial's, taken at the predicted linear part, give inexact gradients, and fits
  then stop short of stationarity: measured on E2 at n = 100). Acceptance, the damping update
  and the ``ftol``/``xtol``/``gtol`` tests are those of the full LM, on ``F`` and on the gate
  parameters; ``max_iter`` caps the evaluations of Kaufman's normal equations (one per
  accepted gate point, as the full LM counts its Jacobian evaluations; each costs two passes
  over the data, and a rejected trial one more). The returned RSS is recomputed directly at the
  returned point ``(gamma, c*(gamma))``.

Tanh experts are not linear in ``(a, b)``; they keep the full LM, and ``solver="auto"`` also
keeps it for a single affine atom (:func:`resolve_solver`).

The linear solve runs in compiled code (:mod:`moe_theory.varpro_kernels`) when the data are
evaluated by the compiled kernels, and by the batched numpy reference otherwise; the two agree
to rounding.
"""

from __future__ import annotations

import itertools

import numpy as np

from moe_theory.fit_result import (
    _LAMBDA0,
    FitResult,
    damped_step_outcome,
    gradient_small,
    stopping_tests,
)
from moe_theory.model import PrefixMoE
from norga.choices import check_choice

# Eigenvalues of Phi^T Phi below RCOND times the largest count as zero (singular values of Phi
# below 1e-6 of the largest): the flat directions of the linear part.
RCOND = 1e-12
# Largest number of linear parameters for the exact box-constrained solve (3^M faces).
MAX_BOX_PARAMS = 8
# Active-set rounds of the box solve before it falls back to trying every face.
_ACTIVE_SET_ROUNDS = 6

SOLVERS: tuple[str, ...] = ("auto", "lm", "varpro")
# Seed stream of the global-mode starts (data: 0, near-truth starts: 1; moe_theory.simulate).
GLOBAL_STREAM = 2


def resolve_solver(solver: str, structure: PrefixMoE) -> str:
    """The solver used for ``solver`` and ``structure``: ``"lm"`` or ``"varpro"``.

    ``"auto"`` gives variable projection for affine experts with two or more fitted atoms
    (where the linear part can be rank-deficient and the full LM drifts along the flat
    manifold to its iteration cap) and the full LM otherwise: for tanh experts, which are not
    linear in their parameters, and for one affine atom, where the full LM converges in a
    handful of evaluations and is the faster of the two (``benchmarks/solver.py``). Where
    ``"auto"`` gives variable projection, the fits it leaves unconverged are fitted again by
    the full LM from the same start and the lower RSS is kept
    (:func:`moe_theory.estimate.fit_batched`). ``"varpro"`` for tanh experts is refused.
    """
    check_choice("solver", solver, SOLVERS)
    if solver == "lm":
        return "lm"
    if structure.expert != "affine":
        if solver == "varpro":
            raise ValueError(
                f"solver='varpro' needs affine experts (the fit is linear in them); got "
                f"{structure.expert!r} experts: use solver='lm' or 'auto'"
            )
        return "lm"
    if solver == "auto" and structure.n_prompts < 2:
        return "lm"
    return "varpro"


def check_solver_options(solver: str, global_starts: int, tanh_experts: bool) -> None:
    """The fitter options of a sweep configuration (E1-E4 or E5), checked before any fit.

    Parameters
    ----------
    solver:
        One of :data:`SOLVERS`.
    global_starts:
        Starts over the gate box per fit (0: near-truth starts).
    tanh_experts:
        Whether the sweep fits tanh experts, which ``"varpro"`` cannot fit (see
        :func:`resolve_solver`, which checks each fit's structure when it runs).

    Raises
    ------
    ValueError
        Naming the bad value and what is allowed.
    """
    check_choice("solver", solver, SOLVERS)
    if solver == "varpro" and tanh_experts:
        raise ValueError("solver 'varpro' needs affine experts (the fit is linear in them); "
                         "tanh experts need 'lm' or 'auto'")
    if global_starts < 0:
        raise ValueError(f"global_starts must be >= 0; got {global_starts}")


def parameter_split(n_prompts: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices in ``theta`` of the gate parameters ``(beta_0, beta_1)`` and of the linear
    expert parameters ``(a, b)``, atom by atom."""
    width = 2 + 2 * dim
    gate = np.concatenate([l * width + np.arange(1 + dim) for l in range(n_prompts)])
    linear = np.concatenate([l * width + 1 + dim + np.arange(1 + dim) for l in range(n_prompts)])
    return gate, linear


def psd_pinv(H: np.ndarray, free: np.ndarray | None = None, rcond: float = RCOND) -> np.ndarray:
    """Pseudo-inverses of symmetric PSD matrices ``(k, M, M)``, rank-revealing.

    Eigenvalues at or below ``rcond`` times the largest one of each matrix are dropped. With
    ``free`` ``(k, M)`` only the free rows and columns take part (the others get zeros).
    """
    if free is not None:
        H = H * free[:, :, None] * free[:, None, :]
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    vals, vecs = np.linalg.eigh(H)
    top = vals.max(axis=1, keepdims=True)
    keep = vals > rcond * np.maximum(top, 0.0)
    keep &= top > 0
    inv = np.where(keep, 1.0 / np.where(keep, vals, 1.0), 0.0)
    out = np.matmul(vecs * inv[:, None, :], np.swapaxes(vecs, 1, 2))
    if free is not None:  # exact zeros for the held coordinates
        out *= free[:, :, None] * free[:, None, :]
    return out


def _quadratic(rss_c: np.ndarray, s: np.ndarray, H: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``||r_c - Phi delta||^2 = rss_c - 2 s^T delta + delta^T H delta`` (``s = Phi^T r_c``)."""
    Hd = np.matmul(H, delta[..., None])[..., 0]
    return rss_c - 2.0 * np.sum(s * delta, axis=-1) + np.sum(delta * Hd, axis=-1)


def linear_solve(
    H: np.ndarray,
    s: np.ndarray,
    rss_c: np.ndarray,
    c_eval: np.ndarray,
    bound: float | None,
    rcond: float = RCOND,
    compiled: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Optimal linear parameters from the Gram matrix at ``(gamma, c_eval)``.

    Parameters
    ----------
    H:
        ``(k, M, M)`` ``Phi^T Phi``.
    s:
        ``(k, M)`` ``Phi^T r`` with ``r`` the residual at ``c_eval``.
    rss_c:
        ``(k,)`` RSS at ``c_eval``.
    c_eval:
        ``(k, M)`` linear parameters of the evaluation.
    bound:
        Box on every coordinate, or None.
    rcond:
        Relative eigenvalue threshold of the pseudo-inverse.
    compiled:
        Solve replicate by replicate in compiled code (:mod:`moe_theory.varpro_kernels`, the
        same rules) instead of the batched numpy reference.

    Returns
    -------
    c_star:
        ``(k, M)`` the minimum-norm minimiser (the box-constrained one with ``bound``).
    F:
        ``(k,)`` the RSS at ``c_star`` (the profile RSS).
    free:
        ``(k, M)`` coordinates not held at the bound.
    Hinv:
        ``(k, M, M)`` pseudo-inverse of ``H`` on the free coordinates.
    """
    if compiled:
        from moe_theory import varpro_kernels  # numba: imported on first use only

        return varpro_kernels.solve(H, s, rss_c, c_eval, bound, rcond)
    rhs = s + np.matmul(H, c_eval[..., None])[..., 0]  # Phi^T (y - f0)
    Hinv = psd_pinv(H, rcond=rcond)
    c_star = np.matmul(Hinv, rhs[..., None])[..., 0]
    free = np.ones(c_star.shape, dtype=bool)
    if bound is not None:
        outside = np.flatnonzero(np.any(np.abs(c_star) > bound, axis=1))
        if outside.size:
            c_star[outside], free[outside], Hinv[outside] = box_solve(
                H[outside], rhs[outside], bound, rcond, guess=c_star[outside]
            )
    F = _quadratic(rss_c, s, H, c_star - c_eval)
    return c_star, F, free, Hinv


def _patterns(M: int) -> np.ndarray:
    """Every assignment of free (0), lower bound (1), upper bound (2) to ``M`` coordinates."""
    if M > MAX_BOX_PARAMS:
        raise ValueError(f"the exact box solve handles up to {MAX_BOX_PARAMS} linear "
                         f"parameters; got {M}")
    return np.array(list(itertools.product((0, 1, 2), repeat=M)))


def _face_solve(H: np.ndarray, rhs: np.ndarray, pattern: np.ndarray, bound: float,
                rcond: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-norm minimiser on the face ``pattern`` ``(k, M)`` (0 free, 1 low, 2 high) of the
    box; with the free mask and the pseudo-inverse on the free coordinates."""
    free = pattern == 0
    fixed = np.where(pattern == 1, -bound, np.where(pattern == 2, bound, 0.0))
    inv = psd_pinv(H, free, rcond)
    r = (rhs - np.matmul(H, fixed[..., None])[..., 0]) * free
    return np.where(free, np.matmul(inv, r[..., None])[..., 0], fixed), free, inv


def _kkt(H: np.ndarray, rhs: np.ndarray, c: np.ndarray, pattern: np.ndarray, bound: float
         ) -> np.ndarray:
    """Whether ``c`` (on face ``pattern``) satisfies the optimality conditions of the box
    problem: feasible, zero gradient on free coordinates, gradient pointing out of the box on
    held ones (to a relative tolerance of 1e-9)."""
    grad = np.matmul(H, c[..., None])[..., 0] - rhs
    tol = 1e-9 * (np.abs(rhs).max(axis=1, keepdims=True)
                  + bound * np.abs(H).max(axis=(1, 2))[:, None] + 1e-300)
    ok_free = np.where(pattern == 0, np.abs(grad) <= tol, True)
    ok_low = np.where(pattern == 1, grad >= -tol, True)
    ok_high = np.where(pattern == 2, grad <= tol, True)
    feasible = np.abs(c) <= bound * (1 + 1e-12)
    return np.all(ok_free & ok_low & ok_high & feasible, axis=1)


def box_solve(H: np.ndarray, rhs: np.ndarray, bound: float, rcond: float = RCOND,
              guess: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``argmin_{|c_i| <= bound} c^T H c - 2 rhs^T c`` for ``k`` replicates, exactly.

    With ``guess`` (the unconstrained minimiser), the face holding its out-of-box coordinates
    at the bound they cross is tried first, then a few rounds of an active-set update (release
    held coordinates whose gradient points inward, hold free ones that left the box); a face
    solution is kept where it satisfies the optimality conditions (:func:`_kkt`; the problem
    is convex, so they are sufficient). Where none does within the rounds, every
    pattern of coordinates held at ``-bound``/``+bound`` (the rest free, solved by minimum
    norm) is tried; the feasible candidate with the lowest objective wins (ties: the smaller
    norm). The optimum is among them: on the face of the box with the most held coordinates
    that meets the optimal set, the face's minimum-norm minimiser is feasible.

    Parameters
    ----------
    H, rhs:
        ``(k, M, M)`` and ``(k, M)``.
    guess:
        ``(k, M)`` unconstrained minimisers, or None.

    Returns
    -------
    ``(k, M)`` minimisers, ``(k, M)`` free masks and ``(k, M, M)`` pseudo-inverses of ``H`` on
    the free coordinates.
    """
    if guess is not None:
        pattern = np.where(guess < -bound, 1, np.where(guess > bound, 2, 0))
        for _ in range(_ACTIVE_SET_ROUNDS):
            c, free, inv = _face_solve(H, rhs, pattern, bound, rcond)
            bad = ~_kkt(H, rhs, c, pattern, bound)
            if not bad.any():
                break
            # release held coordinates whose gradient points into the box, hold free ones
            # that left it
            grad = np.matmul(H, c[..., None])[..., 0] - rhs
            release = ((pattern == 1) & (grad < 0)) | ((pattern == 2) & (grad > 0))
            update = np.where(release, 0, np.where(
                (pattern == 0) & (c < -bound), 1, np.where((pattern == 0) & (c > bound), 2,
                                                           pattern)))
            pattern = np.where(bad[:, None], update, pattern)
        if bad.any():
            c[bad], free[bad], inv[bad] = box_solve(H[bad], rhs[bad], bound, rcond)
        return np.clip(c, -bound, bound), free, inv
    k, M = rhs.shape
    patterns = _patterns(M)
    n_pat = len(patterns)
    free = patterns == 0
    fixed = np.where(patterns == 1, -bound, np.where(patterns == 2, bound, 0.0))
    Hs = np.broadcast_to(H[:, None], (k, n_pat, M, M)).reshape(-1, M, M)
    frees = np.broadcast_to(free, (k, n_pat, M)).reshape(-1, M)
    inv = psd_pinv(Hs, frees, rcond).reshape(k, n_pat, M, M)
    r = (rhs[:, None, :] - np.einsum("pj,kij->kpi", fixed, H)) * free  # (k, n_pat, M)
    cand = np.where(free, np.matmul(inv, r[..., None])[..., 0], fixed)
    ok = np.all(np.abs(cand) <= bound * (1 + 1e-12), axis=2)
    obj = np.einsum("kpi,kij,kpj->kp", cand, H, cand) - 2.0 * np.einsum("kpi,ki->kp", cand, rhs)
    obj = np.where(ok, obj, np.inf)
    best = obj.min(axis=1, keepdims=True)
    near = obj <= best + 1e-12 * np.maximum(np.abs(best), 1.0)
    norms = np.where(near, np.linalg.norm(cand, axis=2), np.inf)
    pick = np.argmin(norms, axis=1)
    idx = np.arange(k)
    return np.clip(cand[idx, pick], -bound, bound), free[pick], inv[idx, pick]


def reduced_normal_equations(
    jtj: np.ndarray, jtr: np.ndarray, gate: np.ndarray, linear: np.ndarray, free: np.ndarray,
    Hinv: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Kaufman's reduced normal equations from the full ones.

    Returns ``A = K - C H^+ C^T`` ``(k, G, G)`` and ``b = J_gamma^T r - C H^+ Phi^T r``
    ``(k, G)``, where ``K``, ``C``, ``H`` are the gate, cross and linear blocks of ``jtj``
    restricted to the ``free`` linear coordinates and ``Hinv`` is ``H^+`` there.
    """
    K = jtj[:, gate][:, :, gate]
    C = jtj[:, gate][:, :, linear] * free[:, None, :]
    s = jtr[:, linear] * free
    CH = np.matmul(C, Hinv)
    A = K - np.matmul(CH, np.swapaxes(C, 1, 2))
    A = 0.5 * (A + np.swapaxes(A, 1, 2))
    b = jtr[:, gate] - np.matmul(CH, s[..., None])[..., 0]
    return A, b


def variable_projection(
    problem,
    theta0: np.ndarray,
    *,
    bound: float | None,
    max_iter: int,
    ftol: float,
    xtol: float,
    gtol: float,
    rcond: float = RCOND,
):
    """Variable-projection LM on prepared data (:class:`moe_theory.estimate._Problem`).

    Parameters
    ----------
    problem:
        The batched data; ``problem.evaluate(theta, rows, jacobian=True)`` gives the RSS and the
        full normal equations at ``theta``.
    theta0:
        ``(R, P)`` starts; only their gate parameters matter up to the first linear solve (the
        linear part is where the first Gram matrix is evaluated).
    bound, max_iter, ftol, xtol, gtol:
        As for :func:`moe_theory.estimate.fit_batched`; ``max_iter`` caps the evaluations of
        the reduced normal equations (accepted gate points), the tests apply to the profile
        RSS and the gate parameters.

    Returns
    -------
    moe_theory.estimate.FitResult
        ``theta`` holds the gate parameters and ``c*(gamma)``; ``rss`` is recomputed there.
    """
    structure = problem.structure
    # the compiled linear solve goes with the compiled evaluations (numba is importable)
    compiled = problem.backend == "numba"
    gi, li = parameter_split(structure.n_prompts, structure.dim)
    theta = np.array(theta0, dtype=float)
    R, P = theta.shape
    if bound is not None:
        theta = np.clip(theta, -bound, bound)
    G = gi.size

    n_iter = np.zeros(R, dtype=int)
    converged = np.zeros(R, dtype=bool)
    stalled = np.zeros(R, dtype=bool)
    active = np.ones(R, dtype=bool)
    lam = np.full(R, _LAMBDA0)
    nu = np.full(R, 2.0)
    # state at the current gate point: profile RSS, c*, the Gram matrix (evaluated at c_eval)
    F = np.zeros(R)
    c_star = theta[:, li].copy()
    c_eval = theta[:, li].copy()
    A = np.zeros((R, G, G))
    b = np.zeros((R, G))
    Hinv = np.zeros((R, li.size, li.size))
    s_lin = np.zeros((R, li.size))
    cross = np.zeros((R, G, li.size))
    eye = np.eye(G)

    def evaluate(rows: np.ndarray, gamma: np.ndarray, c: np.ndarray):
        point = np.empty((rows.size, P))
        point[:, gi], point[:, li] = gamma, c
        rss_c, jtj, jtr = problem.evaluate(point, rows, jacobian=True)
        cs, Fs, free, inv = linear_solve(jtj[:, li][:, :, li], jtr[:, li], rss_c, c, bound,
                                         rcond, compiled=compiled)
        return cs, Fs, free, inv, jtj, jtr

    def store(rows: np.ndarray, c: np.ndarray, jtj: np.ndarray, jtr: np.ndarray,
              free: np.ndarray, inv: np.ndarray) -> None:
        """Reduced normal equations at accepted points (counted, like the full LM's
        Jacobian evaluations), and the gradient test there."""
        n_iter[rows] += 1
        A[rows], b[rows] = reduced_normal_equations(jtj, jtr, gi, li, free, inv)
        Hinv[rows] = inv
        s_lin[rows] = jtr[:, li] * free
        cross[rows] = jtj[:, gi][:, :, li] * free[:, None, :]
        c_eval[rows] = c
        diag = np.diagonal(A[rows], axis1=1, axis2=2)
        done = rows[gradient_small(b[rows], diag, F[rows], gtol)]
        converged[done] = True
        active[done] = False

    rows = np.arange(R)
    # First the linear part at the starting gates, then the Gram matrix at that optimum.
    first = evaluate(rows, theta[:, gi], theta[:, li])[0]
    c_star[:], F[:], free, inv, jtj, jtr = evaluate(rows, theta[:, gi], first)
    store(rows, first, jtj, jtr, free, inv)

    while active.any():
        rows = np.flatnonzero(active)
        Ar, br = A[rows], b[rows]
        gamma = theta[rows][:, gi]
        if bound is not None:
            held = ((gamma <= -bound) & (br < 0)) | ((gamma >= bound) & (br > 0))
            Ar = np.where(held[:, :, None] | held[:, None, :], 0.0, Ar) + held[:, :, None] * eye
            br = np.where(held, 0.0, br)
        diag = np.diagonal(Ar, axis1=1, axis2=2)
        scale = np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300)
        step = np.linalg.solve(Ar + lam[rows, None, None] * (scale[:, :, None] * eye),
                               br[..., None])[..., 0]
        trial = gamma + step
        if bound is not None:
            trial = np.clip(trial, -bound, bound)
            step = trial - gamma
        # the linear part a Gauss-Newton step predicts at the trial gates
        pred_c = c_eval[rows] + np.matmul(
            Hinv[rows], (s_lin[rows] - np.matmul(np.swapaxes(cross[rows], 1, 2),
                                                 step[..., None])[..., 0])[..., None])[..., 0]
        if bound is not None:
            pred_c = np.clip(pred_c, -bound, bound)
        new_c, new_F = evaluate(rows, trial, pred_c)[:2]

        accept, x_small, f_small = damped_step_outcome(
            step, b[rows], A[rows], F[rows], new_F, lam, nu, rows, gamma, xtol, ftol)
        acc = rows[accept]
        theta[acc[:, None], gi[None, :]] = trial[accept]
        c_star[acc] = new_c[accept]
        F[acc] = new_F[accept]

        done, stuck, capped = stopping_tests(lam[rows], accept, x_small, f_small, n_iter[rows],
                                             max_iter)
        converged[rows[done]] = True
        stalled[rows[stuck]] = True
        stop = done | stuck | capped
        active[rows[stop]] = False
        moved = accept & ~stop
        if moved.any():
            # Kaufman's Jacobian belongs to (gamma, c*(gamma)): a second pass there (the
            # trial's Gram matrix, at the predicted linear part, would give inexact gradients
            # and let fits stop short of stationarity)
            mv = rows[moved]
            c2, F2, free2, inv2, jtj2, jtr2 = evaluate(mv, theta[mv][:, gi], new_c[moved])
            c_star[mv], F[mv] = c2, F2
            store(mv, new_c[moved], jtj2, jtr2, free2, inv2)

    theta[:, li] = c_star
    rss, _, _ = problem.evaluate(theta, np.arange(R), jacobian=False)
    at_bound = (
        np.any(np.abs(theta) >= bound - 1e-9, axis=1) if bound is not None else np.zeros(R, bool)
    )
    return FitResult(theta=theta, rss=rss, n_iter=n_iter, converged=converged, at_bound=at_bound,
                     stalled=stalled)


def global_starts(
    n_prompts: int, dim: int, n_starts: int, rng: np.random.Generator, box: float
) -> np.ndarray:
    """Starts spread over the gate-parameter box, not near any truth.

    The gate coordinates ``(beta_0, beta_1)`` of every atom fill ``[-box, box]`` by a Latin
    hypercube (each coordinate's range cut into ``n_starts`` equal strata, one start per
    stratum, strata paired at random, a uniform point inside each); the expert coordinates
    are 0. With variable projection the expert part of a start plays no role beyond where the
    first Gram matrix is evaluated: the first linear solve replaces it.

    Parameters
    ----------
    n_prompts, dim:
        Fitted atoms L' and input dimension d.
    n_starts:
        Number of starts.
    rng:
        The generator every draw comes from.
    box:
        Half-width of the gate box (the fit's bound).

    Returns
    -------
    ndarray ``(n_starts, L'(2+2d))``.
    """
    if n_starts < 1 or box <= 0:
        raise ValueError(f"need n_starts >= 1 and box > 0; got {n_starts}, {box}")
    gi, li = parameter_split(n_prompts, dim)
    strata = np.stack([rng.permutation(n_starts) for _ in gi], axis=1)  # (n_starts, G)
    unit = (strata + rng.uniform(size=strata.shape)) / n_starts
    starts = np.zeros((n_starts, gi.size + li.size))
    starts[:, gi] = box * (2.0 * unit - 1.0)
    return starts
