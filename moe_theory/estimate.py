"""Least-squares estimation of the prompt atoms, batched over replicates
(docs/theory-background.md#estimator).

The core, :func:`fit_batched`, runs Levenberg-Marquardt with the analytic Jacobian on all
replicates of one sample size at once: float64 tensors of shape ``(R, ...)``, one damping factor
and one convergence flag per replicate, and an optional box ``[-bound, bound]`` handled by
projection with an active set. :class:`LeastSquaresMoE` wraps it in a scikit-learn estimator
with restarts (``clone``, ``get_params``/``set_params``, ``score``, ``NotFittedError``).

The residuals and normal equations come from one of two backends: ``"numpy"`` (the reference:
vectorised over replicates, Jacobian materialised, ``J^T J`` by BLAS) or ``"numba"`` (compiled
kernels of :mod:`moe_theory.kernels` that accumulate ``J^T J`` sample by sample); ``"auto"``
picks numba when it is installed and implements the model. The LM iteration itself is shared.

With affine experts the fit can instead run by variable projection (``solver="varpro"`` or
``"auto"``; :mod:`moe_theory.varpro`): the experts solved exactly for given gates and the same LM
iteration over the gate parameters only. ``solver="lm"`` (the default) is the full LM below.

Convergence follows MINPACK's tests (``ftol``, ``xtol``, ``gtol``); a fit that stops because it
used ``max_iter`` Jacobian evaluations is *capped*, and one that stops because its damping blew
up (above :data:`LAMBDA_STALL`: the steps shrank to nothing without meeting a test) is *stalled*.
Both are kept, flagged ``converged=False``, and counted (:func:`fit_status`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from types import ModuleType
from typing import Literal

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning  # scikit-learn's, re-exported from here
from sklearn.utils.validation import check_is_fitted, validate_data

from moe_theory import varpro
from moe_theory.fit_result import (  # noqa: F401 - FIT_STATUSES re-exported
    _LAMBDA0,
    FIT_STATUSES,
    LAMBDA_STALL,
    FitResult,
    _row_dots,
    damped_step_outcome,
    fit_status,
    gradient_small,
    stopping_tests,
)
from moe_theory.gates import Activation, Gate, GateKind
from moe_theory.model import ExpertKind, PrefixMoE, Pretrained, mixture, regression
from norga.choices import check_choice

# Samples per chunk when accumulating J^T J: fixed (never derived from R), so every replicate's
# arithmetic is the same whatever else is in the batch.
SAMPLE_CHUNK = 32768
# Elements per (replicates x prompts x samples) tile of one evaluation: the temporaries of a
# tile stay in the per-core cache.
_TILE_ELEMENTS = 1 << 15
# Largest copy of a replicate subset's data that is kept between evaluations.
_SUBSET_CACHE_BYTES = 1 << 28
Backend = Literal["auto", "numba", "numpy"]
Solver = Literal["auto", "lm", "varpro"]
BACKENDS: tuple[str, ...] = ("auto", "numba", "numpy")


def _load_kernels() -> ModuleType | None:
    """:mod:`moe_theory.kernels`, or None when numba cannot be imported.

    Imported on first use only, so ``import moe_theory.estimate`` neither loads numba nor
    compiles anything.
    """
    try:
        from moe_theory import kernels
    except ImportError:
        return None
    return kernels


def compiled_backend_available() -> bool:
    """Whether numba imports, so ``backend="auto"`` can use the compiled kernels."""
    return _load_kernels() is not None


def resolve_backend(backend: str, structure: PrefixMoE) -> str:
    """The backend :func:`fit_batched` uses for ``backend`` and ``structure``.

    Parameters
    ----------
    backend:
        ``"auto"``, ``"numba"`` or ``"numpy"``.
    structure:
        The fitted model's known parts.

    Returns
    -------
    str
        ``"numba"`` or ``"numpy"``. ``"auto"`` gives ``"numba"`` when numba imports and the
        kernels implement the structure's gate and expert
        (:func:`moe_theory.kernels.kernel_supports`), else ``"numpy"``, silently.

    Raises
    ------
    ImportError
        ``"numba"`` asked for and numba is not installed.
    ValueError
        An unknown backend, or ``"numba"`` for a structure the kernels do not implement.
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "numpy":
        return "numpy"
    kernels = _load_kernels()
    if kernels is None:
        if backend == "numba":
            raise ImportError(
                "backend='numba' needs the numba package (pip install 'numba>=0.60'); "
                "use backend='numpy' or 'auto' to run without it"
            )
        return "numpy"
    if kernels.kernel_supports(structure):
        return "numba"
    if backend == "numba":
        raise ValueError(
            f"the numba kernels do not implement gate {structure.gate.label!r} with "
            f"{structure.expert!r} experts; use backend='numpy' or 'auto'"
        )
    return "numpy"


