"""The rate sweep: fits over n x replicates, and :class:`RateResult` (spec section 5).

Work is split into tasks ``(setting, gate, n, block of replicates)``. Each replicate draws its
data and starting points from its own seed (:func:`moe_theory.simulate.replicate_seed`) and the
batched fitter treats replicates independently, so the numbers do not depend on ``jobs`` or on
the block size. Tasks run through joblib with BLAS limited to one thread per worker; finished
blocks are cached as checksummed JSON (:mod:`moe_theory.cache`), keyed by what they depend on
plus a fingerprint of this package's source, so a re-run only computes what is new.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, parallel_config
from statsmodels.regression.linear_model import RegressionResultsWrapper
from threadpoolctl import threadpool_limits

from moe_theory.cache import FitCache
from moe_theory.estimate import (
    FIT_STATUSES,
    ConvergenceWarning,
    FitResult,
    compiled_backend_available,
    fit_restarts,
    near_truth_starts,
)
from moe_theory.gates import ACTIVATIONS, GATES, Gate, check_choice
from moe_theory.inference import (
    AICC_DECISIVE,
    RateFit,
    SlopeFit,
    bootstrap_slope,
    compare_rate_models,
    fit_rate,
    local_slopes,
    mean_ratio_ci,
)
from moe_theory.mechanism import fisher_prediction, flat_manifold_example, pde_residual
from moe_theory.model import EXPERTS, PrefixMoE, n_params, regression
from moe_theory.settings import FIT_SETTINGS, SETTINGS, THETA_BOUND, get_setting
from moe_theory.simulate import INIT_STREAM, integration_points, replicate_seed, simulate
from moe_theory.voronoi import VoronoiLoss, voronoi_loss

log = logging.getLogger(__name__)

FIT_COLUMNS: tuple[str, ...] = (
    "setting",
    "gate",
    "activation",
    "expert",
    "n",
    "replicate",
    "voronoi_loss",
    "voronoi_loss_r",
    "loss_mass",
    "loss_beta1",
    "loss_eta",
    "l2_error",
    "rss",
    "converged",
    "status",
    "at_bound",
    "n_iter",
    "restarts",
    "cell_sizes",
)
# Wall-clock time per fit goes to timing.csv, so fits.csv does not depend on --jobs or the block.
TIMING_COLUMNS: tuple[str, ...] = ("setting", "gate", "n", "replicate", "seconds")
# What every record of fit_task holds; a cached block with other keys is refused.
RECORD_KEYS: frozenset[str] = frozenset(FIT_COLUMNS) | {"seconds"}
# The Fisher check of spec section 7: the level is consistent with C/sqrt(n) when the 95% CI of
# mean L_1 / (C/sqrt(n)) at the largest n overlaps this band.
FISHER_BAND: tuple[float, float] = (0.7, 1.3)

PRESETS: dict[str, dict[str, object]] = {
    # E1 + E4 in well under two minutes on two cores.
    "quick": {
        "settings": ("exact", "mechanism"),
        "n_min": 100,
        "n_max": 100_000,
        "num_n": 7,
        "replicates": 12,
        "restarts": 1,
    },
    # The publication convergence figure: E1 + E4, 20 values of n, 40 replicates, 3 restarts.
    "paper": {
        "settings": ("exact", "mechanism"),
        "n_min": 100,
        "n_max": 100_000,
        "num_n": 20,
        "replicates": 40,
        "restarts": 3,
    },
    # Every experiment at the publication size. The over-specified fits (E2/E3) often run to the
    # iteration cap: about 13 min on two cores (benchmarks/results/sweep.json), less on a cluster.
    "full": {
        "settings": ("exact", "over", "over-tanh", "mechanism"),
        "n_min": 100,
        "n_max": 100_000,
        "num_n": 20,
        "replicates": 40,
        "restarts": 3,
    },
}

# What each setting predicts for the slope of L_1 (None: no rate guaranteed).
EXPECTED_SLOPE = {"exact": -0.5, "over": None, "over-tanh": -0.5}


def n_grid(n_min: int, n_max: int, num: int) -> tuple[int, ...]:
    """``num`` log-spaced integers from ``n_min`` to ``n_max`` (duplicates removed)."""
    if n_min < 2 or n_max < n_min or num < 1:
        raise ValueError(f"need 2 <= n_min <= n_max and num >= 1; got {n_min}, {n_max}, {num}")
    if num == 1:
        return (int(n_min),)
    grid = np.unique(np.round(np.logspace(np.log10(n_min), np.log10(n_max), num)).astype(int))
    return tuple(int(v) for v in grid)


@dataclass(frozen=True)
class RateConfig:
    """Everything that defines a sweep (saved as ``config.json``).

    Attributes
    ----------
    settings:
        Experiments among ``exact``, ``over``, ``over-tanh``, ``mechanism``.
    gates:
        Gates to fit, among ``linear`` and ``norga``.
    activation:
        sigma of NoRGa.
    expert:
        Prompt expert override for ``exact``/``over`` (``None``: each setting's own).
    n_values:
        Sample sizes.
    replicates, restarts:
        Replicates per n and restarts per fit.
    seed:
        The one seed every random draw derives from.
    fit_n_min:
        Smallest n that enters the slope fits (pre-asymptotic points are excluded).
    max_iter, tol, noise_sd, init_scale, r:
        Fitter cap and tolerance, noise sd, near-truth start noise, exponent of ``L_{1,r}``.
    block:
        Replicates per task (load balancing only; results do not depend on it).
    """

    settings: tuple[str, ...] = ("exact", "mechanism")
    gates: tuple[str, ...] = ("norga", "linear")
    activation: str = "tanh"
    expert: str | None = None
    n_values: tuple[int, ...] = n_grid(100, 100_000, 7)
    replicates: int = 12
    restarts: int = 1
    seed: int = 1
    fit_n_min: int = 1000
    max_iter: int = 400
    tol: float = 1e-12
    noise_sd: float = 0.1
    init_scale: float = 0.1
    r: float = 2.0
    block: int = 6
    preset: str | None = None

    def __post_init__(self) -> None:
        for s in self.settings:
            check_choice(s, SETTINGS, "setting")
        for g in self.gates:
            check_choice(g, GATES, "gate")
        check_choice(self.activation, ACTIVATIONS, "activation")
        if self.expert is not None:
            check_choice(self.expert, EXPERTS, "expert")
            if self.expert == "affine" and "over-tanh" in self.settings:
                raise ValueError("expert 'affine' contradicts setting 'over-tanh' (tanh experts)")
        for name in ("replicates", "restarts", "max_iter", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.n_values or min(self.n_values) < 2:
            raise ValueError(f"n_values must be non-empty and >= 2; got {self.n_values}")
        if self.fit_settings and self.fit_n_min > max(self.n_values):
            raise ValueError(
                f"fit_n_min={self.fit_n_min} is above every n of the grid (largest "
                f"{max(self.n_values)}); no fit would enter the slopes"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        if not (self.noise_sd > 0 and self.init_scale >= 0 and self.tol > 0 and self.r >= 1):
            raise ValueError("need noise_sd > 0, init_scale >= 0, tol > 0 and r >= 1")

    @property
    def fit_settings(self) -> tuple[str, ...]:
        return tuple(s for s in self.settings if s in FIT_SETTINGS)

    def truth(self, setting: str, gate: str) -> PrefixMoE:
        """The true model of ``setting`` under ``gate`` (with the expert override)."""
        base = get_setting(setting)
        expert = self.expert if (self.expert and setting != "over-tanh") else base.expert
        return replace(base.truth(gate, self.activation), expert=expert)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "rates", **asdict(self)}


def _source_fingerprint() -> str:
    """Hash of this package's sources and of whether numba is there.

    Cached fits are invalidated when the code changes, and fits from the numpy and the compiled
    backend (equal up to rounding, which can move capped over-specified fits) are never mixed.
    """
    digest = hashlib.sha256()
    digest.update(repr(sorted(RECORD_KEYS)).encode())  # the record schema, explicitly
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    digest.update(b"numba" if compiled_backend_available() else b"numpy")
    return digest.hexdigest()[:16]


def l2_error(fitted: PrefixMoE, truth: PrefixMoE) -> np.ndarray:
    """``||g_fitted - g_truth||_{L2(mu)}`` per replicate, mu = U[-1, 1]^d (quadrature).

    Parameters
    ----------
    fitted:
        Model whose prompt arrays have a leading replicate axis ``(R, ...)``.
    truth:
        The true model.

    Returns
    -------
    ndarray ``(R,)``.
    """
    grid, weights = integration_points(truth.dim)
    g_true = regression(grid, truth)
    g_fit = regression(grid[None], fitted)  # (R, m)
    # row by row: a (R, m) @ (m,) product may sum in an R-dependent order
    return np.sqrt([row @ weights for row in (g_fit - g_true) ** 2])


def fit_outcome(best: FitResult, losses: VoronoiLoss, l2: np.ndarray, i: int) -> dict[str, object]:
    """Per-fit columns every sweep writes: losses, L2 error and LM outcome of replicate ``i``."""
    return {
        "voronoi_loss": float(losses.total[i]),
        "voronoi_loss_r": float(losses.loss_r[i]),
        "loss_mass": float(losses.mass[i]),
        "loss_beta1": float(losses.beta1[i]),
        "loss_eta": float(losses.eta[i]),
        "l2_error": float(l2[i]),
        "rss": float(best.rss[i]),
        "converged": bool(best.converged[i]),
        "status": str(best.status[i]),
        "at_bound": bool(best.at_bound[i]),
        "n_iter": int(best.n_iter[i]),
        "cell_sizes": ";".join(str(int(c)) for c in losses.cell_sizes[i]),
    }


def fit_task(
    config: RateConfig,
    setting: str,
    gate: str,
    n: int,
    replicates: tuple[int, ...],
    fingerprint: str,
) -> list[dict[str, object]]:
    """Fit one block of replicates at one n; returns one record per replicate.

    ``fingerprint`` only keys the cache. ``seconds`` (written to ``timing.csv``, not
    ``fits.csv``) is the block's wall time divided by the number of replicates in it (the fits
    run batched).
    """
    del fingerprint
    start = time.perf_counter()
    base = get_setting(setting)
    truth = config.truth(setting, gate)
    # Known parts of the truth with L' placeholder atoms: the fitter's model structure.
    structure = truth.with_theta(np.zeros(n_params(base.n_fitted, truth.dim)))
    bound = THETA_BOUND if base.bounded else None
    with threadpool_limits(limits=1):
        X, Y = simulate(
            truth, n, list(replicates), seed=config.seed, setting=setting, noise_sd=config.noise_sd
        )
        starts = np.stack(
            [
                near_truth_starts(
                    truth,
                    base.n_fitted,
                    config.restarts,
                    np.random.default_rng(
                        replicate_seed(config.seed, setting, n, rep, INIT_STREAM)
                    ),
                    config.init_scale,
                    bound,
                )
                for rep in replicates
            ]
        )  # (R, restarts, P)
        best = fit_restarts(X, Y, starts, structure, bound=bound, max_iter=config.max_iter,
                            tol=config.tol)
        del X, Y
        losses = voronoi_loss(best.theta, truth.theta, truth.dim, r=config.r)
        l2 = l2_error(structure.with_theta(best.theta), truth)
    seconds = (time.perf_counter() - start) / len(replicates)
    gate_obj = Gate(gate, config.activation)
    return [
        {
            "setting": setting,
            "gate": gate,
            "activation": gate_obj.activation_name,
            "expert": truth.expert,
            "n": int(n),
            "replicate": int(rep),
            **fit_outcome(best, losses, l2, i),
            "seconds": float(seconds),
            "restarts": config.restarts,
        }
        for i, rep in enumerate(replicates)
    ]


def mechanism_report(config: RateConfig) -> dict[str, object]:
    """E4: PDE residual per gate, Fisher conditioning per (gate, expert), the flat manifold."""
    gates = {"linear": Gate("linear", config.activation), "norga": Gate("norga", config.activation)}
    exact = get_setting("exact")
    fisher = []
    for name, gate in gates.items():
        for expert in EXPERTS:
            truth = replace(exact.truth(gate.kind, config.activation), expert=expert)
            pred = fisher_prediction(truth, config.noise_sd)
            fisher.append(
                {"gate": name, "activation": gate.activation_name, "expert": expert, **pred}
            )
    return {
        "pde_residual": {name: pde_residual(g)["finite_difference"] for name, g in gates.items()},
        "pde_residual_analytic": {name: pde_residual(g)["analytic"] for name, g in gates.items()},
        "pde_points": np.linspace(-1, 1, 5).tolist(),
        "fisher": fisher,
        "flat_manifold": {
            name: flat_manifold_example(exact.truth(g.kind, config.activation))
            for name, g in gates.items()
        },
        "note": "PDE residual: max over x in {-1,-.5,0,.5,1} of |d2F/dbeta1 db - dF/da| by central "
        "differences (step 1e-4) at beta1=2, a=-2, b=1; ~1e-8 is finite-difference error. "
        "Fisher: I = E_X[grad g grad g^T] at the E1 truth (Gauss-Legendre, 400 nodes).",
    }


@dataclass(frozen=True)
class PerNStats:
    """Replicate statistics of one (setting, gate) at one n (``per_n`` of ``summary.json``)."""

    mean: float
    median: float
    l2_median: float
    mass_median: float
    beta1_median: float
    eta_median: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FisherCheck:
    """The Fisher check of spec section 7 (exact setting): mean ``L_1`` at the largest n over
    the prediction ``C / sqrt(n)``, with a 95% t CI over the replicates."""

    criterion: str
    C: float
    C_sum: float
    lambda_min: float
    cond: float
    n: int
    predicted: float
    measured_mean: float
    ratio: float
    ratio_ci: tuple[float, float]
    consistent: bool
    #: Second, labelled criterion: mean_r(L_1) * sqrt(n) / C averaged over the n used.
    ratio_pooled: float

    def to_dict(self) -> dict[str, object]:
        """The ``fisher_*`` keys of ``summary.json``."""
        return {
            "fisher_criterion": self.criterion,
            "fisher_C": self.C,
            "fisher_C_sum": self.C_sum,
            "fisher_lambda_min": self.lambda_min,
            "fisher_cond": self.cond,
            "fisher_n": self.n,
            "fisher_predicted": self.predicted,
            "fisher_measured_mean": self.measured_mean,
            "fisher_ratio": self.ratio,
            "fisher_ratio_ci": list(self.ratio_ci),
            "fisher_consistent": self.consistent,
            "fisher_ratio_pooled": self.ratio_pooled,
        }


@dataclass(frozen=True)
class GroupAnalysis:
    """Rate inference of one (setting, gate): one entry of ``summary.json``.

    Attributes
    ----------
    setting, gate, activation, expert, theorem:
        What was fitted and what the theory predicts.
    fit, l2_fit:
        :class:`~moe_theory.inference.RateFit` of ``L_1`` and of the L2 error on the n used
        (their statsmodels results, ``conf_int(alpha)`` and ``summary()``).
    mean_fit, median_fit:
        Bootstrap slopes of the per-n mean and median of ``L_1``.
    part_slopes:
        Slope of each loss part (``loss_mass``, ``loss_beta1``, ``loss_eta``; ``None`` with
        fewer than two n of positive values).
    model_comparison, local_slopes:
        :func:`~moe_theory.inference.compare_rate_models` and
        :func:`~moe_theory.inference.local_slopes` of the per-n medians.
    n_all, n_used, n_used_note:
        The n of the grid, those entering the fits, and why all n entered (or ``None``).
    per_n:
        :class:`PerNStats` for each n of ``n_all``, in order.
    status_counts:
        Fits per status of :data:`~moe_theory.estimate.FIT_STATUSES`, in that order.
    n_fits, n_at_bound:
        Fits, and fits that ended at the parameter bound.
    fisher:
        :class:`FisherCheck` (exact setting) or ``None``.
    verdict:
        :func:`rate_verdict`.
    """

    setting: str
    gate: str
    activation: str
    expert: str
    theorem: str
    fit: RateFit
    l2_fit: RateFit
    mean_fit: SlopeFit
    median_fit: SlopeFit
    part_slopes: dict[str, float | None]
    model_comparison: dict[str, object]
    local_slopes: list[dict[str, float]]
    n_all: tuple[int, ...]
    n_used: tuple[int, ...]
    n_used_note: str | None
    per_n: tuple[PerNStats, ...]
    status_counts: tuple[tuple[str, int], ...]
    n_fits: int
    n_at_bound: int
    fisher: FisherCheck | None
    verdict: str

    def conf_int(self, alpha: float | None = None) -> tuple[float, float]:
        """CI of the ``L_1`` slope at level ``1 - alpha`` (default 95%)."""
        return self.fit.conf_int(alpha)

    def summary(self) -> str:
        """One line on the ``L_1`` slope (:meth:`RateFit.summary`)."""
        return self.fit.summary()

    @property
    def results(self) -> RegressionResultsWrapper:
        """The statsmodels results of the ``L_1`` slope fit."""
        return self.fit.results

    def to_dict(self) -> dict[str, object]:
        """This entry as written to ``summary.json`` (key order included)."""
        entry: dict[str, object] = {
            "activation": self.activation,
            "expert": self.expert,
            "theorem": self.theorem,
            "slope": self.fit.slope,
            "slope_ci": list(self.fit.conf_int()),
            "slope_method": self.fit.method,
            "slope_df": self.fit.df_resid,
            "slope_mean": self.mean_fit.slope,
            "slope_mean_ci": list(self.mean_fit.ci),
            "slope_median": self.median_fit.slope,
            "slope_median_ci": list(self.median_fit.ci),
            "l2_slope": self.l2_fit.slope,
            "l2_slope_ci": list(self.l2_fit.conf_int()),
            "part_slopes": dict(self.part_slopes),
            "model_comparison": self.model_comparison,
            "local_slopes": self.local_slopes,
            "n_all": list(self.n_all),
            "n_used": list(self.n_used),
            "n_used_note": self.n_used_note,
            "per_n": {str(v): s.to_dict() for v, s in zip(self.n_all, self.per_n, strict=True)},
            "n_fits": self.n_fits,
            **{f"n_{status}": count for status, count in self.status_counts},
            "n_at_bound": self.n_at_bound,
        }
        if self.fisher is None:
            entry.update({"fisher_C": None, "fisher_C_sum": None})
        else:
            fisher = self.fisher.to_dict()
            # fisher_C and fisher_C_sum come first (the key order of summary.json version 2)
            entry.update({"fisher_C": fisher.pop("fisher_C"),
                          "fisher_C_sum": fisher.pop("fisher_C_sum"), **fisher})
        entry["verdict"] = self.verdict
        return entry


def analyse_group(config: RateConfig, rows: list[dict[str, object]]) -> GroupAnalysis:
    """Rate inference (spec 5.4) of the fits ``rows`` of one (setting, gate) of ``config``."""
    setting, gate = str(rows[0]["setting"]), str(rows[0]["gate"])
    n = np.array([r["n"] for r in rows])
    n_all = np.unique(n)
    n_used = n_all[n_all >= config.fit_n_min]
    note = None
    if len(n_used) < 3:
        n_used, note = (
            n_all,
            (f"fewer than 3 values of n >= {config.fit_n_min}; all n entered the fit"),
        )
    used = np.isin(n, n_used)

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=float)

    loss, l2 = col("voronoi_loss"), col("l2_error")
    per_n = [loss[(n == v)] for v in n_used]
    main = fit_rate(n[used], loss[used])
    l2_fit = fit_rate(n[used], l2[used])
    medians = np.array([np.median(v) for v in per_n])
    means = np.array([np.mean(v) for v in per_n])
    comparison = compare_rate_models(n_used, medians)
    parts = {}
    for part in ("loss_mass", "loss_beta1", "loss_eta"):
        vals = col(part)
        pos = vals[used] > 0
        parts[part] = (
            fit_rate(n[used][pos], vals[used][pos]).slope
            if len(np.unique(n[used][pos])) >= 2
            else None
        )
    status = [r["status"] for r in rows]
    fisher = None
    if setting == "exact":
        pred = fisher_prediction(config.truth(setting, gate), config.noise_sd)
        n_max = int(n_all.max())
        predicted = pred["C"] / np.sqrt(n_max)
        ratio, lo, hi = mean_ratio_ci(loss[n == n_max], predicted)
        fisher = FisherCheck(
            criterion="mean L_1 at the largest n / (C/sqrt(n)), 95% t CI over the replicates; "
            f"consistent when the CI overlaps [{FISHER_BAND[0]}, {FISHER_BAND[1]}] "
            "(spec section 7)",
            C=pred["C"],
            C_sum=pred["C_sum"],
            lambda_min=pred["lambda_min"],
            cond=pred["cond"],
            n=n_max,
            predicted=float(predicted),
            measured_mean=float(np.mean(loss[n == n_max])),
            ratio=ratio,
            ratio_ci=(lo, hi),
            consistent=bool(lo <= FISHER_BAND[1] and hi >= FISHER_BAND[0]),
            ratio_pooled=float(np.mean(means * np.sqrt(n_used)) / pred["C"]),
        )
    return GroupAnalysis(
        setting=setting,
        gate=gate,
        activation=str(rows[0]["activation"]),
        expert=str(rows[0]["expert"]),
        theorem=get_setting(setting).theorem,
        fit=main,
        l2_fit=l2_fit,
        mean_fit=bootstrap_slope(n_used, per_n, "mean", seed=config.seed),
        median_fit=bootstrap_slope(n_used, per_n, "median", seed=config.seed),
        part_slopes=parts,
        model_comparison=comparison,
        local_slopes=local_slopes(n_used, medians) if len(n_used) >= 3 else [],
        n_all=tuple(int(v) for v in n_all),
        n_used=tuple(int(v) for v in n_used),
        n_used_note=note,
        per_n=tuple(
            PerNStats(
                mean=float(np.mean(loss[n == v])),
                median=float(np.median(loss[n == v])),
                l2_median=float(np.median(l2[n == v])),
                mass_median=float(np.median(col("loss_mass")[n == v])),
                beta1_median=float(np.median(col("loss_beta1")[n == v])),
                eta_median=float(np.median(col("loss_eta")[n == v])),
            )
            for v in n_all
        ),
        status_counts=tuple((s, status.count(s)) for s in FIT_STATUSES),
        n_fits=len(rows),
        n_at_bound=int(np.array([r["at_bound"] for r in rows], dtype=bool).sum()),
        fisher=fisher,
        verdict=rate_verdict(
            expected=EXPECTED_SLOPE[setting],
            slope_ci=main.conf_int(),
            l2_slope=l2_fit.slope,
            l2_ci=l2_fit.conf_int(),
            model=comparison,
            fisher=fisher.to_dict() if fisher is not None else None,
        ),
    )


@dataclass
class RateResult:
    """Records of a sweep plus its E4 report, with the rate inference of spec 5.4.

    Attributes
    ----------
    config:
        The sweep's :class:`RateConfig`.
    records:
        One dict per fit, keys :data:`FIT_COLUMNS`.
    mechanism:
        E4 report (``None`` when ``mechanism`` was not requested).

    The analysis is computed on first use and kept (:attr:`analysis`); ``records`` are not
    meant to change afterwards.
    """

    config: RateConfig
    records: list[dict[str, object]]
    mechanism: dict[str, object] | None = None

    def groups(self) -> list[tuple[str, str]]:
        """The (setting, gate) pairs present, in config order."""
        present = {(r["setting"], r["gate"]) for r in self.records}
        return [
            (s, g) for s in self.config.fit_settings for g in self.config.gates if (s, g) in present
        ]

    def rows(self, setting: str, gate: str) -> list[dict[str, object]]:
        return [r for r in self.records if r["setting"] == setting and r["gate"] == gate]

    @functools.cached_property
    def analysis(self) -> dict[tuple[str, str], GroupAnalysis]:
        """:class:`GroupAnalysis` per (setting, gate) of :meth:`groups` (computed once)."""
        return {(s, g): analyse_group(self.config, self.rows(s, g)) for s, g in self.groups()}

    def group(self, setting: str, gate: str) -> GroupAnalysis:
        """The analysis of one (setting, gate); ``KeyError`` naming the pairs present."""
        try:
            return self.analysis[(setting, gate)]
        except KeyError:
            raise KeyError(
                f"no fits of setting {setting!r} with gate {gate!r}; present: {self.groups()}"
            ) from None

    def rate_fit(self, setting: str, gate: str) -> RateFit:
        """The :class:`~moe_theory.inference.RateFit` of the ``L_1`` slope in ``summary.json``.

        Its ``conf_int(alpha)`` gives other levels, ``summary()`` one line and ``results`` the
        statsmodels results. The L2-error fit is ``group(setting, gate).l2_fit``.
        """
        return self.group(setting, gate).fit

    def analyse(self) -> dict[str, dict[str, dict[str, object]]]:
        """Per (setting, gate) statistics as written to ``summary.json`` (plain dicts)."""
        out: dict[str, dict[str, dict[str, object]]] = {}
        for (setting, gate), entry in self.analysis.items():
            out.setdefault(setting, {})[gate] = entry.to_dict()
        return out

    def summary_dict(self) -> dict[str, object]:
        """The content of ``summary.json``."""
        return {
            "kind": "rates",
            "version": 2,
            "settings": self.analyse(),
            "init": "near-truth (oracle starts; measures the statistical rate, not optimisation)",
        }

    def summary(self) -> str:
        """Readable report: per setting the theorem, the slopes with CIs, the verdict."""
        lines = [
            "Prefix-MoE convergence rates (least squares, near-truth starts: this measures the "
            "statistical rate, not optimisation).",
            f"seed={self.config.seed} replicates={self.config.replicates} "
            f"restarts={self.config.restarts} n={list(self.config.n_values)}",
        ]
        range_notes = []
        by_setting: dict[str, list[GroupAnalysis]] = {}
        for entry in self.analysis.values():
            by_setting.setdefault(entry.setting, []).append(entry)
        for setting, entries in by_setting.items():
            lines += ["", f"== {setting}: {entries[0].theorem}"]
            for e in entries:
                label = Gate(e.gate, self.config.activation).label
                pad = f"  {'':14s}"
                ci, mci, lci = e.fit.conf_int(), e.median_fit.ci, e.l2_fit.conf_int()
                lines.append(
                    f"  {label:14s} L_1 slope {e.fit.slope:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] "
                    f"(95% CI: {e.fit.method}, t({e.fit.df_resid:g})); median "
                    f"{e.median_fit.slope:+.3f} [{mci[0]:+.3f}, {mci[1]:+.3f}] (bootstrap); "
                    f"L2 slope {e.l2_fit.slope:+.3f} [{lci[0]:+.3f}, {lci[1]:+.3f}]"
                )
                mc = e.model_comparison
                if "aicc" in mc:
                    aicc = " / ".join(
                        f"{k} {'n/a' if v is None else f'{v:.1f}'}"
                        for k, v in mc["aicc"].items()  # type: ignore[attr-defined]
                    )
                    q_ci = mc["q_ci"]
                    lines.append(
                        f"{pad} rate model: {mc['classification']} ({mc['reason']}); "
                        f"AICc {aicc}; q={mc['q']:.3g} [{q_ci[0]:.3g}, {q_ci[1]:.3g}]"  # type: ignore[index]
                    )
                if mc.get("range_note") and mc["range_note"] not in range_notes:
                    range_notes.append(mc["range_note"])
                if e.fisher is not None:
                    f = e.fisher
                    lines.append(
                        f"{pad} Fisher (spec 7): C={f.C:.2f}; mean L_1({f.n}) = "
                        f"{f.measured_mean:.4f} vs C/sqrt(n) = {f.predicted:.4f}: ratio "
                        f"{f.ratio:.2f} [{f.ratio_ci[0]:.2f}, {f.ratio_ci[1]:.2f}]"
                    )
                    lines.append(
                        f"{pad} Fisher, pooled (second criterion, not the spec's): mean "
                        f"over the n used of mean L_1 * sqrt(n) / C = {f.ratio_pooled:.2f}"
                    )
                counts = dict(e.status_counts)
                lines.append(
                    f"{pad} fits {e.n_fits}: converged {counts['converged']}, capped "
                    f"{counts['capped']}, stalled {counts['stalled']}, at bound {e.n_at_bound}; "
                    f"n used {list(e.n_used)}"
                )
                if setting != "exact":
                    lines.append(f"{pad} {_parts_line(e)}")
                lines.append(f"{pad} verdict: {e.verdict}")
        notes = [
            f"Rate models: {note}; a rate label names one model only when its AICc is lower "
            f"than every other model's by >= {AICC_DECISIVE:g}, otherwise the models are called "
            "indistinguishable." for note in range_notes
        ]
        notes.append(
            "The log rate of linear gating is a worst-case (minimax) bound, not a prediction for "
            "a fixed truth; with affine experts an over-specified cell is not identifiable under "
            "either gate (spec 3.4), so E2 differences are heuristic. Fisher check (spec 7): "
            "mean L_1 at the largest n over C/sqrt(n), with a 95% t CI over the replicates; "
            f"consistent when the CI overlaps [{FISHER_BAND[0]}, {FISHER_BAND[1]}]."
        )
        lines += ["", "Notes:"] + [f"- {note}" for note in notes]
        if self.mechanism:
            m = self.mechanism
            lines += [
                "",
                "== mechanism (E4)",
                "  PDE residual |d2F/dbeta1 db - dF/da|: "
                f"linear {m['pde_residual']['linear']:.2e}, "
                f"NoRGa {m['pde_residual']['norga']:.3g}",
            ]
            for f in m["fisher"]:
                lines.append(
                    f"  Fisher {f['gate']:6s} {f['expert']:6s} lambda_min {f['lambda_min']:.3g} "
                    f"cond {f['cond']:.3g} C {f['C']:.2f}"
                )
            for g, fm in m["flat_manifold"].items():
                lines.append(
                    f"  flat manifold ({g}): max|g_G - g_G*| = {fm['max_abs_g_difference']:.1e} "
                    f"with L_1 = {fm['voronoi_loss']:.3f}"
                )
        return "\n".join(lines)


def _parts_line(e: GroupAnalysis) -> str:
    """Median loss parts at the smallest and largest n (over-specified settings)."""
    first, last = e.per_n[0], e.per_n[-1]
    parts = ", ".join(
        f"{name} {getattr(first, key):.3g} -> {getattr(last, key):.3g}"
        for name, key in (("mass", "mass_median"), ("beta1", "beta1_median"), ("eta", "eta_median"))
    )
    return f"median L_1 parts from n={e.n_all[0]} to n={e.n_all[-1]}: {parts}"


def rate_verdict(
    *,
    expected: float | None,
    slope_ci: tuple[float, float],
    l2_slope: float,
    l2_ci: tuple[float, float],
    model: dict[str, object],
    fisher: dict[str, object] | None,
) -> str:
    """The verdict line of one (setting, gate).

    Parameters
    ----------
    expected:
        The predicted slope of ``L_1`` (``None``: no rate guaranteed, the verdict is heuristic).
    slope_ci:
        95% CI of the ``L_1`` slope (:func:`fit_rate`).
    l2_slope, l2_ci:
        Slope of the L2 error and its CI; it agrees with Thm 4.1 when the CI contains -1/2 or
        the slope lies in [-0.6, -0.4].
    model:
        :func:`compare_rate_models` output (its ``classification`` and ``reason``).
    fisher:
        The Fisher check (keys ``fisher_ratio``, ``fisher_ratio_ci``, ``fisher_n``; exact
        setting only) or ``None``.
    """
    l2_ok = l2_ci[0] <= -0.5 <= l2_ci[1] or -0.6 <= l2_slope <= -0.4
    l2_text = (
        f"regression error agrees with Thm 4.1 (L2 slope {l2_slope:.2f})"
        if l2_ok
        else f"regression error slope {l2_slope:.2f} departs from -1/2"
    )
    kind = str(model.get("classification", "inconclusive"))
    if kind == "inconclusive":
        kind = f"rate model inconclusive ({model.get('reason', '')})"
    if expected is None:
        return (
            f"{kind}; no parameter rate is guaranteed here (non-identifiable expert part); "
            f"{l2_text}; heuristic"
        )
    lo, hi = slope_ci
    agree = lo <= expected <= hi
    text = (
        f"slope CI [{lo:.2f}, {hi:.2f}] {'contains' if agree else 'excludes'} {expected}; "
        f"{kind}; {l2_text}"
    )
    if fisher is not None:
        rlo, rhi = fisher["fisher_ratio_ci"]  # type: ignore[misc]
        band = f"[{FISHER_BAND[0]}, {FISHER_BAND[1]}]"
        if np.isnan(rlo):
            consistent, how = False, "no CI with one fit"
        elif rlo <= FISHER_BAND[1] and rhi >= FISHER_BAND[0]:
            consistent, how = True, f"CI overlaps {band}"
        else:
            consistent, how = False, f"CI misses {band}"
        text += (
            f"; level {'consistent' if consistent else 'not consistent'} with the Fisher "
            f"prediction C/sqrt(n) (mean L_1 at n={fisher['fisher_n']} is "
            f"{fisher['fisher_ratio']:.2f} "
            f"[{rlo:.2f}, {rhi:.2f}] x C/sqrt(n): {how})"
        )
    return text


def exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Worker initializer: end this worker once process ``parent`` (the sweep) is gone.

    Stops loky workers from computing on for minutes after the sweep itself was killed (even by
    ``SIGKILL``, which leaves no chance to clean up), also when that happened while the worker
    was still starting.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def plan_tasks(config: RateConfig) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """All (setting, gate, n, replicate block) tasks, largest n first (better load balance)."""
    reps = list(range(config.replicates))
    blocks = [tuple(reps[i : i + config.block]) for i in range(0, len(reps), config.block)]
    tasks = [
        (s, g, n, b)
        for s in config.fit_settings
        for g in config.gates
        for n in config.n_values
        for b in blocks
    ]
    return sorted(tasks, key=lambda t: -t[2])


BACKENDS: tuple[str, ...] = ("loky", "dask")


def run_rates(
    config: RateConfig,
    *,
    jobs: int = 1,
    cache_dir: str | Path | None = None,
    progress: Callable[..., Iterable] | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
) -> RateResult:
    """Run the sweep.

    Parameters
    ----------
    config:
        The sweep.
    jobs:
        joblib workers (processes) for ``backend="loky"``, or the number of workers of the local
        Dask cluster started when ``backend="dask"`` and no ``scheduler`` is given. BLAS is
        limited to one thread inside every task.
    cache_dir:
        joblib.Memory location; ``None`` disables caching. With a remote Dask cluster the cache
        lives on each worker's file system.
    progress:
        Wraps the iterator of finished tasks (e.g. ``tqdm``); called with ``total=``.
    backend:
        ``"loky"`` (local processes) or ``"dask"`` (needs the ``norga[dask]`` extra).
    scheduler:
        Address of a running Dask scheduler (``tcp://host:8786``); ``None`` starts a local one.

    Returns
    -------
    RateResult
        Identical, bit for bit, whatever the backend, ``jobs`` or block size.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    check_choice(backend, BACKENDS, "backend")
    fingerprint = _source_fingerprint()
    tasks = plan_tasks(config)
    cache = FitCache(cache_dir, tuple(sorted(RECORD_KEYS))) if cache_dir is not None else None
    blocks: list[list[dict[str, object]]] = []
    todo = []
    for s, g, n, b in tasks:
        inputs = cache.key_inputs(config, s, g, n, b, fingerprint) if cache else None
        cached = cache.load(inputs) if cache and inputs else None
        if cached is not None:
            blocks.append(cached)
        else:
            todo.append((inputs, delayed(fit_task)(config, s, g, n, b, fingerprint)))
    calls = [call for _, call in todo]
    if backend == "dask":  # connect first: an unreachable scheduler fails before any work
        results: Iterable = _iter_on_dask(calls, *connect_dask(scheduler, jobs))
    elif jobs == 1 or len(calls) <= 1:
        results = (f(*a, **k) for f, a, k in calls)
    else:
        with parallel_config(backend="loky", initializer=exit_with_parent,
                             initargs=(os.getpid(),)):
            results = Parallel(n_jobs=min(jobs, len(calls)),
                               return_as="generator_unordered")(calls)
    if cache is not None:
        results = _stored(results, cache, [inputs for inputs, _ in todo])
    if progress is not None:
        results = progress(results, total=len(calls))
    blocks += list(results)
    records = [row for block in blocks for row in block]
    bad = next((r for r in records if set(r) != RECORD_KEYS), None)
    if bad is not None:  # a cache entry written by another record schema: never misread it
        raise ValueError(
            f"a fit record has columns {sorted(bad)}, expected {sorted(RECORD_KEYS)}; clear the "
            f"cache ({cache_dir}) or run without it"
        )
    order = {s: i for i, s in enumerate(SETTINGS)}
    records.sort(
        key=lambda r: (order[r["setting"]], GATES.index(r["gate"]), r["n"], r["replicate"])
    )
    _warn_unconverged(records)
    mechanism = mechanism_report(config) if "mechanism" in config.settings else None
    return RateResult(config=config, records=records, mechanism=mechanism)


def _warn_unconverged(records: list[dict[str, object]]) -> None:
    """One :class:`ConvergenceWarning` naming every (setting, gate, n) with capped/stalled fits."""
    groups: dict[tuple[object, object, object], dict[str, int]] = {}
    for r in records:
        if r["status"] != "converged":
            key = (r["setting"], r["gate"], r["n"])
            counts = groups.setdefault(key, {})
            counts[r["status"]] = counts.get(r["status"], 0) + 1  # type: ignore[index]
    if groups:
        named = "; ".join(
            f"{s}/{g}/n={n}: " + ", ".join(f"{c} {k}" for k, c in sorted(counts.items()))
            for (s, g, n), counts in groups.items()
        )
        warnings.warn(
            f"fits that did not converge (kept, status column of fits.csv): {named}",
            ConvergenceWarning,
            stacklevel=3,
        )


def _stored(results: Iterable, cache: FitCache, inputs: list) -> Iterable:
    """Store each finished block as it arrives (blocks arrive in any order: match by content)."""
    by_block = {(i["setting"], i["gate"], i["n"], tuple(i["replicates"])): i for i in inputs}
    for block in results:
        first = block[0]
        key = (first["setting"], first["gate"], first["n"], tuple(r["replicate"] for r in block))
        cache.save(by_block[key], block)
        yield block


class SchedulerUnreachableError(ConnectionError):
    """The Dask scheduler given by address could not be reached."""


DASK_CONNECT_TIMEOUT = 10.0  # seconds to reach a given scheduler


def connect_dask(scheduler: str | None, jobs: int, timeout: float | None = None):
    """A Dask ``Client`` (and the ``LocalCluster`` it runs on, or ``None``).

    Raises
    ------
    ImportError
        The optional extra is not installed.
    SchedulerUnreachableError
        ``scheduler`` could not be reached within ``timeout`` seconds (default
        :data:`DASK_CONNECT_TIMEOUT`).
    """
    timeout = DASK_CONNECT_TIMEOUT if timeout is None else timeout
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "backend 'dask' needs the optional extra: pip install 'norga[dask]'"
        ) from err
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=f"{timeout}s"), None
    except (OSError, TimeoutError, ValueError) as err:
        raise SchedulerUnreachableError(
            f"cannot reach the Dask scheduler {scheduler} within {timeout:g} s "
            f"({type(err).__name__})") from None


def _run_on_dask(
    calls: list, jobs: int, scheduler: str | None, progress: Callable[..., Iterable] | None
) -> list:
    """Run joblib calls through joblib's Dask backend on a new or existing cluster."""
    results = _iter_on_dask(calls, *connect_dask(scheduler, jobs))
    if progress is not None:
        results = progress(results, total=len(calls))
    return list(results)


def _iter_on_dask(calls: list, client, cluster) -> Iterable:
    """Run joblib calls through joblib's Dask backend on ``client``, then close it (and the
    local ``cluster``, if any)."""
    from joblib import parallel_config

    try:
        with parallel_config(backend="dask"):
            yield from Parallel(n_jobs=-1, return_as="generator_unordered")(calls)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
