"""Compiled (numba) normal equations for the batched least-squares fitter.

The numpy path of :mod:`moe_theory.estimate` materialises the Jacobian ``(k, P, n)`` of every
replicate and multiplies it out with BLAS. The kernels here instead walk over the samples of one
replicate once, in blocks of :data:`BLOCK` samples, and accumulate the residual sum of squares,
``J^T J`` (upper triangle, mirrored at the end) and ``J^T r`` on the fly, so nothing of size
``n`` is allocated per evaluation. Per block every quantity is a loop over the block's samples
that LLVM vectorises; ``exp`` is computed by plain arithmetic (:func:`_exp`) for that reason.

Model per sample (collapsed pretrained block, prompt atom ``l`` with
``theta_l = (beta0_l, beta1_l[0:d], a_l[0:d], b_l)``)::

    u_l = beta1_l . x          p_l = phi(u_l) + beta0_l
    z_l = a_l . x + b_l        o_l = z_l (affine) or tanh(z_l) (tanh expert)
    g   = (exp(lse) mean_out + sum_l exp(p_l) o_l) / (exp(lse) + sum_l exp(p_l))

with the softmax shifted by ``max(lse, p_1, ..., p_L)`` at every sample (no overflow for any
finite logits). ``J`` is the Jacobian of ``g`` and ``r = y - g``, the convention of
:meth:`moe_theory.estimate._Problem.evaluate`.

Every replicate is accumulated by one thread, in a fixed order (sample ``i`` goes to lane
``i mod BLOCK``; the lanes are added in order at the end), and the kernels are compiled without
``fastmath`` (no reassociation, no fused multiply-add), so a replicate's numbers do not depend
on the other replicates of the batch or on the thread count; the value-only kernel computes
``g`` and the RSS with the same operations as the Jacobian kernel.

Importing this module imports numba but compiles nothing: each kernel is compiled on its first
call and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from moe_theory.model import PrefixMoE

# Gate codes (phi) and expert codes (h) understood by the kernels: private to this module; its
# callers pass the model (PrefixMoE, whose gate is a moe_theory.gates.Gate).
_GATE_LINEAR = 0
_GATE_TANH = 1
_GATE_SIGMOID = 2
_GATE_GELU = 3
_EXPERT_AFFINE = 0
_EXPERT_TANH = 1

_NORGA_CODES = {"tanh": _GATE_TANH, "sigmoid": _GATE_SIGMOID, "gelu": _GATE_GELU}
_EXPERT_CODES = {"affine": _EXPERT_AFFINE, "tanh": _EXPERT_TANH}
# (gate code, alpha, tau, expert code): how the compiled kernels are told the model
_KernelCodes = tuple[int, float, float, int]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
# Every kernel: cached on disk; strict IEEE arithmetic (no reassociation, no fused multiply-add,
# so a replicate's numbers are the same in every compiled variant); float division by zero
# gives inf/nan instead of raising (and keeps the loops vectorisable).
_JIT: dict[str, Any] = {"cache": True, "fastmath": False, "error_model": "numpy"}
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def kernel_supports(structure: PrefixMoE) -> bool:
    """Whether the compiled kernels implement ``structure``'s gate and expert type.

    Parameters
    ----------
    structure:
        The fitted model's known parts (gate kind, NoRGa activation, expert type).

    Returns
    -------
    bool
        True for the linear gate and NoRGa with tanh, sigmoid or GELU, with affine or tanh
        experts; anything else has to use the numpy path.
    """
    return _kernel_codes(structure) is not None


def _kernel_codes(structure: PrefixMoE) -> _KernelCodes | None:
    """How the kernels are told the model: ``(gate code, alpha, tau, expert code)``, or None
    when they do not implement its gate or expert."""
    gate = structure.gate
    if gate.kind == "linear":
        gate_code = _GATE_LINEAR
    elif gate.kind == "norga" and gate.activation in _NORGA_CODES:
        gate_code = _NORGA_CODES[gate.activation]
    else:
        return None
    expert_code = _EXPERT_CODES.get(structure.expert)
    if expert_code is None:
        return None
    return gate_code, float(gate.alpha), float(gate.tau), expert_code


def _supported_codes(structure: PrefixMoE) -> _KernelCodes:
    """:func:`_kernel_codes`, with a clear error for a model the kernels do not implement."""
    codes = _kernel_codes(structure)
    if codes is None:
        raise ValueError(
            f"the compiled kernels do not implement gate {structure.gate.label!r} with "
            f"{structure.expert!r} experts; use the numpy backend"
        )
    return codes


# --------------------------------------------------------------------------------------------
# exp as plain arithmetic. numba's math.exp is a scalar libm call, which keeps any loop around
# it scalar; this one inlines, so LLVM vectorises the loops over a block of samples.
# --------------------------------------------------------------------------------------------


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float64 as an int64 (an LLVM bitcast)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float64 with the bits of an int64 (an LLVM bitcast)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


def _ln2_parts() -> tuple[float, float]:
    """``ln 2 = hi + lo``, ``hi`` with 32 significant bits so ``k * hi`` is exact for small k."""
    ln2 = Decimal("0.6931471805599453094172321214581765680755001343602552541206800094933936")
    hi = math.ldexp(math.floor(math.ldexp(float(ln2), 32)), -32)
    return hi, float(ln2 - Decimal(hi))


_LN2_HI, _LN2_LO = _ln2_parts()
_LOG2E = 1.0 / math.log(2.0)
# Below this exp(x) < 2.3e-308: returned as 0 (the kernels only add such terms to values >= 1).
_EXP_MIN = -708.0
# Adding 2^52 + 1023 to x / ln 2 (|x / ln 2| < 2^51) rounds it to the nearest integer k and
# leaves k + 1023 in the low mantissa bits; shifted left by 52 they are the exponent of 2^k.
_EXP_MAGIC = 2.0**52 + 1023.0
# Taylor coefficients 1/j! of exp(r) on |r| <= ln(2)/2; the degree-13 remainder is < 1e-17.
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13 = (
    1.0 / math.factorial(j) for j in range(2, 14)
)


@njit(**_JIT)
def _exp(x):
    """``exp(x)`` for ``x <= 0`` (correct up to ``x = 709``), within 1 ulp.

    ``exp(x) = 2^k exp(r)`` with ``k = round(x / ln 2)``, ``|r| <= ln(2)/2``: ``exp(r)`` by a
    Taylor polynomial (Estrin's scheme: short dependency chains), ``2^k`` built in the exponent
    bits. ``x < -708`` (and -inf) give 0, NaN stays NaN.
    """
    v = x if x >= _EXP_MIN else _EXP_MIN  # a finite value for NaN, -inf and tiny x
    t = v * _LOG2E + _EXP_MAGIC
    k = t - _EXP_MAGIC
    r = (v - k * _LN2_HI) - k * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    low = (_E2 + _E3 * r) + r2 * (_E4 + _E5 * r)
    high = ((_E6 + _E7 * r) + r2 * (_E8 + _E9 * r)) + r4 * (
        (_E10 + _E11 * r) + r2 * (_E12 + _E13 * r)
    )
    y = ((1.0 + r) + r2 * (low + r4 * high)) * _bits_float(_float_bits(t) << 52)
    return y if x >= _EXP_MIN else (0.0 if x < _EXP_MIN else x)


# --------------------------------------------------------------------------------------------
# One replicate, in blocks of samples. Per-sample quantities of a block are rows of one work
# array W (BLOCK columns); inside the loops arrays are only indexed, never sliced (a slice is
# a new array object, with reference counting).
# --------------------------------------------------------------------------------------------

# Samples per block; each sum over samples is kept in BLOCK lanes (lane = sample index mod
# BLOCK), added up in lane order at the end.
BLOCK = 64


@njit(**_JIT)
def _rows(L):
    """First rows in ``W`` of: ``u``/``p``/prompt weights, ``z``/outputs, ``phi'``, ``h'``
    (``L`` rows each), then single rows top, total, g, resid, gs, hw, and the row count."""
    return 0, L, 2 * L, 3 * L, 4 * L, 4 * L + 1, 4 * L + 2, 4 * L + 3, 4 * L + 4, 4 * L + 5, \
        4 * L + 6


@njit(**_JIT)
def _block(XT, y, lse, mean_out, start, m, theta, gate, alpha, tau, expert, W, lanes_rss):
    """Residuals of samples ``start .. start+m-1``; their squares added to ``lanes_rss``.

    Leaves in ``W``: the max-shifted prompt weights ``exp(p_l - top)`` (rows ``PL``), the
    expert outputs (``OL``), ``phi'`` (``DP``, not written for the linear gate) and ``h'``
    (``HP``, not written for affine experts), ``1 / total`` (row ``total``), ``g`` and the
    residuals ``y - g``.
    """
    d = XT.shape[0]
    width = 2 + 2 * d
    L = theta.shape[0] // width
    PL, OL, DP, HP, top, total, g, resid, _, _, _ = _rows(L)
    for i in range(m):
        W[top, i] = lse[start + i]
    for l in range(L):
        base = l * width
        pl = PL + l
        ol = OL + l
        # u = beta1 . x and z = a . x + b
        beta = theta[base + 1]
        slope = theta[base + 1 + d]
        b = theta[base + 1 + 2 * d]
        for i in range(m):
            x = XT[0, start + i]
            W[pl, i] = beta * x
            W[ol, i] = b + slope * x
        for k in range(1, d):
            beta = theta[base + 1 + k]
            slope = theta[base + 1 + d + k]
            for i in range(m):
                x = XT[k, start + i]
                W[pl, i] += beta * x
                W[ol, i] += slope * x

        # gate: p = phi(u) + beta0 and phi'(u); the running max of the logits
        beta0 = theta[base]
        if gate == _GATE_LINEAR:
            for i in range(m):
                p = W[pl, i] + beta0
                W[pl, i] = p
                W[top, i] = p if p > W[top, i] else W[top, i]
        elif gate == _GATE_TANH:
            for i in range(m):
                u = W[pl, i]
                v = tau * u
                e = _exp(-2.0 * abs(v))
                q = 1.0 / (1.0 + e)
                t = (1.0 - e) * q  # tanh |v|; 1 - tanh^2 = 4 e q^2
                p = (u + alpha * (t if v >= 0.0 else -t)) + beta0
                W[pl, i] = p
                W[DP + l, i] = 1.0 + alpha * tau * (4.0 * e * q * q)
                W[top, i] = p if p > W[top, i] else W[top, i]
        elif gate == _GATE_SIGMOID:
            for i in range(m):
                u = W[pl, i]
                v = tau * u
                e = _exp(-abs(v))
                q = 1.0 / (1.0 + e)  # sigmoid |v|; sigmoid' = e q^2
                p = (u + alpha * (q if v >= 0.0 else e * q)) + beta0
                W[pl, i] = p
                W[DP + l, i] = 1.0 + alpha * tau * (e * q * q)
                W[top, i] = p if p > W[top, i] else W[top, i]
        else:  # GELU v Phi(v): no vector erfc, a scalar loop
            for i in range(m):
                u = W[pl, i]
                v = tau * u
                cdf = 0.5 * math.erfc(-v * _INV_SQRT2)
                pdf = _INV_SQRT_2PI * _exp(-0.5 * v * v)
                p = (u + alpha * (v * cdf)) + beta0
                W[pl, i] = p
                W[DP + l, i] = 1.0 + alpha * tau * (cdf + v * pdf)
                W[top, i] = p if p > W[top, i] else W[top, i]

        # expert: o = h(z) and h'(z)
        if expert == _EXPERT_TANH:
            for i in range(m):
                z = W[ol, i]
                e = _exp(-2.0 * abs(z))
                q = 1.0 / (1.0 + e)
                t = (1.0 - e) * q
                W[ol, i] = t if z >= 0.0 else -t
                W[HP + l, i] = 4.0 * e * q * q

    # softmax over [lse, p_1 .. p_L], shifted by the largest logit of each sample
    for i in range(m):
        e = _exp(lse[start + i] - W[top, i])
        W[total, i] = e
        W[g, i] = e * mean_out[start + i]
    for l in range(L):
        pl = PL + l
        ol = OL + l
        for i in range(m):
            e = _exp(W[pl, i] - W[top, i])
            W[pl, i] = e
            W[total, i] += e
            W[g, i] += e * W[ol, i]
    for i in range(m):
        inv = 1.0 / W[total, i]
        gi = W[g, i] * inv
        r = y[start + i] - gi
        W[total, i] = inv
        W[g, i] = gi
        W[resid, i] = r
        lanes_rss[i] += r * r


@njit(**_JIT)
def _replicate(XT, y, lse, mean_out, theta, gate, alpha, tau, expert, jacobian, jtj, jtr):
    """RSS of one replicate (``XT`` ``(d, n)``, the rest ``(n,)``) at ``theta`` ``(P,)``.

    If ``jacobian``, ``J^T J`` ``(P, P)`` and ``J^T r`` ``(P,)`` are written in place. The
    samples go in blocks of :data:`BLOCK`; each sum over samples is kept in :data:`BLOCK`
    lanes in sample order and the lanes are added up in order at the end.
    """
    d, n = XT.shape
    P = theta.shape[0]
    width = 2 + 2 * d
    L = P // width
    B = BLOCK
    PL, OL, DP, HP, _, total, g, resid, gs, hw, n_rows = _rows(L)
    W = np.empty((n_rows, B))
    # phi' = 1 (linear gate) and h' = 1 (affine experts): written once, never overwritten
    for l in range(L):
        for i in range(B):
            W[DP + l, i] = 1.0
            W[HP + l, i] = 1.0
    J = np.empty((P if jacobian else 0, B))
    lanes_rss = np.zeros(B)
    lanes_jtr = np.zeros((P if jacobian else 0, B))
    lanes_jtj = np.zeros((P * (P + 1) // 2 if jacobian else 0, B))
    for start in range(0, n, B):
        m = min(B, n - start)
        _block(XT, y, lse, mean_out, start, m, theta, gate, alpha, tau, expert, W, lanes_rss)
        if not jacobian:
            continue
        # Jacobian rows of g: dg/dbeta0 = w (o - g), dg/dbeta1 = dg/dbeta0 phi' x,
        # dg/da = w h' x, dg/db = w h'
        for l in range(L):
            base = l * width
            pl = PL + l
            ol = OL + l
            dp = DP + l
            hp = HP + l
            last = base + 1 + 2 * d
            if d == 1:
                for i in range(m):
                    w = W[pl, i] * W[total, i]
                    d0 = w * (W[ol, i] - W[g, i])
                    h = w * W[hp, i]
                    x = XT[0, start + i]
                    J[base, i] = d0
                    J[base + 1, i] = (d0 * W[dp, i]) * x
                    J[base + 2, i] = h * x
                    J[last, i] = h
            else:
                for i in range(m):
                    w = W[pl, i] * W[total, i]
                    d0 = w * (W[ol, i] - W[g, i])
                    h = w * W[hp, i]
                    J[base, i] = d0
                    W[gs, i] = d0 * W[dp, i]
                    W[hw, i] = h
                    J[last, i] = h
                for k in range(d):
                    for i in range(m):
                        x = XT[k, start + i]
                        J[base + 1 + k, i] = W[gs, i] * x
                        J[base + 1 + d + k, i] = W[hw, i] * x
        t = 0
        for a in range(P):
            for i in range(m):
                lanes_jtr[a, i] += J[a, i] * W[resid, i]
            for b in range(a, P):
                for i in range(m):
                    lanes_jtj[t, i] += J[a, i] * J[b, i]
                t += 1
    rss = 0.0
    for i in range(B):
        rss += lanes_rss[i]
    if jacobian:
        t = 0
        for a in range(P):
            s = 0.0
            for i in range(B):
                s += lanes_jtr[a, i]
            jtr[a] = s
            for b in range(a, P):
                s = 0.0
                for i in range(B):
                    s += lanes_jtj[t, i]
                jtj[a, b] = s
                jtj[b, a] = s
                t += 1
    return rss


# --------------------------------------------------------------------------------------------
# The driver over replicates: one body, compiled serial and parallel (prange)
# --------------------------------------------------------------------------------------------


def _driver(parallel: bool):
    """The loop over the replicates ``rows``, compiled serial or over numba's thread pool.

    One body for both: without ``parallel`` numba runs ``prange`` as ``range``. Each call makes
    a new function object with its own name, ``_parallel`` or ``_serial``: numba's on-disk cache
    is found by the function's qualified name and first line and keyed by its bytecode, not by
    the compile options, so two compilations of one function would share one cache entry and
    one of them would load the other's machine code.
    """

    def drive(XT, Y, lse, mean_out, rows, theta, gate, alpha, tau, expert, jacobian, rss, jtj,
              jtr):
        for q in prange(rows.shape[0]):
            r = rows[q]
            rss[q] = _replicate(XT[r], Y[r], lse[r], mean_out[r], theta[q], gate, alpha, tau,
                                expert, jacobian, jtj[q], jtr[q])

    drive.__name__ = drive.__qualname__ = "_parallel" if parallel else "_serial"
    return njit(**_JIT, parallel=parallel)(drive)


_serial = _driver(parallel=False)
_parallel = _driver(parallel=True)


def _as_float(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous, writeable float64 array (copied only if it is not one already).

    Writeable because numba types a read-only array (a memmap, a locked input) differently and
    would compile every kernel a second time for it.
    """
    return np.require(a, dtype=np.float64, requirements=["C", "W"])


def evaluate(
    XT: np.ndarray,
    Y: np.ndarray,
    lse: np.ndarray,
    mean_out: np.ndarray,
    rows: np.ndarray,
    theta: np.ndarray,
    structure: PrefixMoE,
    jacobian: bool,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """RSS and, if asked, ``J^T J`` and ``J^T r`` of the replicates ``rows``.

    Parameters
    ----------
    XT:
        ``(R, d, n)`` inputs of all replicates, transposed (samples last).
    Y, lse, mean_out:
        ``(R, n)`` responses and collapsed pretrained terms
        (:func:`moe_theory.model.collapse_pretrained`). C-contiguous float64 arrays are used
        as they are; others are copied.
    rows:
        ``(k,)`` indices of the replicates to evaluate (no data are copied).
    theta:
        ``(k, P)`` parameters, row ``q`` for replicate ``rows[q]``.
    structure:
        Gate and expert type (must satisfy :func:`kernel_supports`).
    jacobian:
        Whether to accumulate the normal equations.
    threads:
        Threads over replicates (numba ``prange``); 1 runs a serial kernel and starts no
        thread pool. Values above numba's ``NUMBA_NUM_THREADS`` are clipped to it. The numbers
        do not depend on it.

    Returns
    -------
    rss:
        ``(k,)`` residual sums of squares.
    jtj, jtr:
        ``(k, P, P)`` Gram matrices of the Jacobian of ``g`` and ``(k, P)`` products
        ``J^T (y - g)``, or None when ``jacobian`` is False.
    """
    _supported_codes(structure)
    XT, Y, lse, mean_out, theta = (_as_float(a) for a in (XT, Y, lse, mean_out, theta))
    rows = np.require(rows, dtype=np.int64, requirements=["C", "W"])
    k, P = theta.shape
    if (
        XT.ndim != 3
        or P % (2 + 2 * XT.shape[1])
        or rows.shape != (k,)
        or Y.shape != (XT.shape[0], XT.shape[2])
        or lse.shape != Y.shape
        or mean_out.shape != Y.shape
    ):
        raise ValueError(
            f"shapes disagree: XT {XT.shape}, Y {Y.shape}, lse {lse.shape}, mean_out "
            f"{mean_out.shape}, theta {theta.shape}, rows {rows.shape}"
        )
    if k and (rows.min() < 0 or rows.max() >= XT.shape[0]):
        raise IndexError(f"rows must lie in [0, {XT.shape[0]})")
    return accumulate(XT, Y, lse, mean_out, rows, theta, structure, jacobian, threads)


def accumulate(
    XT: np.ndarray,
    Y: np.ndarray,
    lse: np.ndarray,
    mean_out: np.ndarray,
    rows: np.ndarray,
    theta: np.ndarray,
    structure: PrefixMoE,
    jacobian: bool,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`evaluate` without the checks, for a caller that validated its data once.

    ``XT``, ``Y``, ``lse``, ``mean_out`` must be C-contiguous float64 of consistent shapes,
    ``rows`` int64 within range; ``theta`` is made contiguous here. ``structure`` is checked
    (a ``ValueError`` when the kernels do not implement it, as in :func:`evaluate`).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    gate, alpha, tau, expert = _supported_codes(structure)
    theta = _as_float(theta)
    k, P = theta.shape
    rss = np.empty(k)
    jtj = np.empty((k, P, P) if jacobian else (k, 0, 0))
    jtr = np.empty((k, P) if jacobian else (k, 0))
    threads = min(int(threads), numba.config.NUMBA_NUM_THREADS, max(k, 1))
    args = (XT, Y, lse, mean_out, rows, theta, gate, alpha, tau, expert, jacobian, rss, jtj, jtr)
    if threads == 1:
        _serial(*args)
    else:
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _parallel(*args)
        finally:
            numba.set_num_threads(previous)
    return (rss, jtj, jtr) if jacobian else (rss, None, None)
