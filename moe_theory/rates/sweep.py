"""The rate sweep: fits over n x replicates, and :class:`RateResult`
(docs/theory-background.md#simulation-design).

This module runs the sweep; the configuration lives in :mod:`moe_theory.rates.config`, the
analysis in :mod:`moe_theory.rates.analysis` and the report in :mod:`moe_theory.rates.report`.
Every public name of those is importable from here.

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_limits

from moe_theory.cache import FitCache
from moe_theory.estimate import (
    ConvergenceWarning,
    FitResult,
    compiled_backend_available,
    fit_restarts,
    near_truth_starts,
)
from moe_theory.fit_record import FitRecord, check_row
from moe_theory.gates import GATES, Gate, GateKind
from moe_theory.inference import RateFit
from moe_theory.mechanism import fisher_prediction, flat_manifold_example, pde_residual
from moe_theory.model import EXPERTS, PrefixMoE, n_params, regression
from moe_theory.rates.analysis import (
    FisherCheck,
    GroupAnalysis,
    NoRateError,
    PerNStats,
    analyse_group,
    rate_verdict,
)
from moe_theory.rates.config import (
    EXPECTED_SLOPE,
    FISHER_BAND,
    FIT_COLUMNS,
    PRESETS,
    RECORD_KEYS,
    TIMING_COLUMNS,
    RateConfig,
    n_grid,
)
from moe_theory.rates.report import summary_dict, summary_text
from moe_theory.settings import SETTINGS, THETA_BOUND, get_setting
from moe_theory.simulate import INIT_STREAM, integration_points, replicate_seed, simulate
from moe_theory.varpro import GLOBAL_STREAM, global_starts
from moe_theory.voronoi import VoronoiLoss, voronoi_loss
from norga.choices import check_choice

# The public names of the sweep, wherever they are defined (configuration: rates_config,
# analysis: rates_analysis, report text: rates_report, execution: here).
__all__ = [
    "BACKENDS",
    "DASK_CONNECT_TIMEOUT",
    "EXPECTED_SLOPE",
    "FISHER_BAND",
    "FIT_COLUMNS",
    "PRESETS",
    "RECORD_KEYS",
    "TIMING_COLUMNS",
    "FisherCheck",
    "FitRecord",
    "GroupAnalysis",
    "PerNStats",
    "RateConfig",
    "RateResult",
    "SchedulerUnreachableError",
    "analyse_group",
    "connect_dask",
    "exit_with_parent",
    "fit_outcome",
    "fit_task",
    "l2_error",
    "mechanism_report",
    "n_grid",
    "plan_tasks",
    "rate_verdict",
    "run_rates",
    "summary_dict",
    "summary_text",
]

log = logging.getLogger(__name__)

def _source_fingerprint() -> str:
    """Hash of this package's sources and of whether numba is there.

    Cached fits are invalidated when the code changes, and fits from the numpy and the compiled
    backend (equal up to rounding, which can move capped over-specified fits) are never mixed.
    """
    digest = hashlib.sha256()
    digest.update(repr(sorted(RECORD_KEYS)).encode())  # the record schema, explicitly
    package = Path(__file__).resolve().parents[1]  # all of moe_theory, subpackages included
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
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


def fit_starts(config: RateConfig, setting: str, n: int, replicates: tuple[int, ...],
               truth: PrefixMoE, n_fitted: int, bound: float | None) -> np.ndarray:
    """Starting points ``(R, starts, P)`` of one block: ``config.restarts`` near-truth starts,
    or in global mode ``config.global_starts`` starts spread over the gate box (their own
    seed stream, :data:`GLOBAL_STREAM`)."""
    if config.global_starts:
        return np.stack([
            global_starts(n_fitted, truth.dim, config.global_starts,
                          np.random.default_rng(replicate_seed(config.seed, setting, n, rep,
                                                               GLOBAL_STREAM)),
                          THETA_BOUND)
            for rep in replicates
        ])
    return np.stack([
        near_truth_starts(
            truth, n_fitted, config.restarts,
            np.random.default_rng(replicate_seed(config.seed, setting, n, rep, INIT_STREAM)),
            config.init_scale, bound,
        )
        for rep in replicates
    ])


def fit_task(
    config: RateConfig,
    setting: str,
    gate: GateKind,
    n: int,
    replicates: tuple[int, ...],
    fingerprint: str,
) -> list[FitRecord]:
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
        starts = fit_starts(config, setting, n, replicates, truth, base.n_fitted, bound)
        best = fit_restarts(X, Y, starts, structure, bound=bound, max_iter=config.max_iter,
                            tol=config.tol, solver=config.solver)
        del X, Y
        losses = voronoi_loss(best.theta, truth.theta, truth.dim, r=config.r)
        l2 = l2_error(structure.with_theta(best.theta), truth)
    seconds = (time.perf_counter() - start) / len(replicates)
    gate_obj = Gate(gate, config.activation)
    return [
        FitRecord(
            setting=setting,
            gate=gate,
            activation=gate_obj.activation_name,
            expert=truth.expert,
            n=int(n),
            replicate=int(rep),
            **fit_outcome(best, losses, l2, i),  # type: ignore[arg-type]
            seconds=float(seconds),
            restarts=config.global_starts or config.restarts,
        )
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


@dataclass
class RateResult:
    """Records of a sweep plus its E4 report, with the rate inference of
    docs/theory-background.md#rate-inference.

    Attributes
    ----------
    config:
        The sweep's :class:`RateConfig`.
    records:
        One :class:`~moe_theory.fit_record.FitRecord` per fit.
    mechanism:
        E4 report (``None`` when ``mechanism`` was not requested).

    The analysis is computed on first use and kept (:attr:`analysis`); ``records`` are not
    meant to change afterwards.
    """

    config: RateConfig
    records: list[FitRecord]
    mechanism: dict[str, object] | None = None

    def groups(self) -> list[tuple[str, GateKind]]:
        """The (setting, gate) pairs present, in config order."""
        present = {(r.setting, r.gate) for r in self.records}
        return [
            (s, g) for s in self.config.fit_settings for g in self.config.gates if (s, g) in present
        ]

    def rows(self, setting: str, gate: GateKind) -> list[FitRecord]:
        return [r for r in self.records if r.setting == setting and r.gate == gate]

    @functools.cached_property
    def _analysed(self) -> tuple[dict[tuple[str, GateKind], GroupAnalysis], dict[str, str]]:
        done: dict[tuple[str, GateKind], GroupAnalysis] = {}
        no_rate: dict[str, str] = {}
        for s, g in self.groups():
            try:
                done[(s, g)] = analyse_group(self.config, self.rows(s, g))
            except NoRateError as exc:  # the fits stay in fits.csv; the others are analysed
                no_rate[f"{s}/{g}"] = str(exc)
        return done, no_rate

    @property
    def analysis(self) -> dict[tuple[str, GateKind], GroupAnalysis]:
        """:class:`GroupAnalysis` per (setting, gate) of :meth:`groups` (computed once); a pair
        with too few usable fits for a slope is left out and named in :attr:`no_rate`."""
        return self._analysed[0]

    @property
    def no_rate(self) -> dict[str, str]:
        """``"setting/gate"`` -> why no slope could be fitted (too few usable fits)."""
        return self._analysed[1]

    def group(self, setting: str, gate: GateKind) -> GroupAnalysis:
        """The analysis of one (setting, gate); ``KeyError`` naming the pairs present."""
        try:
            return self.analysis[(setting, gate)]
        except KeyError:
            raise KeyError(
                f"no fits of setting {setting!r} with gate {gate!r}; present: {self.groups()}"
            ) from None

    def rate_fit(self, setting: str, gate: GateKind) -> RateFit:
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
        summary = summary_dict(self.analysis.values())
        if self.no_rate:  # (absent when empty: clean sweeps keep their summary.json)
            summary["no_rate"] = dict(self.no_rate)
        return summary

    def summary(self) -> str:
        """Readable report: per setting the theorem, the slopes with CIs, the verdict."""
        text = summary_text(self.config, self.analysis.values(), self.mechanism)
        for why in self.no_rate.values():
            text += f"\nno slope for {why} (its fits are in fits.csv)"
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


def execute_calls(calls: list, *, jobs: int = 1, backend: str = "loky",
                  scheduler: str | None = None) -> Iterable:
    """Run joblib ``delayed`` calls on an execution backend; the E1-E4 and E5 sweeps both use it.

    Parameters
    ----------
    calls:
        ``(function, args, kwargs)`` triples as :func:`joblib.delayed` makes them.
    jobs:
        Worker processes: loky workers for ``backend="loky"`` (one call runs in this process
        when ``jobs == 1`` or there is at most one call), or the workers of the local Dask
        cluster started when ``backend="dask"`` and no ``scheduler`` is given.
    backend:
        ``"loky"`` (local processes, each ended once this process is gone) or ``"dask"``.
    scheduler:
        Address of a running Dask scheduler; ``None`` starts a local cluster.

    Returns
    -------
    Iterable
        The results, in the order they finish (not the order of ``calls``). With Dask the
        scheduler is reached before this returns, so an unreachable one fails before any work;
        the client (and a local cluster) is closed once the results are consumed.
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "dask":
        return _iter_on_dask(calls, *connect_dask(scheduler, jobs))
    if jobs == 1 or len(calls) <= 1:
        return (f(*a, **k) for f, a, k in calls)
    with parallel_config(backend="loky", initializer=exit_with_parent, initargs=(os.getpid(),)):
        return Parallel(n_jobs=min(jobs, len(calls)), return_as="generator_unordered")(calls)


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
        Folder of the checksummed JSON fit cache (:class:`moe_theory.cache.FitCache`);
        ``None`` disables caching. With a remote Dask cluster the cache lives on each worker's
        file system.
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
    check_choice("backend", backend, BACKENDS)
    fingerprint = _source_fingerprint()
    tasks = plan_tasks(config)
    cache = (FitCache(cache_dir, tuple(sorted(RECORD_KEYS)), check=check_row)
             if cache_dir is not None else None)
    blocks: list[list[FitRecord]] = []
    todo = []
    for s, g, n, b in tasks:
        inputs = cache.key_inputs(config, s, g, n, b, fingerprint) if cache else None
        cached = cache.load(inputs) if cache and inputs else None
        if cached is not None:
            blocks.append([FitRecord.from_row(row) for row in cached])
        else:
            todo.append((inputs, delayed(fit_task)(config, s, g, n, b, fingerprint)))
    calls = [call for _, call in todo]
    results = execute_calls(calls, jobs=jobs, backend=backend, scheduler=scheduler)
    if cache is not None:
        results = _stored(results, cache, [inputs for inputs, _ in todo])
    if progress is not None:
        results = progress(results, total=len(calls))
    blocks += list(results)
    records = [row for block in blocks for row in block]
    order = {s: i for i, s in enumerate(SETTINGS)}
    records.sort(
        key=lambda r: (order[r.setting], GATES.index(r.gate), r.n, r.replicate)
    )
    _warn_unconverged(records)
    mechanism = mechanism_report(config) if "mechanism" in config.settings else None
    return RateResult(config=config, records=records, mechanism=mechanism)


def _warn_unconverged(records: list[FitRecord]) -> None:
    """One :class:`ConvergenceWarning` naming every (setting, gate, n) with capped/stalled fits."""
    groups: dict[tuple[str, str, int], dict[str, int]] = {}
    for r in records:
        if r.status != "converged":
            counts = groups.setdefault((r.setting, r.gate, r.n), {})
            counts[r.status] = counts.get(r.status, 0) + 1
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
        key = (first.setting, first.gate, first.n, tuple(r.replicate for r in block))
        cache.save(by_block[key], [r.to_row() for r in block])
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