class _Problem:
    """Data of one batched fit, split into fixed sample chunks with cached pretrained terms.

    numpy backend: per chunk it keeps views of ``X`` transposed ``(R, d, m)`` and ``Y``
    ``(R, m)``, and the collapsed pretrained terms ``(R, m)`` (they do not depend on theta).
    Evaluations run on a subset of replicates; the subset's data are copied once and reused
    while the same subset comes back, and never copied when every replicate takes part.

    numba backend: ``X`` is kept transposed ``(R, d, n)`` and the collapsed pretrained terms
    are computed chunk by chunk into ``(R, n)`` arrays; the kernels read them through a
    replicate index (no subset copies).
    """

    def __init__(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        structure: PrefixMoE,
        chunk: int,
        backend: str = "numpy",
        threads: int = 1,
    ) -> None:
        self.structure = structure
        self.R, n = X.shape[:2]
        self.backend = backend
        self.threads = threads
        if backend == "numba":
            self._init_numba(X, Y, chunk)
            return
        self.all_chunks = []
        for start in range(0, n, chunk):
            Xc = X[:, start : start + chunk]
            lse, mean_out = structure.pretrained.collapsed(Xc)
            # views of the caller's arrays (no copies of the data: memory at large n)
            self.all_chunks.append((np.swapaxes(Xc, 1, 2), Y[:, start : start + chunk], lse,
                                    mean_out))
        self._rows: np.ndarray | None = None
        self._chunks = self.all_chunks
        self.bytes_per_row = sum(arr[0].nbytes for c in self.all_chunks for arr in c)
        self.n_prompts = structure.n_prompts
        self._buffers: dict[tuple[int, ...], np.ndarray] = {}

    def _init_numba(self, X: np.ndarray, Y: np.ndarray, chunk: int) -> None:
        """Contiguous data and ``(R, n)`` pretrained terms for the compiled kernels.

        Only built after :func:`resolve_backend` chose numba: the kernels import and implement
        the structure.
        """
        self._kernels = _load_kernels()
        # samples last (a view for d = 1, a copy of X otherwise); writeable, or numba would
        # compile the kernels again for read-only arrays (copied then)
        self.XT = np.require(np.swapaxes(X, 1, 2), dtype=float, requirements=["C", "W"])
        self.Y = np.require(Y, dtype=float, requirements=["C", "W"])
        n = X.shape[1]
        self.lse = np.empty((self.R, n))
        self.mean_out = np.empty((self.R, n))
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            self.lse[:, part], self.mean_out[:, part] = self.structure.pretrained.collapsed(
                X[:, part]
            )

    def chunks(self, rows: np.ndarray) -> Iterable[tuple[np.ndarray, ...]]:
        """The chunks restricted to ``rows``.

        The copy for a subset is cached (for the last subset asked for) when it is small;
        above :data:`_SUBSET_CACHE_BYTES` each chunk is copied when it is used and dropped, so
        memory at large n stays at the data plus one chunk.
        """
        if rows.size == self.R:
            return self.all_chunks
        if self._rows is not None and np.array_equal(rows, self._rows):
            return self._chunks
        subset = (tuple(arr[rows] for arr in c) for c in self.all_chunks)
        if rows.size * self.bytes_per_row > _SUBSET_CACHE_BYTES:
            return subset
        self._rows, self._chunks = rows.copy(), list(subset)
        return self._chunks

    def evaluate(
        self, theta: np.ndarray, rows: np.ndarray, jacobian: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """RSS at ``theta`` for ``rows`` and, if asked, ``J^T J`` ``(r,P,P)`` and ``J^T r``.

        The RSS is computed by the same operations with or without the Jacobian, so values
        from both kinds of evaluation can be compared (the LM gain ratio does).
        """
        if self.backend == "numba":
            return self._kernels.accumulate(
                self.XT, self.Y, self.lse, self.mean_out, rows.astype(np.int64, copy=False),
                theta, self.structure, jacobian, self.threads,
            )
        k, P = theta.shape
        total = np.zeros(k)
        jtj = np.zeros((k, P, P)) if jacobian else None
        jtr = np.zeros((k, P)) if jacobian else None
        for XT, Yc, lse, mean_out in self.chunks(rows):
            m = Yc.shape[-1]
            # Tiles of whole replicates, small enough for the temporaries to stay in cache;
            # the tile size only groups rows, so no replicate's numbers depend on it.
            step = max(1, _TILE_ELEMENTS // (self.n_prompts * m))
            for lo in range(0, k, step):
                t = slice(lo, min(lo + step, k))
                if jacobian:
                    # Jacobian rows 0..P-1 and the residual as row P: one product
                    # J_aug J_aug^T per replicate gives J^T J and J^T r together.
                    aug = self._buffer(step, P + 1, m)[: t.stop - t.start]
                    g = mixture(
                        XT[t], lse[t], mean_out[t], theta[t], self.structure, jac_out=aug[:, :P]
                    )
                    resid = np.subtract(Yc[t], g, out=aug[:, P])
                    gram = np.matmul(aug, np.swapaxes(aug, 1, 2))
                    jtj[t] += gram[:, :P, :P]
                    jtr[t] += gram[:, :P, P]
                else:
                    g = mixture(XT[t], lse[t], mean_out[t], theta[t], self.structure)
                    resid = np.subtract(Yc[t], g, out=g)
                total[t] += _row_dots(resid, resid)
        return total, jtj, jtr

    def _buffer(self, *shape: int) -> np.ndarray:
        """A reused work array of ``shape`` (spares fresh pages at every evaluation)."""
        buf = self._buffers.get(shape)
        if buf is None:
            buf = self._buffers[shape] = np.empty(shape)
        return buf


def fit_batched(
    X: np.ndarray,
    Y: np.ndarray,
    theta0: np.ndarray,
    structure: PrefixMoE,
    *,
    bound: float | None = None,
    max_iter: int = 400,
    ftol: float = 1e-12,
    xtol: float = 1e-12,
    gtol: float = 1e-12,
    chunk: int = SAMPLE_CHUNK,
    backend: Backend = "auto",
    threads: int = 1,
    solver: Solver = "lm",
) -> FitResult:
    """Levenberg-Marquardt least squares for R independent data sets at once.

    Parameters
    ----------
    X, Y:
        ``(R, n, d)`` inputs and ``(R, n)`` responses.
    theta0:
        ``(R, P)`` starting points.
    structure:
        Known parts of the model (pretrained experts, gate, expert type).
    bound:
        If given, every coordinate is kept in ``[-bound, bound]`` (projected LM with an active
        set: a coordinate on the box whose gradient points outward is held fixed).
    max_iter:
        Maximum number of Jacobian evaluations per replicate (the cap).
    ftol, xtol, gtol:
        MINPACK-style tests: relative RSS decrease, relative step size, and the largest
        gradient component scaled by the RSS.
    chunk:
        Samples per chunk for accumulating the normal equations (numpy backend); the numba
        backend only computes the pretrained terms in chunks of this size and walks over all
        samples of a replicate in one pass.
    backend:
        How the residuals and normal equations are evaluated: ``"numpy"`` (the reference:
        vectorised over replicates, the Jacobian materialised and multiplied with BLAS),
        ``"numba"`` (compiled kernels of :mod:`moe_theory.kernels` that accumulate the normal
        equations sample by sample, compiled on first use and cached on disk) or ``"auto"``
        (numba when it is installed and implements the structure's gate and expert, else
        numpy). The backends agree to rounding, not bit for bit, so in ill-conditioned
        (over-specified) fits their iterates and iteration counts can differ.
    threads:
        Threads over replicates for the numba backend (ignored by numpy, whose BLAS threads
        are set by the caller, e.g. with threadpoolctl). Results do not depend on it. 1 runs
        a serial kernel; more start numba's thread pool, which pays off only on idle cores
        (every evaluation is a fork-join) and, with numba's "omp" threading layer, must not
        be followed by forking worker processes.
    solver:
        ``"lm"`` (Levenberg-Marquardt on every parameter), ``"varpro"`` (variable projection:
        the affine experts solved exactly, LM on the gate parameters only;
        :mod:`moe_theory.varpro`) or ``"auto"``: variable projection for two or more affine
        atoms, with the full LM from the same start for the replicates it leaves unconverged
        (the lower RSS of the two kept); the full LM for one atom and for tanh experts.

    Returns
    -------
    FitResult

    Notes
    -----
    Each iteration evaluates the trial points of all running replicates in one pass. Where the
    previous step of a replicate was accepted, that pass also builds the normal equations at the
    trial point (speculatively: if the step is accepted they are the next iteration's; if not
    they are dropped). After a rejection the trial is evaluated without the Jacobian, and an
    accepted step then gets its normal equations in a second pass. Either way the iterates,
    counts and tests are those of plain LM; only the amount of wasted work differs.
    """
    theta0 = np.asarray(theta0, dtype=float)
    problem = _make_problem(X, Y, theta0.shape, structure, chunk, backend, threads)
    return _solver_function(solver, structure)(problem, theta0, bound=bound, max_iter=max_iter,
                                               ftol=ftol, xtol=xtol, gtol=gtol)


def _make_problem(
    X: np.ndarray,
    Y: np.ndarray,
    theta_shape: tuple[int, ...],
    structure: PrefixMoE,
    chunk: int,
    backend: Backend,
    threads: int,
) -> _Problem:
    """The data of a batched fit, checked against starting points of shape ``theta_shape``."""
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if (len(theta_shape) != 2 or Y.ndim != 2 or X.shape[0] != theta_shape[0]
            or Y.shape != X.shape[:2]):
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}, theta0 {theta_shape}; "
                         f"expected X (R, n, d), Y (R, n), theta0 (R, P)")
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    return _Problem(X, Y, structure, chunk, resolve_backend(backend, structure), threads)


