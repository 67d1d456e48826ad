"""What a batched least-squares fit returns (:class:`FitResult`), its status names and the
damping constants shared by the full Levenberg-Marquardt (:mod:`moe_theory.estimate`) and
variable projection (:mod:`moe_theory.varpro`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# First LM damping, relative to diag(J^T J).
_LAMBDA0 = 1e-3
# Damping (relative to diag(J^T J)) beyond which a fit that stops is *stalled*: its steps are
# ~1e-16 of a Gauss-Newton step, so a "small step" there is no sign of convergence.
LAMBDA_STALL = 1e16

FIT_STATUSES: tuple[str, ...] = ("converged", "capped", "stalled")


@dataclass
class FitResult:
    """Outcome of :func:`moe_theory.estimate.fit_batched`; every array has a leading replicate axis.

    An optimiser's result, not a statistical fit: it carries no interval, so it does not follow
    :class:`moe_theory.stat_fit.StatFit` (``params`` / ``conf_int`` / ``summary``). Its
    parameter vectors keep the one name ``theta`` that the solvers, the model and the sweeps
    use for them; a ``params`` alias would only add a second name for the same array.

    Attributes
    ----------
    theta:
        ``(R, P)`` fitted parameters.
    rss:
        ``(R,)`` residual sum of squares.
    n_iter:
        ``(R,)`` Jacobian evaluations used.
    converged:
        ``(R,)`` True when a convergence test was met before the cap with a sane damping.
    at_bound:
        ``(R,)`` True when some coordinate sits on the box (bounded fits only).
    stalled:
        ``(R,)`` True when the fit stopped because its damping blew up (never converged).
    """

    theta: np.ndarray
    rss: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    at_bound: np.ndarray
    stalled: np.ndarray

    @property
    def status(self) -> np.ndarray:
        """``(R,)`` strings: ``converged``, ``capped`` or ``stalled`` (see :func:`fit_status`)."""
        return fit_status(self.converged, self.stalled)


def fit_status(converged: np.ndarray, stalled: np.ndarray) -> np.ndarray:
    """``converged`` / ``stalled`` / ``capped`` (neither: the iteration cap) per fit."""
    converged = np.asarray(converged, dtype=bool)
    return np.where(converged, "converged", np.where(np.asarray(stalled, bool), "stalled",
                                                     "capped"))


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products ``(k, m), (k, m) -> (k,)``, one BLAS dot per row.

    ``einsum("rn,rn->r")`` may pick a different kernel (and summation order) for one row than
    for several, so a replicate's RSS would depend on how many others are still running;
    a stacked ``matmul`` of vectors computes each row by itself.
    """
    return np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]


def damped_step_outcome(
    step: np.ndarray, grad: np.ndarray, hess: np.ndarray, old: np.ndarray, new: np.ndarray,
    lam: np.ndarray, nu: np.ndarray, rows: np.ndarray, x: np.ndarray, xtol: float, ftol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Judge a Levenberg-Marquardt trial step of the running fits ``rows`` (one rule for both
    solvers, :func:`moe_theory.estimate.fit_batched` and :mod:`moe_theory.varpro`).

    ``grad`` / ``hess`` are the Gauss-Newton model's ``J^T r`` and ``J^T J`` of those rows at
    ``x`` (their parameters), ``old`` / ``new`` the objective before and after the step. The
    step is accepted where the objective fell (gain ratio ``rho > 0``); Nielsen's update then
    changes the damping ``lam`` and its growth ``nu`` in place. Returns ``accept`` and MINPACK's
    two small-step tests, ``x_small`` (relative step size) and ``f_small`` (relative decrease,
    accepted steps with ``rho > 0.25`` only).
    """
    # Gauss-Newton model decrease of the objective for the step actually taken.
    predicted = 2.0 * _row_dots(step, grad) - _row_dots(
        step, np.matmul(hess, step[:, :, None])[..., 0]
    )
    actual = old - new
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(predicted > 0, actual / predicted, -1.0)
    accept = (rho > 0) & np.isfinite(new)
    # Nielsen's damping update.
    lam[rows] = np.where(
        accept,
        lam[rows] * np.maximum(1 / 3, 1 - (2 * rho - 1) ** 3),
        lam[rows] * nu[rows],
    )
    nu[rows] = np.where(accept, 2.0, nu[rows] * 2.0)
    step_norm = np.linalg.norm(step, axis=1)
    x_small = step_norm <= xtol * (xtol + np.linalg.norm(x, axis=1))
    f_small = accept & (actual <= ftol * np.maximum(new, 1e-300)) & (rho > 0.25)
    return accept, x_small, f_small


def stopping_tests(
    lam_rows: np.ndarray, accept: np.ndarray, x_small: np.ndarray, f_small: np.ndarray,
    n_iter_rows: np.ndarray, max_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(done, stuck, capped)`` of the running fits after a judged step.

    A step that is small only because the damping blew up, or a damping out of range, is a
    stall, not convergence; a fit at the iteration cap stops there (``capped``) once its last
    step was accepted or its damping blew up.
    """
    blown = ~np.isfinite(lam_rows) | (lam_rows > LAMBDA_STALL)
    dead = ~np.isfinite(lam_rows) | (lam_rows > 1e300)
    done = f_small | (x_small & ~blown)
    stuck = ~done & (dead | (x_small & blown))
    capped = ~done & ~stuck & (n_iter_rows >= max_iter) & (accept | blown)
    return done, stuck, capped


def gradient_small(grad: np.ndarray, diag: np.ndarray, objective: np.ndarray,
                   gtol: float) -> np.ndarray:
    """MINPACK's gradient test per fit: ``max_k |g_k| / sqrt(H_kk * F) <= gtol``, the largest
    cosine between the residual and a Jacobian column (``g = J^T r``, ``H_kk`` the diagonal of
    ``J^T J``, ``F`` the objective); both solvers stop a fit where it holds."""
    col = np.sqrt(np.maximum(diag, 1e-300))
    gnorm = np.max(np.abs(grad) / col, axis=1) / np.sqrt(np.maximum(objective, 1e-300))
    return gnorm <= gtol
