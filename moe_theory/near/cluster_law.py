"""How the Fisher degeneracy grows with the cluster size: exponents ``p_j(k)`` for k = 2..5.

A cluster of ``k`` true atoms (masses ``1/k``, gate slopes ``beta* + o t`` with offsets ``o``
evenly spaced in ``[-1, 1]``) has Fisher eigenvalues ``lambda_j(t) ~ c_j t^{p_j}`` as ``t -> 0``.
Already at ``k = 3`` the smallest fall to ~1e-33 of the largest, below what float64 singular
values resolve, so this module computes the Fisher matrix ``I(t) = E_X[grad g grad g^T]``
(``X ~ U[-1, 1]``, Gauss-Legendre nodes) and its eigenvalues in arbitrary precision (mpmath),
with the regression function and its gradient written out for the one-dimensional prompt
mixture of :mod:`moe_theory.model` (pretrained experts of
:func:`moe_theory.settings.default_pretrained`, affine prompt experts).

Expert modes of the cluster: ``both`` (``a, b = a* + o/2, b* + o/2``, fixed as ``t`` shrinks),
``a`` or ``b`` (only that coordinate split by ``o/2``), ``equal`` (all atoms share
``(a*, b*)``) and ``shrinking`` (``a, b = a* + o t, b* + o t``: the experts merge with the
gates). The exponents are fitted by least squares of ``log lambda_j`` on
``log t`` over one window of ``t`` shared by every gate, cluster size and mode, with a t-interval
from the regression's residuals.

This is the finite-``k`` face of the question whether linear gating is "slower than any
polynomial": for each fixed ``k`` the exponents are finite; what matters is how ``p_1(k)`` and
the gap between the gates grow with ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

from moe_theory.gates import Gate
from moe_theory.settings import default_pretrained
from moe_theory.stat_fit import PowerLawFit
from norga.choices import check_choice

MODES: tuple[str, ...] = ("both", "a", "b", "equal", "shrinking")
SIZES: tuple[int, ...] = (2, 3, 4, 5)
# The common window of separations: small enough for the leading power to dominate, the same
# for every case (so exponents are comparable).
T_WINDOW: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.01, 0.04, 5))
BASE = (2.0, -2.0, 1.0)  # (beta*, a*, b*): the E1 default atom
SPLIT = 0.5
NODES = 100
DPS = 110  # decimal digits: eigenvalues down to ~1e-95 of the largest are resolved


@dataclass(frozen=True)
class Cluster:
    """A cluster of ``size`` atoms at separation ``t`` under ``gate`` in expert ``mode``."""

    size: int
    t: float
    gate: Gate
    mode: str = "both"

    def __post_init__(self) -> None:
        check_choice("cluster size", self.size, SIZES)
        check_choice("expert mode", self.mode, MODES)
        if not 0 < self.t <= 1:
            raise ValueError(f"t must be in (0, 1]; got {self.t}")

    def atoms(self) -> list[tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf, mpmath.mpf]]:
        """``(beta0, beta1, a, b)`` of each atom, as mpmath numbers."""
        k = self.size
        t = mpmath.mpf(self.t)
        half, zero = mpmath.mpf(SPLIT), mpmath.mpf(0)
        r_a, r_b = {"both": (half, half), "a": (half, zero), "b": (zero, half),
                    "equal": (zero, zero), "shrinking": (t, t)}[self.mode]
        beta, a, b = (mpmath.mpf(v) for v in BASE)
        out = []
        for i in range(k):
            o = mpmath.mpf(2 * i - (k - 1)) / (k - 1)  # evenly spaced in [-1, 1]
            out.append((-mpmath.log(k), beta + o * t, a + o * r_a, b + o * r_b))
        return out


def _phi_and_slope(gate: Gate, u: mpmath.mpf) -> tuple[mpmath.mpf, mpmath.mpf]:
    """The prompt score ``phi(u)`` and ``phi'(u)`` in mpmath."""
    if gate.kind == "linear":
        return u, mpmath.mpf(1)
    alpha, tau, z = mpmath.mpf(gate.alpha), mpmath.mpf(gate.tau), mpmath.mpf(gate.tau) * u
    if gate.activation == "tanh":
        s, ds = mpmath.tanh(z), 1 - mpmath.tanh(z) ** 2
    elif gate.activation == "sigmoid":
        s = 1 / (1 + mpmath.exp(-z))
        ds = s * (1 - s)
    else:  # gelu, exact: z Phi(z)
        cdf = mpmath.ncdf(z)
        s, ds = z * cdf, cdf + z * mpmath.npdf(z)
    return u + alpha * s, 1 + alpha * tau * ds


