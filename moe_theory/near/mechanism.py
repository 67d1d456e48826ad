"""E5 mechanism: how fast the Fisher information degenerates as true prompts coincide.

A cluster of ``k`` true prompt atoms (``k`` = 2 or 3, masses
``exp(beta_0) = 1/k`` each) sits around a base atom ``(beta*, a*, b*)``: gate slopes
``beta* + o t`` and experts ``(a* + o r_a, b* + o r_b)`` with offsets ``o`` in ``{-1, +1}``
(``k = 2``) or ``{-1, 0, +1}`` (``k = 3``). The split says which expert coordinates differ
(``b``: only ``r_b``; ``a``: only ``r_a``; ``both``; ``none``). As ``t -> 0`` the Fisher
information ``I(t) = E_X[grad g grad g^T]`` over all ``k (2 + 2d)`` parameters becomes singular;
its weakest eigenvalues behave like ``lambda_j(t) ~ c_j t^{p_j}`` and the sample size needed for a
loss ``eps`` grows like ``t^{-p_1} / eps^2``.

The eigenvalues are squared singular values of ``diag(sqrt(w_q)) J`` on Gauss-Legendre nodes
(float64). An eigen-solver on ``J^T W J`` has a round-off floor near ``1e-16 * lambda_max``,
which the weakest eigenvalues here fall far below; the singular values of the weighted Jacobian
are accurate to about ``1e-16 * s_max`` in absolute terms, i.e. eigenvalues down to ~1e-31.
Values under :data:`FLOAT_FLOOR` times the largest eigenvalue are reported but never enter an
exponent fit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moe_theory.gates import Gate, GateKind
from moe_theory.model import EXPERTS, ExpertKind, PrefixMoE, Pretrained, regression_and_jacobian
from moe_theory.settings import default_pretrained
from moe_theory.stat_fit import PowerLawFit
from norga.choices import check_choice

SPLITS: tuple[str, ...] = ("b", "a", "both", "none")
CLUSTER_SIZES: tuple[int, ...] = (2, 3)
# Base atoms (beta*, a*, b*): the E1 default first, then two others with |beta* - 0.8| >= 0.7,
# so every atom of a cluster keeps |beta_1| well away from 0 (the gates stay non-degenerate).
BASE_ATOMS: dict[str, tuple[float, float, float]] = {
    "default": (2.0, -2.0, 1.0),
    "B2": (1.5, 1.0, -0.5),
    "B3": (-2.5, 0.5, 2.0),
}
# Gates of the mechanism table: linear and NoRGa with each activation.
GATE_VARIANTS: tuple[tuple[GateKind, str], ...] = (
    ("linear", "tanh"),
    ("norga", "tanh"),
    ("norga", "sigmoid"),
    ("norga", "gelu"),
)
# Default expert split size (r_a = r_b = SPLIT_SIZE where split); fixed, not shrunk with t.
SPLIT_SIZE = 0.5
# Eigenvalues below this fraction of the largest are at float64's resolution (s ~ 1e-16 s_max
# gives lambda ~ 1e-32 lambda_max; a margin of 1e6 keeps fitted values well resolved).
FLOAT_FLOOR = 1e-26
DEFAULT_NODES = 500


def t_grid(t_max: float = 0.8, t_min: float = 0.0125, per_halving: int = 2) -> np.ndarray:
    """Log grid from ``t_max`` down to ``t_min``, ``per_halving`` points per factor of 2."""
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max; got {t_min}, {t_max}")
    halvings = np.log2(t_max / t_min)
    num = int(round(halvings * per_halving)) + 1
    return np.geomspace(t_max, t_min, num)


def offsets(size: int) -> np.ndarray:
    """Offsets of the atoms of a cluster: ``(-1, +1)`` or ``(-1, 0, +1)``."""
    check_choice("cluster size", size, CLUSTER_SIZES)
    return np.array([-1.0, 1.0]) if size == 2 else np.array([-1.0, 0.0, 1.0])


def split_vector(split: str, split_size: float = SPLIT_SIZE) -> tuple[float, float]:
    """``(r_a, r_b)`` of a split name."""
    check_choice("split", split, SPLITS)
    r_a = split_size if split in ("a", "both") else 0.0
    r_b = split_size if split in ("b", "both") else 0.0
    return r_a, r_b


def near_truth(
    t: float,
    gate: Gate,
    expert: ExpertKind = "affine",
    *,
    split: str = "both",
    size: int = 2,
    base: tuple[float, float, float] = BASE_ATOMS["default"],
    split_size: float = SPLIT_SIZE,
    pretrained: Pretrained | None = None,
) -> PrefixMoE:
    """The true model of a cluster at separation ``t`` (d = 1).

    Parameters
    ----------
    t:
        Gate separation: atom ``i`` has ``beta_1 = beta* + o_i t``.
    gate, expert:
        Prompt gate and expert type.
    split:
        Which expert coordinates are split: ``b``, ``a``, ``both`` or ``none``.
    size:
        Atoms in the cluster (2 or 3), masses ``1/size`` each.
    base:
        ``(beta*, a*, b*)``.
    split_size:
        ``r`` of the split coordinates (fixed; it does not shrink with ``t``).
    pretrained:
        Known experts (default: :func:`moe_theory.settings.default_pretrained`).
    """
    check_choice("expert", expert, EXPERTS)
    if t < 0:
        raise ValueError(f"t must be >= 0; got {t}")
    o = offsets(size)
    r_a, r_b = split_vector(split, split_size)
    beta, a, b = base
    return PrefixMoE(
        pretrained=pretrained or default_pretrained(),
        beta0=np.full(size, -np.log(size)),
        beta1=(beta + o * t)[:, None],
        a=(a + o * r_a)[:, None],
        b=b + o * r_b,
        gate=gate,
        expert=expert,
    )


@functools.lru_cache(maxsize=8)
def quadrature(nodes: int = DEFAULT_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes ``(m, 1)`` and weights for ``E_X`` under ``U[-1, 1]`` (cached,
    read-only: numpy finds them by an eigen-decomposition of size ``m``)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    x, w = x[:, None], w / 2.0
    x.flags.writeable = False
    w.flags.writeable = False
    return x, w


def weighted_jacobian(truth: PrefixMoE, nodes: int = DEFAULT_NODES) -> np.ndarray:
    """``diag(sqrt(w_q)) J`` at the truth: ``(m, P)``, so that ``I = A^T A``."""
    X, w = quadrature(nodes)
    _, J = regression_and_jacobian(X, truth.theta, truth)
    return np.sqrt(w)[:, None] * J


def fisher_svd(
    truth: PrefixMoE, nodes: int = DEFAULT_NODES
) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and right singular vectors ``(P, P)`` (rows) of
    ``diag(sqrt(w)) J``; the Fisher eigenvalues are the squared singular values."""
    _, s, vt = np.linalg.svd(weighted_jacobian(truth, nodes), full_matrices=False)
    return s, vt


