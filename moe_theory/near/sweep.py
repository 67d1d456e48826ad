"""E5 fits: near-coincident true prompts at fixed separation and on a shrinking schedule.

Spec moe-theory.md section 5.7. Two kinds of truth, both ``L = L' = 2`` (a cluster of two real
atoms around the base atom, :func:`moe_theory.near.mechanism.near_truth`), fitted by bounded least
squares (``|theta| <= 5``) from near-truth starts with restarts, under each gate:

* **fixed**: separation ``t`` in a grid (default 0.8, 0.4, 0.2); ``L_1`` and its parts against
  ``n`` next to the Fisher prediction ``C(t) / sqrt(n)``, and the smallest ``n`` from which the
  mean ``L_1`` stays consistent with it (95% CI of the ratio overlapping [0.7, 1.3]).
* **schedule**: ``t_n = t_0 (n / n_0)^-gamma`` (a local-minimax sequence of truths); the slope of
  ``L_1`` against ``n`` predicted from the Fisher curve (and from the exponent ``p`` of the
  mechanism table: ``gamma p / 2 - 1/2``) next to the measured slope with its CI.

Every replicate draws data and starts from its own ``SeedSequence`` keyed by
``(seed, "near-<kind>-<value>", n, replicate)``; both gates see the same data. ``near_fits.csv``
and ``near.json`` are byte-identical for the same seed whatever the backend, ``jobs`` or block
size; wall times go to ``near_timing.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from scipy import stats
from threadpoolctl import threadpool_limits

from moe_theory.cache import FitCache
from moe_theory.estimate import compiled_backend_available, fit_restarts, near_truth_starts
from moe_theory.gates import ACTIVATIONS, GATES, Gate
from moe_theory.model import EXPERTS, n_params, regression_and_jacobian
from moe_theory.near import mechanism as near
from moe_theory.rates.sweep import _run_on_dask, fit_outcome, l2_error
from moe_theory.settings import THETA_BOUND
from moe_theory.simulate import INIT_STREAM, replicate_seed, simulate
from moe_theory.varpro import GLOBAL_STREAM, SOLVERS, global_starts
from moe_theory.voronoi import voronoi_loss
from norga.choices import check_choice

KINDS: tuple[str, ...] = ("fixed", "schedule")
# Fisher criterion (spec 7 / the rate-inference issue): the 95% CI of mean L_1 / (C/sqrt(n))
# overlaps [0.7, 1.3].
RATIO_BAND = (0.7, 1.3)

NEAR_FIT_COLUMNS: tuple[str, ...] = (
    "kind", "t", "gamma", "gate", "activation", "expert", "split", "n", "replicate",
    "voronoi_loss", "voronoi_loss_r", "loss_mass", "loss_beta1", "loss_eta", "l2_error", "rss",
    "status", "converged", "at_bound", "n_iter", "gradient", "cell_sizes",
)

# NearConfig fields a fit block depends on (the rest select blocks or analyse them); with the
# block's kind, value, t, gate, n and replicates they key its cache entry.
NEAR_FIT_FIELDS: tuple[str, ...] = ("activation", "expert", "split", "t0", "schedule_n0", "seed",
                                    "restarts", "max_iter", "tol", "init_scale", "noise_sd",
                                    "solver", "global_starts")
# A cached row also holds its block's wall seconds (for near_timing.csv).
_CACHE_COLUMNS = (*NEAR_FIT_COLUMNS, "seconds")

# Sizes per preset of experiments/rates.py (the mechanism table is the same for every preset).
# ``full`` reaches n = 1e6 (13 n, 3 per decade) with R = 16 up to 1e5 and R = 8 above, and runs
# the schedules on n <= 1e5 only: one capped linear fit costs about 42 s of CPU at n = 1e6
# (2000 evaluations, 21 ms each), so at R = 16 with schedules the preset would need about
# 70 CPU-minutes; as defined it took 22.5 (measured, README section "Where linear gating is
# slow").
NEAR_PRESETS: dict[str, dict[str, object]] = {
    "quick": {"n_min": 100, "n_max": 10_000, "num_n": 7, "replicates": 8, "restarts": 1},
    "paper": {"n_min": 100, "n_max": 100_000, "num_n": 9, "replicates": 16, "restarts": 1},
    "full": {"n_min": 100, "n_max": 1_000_000, "num_n": 13, "replicates": 16, "restarts": 1,
             "reduced_above": 100_000, "reduced_replicates": 8, "schedule_n_max": 100_000},
}


@dataclass(frozen=True)
class NearConfig:
    """Everything that defines an E5 run (saved as ``near_config.json``).

    Attributes
    ----------
    gates, activation, expert, split:
        Gates fitted; sigma of NoRGa; prompt expert type; which expert coordinates the two
        true atoms split (``both``: ``a* +/- 0.5`` and ``b* +/- 0.5``).
    t_values:
        Separations of the fixed-``t`` truths.
    gammas, t0, schedule_n0:
        Schedules ``t_n = t0 (n / schedule_n0)^-gamma``, run at the ``n >= schedule_n0``.
    n_values, replicates, restarts, seed, max_iter, tol, init_scale:
        Sample sizes, fits per n (see ``reduced_above``), starts per fit, the one seed, fitter
        cap and tolerance, and the sd of the near-truth start noise. The cap is 2000 Jacobian
        evaluations (E1-E4: 400): near-degenerate linear fits need 500-2500 and, stopped at
        400, stay near their start, which makes L_1 look smaller than it is.
    noise_sd:
        Noise sd (default 0.001: at 0.1 the parametric regime of linear gating lies beyond
        n = 1e9 at t = 0.4, see near.json).
    eps:
        Target loss of the implied sample sizes ``n*``.
    bases:
        Base atoms of the mechanism table.
    block:
        Replicates per task (load balancing only).
    reduced_above, reduced_replicates:
        At every ``n > reduced_above`` only replicates ``0 .. reduced_replicates - 1`` are
        fitted (the first ones of the full count, so a larger run reuses them); None: all
        ``replicates`` at every n.
    schedule_n_max:
        Largest n of the schedules (None: every ``n >= schedule_n0`` of the grid).
    solver, global_starts:
        The fitter (``lm``, ``varpro``, ``auto``: :mod:`moe_theory.varpro`) and the global
        mode (``k > 0``: ``k`` starts spread over the gate box instead of near-truth starts).
    """

    gates: tuple[str, ...] = ("norga", "linear")
    activation: str = "tanh"
    expert: str = "affine"
    split: str = "both"
    t_values: tuple[float, ...] = (0.8, 0.4, 0.2)
    gammas: tuple[float, ...] = (0.1, 0.25)
    t0: float = 0.8
    schedule_n0: int = 1000
    n_values: tuple[int, ...] = (100, 215, 464, 1000, 2154, 4642, 10000)
    replicates: int = 8
    restarts: int = 1
    seed: int = 1
    max_iter: int = 2000
    tol: float = 1e-12
    init_scale: float = 0.1
    noise_sd: float = 0.001
    eps: float = 0.1
    bases: tuple[str, ...] = tuple(near.BASE_ATOMS)
    block: int = 4
    preset: str | None = None
    reduced_above: int | None = None
    reduced_replicates: int | None = None
    schedule_n_max: int | None = None
    solver: str = "lm"
    global_starts: int = 0

    def __post_init__(self) -> None:
        for g in self.gates:
            check_choice("gate", g, GATES)
        check_choice("solver", self.solver, SOLVERS)
        if self.solver == "varpro" and self.expert != "affine":
            raise ValueError("solver 'varpro' needs affine experts; use 'lm' or 'auto'")
        if self.global_starts < 0:
            raise ValueError(f"global_starts must be >= 0; got {self.global_starts}")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("expert", self.expert, EXPERTS)
        check_choice("split", self.split, near.SPLITS)
        for b in self.bases:
            check_choice("base atom", b, tuple(near.BASE_ATOMS))
        if not self.t_values or any(not 0 < t <= 1 for t in self.t_values):
            raise ValueError(f"t values must be in (0, 1]; got {list(self.t_values)}")
        if any(not 0 < g < 1 for g in self.gammas):
            raise ValueError(f"gamma values must be in (0, 1); got {list(self.gammas)}")
        if not self.n_values or min(self.n_values) < 2:
            raise ValueError(f"n values must be non-empty and >= 2; got {list(self.n_values)}")
        for name in ("replicates", "restarts", "max_iter", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        if not (self.noise_sd > 0 and self.eps > 0 and self.t0 > 0 and self.init_scale >= 0):
            raise ValueError("need noise_sd > 0, eps > 0, t0 > 0 and init_scale >= 0")
        if (self.reduced_above is None) != (self.reduced_replicates is None):
            raise ValueError("reduced_above and reduced_replicates go together; got "
                             f"{self.reduced_above} and {self.reduced_replicates}")
        if self.reduced_replicates is not None and not (
                1 <= self.reduced_replicates <= self.replicates):
            raise ValueError(f"reduced_replicates must be in 1..replicates={self.replicates}; "
                             f"got {self.reduced_replicates}")
        if self.gammas and len(self.schedule_values()) < 3:
            raise ValueError(
                f"the schedules need >= 3 values of n in [schedule_n0={self.schedule_n0}, "
                f"schedule_n_max={self.schedule_n_max}]; got n values {list(self.n_values)}"
            )

    def schedule_values(self) -> tuple[int, ...]:
        top = self.schedule_n_max
        return tuple(n for n in self.n_values
                     if n >= self.schedule_n0 and (top is None or n <= top))

    def replicates_at(self, n: int) -> int:
        """Fits per (kind, value, gate) at sample size ``n``."""
        if self.reduced_above is not None and n > self.reduced_above:
            return self.reduced_replicates  # type: ignore[return-value]
        return self.replicates

    def t_of(self, kind: str, value: float, n: int) -> float:
        """Separation of the truth of a (kind, value) group at sample size ``n``."""
        if kind == "fixed":
            return float(value)
        return float(self.t0 * (n / self.schedule_n0) ** (-value))

    def groups(self) -> list[tuple[str, float]]:
        return [("fixed", t) for t in self.t_values] + [("schedule", g) for g in self.gammas]

    def gate(self, name: str) -> Gate:
        return Gate(name, self.activation)  # type: ignore[arg-type]

    def truth(self, gate: str, t: float):
        return near.near_truth(t, self.gate(gate), self.expert,  # type: ignore[arg-type]
                               split=self.split)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "near", **asdict(self)}


def _stream(kind: str, value: float) -> str:
    return f"near-{kind}-{value:g}"


def _source_fingerprint() -> str:
    """Hash of this package's sources (and numpy/numba backend) for the fit cache."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # all of moe_theory, subpackages included
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(b"numba" if compiled_backend_available() else b"numpy")
    return digest.hexdigest()[:16]


