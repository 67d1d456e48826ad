"""The prefix mixture-of-experts regression function (docs/theory-background.md#model).

``g_G(x)`` is a softmax over ``N`` pretrained logits (quadratic, known) and ``L'`` prompt logits
``phi(beta_1^T x) + beta_0``, weighting the pretrained affine experts and the prompt experts
``h(x, (a, b))``. Everything is float64 and batched: a leading replicate axis (or any leading
axes) on the inputs and on the prompt parameters broadcasts.

Prompt parameters travel as a flat vector ``theta`` of length ``L' * (2 + 2d)``; per atom the
layout is ``(beta_0, beta_1[0:d], a[0:d], b)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
from scipy.special import softmax

from moe_theory.gates import Gate, quadratic_scores
from norga.choices import check_choice

ExpertKind = Literal["affine", "tanh"]

# Samples per block inside :func:`regression_and_jacobian` (bounds its temporaries).
_SAMPLE_BLOCK = 65536
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

    def collapsed(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`collapse_pretrained` of :meth:`logits_and_outputs`, computed expert by expert.

        Same numbers, about four times faster: no ``(..., n, N)`` arrays, whose reductions over
        the short last axis numpy does not vectorise.

        Parameters
        ----------
        X:
            Inputs ``(..., n, d)``.

        Returns
        -------
        lse, mean_out:
            ``(..., n)`` each.
        """
        XT = np.moveaxis(np.asarray(X, dtype=float), -1, 0)  # (d, ..., n)
        logits, outputs = [], []
        for B, c, a, b in zip(self.B, self.c, self.a, self.b, strict=True):
            if self.dim == 1:
                x = XT[0]
                logits.append((B[0, 0] * x) * x + c)
                outputs.append(a[0] * x + b)
            else:
                logits.append(np.einsum("i...,ik,k...->...", XT, B, XT) + c)
                outputs.append(np.tensordot(a, XT, axes=1) + b)
        top = functools.reduce(np.maximum, logits)
        total = np.zeros_like(top)
        num = np.zeros_like(top)
        for logit, out in zip(logits, outputs, strict=True):
            weight = np.exp(logit - top)
            total += weight
            num += weight * out
        return top + np.log(total), num / total

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
        check_choice("expert", self.expert, EXPERTS)
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


def textbook_regression(X: np.ndarray, theta: np.ndarray, structure: PrefixMoE) -> np.ndarray:
    """``g(X)`` straight from the definition, for one data set: slow, obvious, unbatched.

    A softmax (``scipy.special.softmax``) over all ``N`` pretrained and ``L'`` prompt experts;
    the reference that tests and benchmarks hold the fast paths against.

    Parameters
    ----------
    X:
        Inputs ``(n, d)``.
    theta:
        Flat prompt parameters ``(P,)``.
    structure:
        Known parts of the model (its own prompt values are ignored).

    Returns
    -------
    ndarray ``(n,)``.
    """
    pre = structure.pretrained
    d = X.shape[1]
    atoms = np.asarray(theta, dtype=float).reshape(-1, 2 + 2 * d)  # beta0, beta1, a, b per atom
    beta0, beta1, a, b = atoms[:, 0], atoms[:, 1 : 1 + d], atoms[:, 1 + d : 1 + 2 * d], atoms[:, -1]
    pre_logits = np.stack([np.sum((X @ B) * X, axis=1) + c for B, c in zip(pre.B, pre.c,
                                                                             strict=True)], axis=1)
    pre_out = X @ pre.a.T + pre.b
    prompt_logits = structure.gate.phi(X @ beta1.T) + beta0
    z = X @ a.T + b
    prompt_out = z if structure.expert == "affine" else np.tanh(z)
    weights = softmax(np.concatenate([pre_logits, prompt_logits], axis=1), axis=1)
    return (weights * np.concatenate([pre_out, prompt_out], axis=1)).sum(axis=1)