def _levenberg_marquardt(
    problem: _Problem,
    theta0: np.ndarray,
    *,
    bound: float | None,
    max_iter: int,
    ftol: float,
    xtol: float,
    gtol: float,
) -> FitResult:
    """The LM iteration of :func:`fit_batched` on prepared data, from ``theta0`` ``(R, P)``."""
    theta = np.array(theta0, dtype=float)
    R, P = theta.shape
    if bound is not None:
        theta = np.clip(theta, -bound, bound)

    n_iter = np.zeros(R, dtype=int)
    converged = np.zeros(R, dtype=bool)
    stalled = np.zeros(R, dtype=bool)
    active = np.ones(R, dtype=bool)
    lam = np.full(R, np.nan)
    nu = np.full(R, 2.0)
    speculate = np.ones(R, dtype=bool)  # last step accepted: expect the next one to be too
    jtj = np.zeros((R, P, P))
    jtr = np.zeros((R, P))
    rss = np.zeros(R)
    eye = np.eye(P)

    def new_point(rows: np.ndarray) -> None:
        """Book-keeping at fresh normal equations: count, first damping, gradient test."""
        n_iter[rows] += 1
        # The damping multiplies diag(J^T J) (Marquardt's scaling), so it is dimensionless: a
        # first value tied to max diag(J^T J) ~ n would over-damp the first steps at large n.
        lam[rows[np.isnan(lam[rows])]] = _LAMBDA0
        diag = np.diagonal(jtj[rows], axis1=1, axis2=2)
        done = rows[gradient_small(jtr[rows], diag, rss[rows], gtol)]
        converged[done] = True
        active[done] = False

    rows = np.arange(R)
    rss[rows], jtj[rows], jtr[rows] = problem.evaluate(theta, rows, jacobian=True)
    new_point(rows)

    while active.any():
        rows = np.flatnonzero(active)
        A, b = jtj[rows], jtr[rows]
        th = theta[rows]
        if bound is not None:
            # Hold coordinates on the box whose descent direction leaves it.
            held = ((th <= -bound) & (b < 0)) | ((th >= bound) & (b > 0))
            A = np.where(held[:, :, None] | held[:, None, :], 0.0, A) + held[:, :, None] * eye
            b = np.where(held, 0.0, b)
        diag = np.diagonal(A, axis1=1, axis2=2)
        scale = np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300)
        step = np.linalg.solve(A + lam[rows, None, None] * (scale[:, :, None] * eye), b[..., None])[
            ..., 0
        ]
        trial = th + step
        if bound is not None:
            trial = np.clip(trial, -bound, bound)
            step = trial - th

        # Evaluate the trials: with the normal equations where the last step was accepted.
        spec = speculate[rows]
        new_rss = np.empty(rows.size)
        new_jtj = np.empty((rows.size, P, P))
        new_jtr = np.empty((rows.size, P))
        for mask, jac in ((spec, True), (~spec, False)):
            if mask.any():
                sub = np.flatnonzero(mask)
                out = problem.evaluate(trial[sub], rows[sub], jacobian=jac)
                new_rss[sub] = out[0]
                if jac:
                    new_jtj[sub], new_jtr[sub] = out[1], out[2]

        accept, x_small, f_small = damped_step_outcome(
            step, jtr[rows], jtj[rows], rss[rows], new_rss, lam, nu, rows, th, xtol, ftol)
        theta[rows[accept]] = trial[accept]
        speculate[rows] = accept

        done, stuck, capped = stopping_tests(lam[rows], accept, x_small, f_small, n_iter[rows],
                                             max_iter)
        converged[rows[done]] = True
        stalled[rows[stuck]] = True
        # A stopping replicate keeps its last accepted point and the RSS there.
        stop = done | stuck | capped
        rss[rows[accept]] = new_rss[accept]
        active[rows[stop]] = False

        # Accepted and still running: normal equations at the new point, speculated or fresh.
        moved = accept & ~stop
        if moved.any():
            have = moved & spec
            jtj[rows[have]], jtr[rows[have]] = new_jtj[have], new_jtr[have]
            fresh = np.flatnonzero(moved & ~spec)
            if fresh.size:
                _, jtj[rows[fresh]], jtr[rows[fresh]] = problem.evaluate(
                    theta[rows[fresh]], rows[fresh], jacobian=True
                )
            new_point(rows[moved])

    at_bound = (
        np.any(np.abs(theta) >= bound - 1e-9, axis=1) if bound is not None else np.zeros(R, bool)
    )
    return FitResult(theta=theta, rss=rss, n_iter=n_iter, converged=converged, at_bound=at_bound,
                     stalled=stalled)