def _scaled_gradient(X: np.ndarray, Y: np.ndarray, theta: np.ndarray, structure) -> np.ndarray:
    """MINPACK's gradient measure at the fitted points, max_k |J_k^T r| / (|J_k| |r|): how far
    from stationary a fit stopped (``gradient`` column; the ``status`` is the fitter's)."""
    out = np.empty(len(theta))
    for i in range(len(theta)):
        g, J = regression_and_jacobian(X[i], theta[i], structure)
        r = Y[i] - g
        col = np.sqrt(np.maximum((J * J).sum(axis=0), 1e-300))
        out[i] = np.max(np.abs(J.T @ r) / col) / np.sqrt(max(float(r @ r), 1e-300))
    return out


def near_fit_task(
    config: NearConfig, kind: str, value: float, gate: str, n: int,
    replicates: tuple[int, ...], fingerprint: str,
) -> tuple[list[dict[str, object]], float]:
    """Fit one block of replicates of one (kind, value, gate, n); rows and wall seconds."""
    del fingerprint  # keys the cache only
    start = time.perf_counter()
    t = config.t_of(kind, value, n)
    truth = config.truth(gate, t)
    structure = truth.with_theta(np.zeros(n_params(2, truth.dim)))
    stream = _stream(kind, value)
    with threadpool_limits(limits=1):
        X, Y = simulate(truth, n, list(replicates), seed=config.seed, setting=stream,
                        noise_sd=config.noise_sd)
        if config.global_starts:
            starts = np.stack([
                global_starts(2, truth.dim, config.global_starts, np.random.default_rng(
                    replicate_seed(config.seed, stream, n, rep, GLOBAL_STREAM)), THETA_BOUND)
                for rep in replicates
            ])
        else:
            starts = np.stack([
                near_truth_starts(
                    truth, 2, config.restarts,
                    np.random.default_rng(replicate_seed(config.seed, stream, n, rep,
                                                         INIT_STREAM)),
                    config.init_scale, THETA_BOUND,
                )
                for rep in replicates
            ])
        best = fit_restarts(X, Y, starts, structure, bound=THETA_BOUND,
                            max_iter=config.max_iter, tol=config.tol, solver=config.solver)
        grad = _scaled_gradient(X, Y, best.theta, structure)
        del X, Y
        losses = voronoi_loss(best.theta, truth.theta, truth.dim)
        l2 = l2_error(structure.with_theta(best.theta), truth)
    rows = []
    for i, rep in enumerate(replicates):
        rows.append({
            "kind": kind,
            "t": t,
            "gamma": float(value) if kind == "schedule" else 0.0,
            "gate": gate,
            "activation": config.gate(gate).activation_name,
            "expert": config.expert,
            "split": config.split,
            "n": int(n),
            "replicate": int(rep),
            **fit_outcome(best, losses, l2, i),
            "gradient": float(grad[i]),
        })
    return rows, time.perf_counter() - start


