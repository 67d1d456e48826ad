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