def fisher_eigenvalues(truth: PrefixMoE, nodes: int = DEFAULT_NODES) -> np.ndarray:
    """Eigenvalues of ``I`` at the truth, ascending, as squared singular values."""
    s, _ = fisher_svd(truth, nodes)
    return (s**2)[::-1]


def spectrum(
    truth_at: Callable[[float], PrefixMoE] | Callable[[float], np.ndarray],
    ts: Sequence[float],
    nodes: int = DEFAULT_NODES,
) -> np.ndarray:
    """Ascending Fisher eigenvalues at every ``t``: ``(len(ts), P)``.

    ``truth_at(t)`` returns either a :class:`PrefixMoE` (its Fisher information at the truth) or
    directly a weighted Jacobian ``(m, P)`` (any model whose ``I = A^T A``; used by tests).
    """
    rows = []
    for t in ts:
        obj = truth_at(float(t))
        A = weighted_jacobian(obj, nodes) if isinstance(obj, PrefixMoE) else np.asarray(obj)
        s = np.linalg.svd(A, compute_uv=False)
        rows.append((s**2)[::-1])
    return np.array(rows)


@dataclass(frozen=True)
class ExponentFit(PowerLawFit):
    """``log lambda = log c + p log t`` fitted over the smallest ``t`` (a
    :class:`~moe_theory.stat_fit.StatFit`).

    Attributes
    ----------
    p, log_c:
        Exponent and intercept.
    resid_sd, resid_max:
        Standard deviation and largest absolute value of the residuals of ``log lambda``
        (natural log): how straight the line is over the points used.
    local_p:
        Slope between the two smallest usable ``t`` (a trend from ``p`` says the asymptote is
        not reached yet).
    t_used:
        The ``t`` that entered the fit.
    log_lambda:
        ``log lambda`` at ``t_used``.
    level:
        Confidence level of :meth:`conf_int` without ``alpha``.
    """

    p: float
    log_c: float
    resid_sd: float
    resid_max: float
    local_p: float
    t_used: tuple[float, ...]
    log_lambda: tuple[float, ...]
    level: float = 0.95

    def _log_x(self) -> np.ndarray:
        # conf_int: the residuals here are the curvature of a deterministic curve, not noise;
        # read the interval as how well one power describes the points used
        return np.log(self.t_used)

    def summary(self) -> str:
        """One line: ``p`` with its interval, the local slope and the points used."""
        lo, hi = self.conf_int()
        return (f"exponent p {self.p:.3f} [{lo:.3f}, {hi:.3f}] ({self.level:.0%} CI, "
                f"t({len(self.t_used) - 2})), local p {self.local_p:.3f}, on t = "
                f"{min(self.t_used):g}..{max(self.t_used):g} ({len(self.t_used)} values); "
                f"residual sd {self.resid_sd:.2g}, max {self.resid_max:.2g}")

    def to_dict(self) -> dict[str, object]:
        """The entry of ``exponents`` in near.json's ``mechanism`` table."""
        return {
            "p": self.p,
            "c": float(np.exp(self.log_c)),
            "resid_sd": self.resid_sd,
            "resid_max": self.resid_max,
            "local_p": self.local_p,
            "t_used": list(self.t_used),
        }


