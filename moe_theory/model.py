"""The prefix mixture-of-experts regression function (spec moe-theory.md section 1).

``g_G(x)`` is a softmax over ``N`` pretrained logits (quadratic, known) and ``L'`` prompt logits
``phi(beta_1^T x) + beta_0``, weighting the pretrained affine experts and the prompt experts
``h(x, (a, b))``. Everything is float64 and batched: a leading replicate axis (or any leading
axes) on the inputs and on the prompt parameters broadcasts.

Prompt parameters travel as a flat vector ``theta`` of length ``L' * (2 + 2d)``; per atom the
layout is ``(beta_0, beta_1[0:d], a[0:d], b)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from moe_theory.gates import Gate, check_choice, quadratic_scores

ExpertKind = Literal["affine", "tanh"]
EXPERTS: tuple[str, ...] = get_args(ExpertKind)


def expert_output(z: np.ndarray, kind: ExpertKind) -> np.ndarray:
    """``h`` as a function of its pre-activation ``z = a^T x + b``."""
    return z if kind == "affine" else np.tanh(z)


def expert_derivative(z: np.ndarray, kind: ExpertKind) -> np.ndarray:
    """``h'(z)``: 1 for affine experts, ``1 - tanh(z)^2`` for tanh experts."""
    if kind == "affine":
        return np.ones_like(z)
    t = np.tanh(z)
    return 1.0 - t * t