def _pretrained_terms(x: mpmath.mpf) -> tuple[list[mpmath.mpf], list[mpmath.mpf]]:
    """Logits and outputs of the known experts at a scalar input ``x``."""
    pre = default_pretrained()
    logits = [mpmath.mpf(float(B[0, 0])) * x * x + mpmath.mpf(float(c))
              for B, c in zip(pre.B, pre.c, strict=True)]
    outputs = [mpmath.mpf(float(a[0])) * x + mpmath.mpf(float(b))
               for a, b in zip(pre.a, pre.b, strict=True)]
    return logits, outputs


def regression(cluster: Cluster, x: mpmath.mpf,
               atoms: list[tuple[mpmath.mpf, ...]] | None = None) -> mpmath.mpf:
    """``g(x)``: the softmax-weighted mean of the experts' outputs (atoms default: the truth)."""
    atoms = cluster.atoms() if atoms is None else atoms
    logits, outputs = _pretrained_terms(x)
    for beta0, beta1, a, b in atoms:
        logits.append(beta0 + _phi_and_slope(cluster.gate, beta1 * x)[0])
        outputs.append(a * x + b)
    top = max(logits)
    weights = [mpmath.exp(v - top) for v in logits]
    return mpmath.fsum(w * o for w, o in zip(weights, outputs, strict=True)) / mpmath.fsum(weights)


def gradient(cluster: Cluster, x: mpmath.mpf) -> list[mpmath.mpf]:
    """``grad g(x)`` with respect to ``(beta0, beta1, a, b)`` of each atom, analytically.

    With ``pi_i`` the softmax weight and ``o_i`` the output of atom ``i``:
    ``dg/dbeta0_i = pi_i (o_i - g)``, ``dg/dbeta1_i = pi_i (o_i - g) phi'(beta1_i x) x``,
    ``dg/da_i = pi_i x``, ``dg/db_i = pi_i``.
    """
    atoms = cluster.atoms()
    logits, outputs = _pretrained_terms(x)
    slopes = []
    for beta0, beta1, a, b in atoms:
        p, dp = _phi_and_slope(cluster.gate, beta1 * x)
        logits.append(beta0 + p)
        outputs.append(a * x + b)
        slopes.append(dp)
    top = max(logits)
    weights = [mpmath.exp(v - top) for v in logits]
    total = mpmath.fsum(weights)
    pi = [w / total for w in weights]
    g = mpmath.fsum(p * o for p, o in zip(pi, outputs, strict=True))
    n_pre = len(logits) - len(atoms)
    grad = []
    for i, dp in enumerate(slopes):
        p_i, o_i = pi[n_pre + i], outputs[n_pre + i]
        grad += [p_i * (o_i - g), p_i * (o_i - g) * dp * x, p_i * x, p_i]
    return grad