def fit_exponent(
    ts: np.ndarray, lam: np.ndarray, n_fit: int = 5, floor: np.ndarray | None = None
) -> ExponentFit | None:
    """Log-log OLS of ``lam`` on ``ts`` over the ``n_fit`` smallest ``t`` above the floor.

    Parameters
    ----------
    ts, lam:
        ``(m,)`` separations and one eigenvalue curve.
    n_fit:
        Number of smallest usable ``t`` in the fit (at least 3).
    floor:
        ``(m,)`` smallest resolvable eigenvalue at each ``t``; points at or below it are left out.

    Returns
    -------
    ExponentFit, or ``None`` when fewer than 3 points are usable.
    """
    ts, lam = np.asarray(ts, float), np.asarray(lam, float)
    ok = lam > (floor if floor is not None else 0.0)
    order = np.argsort(ts)
    use = [i for i in order if ok[i]][:n_fit]
    if len(use) < 3:
        return None
    x, y = np.log(ts[use]), np.log(lam[use])
    p, c = np.polyfit(x, y, 1)
    resid = y - (c + p * x)
    local = (y[1] - y[0]) / (x[1] - x[0])
    return ExponentFit(
        float(p), float(c), float(np.std(resid, ddof=2) if len(use) > 2 else 0.0),
        float(np.max(np.abs(resid))), float(local), tuple(float(ts[i]) for i in use),
        tuple(float(v) for v in y),
    )


def resolution_floor(lam: np.ndarray) -> np.ndarray:
    """Smallest trustworthy eigenvalue per row of an ascending spectrum ``(T, P)``."""
    return FLOAT_FLOOR * lam[:, -1]


def n_degenerate(lam: np.ndarray, ts: np.ndarray, min_drop: float = 100.0) -> int:
    """How many eigenvalues fall by at least ``min_drop`` from the largest to the smallest ``t``."""
    hi, lo = lam[np.argmax(ts)], lam[np.argmin(ts)]
    return int(np.sum(hi / np.maximum(lo, 1e-300) >= min_drop))


def loss_covariance(
    truth: PrefixMoE, noise_sd: float, nodes: int = DEFAULT_NODES
) -> np.ndarray:
    """``nu I^{-1}`` at the truth, from the SVD (stable where ``I`` is near singular)."""
    s, vt = fisher_svd(truth, nodes)
    return noise_sd**2 * (vt.T / s**2) @ vt