@dataclass(frozen=True)
class Pretrained:
    """The ``N`` known pretrained experts: quadratic gates and affine experts.

    Attributes
    ----------
    B:
        ``(N, d, d)`` quadratic forms of the gates.
    c:
        ``(N,)`` gate offsets.
    a, b:
        ``(N, d)`` slopes and ``(N,)`` intercepts of the affine experts ``a^T x + b``.
    """

    B: np.ndarray
    c: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        for name in ("B", "c", "a", "b"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float))
        n, d = self.a.shape
        if self.B.shape != (n, d, d) or self.c.shape != (n,) or self.b.shape != (n,):
            raise ValueError(
                f"inconsistent pretrained shapes: B {self.B.shape}, c {self.c.shape}, "
                f"a {self.a.shape}, b {self.b.shape}; expected (N,d,d), (N,), (N,d), (N,)"
            )

    @property
    def dim(self) -> int:
        return self.a.shape[1]

    def logits_and_outputs(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pretrained logits and expert outputs, both of shape ``(..., n, N)``."""
        logits = quadratic_scores(X, self.B, self.c)
        outputs = np.einsum("...nd,jd->...nj", X, self.a) + self.b
        return logits, outputs


@dataclass(frozen=True)
class PrefixMoE:
    """A prefix MoE: the known parts plus the prompt atoms.

    Prompt arrays may carry leading batch axes (replicates): ``beta0`` ``(..., L)``,
    ``beta1`` and ``a`` ``(..., L, d)``, ``b`` ``(..., L)``.

    Parameters
    ----------
    pretrained:
        The known experts.
    beta0, beta1, a, b:
        Prompt atoms (gate bias, gate direction, expert slope, expert intercept).
    gate:
        The prompt gate (linear or NoRGa with its activation, alpha, tau).
    expert:
        ``"affine"`` (prefix tuning) or ``"tanh"`` (identifiable control).
    """

    pretrained: Pretrained
    beta0: np.ndarray
    beta1: np.ndarray
    a: np.ndarray
    b: np.ndarray
    gate: Gate = field(default_factory=Gate)
    expert: ExpertKind = "affine"

    def __post_init__(self) -> None:
        check_choice(self.expert, EXPERTS, "expert")
        for name in ("beta0", "beta1", "a", "b"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float))
        d = self.pretrained.dim
        if self.beta1.shape[-1] != d or self.a.shape[-1] != d:
            raise ValueError(f"beta1 and a must end in the input dimension d={d}")
        L = self.beta0.shape[-1]
        if self.beta1.shape[-2] != L or self.a.shape[-2] != L or self.b.shape[-1] != L:
            raise ValueError("beta0, beta1, a and b disagree on the number of prompts")

    @property
    def dim(self) -> int:
        """Input dimension d."""
        return self.pretrained.dim

    @property
    def n_prompts(self) -> int:
        """Number of prompt atoms L'."""
        return self.beta0.shape[-1]

    @property
    def theta(self) -> np.ndarray:
        """Flat prompt parameters, shape ``(..., L' * (2 + 2d))``."""
        atoms = np.concatenate(
            [self.beta0[..., None], self.beta1, self.a, self.b[..., None]], axis=-1
        )
        return atoms.reshape(*atoms.shape[:-2], -1)

    def with_theta(self, theta: np.ndarray) -> PrefixMoE:
        """A copy with prompt atoms taken from the flat vector(s) ``theta``."""
        beta0, beta1, a, b = unpack_theta(theta, self.dim)
        return replace(self, beta0=beta0, beta1=beta1, a=a, b=b)


def n_params(n_prompts: int, dim: int) -> int:
    """Length of ``theta``: ``L' * (2 + 2d)``."""
    return n_prompts * (2 + 2 * dim)


def unpack_theta(theta: np.ndarray, dim: int) -> tuple[np.ndarray, ...]:
    """Split flat ``theta`` ``(..., L'(2+2d))`` into ``beta0, beta1, a, b``."""
    theta = np.asarray(theta, dtype=float)
    width = 2 + 2 * dim
    if theta.shape[-1] % width:
        raise ValueError(f"theta length {theta.shape[-1]} is not a multiple of 2+2d={width}")
    atoms = theta.reshape(*theta.shape[:-1], theta.shape[-1] // width, width)
    return atoms[..., 0], atoms[..., 1 : 1 + dim], atoms[..., 1 + dim : 1 + 2 * dim], atoms[..., -1]


def regression(X: np.ndarray, params: PrefixMoE) -> np.ndarray:
    """The regression function ``g_G(X)``.

    Parameters
    ----------
    X:
        Inputs ``(..., n, d)``.
    params:
        The model; prompt arrays may carry leading batch axes that broadcast with ``X``'s.

    Returns
    -------
    ndarray ``(..., n)``.
    """
    g, _ = regression_and_jacobian(X, params.theta, params, jacobian=False)
    return g


def regression_and_jacobian(
    X: np.ndarray,
    theta: np.ndarray,
    structure: PrefixMoE,
    jacobian: bool = True,
    pretrained_terms: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``g`` and its analytic Jacobian with respect to ``theta`` (spec section 2.2).

    Parameters
    ----------
    X:
        Inputs ``(..., n, d)``.
    theta:
        Flat prompt parameters ``(..., P)`` with ``P = L'(2+2d)``.
    structure:
        Supplies the known parts (pretrained experts, gate, expert type); its own prompt
        values are ignored.
    jacobian:
        Whether to compute the Jacobian.
    pretrained_terms:
        Optional cached ``Pretrained.logits_and_outputs(X)``; they do not depend on ``theta``,
        so a fitter computes them once per data set.

    Returns
    -------
    g:
        ``(..., n)``.
    J:
        ``(..., n, P)`` or ``None``; column layout as ``theta``.
    """
    X = np.asarray(X, dtype=float)
    beta0, beta1, a, b = unpack_theta(theta, structure.dim)
    gate, kind = structure.gate, structure.expert
    if pretrained_terms is None:
        pretrained_terms = structure.pretrained.logits_and_outputs(X)
    pre_logits, pre_out = pretrained_terms

    # Component-first layout (K, ..., n): reductions over the K experts become cheap
    # element-wise operations instead of reductions over a tiny last axis.
    u = np.moveaxis(np.matmul(X, np.swapaxes(beta1, -1, -2)), -1, 0)  # beta_1^T x, (L, ..., n)
    z = np.moveaxis(np.matmul(X, np.swapaxes(a, -1, -2)), -1, 0) + np.moveaxis(b, -1, 0)[..., None]
    prompt_logits = gate.phi(u) + np.moveaxis(beta0, -1, 0)[..., None]
    prompt_out = expert_output(z, kind)
    lead = np.broadcast_shapes(pre_logits.shape[:-1], prompt_logits.shape[1:])
    n_pre, n_prompt = pre_logits.shape[-1], prompt_logits.shape[0]
    logits = np.empty((n_pre + n_prompt, *lead))
    outputs = np.empty_like(logits)
    logits[:n_pre] = np.moveaxis(pre_logits, -1, 0)
    logits[n_pre:] = prompt_logits
    outputs[:n_pre] = np.moveaxis(pre_out, -1, 0)
    outputs[n_pre:] = prompt_out

    # Stable softmax over the experts (log-sum-exp shift; never divide raw exponentials).
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    g = (weights * outputs).sum(axis=0)
    if not jacobian:
        return g, None

    w = weights[n_pre:]  # prompt weights (L, ..., n)
    resid = w * (prompt_out - g)  # dg/dbeta0
    hprime = w * expert_derivative(z, kind)  # dg/db
    gate_slope = resid * gate.dphi(u)
    Xb = np.broadcast_to(X, (*lead, X.shape[-1]))
    d = X.shape[-1]
    J = np.empty((*lead, n_prompt, 2 + 2 * d))
    J[..., 0] = np.moveaxis(resid, 0, -1)
    J[..., 1 : 1 + d] = np.moveaxis(gate_slope, 0, -1)[..., None] * Xb[..., None, :]
    J[..., 1 + d : 1 + 2 * d] = np.moveaxis(hprime, 0, -1)[..., None] * Xb[..., None, :]
    J[..., -1] = np.moveaxis(hprime, 0, -1)
    return g, J.reshape(*J.shape[:-2], -1)