def plan_near_tasks(config: NearConfig) -> list[tuple[str, float, str, int, tuple[int, ...]]]:
    """Every (kind, value, gate, n, replicate block), largest n first."""
    def blocks(n: int) -> list[tuple[int, ...]]:
        reps = list(range(config.replicates_at(n)))
        return [tuple(reps[i : i + config.block]) for i in range(0, len(reps), config.block)]

    tasks = []
    for kind, value in config.groups():
        ns = config.n_values if kind == "fixed" else config.schedule_values()
        tasks += [(kind, value, g, n, b) for g in config.gates for n in ns for b in blocks(n)]
    return sorted(tasks, key=lambda task: -task[3])


def run_calls(
    calls: list, jobs: int, backend: str, scheduler: str | None,
    progress: Callable[..., Iterable] | None,
) -> list:
    """Run joblib ``delayed`` calls locally (loky) or on Dask; order of results is arbitrary."""
    if backend == "dask":
        return _run_on_dask(calls, jobs, scheduler, progress)
    if jobs == 1:
        results: Iterable = (f(*a, **k) for f, a, k in calls)
    else:
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(calls)
    if progress is not None:
        results = progress(results, total=len(calls))
    return list(results)


@dataclass
class NearResult:
    """Fits, timing and the mechanism table of an E5 run, with the analysis of near.json."""

    config: NearConfig
    records: list[dict[str, object]]
    mechanism: dict[str, object]
    timing: list[dict[str, object]] = field(default_factory=list)
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    def rows(self, kind: str, value: float, gate: str) -> list[dict[str, object]]:
        key = "t" if kind == "fixed" else "gamma"
        return [r for r in self.records if r["kind"] == kind and r["gate"] == gate
                and (r[key] == value)]

    def analyse(self) -> dict[str, object]:
        if "analysis" not in self._cache:
            self._cache["analysis"] = analyse_near(self)
        return self._cache["analysis"]  # type: ignore[return-value]

    def to_json(self) -> dict[str, object]:
        return {"kind": "near", "version": 1, "config": self.config.to_dict(),
                "mechanism": self.mechanism, **self.analyse()}

    def summary(self) -> str:
        from moe_theory.near.report import near_summary

        return near_summary(self)


