"""E5 fits: near-coincident true prompts at fixed separation and on a shrinking schedule.

This module runs the fits and caches them; the configuration lives in
:mod:`moe_theory.near.config`, the result in :mod:`moe_theory.near.result`, the analysis in
:mod:`moe_theory.near.analysis` and the files in :mod:`moe_theory.near.output`.

Two kinds of truth, both ``L = L' = 2`` (a cluster of two real
atoms around the base atom, :func:`moe_theory.near.mechanism.near_truth`), fitted by bounded least
squares (``|theta| <= 5``) from near-truth starts with restarts, under each gate:

* **fixed**: separation ``t`` in a grid (default 0.8, 0.4, 0.2); ``L_1`` and its parts against
  ``n`` next to the Fisher prediction ``C(t) / sqrt(n)``, with the regime diagnostics and the
  verdict of :mod:`moe_theory.near.analysis`.
* **schedule**: ``t_n = t_0 (n / n_0)^-gamma`` (a local-minimax sequence of truths); the slope of
  ``L_1`` against ``n`` predicted from the Fisher curve (and from the exponent ``p`` of the
  mechanism table: ``gamma p / 2 - 1/2``) next to the measured slope with its CI, compared only
  where the first-order expansion holds along the schedule.

Every replicate draws data and starts from its own ``SeedSequence`` keyed by
``(seed, "near-<kind>-<value>", n, replicate)``; both gates see the same data. ``near_fits.csv``
and ``near.json`` are byte-identical for the same seed whatever the backend, ``jobs`` or block
size; wall times go to ``near_timing.csv``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from joblib import delayed
from threadpoolctl import threadpool_limits

from moe_theory.cache import FitCache
from moe_theory.estimate import compiled_backend_available, fit_restarts, near_truth_starts
from moe_theory.gates import GATES, GateKind
from moe_theory.model import n_params, regression_and_jacobian
from moe_theory.near import mechanism as near
from moe_theory.near.config import KINDS, NEAR_FIT_COLUMNS, NEAR_FIT_FIELDS, NearConfig
from moe_theory.near.result import NearResult
from moe_theory.rates.sweep import BACKENDS, execute_calls, fit_outcome, l2_error
from moe_theory.settings import THETA_BOUND
from moe_theory.simulate import INIT_STREAM, replicate_seed, simulate
from moe_theory.varpro import GLOBAL_STREAM, global_starts
from moe_theory.voronoi import voronoi_loss
from norga.choices import check_choice

# A cached row also holds its block's wall seconds (for near_timing.csv).
_CACHE_COLUMNS = (*NEAR_FIT_COLUMNS, "seconds")


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
    config: NearConfig, kind: str, value: float, gate: GateKind, n: int,
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


def plan_near_tasks(config: NearConfig
                    ) -> list[tuple[str, float, GateKind, int, tuple[int, ...]]]:
    """Every (kind, value, gate, n, replicate block), largest n first."""
    def blocks(n: int) -> list[tuple[int, ...]]:
        reps = list(range(config.replicates_at(n)))
        return [tuple(reps[i : i + config.block]) for i in range(0, len(reps), config.block)]

    tasks = []
    for kind, value in config.groups():
        ns = config.n_values if kind == "fixed" else config.schedule_values()
        tasks += [(kind, value, g, n, b) for g in config.gates for n in ns for b in blocks(n)]
    return sorted(tasks, key=lambda task: -task[3])


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
    check_choice("backend", backend, BACKENDS)
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

        results: Iterable = execute_calls(calls, jobs=jobs, backend=backend,
                                          scheduler=scheduler)
        outputs += list(wrap(results, total=len(calls)) if wrap else results)
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


def _cache_inputs(cache: FitCache, config: NearConfig, kind: str, value: float, gate: GateKind,
                  n: int, replicates: tuple[int, ...], fingerprint: str) -> dict[str, object]:
    return cache.key_inputs(config, _stream(kind, value), gate, n, replicates, fingerprint,
                            extra={"kind": kind, "value": float(value),
                                   "t": config.t_of(kind, value, n)})


def _block_key(kind: str, value: float, gate: GateKind, n: int,
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