def quadrature(nodes: int = NODES) -> tuple[list[mpmath.mpf], list[mpmath.mpf]]:
    """Gauss-Legendre nodes and weights for ``E_X``, ``X ~ U[-1, 1]`` (float64 values taken as
    exact: a positive discrete measure, whatever their last bits)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return [mpmath.mpf(float(v)) for v in x], [mpmath.mpf(float(v)) / 2 for v in w]


def fisher_matrix(cluster: Cluster, nodes: int = NODES,
                  grad=gradient) -> mpmath.matrix:
    """``I(t) = sum_q w_q grad g(x_q) grad g(x_q)^T`` (``grad`` may be replaced, e.g. by a
    numerical gradient, to check this one)."""
    xs, ws = quadrature(nodes)
    P = 4 * cluster.size
    fisher = mpmath.matrix(P, P)
    for x, w in zip(xs, ws, strict=True):
        g = grad(cluster, x)
        for i in range(P):
            wg = w * g[i]
            for j in range(i, P):
                fisher[i, j] += wg * g[j]
    for i in range(P):
        for j in range(i):
            fisher[i, j] = fisher[j, i]
    return fisher


def eigenvalues(cluster: Cluster, nodes: int = NODES, dps: int = DPS) -> list[mpmath.mpf]:
    """Eigenvalues of ``I(t)``, ascending, computed with ``dps`` decimal digits.

    Raises
    ------
    ArithmeticError
        The smallest eigenvalue is within 1e15 of the working precision's floor relative to the
        largest (more digits are needed).
    """
    with mpmath.workdps(dps):
        lam = sorted(mpmath.eigsy(fisher_matrix(cluster, nodes), eigvals_only=True))
        if lam[0] < lam[-1] * mpmath.mpf(10) ** (15 - dps):
            raise ArithmeticError(
                f"lambda_min/lambda_max = {mpmath.nstr(lam[0] / lam[-1], 3)} is at the floor of "
                f"{dps} digits (k={cluster.size}, t={cluster.t}, {cluster.gate.label}, "
                f"{cluster.mode})")
        return [+v for v in lam]


@dataclass(frozen=True)
class Exponent(PowerLawFit):
    """``log lambda = log_c + p log t`` over the window, with a t(m - 2) interval for ``p``
    (a :class:`~moe_theory.stat_fit.StatFit`).

    Attributes
    ----------
    p, log_c:
        Exponent and intercept of the least-squares line.
    resid_sd:
        Residual standard deviation ``sqrt(RSS / (m - 2))`` of ``log lambda``.
    log_t, log_lambda:
        The ``m`` points fitted (natural logs).
    level:
        Confidence level of :meth:`conf_int` without ``alpha``.
    """

    p: float
    log_c: float
    resid_sd: float
    log_t: tuple[float, ...]
    log_lambda: tuple[float, ...]
    level: float = 0.95

    def _log_x(self) -> np.ndarray:
        return np.array(self.log_t)

    def summary(self) -> str:
        """One line: ``p`` with its interval, the window and the residual sd."""
        lo, hi = self.conf_int()
        t = np.exp(self.log_t)
        return (f"exponent p {self.p:.3f} [{lo:.3f}, {hi:.3f}] ({self.level:.0%} CI, "
                f"t({len(t) - 2})) on t = {t.min():g}..{t.max():g} ({len(t)} values); "
                f"residual sd {self.resid_sd:.2g}")

    def to_dict(self) -> dict[str, object]:
        """The entry of ``cluster_law.json``."""
        return {"p": self.p, "ci": list(self.conf_int()), "resid_sd": self.resid_sd}


def fit_exponent(ts: np.ndarray, log_lam: np.ndarray, level: float = 0.95) -> Exponent:
    """Least squares of ``log lambda`` on ``log t`` with a t(m - 2) interval for the slope
    (logs in, so eigenvalues below float64's range are fine)."""
    x, y = np.log(np.asarray(ts, float)), np.asarray(log_lam, float)
    if len(x) < 3:
        raise ValueError(f"need at least 3 values of t; got {len(x)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    s = float(np.sqrt(resid @ resid / (len(x) - 2)))
    return Exponent(float(slope), float(intercept), s, tuple(float(v) for v in x),
                    tuple(float(v) for v in y), float(level))


def log_eigenvalues(cluster: Cluster, nodes: int = NODES, dps: int = DPS) -> np.ndarray:
    """Natural logs of the eigenvalues (floats: fine however small the eigenvalues are)."""
    return np.array([float(mpmath.log(v)) for v in eigenvalues(cluster, nodes, dps)])


def case_exponents(size: int, gate: Gate, mode: str, ts: tuple[float, ...] = T_WINDOW,
                   n_exp: int = 3, nodes: int = NODES, dps: int = DPS) -> dict[str, object]:
    """Exponents of the ``n_exp`` smallest eigenvalues of one case over the window ``ts``."""
    logs = np.array([log_eigenvalues(Cluster(size, t, gate, mode), nodes, dps) for t in ts])
    exps = [fit_exponent(np.array(ts), logs[:, j]) for j in range(n_exp)]
    return {"size": size, "gate": gate.kind, "activation": gate.activation_name, "mode": mode,
            "t_window": list(ts), "log_lambda_min": logs[:, 0].tolist(),
            "exponents": [e.to_dict() for e in exps]}


def cluster_law(sizes: tuple[int, ...] = SIZES, modes: tuple[str, ...] = MODES,
                gates: tuple[Gate, ...] = (Gate("linear"), Gate("norga", "tanh"),
                                           Gate("norga", "sigmoid")),
                ts: tuple[float, ...] = T_WINDOW) -> dict[str, object]:
    """``p_j(k)`` for every size, mode and gate, and the linear - NoRGa gap of ``p_1``."""
    cases = [case_exponents(k, g, m, ts) for m in modes for k in sizes for g in gates]
    gaps = []
    for m in modes:
        for k in sizes:
            p = {(c["gate"], c["activation"]): c["exponents"][0]["p"] for c in cases
                 if c["size"] == k and c["mode"] == m}
            lin = p.get(("linear", "none"))
            for (kind, act), v in p.items():
                if kind != "linear" and lin is not None:
                    gaps.append({"mode": m, "size": k, "activation": act, "gap": lin - v})
    return {"t_window": list(ts), "nodes": NODES, "dps": DPS, "cases": cases, "gaps": gaps}


def cluster_law_table(law: dict[str, object]) -> str:
    """Readable table: ``p_1, p_2, p_3`` (95% CI of p_1) per mode, size and gate, and the gap."""
    window = law["t_window"]
    lines = [
        f"Cluster-size law: exponents p_j of the smallest Fisher eigenvalues, lambda_j ~ t^p_j, "
        f"fitted on t = {min(window):g}..{max(window):g} ({len(window)} values, the same window "
        f"for every case), {law['nodes']} Gauss-Legendre nodes, {law['dps']} digits (mpmath).",
        f"  {'mode':9} {'k':>1} {'gate':12} {'p_1 [95% CI]':>22} {'p_2':>6} {'p_3':>6} "
        f"{'log10 lambda_1(t_min)':>22}",
    ]
    for c in law["cases"]:
        e = c["exponents"]
        gate = "linear" if c["gate"] == "linear" else f"NoRGa-{c['activation']}"
        lines.append(
            f"  {c['mode']:9} {c['size']:>1} {gate:12} "
            f"{e[0]['p']:6.2f} [{e[0]['ci'][0]:6.2f}, {e[0]['ci'][1]:6.2f}] "
            f"{e[1]['p']:6.2f} {e[2]['p']:6.2f} {c['log_lambda_min'][0] / np.log(10):22.1f}")
    lines.append("  gap p_1(linear) - p_1(NoRGa) per k:")
    for m in dict.fromkeys(g["mode"] for g in law["gaps"]):
        for act in dict.fromkeys(g["activation"] for g in law["gaps"]):
            lines.append(f"    {m:9} NoRGa-{act:8} " + ", ".join(
                f"k={g['size']} {g['gap']:+.2f}" for g in law["gaps"]
                if g["mode"] == m and g["activation"] == act))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m moe_theory.near.cluster_law --out DIR``: write cluster_law.json and .txt."""
    import argparse
    from pathlib import Path

    from moe_theory.io import atomic_write_text, dumps_json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="folder for cluster_law.json/.txt")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    law = cluster_law()
    text = cluster_law_table(law)
    atomic_write_text(out / "cluster_law.json", dumps_json(law))
    atomic_write_text(out / "cluster_law.txt", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