def run_near(
    config: NearConfig,
    *,
    jobs: int = 1,
    cache_dir: str | Path | None = None,
    progress: Callable[..., Iterable] | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
) -> NearResult:
    """Run E5: the mechanism table and every fit of ``config``.

    Parameters are those of :func:`moe_theory.rates.sweep.run_rates`. The result is identical,
    bit for bit, for any backend, ``jobs`` or block size (wall times apart).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    check_choice("backend", backend, ("loky", "dask"))
    fingerprint = _source_fingerprint()
    cache = FitCache(cache_dir, _CACHE_COLUMNS, NEAR_FIT_FIELDS) if cache_dir is not None else None
    outputs: list[tuple[list[dict[str, object]], float]] = []
    todo = []
    for k, v, g, n, b in plan_near_tasks(config):
        inputs = _cache_inputs(cache, config, k, v, g, n, b, fingerprint) if cache else None
        cached = cache.load(inputs) if cache and inputs else None
        if cached is not None:
            outputs.append(_from_cache(cached))
        else:
            todo.append((inputs, delayed(near_fit_task)(config, k, v, g, n, b, fingerprint)))
    calls = [call for _, call in todo]
    if calls:
        wrap = progress
        if cache is not None:  # store each block as it finishes: an interrupted run keeps them
            blocks = [inputs for inputs, _ in todo]

            def wrap(results: Iterable, total: int) -> Iterable:
                stored = _stored(cache, results, blocks)
                return progress(stored, total=total) if progress else stored

        outputs += run_calls(calls, jobs, backend, scheduler, wrap)
    records = [row for rows, _ in outputs for row in rows]
    timing = sorted(
        ({"kind": rows[0]["kind"], "value": rows[0]["t"] if rows[0]["kind"] == "fixed"
          else rows[0]["gamma"], "gate": rows[0]["gate"], "n": rows[0]["n"],
          "first_replicate": rows[0]["replicate"], "fits": len(rows), "seconds": sec}
         for rows, sec in outputs),
        key=lambda r: (r["kind"], r["value"], r["gate"], r["n"], r["first_replicate"]),
    )
    records.sort(key=lambda r: (KINDS.index(r["kind"]), r["gamma"], -r["t"] if r["kind"] ==
                                "fixed" else 0.0, GATES.index(r["gate"]), r["n"],
                                r["replicate"]))
    mechanism = near.mechanism_report(noise_sd=config.noise_sd, eps=config.eps,
                                      bases=config.bases)
    return NearResult(config, records, mechanism, timing)


def _cache_inputs(cache: FitCache, config: NearConfig, kind: str, value: float, gate: str,
                  n: int, replicates: tuple[int, ...], fingerprint: str) -> dict[str, object]:
    return cache.key_inputs(config, _stream(kind, value), gate, n, replicates, fingerprint,
                            extra={"kind": kind, "value": float(value),
                                   "t": config.t_of(kind, value, n)})


def _block_key(kind: str, value: float, gate: str, n: int,
               replicates: Iterable[int]) -> tuple[object, ...]:
    return kind, float(value), gate, int(n), tuple(int(r) for r in replicates)


def _stored(cache: FitCache, outputs: Iterable, inputs: list[dict[str, object]]) -> Iterable:
    """Store each computed block as it arrives (in any order: matched by content)."""
    by_block = {_block_key(i["extra"]["kind"], i["extra"]["value"], i["gate"], i["n"],
                           i["replicates"]): i for i in inputs}
    for rows, seconds in outputs:
        first = rows[0]
        value = first["t"] if first["kind"] == "fixed" else first["gamma"]
        key = _block_key(first["kind"], value, first["gate"], first["n"],
                         (r["replicate"] for r in rows))
        cache.save(by_block[key], [{**row, "seconds": seconds} for row in rows])
        yield rows, seconds


def _from_cache(records: list[dict[str, object]]) -> tuple[list[dict[str, object]], float]:
    """A cached block as :func:`near_fit_task` returns it: rows and the block's wall seconds."""
    seconds = float(records[0]["seconds"])  # type: ignore[arg-type]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records], seconds