def first_order_loss(z: np.ndarray, truth: PrefixMoE) -> np.ndarray:
    """First-order ``L_1`` of parameter errors ``z`` ``(..., P)`` when every fitted atom stays
    in its own true atom's cell: ``sum_j w_j (|dbeta_0| + ||dbeta_1|| + ||deta||)``."""
    d, L = truth.dim, truth.n_prompts
    z = z.reshape(*z.shape[:-1], L, 2 + 2 * d)
    per_atom = (
        np.abs(z[..., 0])
        + np.linalg.norm(z[..., 1 : 1 + d], axis=-1)
        + np.linalg.norm(z[..., 1 + d :], axis=-1)
    )
    return (per_atom * np.exp(truth.beta0)).sum(axis=-1)


def fisher_constant(
    truth: PrefixMoE,
    noise_sd: float,
    *,
    n_draws: int = 100_000,
    seed: int = 0,
    nodes: int = DEFAULT_NODES,
) -> dict[str, float]:
    """``C`` of ``E[L_1] ~ C / sqrt(n)`` (first order, exact cells) at a near truth.

    ``sqrt(n) (theta_hat - theta*) ~ N(0, nu I^{-1})``; ``C`` is the mean of
    :func:`first_order_loss` under it (Monte Carlo from ``seed``), ``C_sum`` the closed-form bound
    ``sqrt(2/pi) sum_j w_j sum_k sd_k`` (sums instead of norms).
    """
    s, vt = fisher_svd(truth, nodes)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    xi = rng.standard_normal((n_draws, len(s)))
    z = noise_sd * (xi / s) @ vt
    sd = noise_sd * np.sqrt(((vt / s[:, None]) ** 2).sum(axis=0))
    L = truth.n_prompts
    mass = np.exp(truth.beta0)
    return {
        "C": float(first_order_loss(z, truth).mean()),
        "C_sum": float(np.sqrt(2 / np.pi) * (mass * sd.reshape(L, -1).sum(axis=-1)).sum()),
        "lambda_min": float(s[-1] ** 2),
        "cond": float((s[0] / s[-1]) ** 2),
    }


def _c_sum_from_svd(s: np.ndarray, vt: np.ndarray, truth: PrefixMoE, noise_sd: float) -> float:
    sd = noise_sd * np.sqrt(((vt / s[:, None]) ** 2).sum(axis=0))
    mass = np.exp(truth.beta0)
    return float(np.sqrt(2 / np.pi) * (mass * sd.reshape(truth.n_prompts, -1).sum(axis=-1)).sum())


def c_sum(truth: PrefixMoE, noise_sd: float, nodes: int = DEFAULT_NODES) -> float:
    """The closed-form ``C_sum`` of :func:`fisher_constant` (no Monte Carlo)."""
    s, vt = fisher_svd(truth, nodes)
    return _c_sum_from_svd(s, vt, truth, noise_sd)


def sample_size(lam_min: float, eps: float, noise_sd: float) -> float:
    """``n*`` at which the weakest direction's sd ``sqrt(nu / (n lambda_min))`` is ``eps``."""
    return noise_sd**2 / (lam_min * eps**2)


@dataclass(frozen=True)
class CaseSpec:
    """One row of the mechanism table: a cluster under one gate and expert type."""

    base: str
    size: int
    expert: str
    split: str
    gate: GateKind
    activation: str

    @property
    def gate_obj(self) -> Gate:
        return Gate(self.gate, self.activation)  # type: ignore[arg-type]

    def truth(self, t: float) -> PrefixMoE:
        return near_truth(t, self.gate_obj, self.expert, split=self.split,  # type: ignore[arg-type]
                          size=self.size, base=BASE_ATOMS[self.base])

    @property
    def label(self) -> str:
        return self.gate_obj.label


def all_cases(bases: Sequence[str] = tuple(BASE_ATOMS)) -> list[CaseSpec]:
    """Every (base, cluster size, expert, split, gate) of the mechanism table."""
    for b in bases:
        check_choice("base atom", b, tuple(BASE_ATOMS))
    return [
        CaseSpec(b, size, expert, split, g, act)
        for b in bases
        for size in CLUSTER_SIZES
        for expert in EXPERTS
        for split in SPLITS
        for g, act in GATE_VARIANTS
    ]


