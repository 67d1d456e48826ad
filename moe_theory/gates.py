"""Gating score functions of the prefix mixture of experts
(docs/theory-background.md#regression-function).

Pretrained experts have quadratic scores ``x^T B x + c``. Prompt experts have a score
``phi(beta_1^T x)`` with

* ``phi(u) = u`` for **linear** gating (plain prefix tuning), and
* ``phi(u) = u + alpha * sigma(tau * u)`` for **NoRGa** (non-linear residual gate),

``sigma`` one of tanh, sigmoid or GELU (exact, with the normal CDF). ``alpha`` and ``tau`` are
fixed, known scalars in the theory. The CL attention code computes the same score on scaled
query-key products; a test checks the two against the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy.special import erf, expit

from norga.choices import ChoiceError, check_choice

#: A gate named as a key or label: the ``gates`` of a run configuration, the ``gate`` column of
#: the result files, ``RateResult.rate_fit(setting, gate)``. A function that computes with the
#: gate takes a :class:`Gate` instead (its ``kind`` is this label); none takes both.
GateKind = Literal["linear", "norga"]
Activation = Literal["tanh", "sigmoid", "gelu"]

GATES: tuple[GateKind, ...] = get_args(GateKind)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _normal_cdf(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + erf(u / _SQRT2))


def activation(u: np.ndarray, kind: Activation) -> np.ndarray:
    """sigma(u) for ``kind`` in tanh, sigmoid, gelu (exact GELU ``u * Phi(u)``)."""
    if kind == "tanh":
        return np.tanh(u)
    if kind == "sigmoid":
        return expit(u)
    if kind == "gelu":
        return u * _normal_cdf(u)
    raise ChoiceError("activation", kind, ACTIVATIONS)


def activation_derivative(u: np.ndarray, kind: Activation, order: int = 1) -> np.ndarray:
    """First (``order=1``) or second (``order=2``) derivative of sigma at ``u``."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2; got {order}")
    if kind == "tanh":
        t = np.tanh(u)
        return 1.0 - t * t if order == 1 else -2.0 * t * (1.0 - t * t)
    if kind == "sigmoid":
        s = expit(u)
        return s * (1.0 - s) if order == 1 else s * (1.0 - s) * (1.0 - 2.0 * s)
    if kind == "gelu":
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * u * u)
        return _normal_cdf(u) + u * pdf if order == 1 else pdf * (2.0 - u * u)
    raise ChoiceError("activation", kind, ACTIVATIONS)


@dataclass(frozen=True)
class Gate:
    """A prompt gate ``phi``: identity (linear) or ``u + alpha * sigma(tau * u)`` (NoRGa).

    Parameters
    ----------
    kind:
        ``"linear"`` or ``"norga"``.
    activation:
        sigma for NoRGa (ignored, and reported as ``"none"``, for linear gating).
    alpha, tau:
        Fixed scale of the non-linear residual and temperature inside sigma.
    """

    kind: GateKind = "norga"
    activation: Activation = "tanh"
    alpha: float = 1.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        check_choice("gate", self.kind, GATES)
        check_choice("activation", self.activation, ACTIVATIONS)

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``"NoRGa (tanh)"``."""
        return "linear" if self.kind == "linear" else f"NoRGa ({self.activation})"

    @property
    def activation_name(self) -> str:
        """The activation actually used: ``"none"`` for linear gating."""
        return "none" if self.kind == "linear" else self.activation

    def phi(self, u: np.ndarray) -> np.ndarray:
        """The prompt score as a function of the linear score ``u = beta_1^T x``."""
        u = np.asarray(u, dtype=float)
        if self.kind == "linear":
            return u
        return u + self.alpha * activation(self.tau * u, self.activation)

    def dphi(self, u: np.ndarray) -> np.ndarray:
        """``phi'(u) = 1 + alpha * tau * sigma'(tau * u)`` (1 for linear gating)."""
        u = np.asarray(u, dtype=float)
        if self.kind == "linear":
            return np.ones_like(u)
        return 1.0 + self.alpha * self.tau * activation_derivative(self.tau * u, self.activation)

    def d2phi(self, u: np.ndarray) -> np.ndarray:
        """``phi''(u) = alpha * tau^2 * sigma''(tau * u)`` (0 for linear gating)."""
        u = np.asarray(u, dtype=float)
        if self.kind == "linear":
            return np.zeros_like(u)
        return self.alpha * self.tau**2 * activation_derivative(self.tau * u, self.activation, 2)


def quadratic_scores(X: np.ndarray, B: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Pretrained scores ``x^T B_j x + c_j``.

    Parameters
    ----------
    X:
        Inputs of shape ``(..., n, d)``.
    B, c:
        Quadratic forms ``(N, d, d)`` and offsets ``(N,)``.

    Returns
    -------
    ndarray of shape ``(..., n, N)``.
    """
    return np.einsum("...ni,jik,...nk->...nj", X, B, X) + c