def near_truth_starts(
    truth: PrefixMoE,
    n_fitted: int,
    n_init: int,
    rng: np.random.Generator,
    scale: float = 0.1,
    bound: float | None = None,
) -> np.ndarray:
    """Oracle starting points near the truth (docs/theory-background.md#practical-recipe).

    The first ``L`` fitted atoms go one to each true atom, the rest to random true atoms; an atom
    in a cell of ``k`` fitted atoms starts at ``beta_0* - log k`` so the masses add up; every
    coordinate gets ``N(0, scale^2)`` noise (never scaled with n).

    Returns
    -------
    ndarray ``(n_init, n_fitted * (2 + 2d))``.
    """
    L = truth.n_prompts
    if n_fitted < L:
        raise ValueError(f"n_fitted={n_fitted} must be >= the number of true prompts L={L}")
    true_atoms = truth.theta.reshape(L, -1)
    starts = []
    for _ in range(n_init):
        owner = np.concatenate([np.arange(L), rng.integers(0, L, size=n_fitted - L)])
        counts = np.bincount(owner, minlength=L)
        atoms = true_atoms[owner].copy()
        atoms[:, 0] -= np.log(counts[owner])
        atoms += rng.normal(0.0, scale, size=atoms.shape)
        starts.append(atoms.reshape(-1))
    theta = np.stack(starts)
    return np.clip(theta, -bound, bound) if bound is not None else theta