def analyse_case(
    case: CaseSpec,
    ts: np.ndarray,
    *,
    noise_sd: float,
    eps: float = 0.1,
    n_fit: int = 5,
    n_report: int = 3,
    nodes: int = DEFAULT_NODES,
) -> dict[str, object]:
    """Spectrum, exponents and implied sample sizes of one case.

    Returns
    -------
    dict with ``lambda_smallest`` (the ``n_report`` smallest eigenvalues per ``t``),
    ``lambda_max``, ``floor`` (smallest resolved eigenvalue per ``t``),
    ``lambda_at_0`` (spectrum at ``t = 0``), ``zero_at_0`` (eigenvalues at float zero there:
    exactly degenerate directions), ``exponents`` (fits of the ``n_report`` smallest,
    ``None`` where fewer than 3 points are resolved), ``exponents_vanishing`` (fitted ``p`` of
    every eigenvalue that vanishes at ``t = 0``), ``n_star`` (``nu / (lambda_min eps^2)``) and
    ``n_star_C`` (``(C_sum / eps)^2``, the first-order ``L_1`` reaching ``eps``) per ``t``.
    """
    lams, c_values = [], []
    for t in ts:
        sv, vt = fisher_svd(case.truth(float(t)), nodes)
        lams.append((sv**2)[::-1])
        c_values.append(_c_sum_from_svd(sv, vt, case.truth(float(t)), noise_sd))
    lam = np.array(lams)
    floor = resolution_floor(lam)
    lam0 = spectrum(case.truth, [0.0], nodes)[0]
    zero0 = lam0 <= resolution_floor(lam0[None])[0]
    fits = [fit_exponent(ts, lam[:, k], n_fit, floor) for k in range(lam.shape[1])]
    return {
        "base": case.base,
        "size": case.size,
        "expert": case.expert,
        "split": case.split,
        "gate": case.gate,
        "activation": case.gate_obj.activation_name,
        "t": ts.tolist(),
        "lambda_smallest": lam[:, :n_report].tolist(),
        "lambda_max": lam[:, -1].tolist(),
        "floor": floor.tolist(),
        "lambda_at_0": lam0.tolist(),
        "zero_at_0": int(zero0.sum()),
        "exponents": [f.to_dict() if f else None for f in fits[:n_report]],
        "exponents_vanishing": [
            (f.p if f else None) for f in (fits[k] for k in np.flatnonzero(zero0))
        ],
        "n_star": [sample_size(float(v), eps, noise_sd) for v in lam[:, 0]],
        "n_star_C": [(c / eps) ** 2 for c in c_values],
        "C_sum": c_values,
    }


def mechanism_report(
    *,
    noise_sd: float,
    eps: float = 0.1,
    ts: np.ndarray | None = None,
    bases: Sequence[str] = tuple(BASE_ATOMS),
    nodes: int = DEFAULT_NODES,
    n_fit: int = 5,
) -> dict[str, object]:
    """The deterministic E5 mechanism table (near.json ``mechanism``)."""
    ts = t_grid() if ts is None else np.asarray(ts, dtype=float)
    cases = [analyse_case(c, ts, noise_sd=noise_sd, eps=eps, n_fit=n_fit, nodes=nodes)
             for c in all_cases(bases)]
    return {
        "t_grid": ts.tolist(),
        "bases": {name: list(BASE_ATOMS[name]) for name in bases},
        "split_size": SPLIT_SIZE,
        "nodes": nodes,
        "n_fit": n_fit,
        "eps": eps,
        "noise_sd": noise_sd,
        "float_floor": FLOAT_FLOOR,
        "cases": cases,
        "note": (
            "lambda_k(t): eigenvalues of I(t) = E_X[grad g grad g^T] over all k(2+2d) parameters, "
            "as squared singular values of diag(sqrt(w)) J on Gauss-Legendre nodes (float64); "
            "exponent p: log-log OLS over the n_fit smallest t whose eigenvalue is above "
            "float_floor * lambda_max; zero_at_0: directions with lambda = 0 at t = 0 (exactly "
            "degenerate). n_star = nu / (lambda_min eps^2): n at which the weakest direction's sd "
            "is eps; n_star_C = (C_sum/eps)^2: n at which the first-order L_1 is eps."
        ),
    }