def collapse_pretrained(
    pre_logits: np.ndarray, pre_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``N`` pretrained experts seen as one expert of the softmax.

    Inside the softmax over all ``N + L'`` experts, the pretrained block only enters through
    ``log sum_j exp(s_j)`` and its own softmax-weighted output, and neither depends on the prompt
    parameters. Collapsing them once per data set turns an ``N + L'`` expert mixture into a
    ``1 + L'`` one, with the same value and Jacobian (up to float rounding).

    Parameters
    ----------
    pre_logits, pre_out:
        Pretrained logits and expert outputs ``(..., n, N)``
        (:meth:`Pretrained.logits_and_outputs`).

    Returns
    -------
    lse:
        ``(..., n)`` log-sum-exp of the pretrained logits.
    mean_out:
        ``(..., n)`` pretrained outputs averaged with their own softmax weights.
    """
    top = pre_logits.max(axis=-1, keepdims=True)
    ew = np.exp(pre_logits - top)
    total = ew.sum(axis=-1)
    lse = top[..., 0] + np.log(total)
    # multiply, then reduce: einsum may change its kernel with the batch shape
    mean_out = (ew * pre_out).sum(axis=-1) / total
    return lse, mean_out


def _tanh_parts(v: np.ndarray, scale: float) -> np.ndarray:
    """``s = 1 - tanh(scale * v) = 2 / (1 + exp(2 scale v))``, in a new array.

    One ``exp`` is about 2.5 times cheaper than numpy's float64 ``tanh`` here, and ``s`` also
    gives ``1 - tanh^2 = s (2 - s)`` without cancellation near the saturated ends. The absolute
    error stays at rounding level (about 1e-16); overflow of ``exp`` gives ``s = 0``, tanh = 1.
    """
    s = np.multiply(v, 2.0 * scale)
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1.0
    return np.divide(2.0, s, out=s)


def _phi_and_slope(gate: Gate, u: np.ndarray, slope: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``phi(u)`` (in ``u``'s own array) and, if asked, ``phi'(u)``; ``None`` stands for 1.

    The tanh NoRGa gate computes ``u + alpha tanh(tau u)`` and ``1 + alpha tau (1 - tanh^2)``
    from one ``exp`` (:func:`_tanh_parts`); other activations call the gate's own methods.
    """
    if gate.kind == "linear":
        return u, None
    if gate.activation != "tanh":
        dphi = gate.dphi(u) if slope else None
        return gate.phi(u), dphi
    s = _tanh_parts(u, gate.tau)
    # phi = u + alpha (1 - s)
    u += gate.alpha
    u -= s if gate.alpha == 1.0 else gate.alpha * s
    if not slope:
        return u, None
    # phi' = 1 + alpha tau s (2 - s), in place on s
    s *= np.subtract(2.0, s)
    if gate.alpha * gate.tau != 1.0:
        s *= gate.alpha * gate.tau
    s += 1.0
    return u, s


def _softmax_overflow(
    d: np.ndarray, out: np.ndarray, mean_out: np.ndarray, bad: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Max-shifted softmax for the samples where ``exp(p - lse)`` overflowed.

    Element by element (a replicate's numbers never depend on its batch mates): with
    ``top = max(0, max_l d_l)``, prompt weights ``exp(d_l - top)`` and ``exp(-top)`` for the
    pretrained block.

    Returns
    -------
    The prompt terms ``(k, L)``, the softmax denominators and numerators ``(k,)`` at the ``k``
    overflowing samples, and the index of those samples in ``bad``.
    """
    idx = np.nonzero(bad)
    dl = np.moveaxis(d, -2, -1)[idx]  # (k, L)
    ol = np.moveaxis(np.broadcast_to(out, d.shape), -2, -1)[idx]
    top = np.maximum(dl.max(axis=-1), 0.0)
    el = np.exp(dl - top[:, None])
    e_pre = np.exp(-top)
    total = e_pre + el.sum(axis=-1)
    num = e_pre * np.broadcast_to(mean_out, bad.shape)[idx] + (el * ol).sum(axis=-1)
    return el, total, num, idx


def mixture(
    XT: np.ndarray,
    lse: np.ndarray,
    mean_out: np.ndarray,
    theta: np.ndarray,
    structure: PrefixMoE,
    jac_out: np.ndarray | None = None,
) -> np.ndarray:
    """Core of :func:`regression_and_jacobian` on collapsed pretrained terms, samples last.

    Every array keeps the samples on its last (contiguous) axis and the experts on the axis
    before it, so reductions over experts are element-wise adds and the Jacobian comes out as
    ``(..., P, n)``, ready for ``J J^T``. The value ``g`` is computed by the same operations
    whether or not the Jacobian is requested, so a fitter can mix both kinds of evaluation.

    Parameters
    ----------
    XT:
        Inputs, transposed: ``(..., d, n)``.
    lse, mean_out:
        Collapsed pretrained terms ``(..., n)`` (:func:`collapse_pretrained`).
    theta:
        Flat prompt parameters ``(..., P)``.
    structure:
        Gate and expert type (its prompt values are ignored).
    jac_out:
        If given, an array ``(..., P, n)`` (leading axes: the broadcast of the others) that
        receives the Jacobian, rows in the layout of ``theta``.

    Returns
    -------
    g:
        ``(..., n)``.
    """
    d = XT.shape[-2]
    beta0, beta1, a, b = unpack_theta(theta, d)
    gate, kind = structure.gate, structure.expert
    if d == 1:
        # an outer product: a broadcast multiply is exact and cheaper than a K=1 matmul
        u = beta1 * XT
        z = a * XT
    else:
        u = np.matmul(beta1, XT)
        z = np.matmul(a, XT)
    z += b[..., None]
    p, dphi = _phi_and_slope(gate, u, jac_out is not None)
    p += beta0[..., None]
    if kind == "affine":
        out = z
    else:
        out = _tanh_parts(z, 1.0)  # tanh(z) = 1 - s
        np.subtract(1.0, out, out=out)

    # Softmax over the collapsed pretrained expert and the L' prompts, shifted by the
    # pretrained log-sum-exp: e_l = exp(p_l - lse), the pretrained weight is exp(0) = 1. Only
    # samples where this overflows (a prompt logit above lse by > 709) need the max shift.
    p -= lse[..., None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(p)
        total = e.sum(axis=-2)
        total += 1.0
        num = (e * out).sum(axis=-2)
        num += mean_out
        g = np.divide(num, total, out=num)
    bad = ~np.isfinite(total)
    if bad.any():
        el, tot_b, num_b, idx = _softmax_overflow(p, out, mean_out, bad)
        np.moveaxis(e, -2, -1)[idx] = el
        total[idx] = tot_b
        g[idx] = num_b / tot_b
    if jac_out is None:
        return g

    L = e.shape[-2]
    J = jac_out.reshape(*jac_out.shape[:-2], L, 2 + 2 * d, jac_out.shape[-1])
    if not np.shares_memory(J, jac_out):
        raise ValueError("jac_out must be reshapeable to (..., L, 2 + 2d, n) without a copy")
    w = np.divide(e, total[..., None, :], out=e)  # prompt weights (..., L, n)
    resid = np.subtract(out, g[..., None, :], out=J[..., 0, :])
    resid *= w  # dg/dbeta0 = w (o - g)
    if kind == "affine":
        hprime = w  # dg/db = w h'(z), h' = 1
    else:
        hprime = np.multiply(out, out, out=p)  # p is free now: w (1 - tanh^2)
        np.subtract(1.0, hprime, out=hprime)
        hprime *= w
    J[..., -1, :] = hprime
    gate_slope = resid if dphi is None else np.multiply(resid, dphi, out=dphi)
    if d == 1:
        np.multiply(gate_slope, XT, out=J[..., 1, :])
        np.multiply(hprime, XT, out=J[..., 2, :])
    else:
        np.multiply(gate_slope[..., None, :], XT[..., None, :, :], out=J[..., 1 : 1 + d, :])
        np.multiply(hprime[..., None, :], XT[..., None, :, :], out=J[..., 1 + d : 1 + 2 * d, :])
    return g


def regression_and_jacobian(
    X: np.ndarray,
    theta: np.ndarray,
    structure: PrefixMoE,
    jacobian: bool = True,
    pretrained_terms: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``g`` and its analytic Jacobian with respect to ``theta``
    (docs/theory-background.md#practical-recipe).

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
    theta = np.asarray(theta, dtype=float)
    n = X.shape[-2]
    lead = np.broadcast_shapes(X.shape[:-2], theta.shape[:-1])
    if pretrained_terms is not None:
        lead = np.broadcast_shapes(lead, pretrained_terms[0].shape[:-2])
    g = np.empty((*lead, n))
    J = np.empty((*lead, theta.shape[-1], n)) if jacobian else None
    # Samples are independent: work in blocks of samples so the temporaries stay small (memory
    # at large n); the numbers do not depend on the block size.
    for start in range(0, n, _SAMPLE_BLOCK):
        stop = min(start + _SAMPLE_BLOCK, n)
        Xb = X[..., start:stop, :]
        if pretrained_terms is None:
            lse, mean_out = structure.pretrained.collapsed(Xb)
        else:
            lse, mean_out = collapse_pretrained(
                *(t[..., start:stop, :] for t in pretrained_terms)
            )
        Jb = None if J is None else J[..., start:stop]
        g[..., start:stop] = mixture(
            np.swapaxes(Xb, -1, -2), lse, mean_out, theta, structure, jac_out=Jb
        )
    return g, (None if J is None else np.swapaxes(J, -1, -2))