class LeastSquaresMoE(RegressorMixin, BaseEstimator):
    """Least-squares prefix-MoE estimator, a scikit-learn regressor.

    ``__init__`` only stores its arguments (``clone``, ``get_params`` and ``set_params`` work);
    :meth:`fit` returns the estimator with the fitted attributes below; :meth:`predict` before
    :meth:`fit` raises :class:`sklearn.exceptions.NotFittedError`; :meth:`score` is R^2.
    Beyond scikit-learn's ``(n, d)`` inputs, ``fit`` and ``predict`` accept a batch of
    ``R`` independent data sets ``(R, n, d)``, fitted together (:func:`fit_restarts`).

    The input dimension ``d`` is that of the known pretrained experts, so the model is not
    defined for other numbers of features.

    Parameters
    ----------
    gate, activation, alpha, tau:
        The prompt gate (see :class:`moe_theory.gates.Gate`).
    expert:
        Prompt expert type, ``"affine"`` or ``"tanh"``.
    n_experts:
        Number of fitted prompt atoms L'.
    pretrained:
        The known pretrained experts.
    init:
        ``"near-truth"`` (oracle starts around ``truth``) or an array of starting points of shape
        ``(n_init, P)`` or ``(R, n_init, P)``.
    truth:
        True model, required for ``init="near-truth"``.
    n_init:
        Restarts per data set; the lowest RSS is kept.
    max_iter, tol:
        Iteration cap and the common value of ``ftol``, ``xtol`` and ``gtol``.
    bound:
        Box ``[-bound, bound]`` on every coordinate, or ``None``.
    init_scale:
        Standard deviation of the near-truth start noise.
    random_state:
        Seed (int, SeedSequence or Generator) of the starting points.
    backend:
        ``"auto"``, ``"numba"`` or ``"numpy"``: how :func:`fit_batched` evaluates the model.
    threads:
        Threads over replicates of the numba backend.
    solver:
        ``"auto"`` (the default: variable projection for two or more affine atoms, with the
        full LM where it does not converge; the full LM otherwise), ``"lm"`` or ``"varpro"``
        (see :func:`fit_batched`).

    Attributes
    ----------
    n_features_in_ : int
        Input dimension ``d`` seen in :meth:`fit`.
    params_ : PrefixMoE
        Fitted model; prompt arrays have a leading replicate axis if ``X`` had one.
    theta_, loss_, n_iter_, converged_, at_bound_ : ndarray
        Fitted flat parameters, RSS, Jacobian evaluations, convergence and bound flags.
    status_ : ndarray
        ``converged``, ``capped`` (iteration cap) or ``stalled`` (damping blew up) per fit.
    """

    def __init__(
        self,
        gate: GateKind = "norga",
        activation: Activation = "tanh",
        *,
        expert: ExpertKind = "affine",
        n_experts: int = 1,
        pretrained: Pretrained | None = None,
        init: str | np.ndarray = "near-truth",
        truth: PrefixMoE | None = None,
        n_init: int = 1,
        max_iter: int = 400,
        tol: float = 1e-12,
        bound: float | None = None,
        alpha: float = 1.0,
        tau: float = 1.0,
        init_scale: float = 0.1,
        random_state: int | np.random.SeedSequence | np.random.Generator | None = None,
        backend: Backend = "auto",
        threads: int = 1,
        solver: Solver = "auto",
    ) -> None:
        self.gate = gate
        self.activation = activation
        self.expert = expert
        self.n_experts = n_experts
        self.pretrained = pretrained
        self.init = init
        self.truth = truth
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.bound = bound
        self.alpha = alpha
        self.tau = tau
        self.init_scale = init_scale
        self.random_state = random_state
        self.backend = backend
        self.threads = threads
        self.solver = solver

    def _structure(self, dim: int) -> PrefixMoE:
        pretrained = self.pretrained
        if pretrained is None:
            if self.truth is None:
                raise ValueError("pass pretrained= (or truth=) so the known experts are defined")
            pretrained = self.truth.pretrained
        if pretrained.dim != dim:
            raise ValueError(
                f"X has dimension {dim} but the pretrained experts have {pretrained.dim}"
            )
        L = self.n_experts
        return PrefixMoE(
            pretrained,
            np.zeros(L),
            np.zeros((L, dim)),
            np.zeros((L, dim)),
            np.zeros(L),
            gate=Gate(self.gate, self.activation, self.alpha, self.tau),
            expert=self.expert,
        )

    def _starts(self, R: int, P: int) -> np.ndarray:
        if isinstance(self.init, str):
            if self.init != "near-truth":
                raise ValueError(f"init must be 'near-truth' or an array; got {self.init!r}")
            if self.truth is None:
                raise ValueError("init='near-truth' needs truth=")
            rng = np.random.default_rng(self.random_state)
            return np.stack(
                [
                    near_truth_starts(
                        self.truth, self.n_experts, self.n_init, rng, self.init_scale, self.bound
                    )
                    for _ in range(R)
                ]
            )
        starts = np.asarray(self.init, dtype=float)
        if starts.ndim == 2:
            starts = np.broadcast_to(starts, (R, *starts.shape))
        if starts.shape != (R, self.n_init, P):
            raise ValueError(
                f"init array must have shape (n_init, P) or (R, n_init, P) = "
                f"({R}, {self.n_init}, {P}); got {starts.shape}"
            )
        return starts

    def fit(self, X: np.ndarray, y: np.ndarray) -> LeastSquaresMoE:
        """Fit the prompt atoms by least squares.

        Parameters
        ----------
        X:
            ``(n, d)`` inputs, or ``(R, n, d)`` for ``R`` data sets fitted at once.
        y:
            ``(n,)`` responses, or ``(R, n)``.

        Returns
        -------
        LeastSquaresMoE
            ``self``, fitted. Fits that reach ``max_iter`` are kept, flagged
            ``converged_ = False`` and announced by one :class:`ConvergenceWarning`.
        """
        X, y, batched = self._check_data(X, y, fit=True)
        structure = self._structure(X.shape[2])
        R, P = X.shape[0], structure.theta.shape[-1]
        starts = self._starts(R, P)
        best = fit_restarts(X, y, starts, structure, bound=self.bound, max_iter=self.max_iter,
                            tol=self.tol, backend=self.backend, threads=self.threads,
                            solver=self.solver)
        if not best.converged.all():
            stalled = int(best.stalled.sum())
            warnings.warn(
                f"{int((~best.converged).sum()) - stalled} of {R} fits reached "
                f"max_iter={self.max_iter} and {stalled} stalled (damping blew up) without "
                "converging; they are kept and flagged converged_=False (status_)",
                ConvergenceWarning,
                stacklevel=2,
            )
        squeeze = (lambda a: a) if batched else (lambda a: a[0])
        self.theta_ = squeeze(best.theta)
        self.loss_ = squeeze(best.rss)
        self.n_iter_ = squeeze(best.n_iter)
        self.converged_ = squeeze(best.converged)
        self.at_bound_ = squeeze(best.at_bound)
        self.status_ = squeeze(best.status)
        self.params_ = structure.with_theta(self.theta_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The fitted regression function at ``X`` ``(n, d)`` (or ``(R, n, d)`` after a batched
        fit: data set ``r`` with the fit of replicate ``r``)."""
        check_is_fitted(self, "params_")
        X, _, batched = self._check_data(X, None, fit=False)
        return regression(X if batched else X[0], self.params_)

    def _check_data(
        self, X: np.ndarray, y: np.ndarray | None, fit: bool
    ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """``X`` as ``(R, n, d)`` float64 (and, in ``fit``, ``y`` as ``(R, n)``) and whether it
        came as a batch.

        ``(n, d)`` data go through scikit-learn's ``validate_data`` (numeric, finite, at least
        one sample, ``n_features_in_``, ``y`` required in ``fit``); a batch gets the same checks
        here.
        """
        if getattr(X, "ndim", None) != 3 and not (
            isinstance(X, list | tuple) and np.ndim(X) == 3
        ):
            if not fit:
                return validate_data(self, X, reset=False, dtype=np.float64)[None], None, False
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
            return X[None], y[None], False
        X = np.asarray(X, dtype=float)
        if fit:
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                                 "target y is None")
            y = np.asarray(y, dtype=float)
            if y.shape != X.shape[:2]:
                raise ValueError(f"a batch X {X.shape} needs y of shape {X.shape[:2]}; got "
                                 f"{y.shape}")
            if not np.isfinite(y).all():
                raise ValueError("y contains NaN or infinity")
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinity")
        if X.shape[1] < 1:
            raise ValueError(f"X has no samples: shape {X.shape}")
        if fit:
            self.n_features_in_ = X.shape[2]
        elif X.shape[2] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[2]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input")
        return X, y, True


def fit_restarts(
    X: np.ndarray,
    Y: np.ndarray,
    starts: np.ndarray,
    structure: PrefixMoE,
    *,
    bound: float | None = None,
    max_iter: int = 400,
    tol: float = 1e-12,
    backend: Backend = "auto",
    threads: int = 1,
    solver: Solver = "lm",
) -> FitResult:
    """:func:`fit_batched` from every start in ``starts`` ``(R, n_init, P)``; per replicate the
    fit with the lowest RSS is kept (ties keep the earlier start). ``tol`` is used as ``ftol``,
    ``xtol`` and ``gtol``; ``backend``, ``threads`` and ``solver`` are passed on. The data (and
    their pretrained terms) are prepared once for all starts."""
    starts = np.asarray(starts, dtype=float)
    problem = _make_problem(X, Y, starts.shape[::2], structure, SAMPLE_CHUNK, backend, threads)
    run = _solver_function(solver, structure)
    best: FitResult | None = None
    for k in range(starts.shape[1]):
        res = run(problem, starts[:, k], bound=bound, max_iter=max_iter, ftol=tol, xtol=tol,
                  gtol=tol)
        best = res if best is None else _keep_better(best, res)
    if best is None:
        raise ValueError("starts must hold at least one starting point per replicate")
    return best


def _solver_function(solver: str, structure: PrefixMoE):
    """The iteration of ``solver`` (:func:`moe_theory.varpro.resolve_solver`) for
    ``structure``: the full LM, variable projection, or (``"auto"`` with variable projection)
    variable projection with the full LM as fallback."""
    if varpro.resolve_solver(solver, structure) == "lm":
        return _levenberg_marquardt
    if solver == "auto":
        return _varpro_with_fallback
    return varpro.variable_projection


class _RowSubset:
    """The replicates ``rows`` of a prepared problem, seen as a problem of their own."""

    def __init__(self, problem: _Problem, rows: np.ndarray) -> None:
        self.problem = problem
        self.rows = rows
        self.structure = problem.structure
        self.backend = problem.backend

    def evaluate(self, theta: np.ndarray, rows: np.ndarray, jacobian: bool):
        return self.problem.evaluate(theta, self.rows[rows], jacobian)


def _varpro_with_fallback(problem: _Problem, theta0: np.ndarray, **options) -> FitResult:
    """``solver="auto"`` for affine experts: variable projection; the replicates it stops
    without converging (capped or stalled) are fitted again by the full LM from the same
    start, and the lower RSS of the two is kept (ties keep variable projection).

    Variable projection replaces the start's linear part by the optimum at the start's gates.
    Where two atoms nearly coincide that optimum can lie far away, on the box, and the profile
    RSS along the box is a slow valley; the full LM, moving both parts together from the
    start, then often reaches a lower RSS (measured: E5, linear gate, t = 0.8, n = 1e4, one
    replicate of eight).
    """
    result = varpro.variable_projection(problem, theta0, **options)
    redo = np.flatnonzero(~result.converged)
    if redo.size == 0:
        return result
    lm = _levenberg_marquardt(_RowSubset(problem, redo), np.asarray(theta0)[redo], **options)
    merged = FitResult(*(getattr(result, f).copy() for f in FitResult.__dataclass_fields__))
    better = _keep_better(_take_rows(result, redo), lm)
    for f in FitResult.__dataclass_fields__:
        getattr(merged, f)[redo] = getattr(better, f)
    return merged


def _take_rows(result: FitResult, rows: np.ndarray) -> FitResult:
    """The replicates ``rows`` of ``result``."""
    return FitResult(*(getattr(result, f)[rows] for f in FitResult.__dataclass_fields__))


def _keep_better(a: FitResult, b: FitResult) -> FitResult:
    """Per replicate, the fit with the lower RSS (ties keep ``a``)."""
    take_b = b.rss < a.rss
    pick = lambda x, y: np.where(take_b.reshape(-1, *[1] * (x.ndim - 1)), y, x)  # noqa: E731
    return FitResult(
        *(
            pick(getattr(a, f), getattr(b, f))
            for f in ("theta", "rss", "n_iter", "converged", "at_bound", "stalled")
        )
    )