# ----------------------------------------------------------------------------- analysis


def _mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-interval."""
    m = float(np.mean(values))
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(
        len(values))
    return m, m - half, m + half


def slope_fit(n: np.ndarray, loss: np.ndarray) -> dict[str, object]:
    """Slope of log L_1 on log n with a 95% CI.

    Uses ``moe_theory.inference.fit_rate`` (the calibrated interval of the rate-inference work)
    when it exists, otherwise the cluster-robust OLS of :func:`moe_theory.inference.ols_slope`.
    """
    from moe_theory import inference

    fit_rate = getattr(inference, "fit_rate", None)
    if fit_rate is not None:
        res = fit_rate(np.asarray(n, float), np.asarray(loss, float))
        lo, hi = res.conf_int(0.05)
        return {"slope": float(res.slope), "ci": [float(lo), float(hi)],
                "method": "inference.fit_rate"}
    res = inference.ols_slope(np.asarray(n, float), np.asarray(loss, float))
    return {"slope": res.slope, "ci": list(res.ci),
            "method": "inference.ols_slope (cluster-robust by n; fit_rate not available)"}


def _status_counts(rows: list[dict[str, object]]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in ("converged", "capped", "stalled")}


def _per_n(rows: list[dict[str, object]], config: NearConfig, kind: str, value: float,
           gate: str, constants: dict[float, float]) -> list[dict[str, object]]:
    out = []
    for n in sorted({int(r["n"]) for r in rows}):
        sel = [r for r in rows if r["n"] == n]
        loss = np.array([r["voronoi_loss"] for r in sel])
        t = config.t_of(kind, value, n)
        pred = constants[round(t, 12)] / np.sqrt(n)
        mean, lo, hi = _mean_ci(loss)
        entry = {
            "n": n, "t": t, "mean": mean, "mean_ci": [lo, hi], "median": float(np.median(loss)),
            "predicted": float(pred), "ratio": mean / pred, "ratio_ci": [lo / pred, hi / pred],
            "consistent": bool(lo / pred <= RATIO_BAND[1] and hi / pred >= RATIO_BAND[0]),
            "l2_median": float(np.median([r["l2_error"] for r in sel])),
            **{f"{part}_mean": float(np.mean([r[f"loss_{part}"] for r in sel]))
               for part in ("mass", "beta1", "eta")},
            **_status_counts(sel),
        }
        out.append(entry)
    return out


def parametric_from(per_n: list[dict[str, object]]) -> int | None:
    """Smallest n from which every larger n is consistent with the Fisher prediction."""
    first = None
    for entry in reversed(per_n):
        if not entry["consistent"]:
            break
        first = entry["n"]
    return first


def _case_exponent(result: NearResult, gate: str) -> dict[str, object] | None:
    """Mechanism-table entry of the fitted cluster (default base, 2 atoms) under ``gate``."""
    cfg = result.config
    act = cfg.gate(gate).activation_name
    for case in result.mechanism["cases"]:  # type: ignore[union-attr]
        if (case["base"], case["size"], case["expert"], case["split"], case["gate"],
                case["activation"]) == ("default", 2, cfg.expert, cfg.split, gate, act):
            return case
    return None


def analyse_near(result: NearResult) -> dict[str, object]:
    """Per (kind, value, gate): losses vs n, Fisher predictions, regime, slopes, counts."""
    cfg = result.config
    fixed: dict[str, dict[str, object]] = {}
    schedule: dict[str, dict[str, object]] = {}
    for gate in cfg.gates:
        case = _case_exponent(result, gate)
        p1 = None
        if case is None and "default" in cfg.bases:
            case = near.analyse_case(
                near.CaseSpec("default", 2, cfg.expert, cfg.split, gate, cfg.activation),
                near.t_grid(), noise_sd=cfg.noise_sd, eps=cfg.eps)
        if case is not None and case["exponents"][0] is not None:
            p1 = case["exponents"][0]["p"]
        for kind, value in cfg.groups():
            rows = result.rows(kind, value, gate)
            if not rows:
                continue
            ts = sorted({round(float(r["t"]), 12) for r in rows})
            constants = {}
            for t in ts:
                fc = near.fisher_constant(cfg.truth(gate, t), cfg.noise_sd, seed=cfg.seed)
                constants[t] = fc["C"]
            per_n = _per_n(rows, cfg, kind, value, gate, constants)
            n = np.array([r["n"] for r in rows], float)
            loss = np.array([r["voronoi_loss"] for r in rows], float)
            entry: dict[str, object] = {
                "gate": gate, "activation": cfg.gate(gate).activation_name,
                "per_n": per_n, "slope": slope_fit(n, loss), **_status_counts(rows),
                "fits": len(rows), "at_bound": sum(bool(r["at_bound"]) for r in rows),
            }
            if kind == "fixed":
                entry["C"] = constants[round(value, 12)]
                entry["lambda_min"] = float(near.fisher_eigenvalues(cfg.truth(gate, value))[0])
                entry["parametric_from"] = parametric_from(per_n)
                fixed.setdefault(f"{value:g}", {})[gate] = entry
            else:
                ns = np.array([e["n"] for e in per_n], float)
                pred = np.array([e["predicted"] for e in per_n])
                entry["predicted_slope_fisher"] = float(np.polyfit(np.log(ns), np.log(pred),
                                                                   1)[0])
                entry["exponent_p1"] = p1
                entry["predicted_slope_asymptotic"] = (
                    None if p1 is None else float(value * p1 / 2 - 0.5))
                entry["t_range"] = [per_n[0]["t"], per_n[-1]["t"]]
                lo, hi = entry["slope"]["ci"]  # type: ignore[index]
                entry["prediction_in_ci"] = bool(lo <= entry["predicted_slope_fisher"] <= hi)
                entry["parametric_all_n"] = all(e["consistent"] for e in per_n)
                schedule.setdefault(f"{value:g}", {})[gate] = entry
    counts = _status_counts(result.records)
    return {"fixed": fixed, "schedule": schedule, "status_counts": counts,
            "criterion": (
                f"parametric at n: the 95% t-interval of mean L_1 / (C(t)/sqrt(n)) overlaps "
                f"[{RATIO_BAND[0]}, {RATIO_BAND[1]}]; 'from n' = every larger n of the grid too"),
            "init": "near-truth (oracle starts; measures the statistical rate, not "
                    "optimisation)"}


# ----------------------------------------------------------------------------- files


def _dumps(data: object) -> str:
    from moe_theory.io import dumps_json

    return dumps_json(data)


def near_fits_csv(records: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(NEAR_FIT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in records:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def timing_csv(timing: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    cols = ["kind", "value", "gate", "n", "first_replicate", "fits", "seconds"]
    writer = csv.DictWriter(buffer, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in timing:
        writer.writerow(row)
    return buffer.getvalue()


def check_near_out(out: Path, config: NearConfig) -> str | None:
    """Why ``out`` may not receive this E5 run (another E5 configuration there), or None."""
    path = Path(out) / "near_config.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{out} holds an unreadable near_config.json"
    if old != json.loads(_dumps(config.to_dict())):
        return f"{out} holds a different E5 (near) run"
    return None


def write_near(result: NearResult, out: str | Path) -> list[Path]:
    """Write near_config.json, near_fits.csv, near.json, near_timing.csv and summary_near.txt.

    Each file is written to a temporary sibling and renamed into place
    (:func:`moe_theory.io.atomic_write_text`), so none is ever half-written.
    """
    from moe_theory.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "near_config.json": _dumps(result.config.to_dict()),
        "near_fits.csv": near_fits_csv(result.records),
        "near.json": _dumps(result.to_json()),
        "near_timing.csv": timing_csv(result.timing),
        "summary_near.txt": result.summary() + "\n",
    }
    return [atomic_write_text(out / name, text) for name, text in texts.items()]
