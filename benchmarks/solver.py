"""Full Levenberg-Marquardt vs variable projection on the same data and starts, in one run.

For each case (experiment, gate, n) the script draws the replicates' data sets and near-truth
starts exactly as the sweeps do (``moe_theory.rates.sweep.fit_task`` for E1/E2, restart 0;
``moe_theory.near.sweep.near_fit_task`` for E5), fits them with ``solver="lm"`` and with
``solver="varpro"`` (one thread, numba backend, after a warm-up; the two interleaved so that
background load hits both alike) and records per solver: CPU seconds of the process
(``time.process_time``: on a loaded machine wall time mostly measures the other processes; the
wall seconds are kept too), fits per core-second,
the count of capped and stalled fits, and, per replicate, how the RSS of the two compare.

Sweep totals are **extrapolated**, not measured: the seconds per fit at the measured n are
interpolated (log-log, linear) over the preset's n grid and multiplied by the preset's
replicates and restarts (E1-E4 ``full``: 20 n from 1e2 to 1e5, 40 replicates, 3 restarts,
both gates; E3 is the same for both solvers, as tanh experts keep the full LM, and is added
from its own measurement). Wall time on two cores is the CPU total divided by two.

Examples
--------
    python benchmarks/solver.py                       # the default cases (a few minutes)
    python benchmarks/solver.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from moe_theory.estimate import fit_restarts, near_truth_starts
from moe_theory.model import n_params
from moe_theory.near.sweep import NearConfig
from moe_theory.rates.config import PRESETS, n_grid
from moe_theory.settings import THETA_BOUND, get_setting
from moe_theory.simulate import INIT_STREAM, replicate_seed, simulate

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("lm", "varpro", "auto")
RSS_SAME = 1e-8  # relative RSS difference below which two fits count as the same optimum


def rates_problem(setting: str, gate: str, n: int, R: int, seed: int):
    """Data, starts ``(R, 1, P)``, structure, bound and cap of an E1-E3 block (restart 0)."""
    base = get_setting(setting)
    truth = base.truth(gate, "tanh")
    structure = truth.with_theta(np.zeros(n_params(base.n_fitted, truth.dim)))
    bound = THETA_BOUND if base.bounded else None
    X, Y = simulate(truth, n, list(range(R)), seed=seed, setting=setting, noise_sd=0.1)
    starts = np.stack([
        near_truth_starts(truth, base.n_fitted, 1,
                          np.random.default_rng(replicate_seed(seed, setting, n, r, INIT_STREAM)),
                          0.1, bound)
        for r in range(R)
    ])
    return X, Y, starts, structure, bound, 400


def near_problem(t: float, gate: str, n: int, R: int, seed: int):
    """Data, starts, structure, bound and cap of an E5 fixed-t block (``NearConfig`` defaults)."""
    config = NearConfig(seed=seed)
    truth = config.truth(gate, t)
    structure = truth.with_theta(np.zeros(n_params(2, truth.dim)))
    stream = f"near-fixed-{t:g}"
    X, Y = simulate(truth, n, list(range(R)), seed=seed, setting=stream,
                    noise_sd=config.noise_sd)
    starts = np.stack([
        near_truth_starts(truth, 2, 1,
                          np.random.default_rng(replicate_seed(seed, stream, n, r, INIT_STREAM)),
                          config.init_scale, THETA_BOUND)
        for r in range(R)
    ])
    return X, Y, starts, structure, THETA_BOUND, config.max_iter


def run_case(name: str, problem, repeats: int) -> dict[str, object]:
    X, Y, starts, structure, bound, cap = problem
    R, n = X.shape[:2]
    times: dict[str, list[float]] = {s: [] for s in SOLVERS}  # CPU seconds of this process
    walls: dict[str, list[float]] = {s: [] for s in SOLVERS}
    results = {}
    with threadpool_limits(limits=1):
        for s in SOLVERS:  # warm-up (compiles, caches nothing of the fit)
            fit_restarts(X[:1], Y[:1], starts[:1], structure, bound=bound, max_iter=3, solver=s)
        for _ in range(repeats):
            for s in SOLVERS:
                t0, c0 = time.perf_counter(), time.process_time()
                results[s] = fit_restarts(X, Y, starts, structure, bound=bound, max_iter=cap,
                                          solver=s, backend="numba")
                times[s].append(time.process_time() - c0)
                walls[s].append(time.perf_counter() - t0)
    out: dict[str, object] = {"case": name, "n": int(n), "replicates": int(R), "cap": cap}
    for s in SOLVERS:
        res = results[s]
        sec = float(np.median(times[s]))
        out[s] = {
            "seconds": sec,
            "wall_seconds": float(np.median(walls[s])),
            "seconds_per_fit": sec / R,
            "fits_per_core_second": R / sec,
            "capped": int(np.sum(res.status == "capped")),
            "stalled": int(np.sum(res.status == "stalled")),
            "at_bound": int(np.sum(res.at_bound)),
            "mean_evaluations": float(np.mean(res.n_iter)),
        }
    for s in SOLVERS[1:]:
        rel = (results[s].rss - results["lm"].rss) / results["lm"].rss
        out[f"rss_{s}_vs_lm"] = {
            "lower": int(np.sum(rel < -RSS_SAME)),
            "same": int(np.sum(np.abs(rel) <= RSS_SAME)),
            "higher": int(np.sum(rel > RSS_SAME)),
            "max_rel_diff": float(np.max(np.abs(rel))),
        }
        out[f"speedup_{s}"] = out["lm"]["seconds"] / out[s]["seconds"]  # type: ignore[index]
    line = f"{name:16s} n={n:>7d} R={R:>3d}"
    for s in SOLVERS:
        line += f" | {s} {out[s]['seconds']:6.2f}s capped {out[s]['capped']:>2d}"  # type: ignore
        if s != "lm":
            cmp = out[f"rss_{s}_vs_lm"]
            line += (f" x{out[f'speedup_{s}']:.2f} rss -/=/+ {cmp['lower']}/{cmp['same']}/"  # type: ignore
                     f"{cmp['higher']}")  # type: ignore[index]
    print(line, flush=True)
    return out


def extrapolate(cases: list[dict[str, object]], prefix: str, solver: str,
                grid: tuple[int, ...]) -> float:
    """CPU seconds of one gate over ``grid``, per replicate and restart, from the measured
    seconds per fit (log-log interpolation, constant slope beyond the ends)."""
    pts = sorted((c["n"], c[solver]["seconds_per_fit"]) for c in cases  # type: ignore[index]
                 if str(c["case"]).startswith(prefix))
    ln = np.log([p[0] for p in pts])
    lt = np.log([p[1] for p in pts])
    if len(pts) == 1:
        return float(pts[0][1] * len(grid))
    slope_lo = (lt[1] - lt[0]) / (ln[1] - ln[0])
    slope_hi = (lt[-1] - lt[-2]) / (ln[-1] - ln[-2])
    total = 0.0
    for n in np.log(grid):
        if n < ln[0]:
            v = lt[0] + slope_lo * (n - ln[0])
        elif n > ln[-1]:
            v = lt[-1] + slope_hi * (n - ln[-1])
        else:
            v = np.interp(n, ln, lt)
        total += float(np.exp(v))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "solver.json"))
    args = p.parse_args(argv)
    load = os.getloadavg()
    cases = []
    e1 = [(1000, 40)]
    e2 = [(100, 40), (1000, 40), (10_000, 16), (100_000, 8)]
    e5 = [(0.8, 10_000, 8), (0.4, 10_000, 8), (0.2, 10_000, 8), (0.2, 100_000, 4)]
    if args.quick:
        e2, e5 = [(100, 8), (1000, 8)], [(0.2, 1000, 4)]
    for gate in ("norga", "linear"):
        for n, R in e1:
            cases.append(run_case(f"E1-{gate}", rates_problem("exact", gate, n, R, args.seed),
                                  max(args.repeats, 3)))
        for n, R in e2:
            cases.append(run_case(f"E2-{gate}", rates_problem("over", gate, n, R, args.seed),
                                  args.repeats))
        for t, n, R in e5:
            cases.append(run_case(f"E5-t{t:g}-{gate}", near_problem(t, gate, n, R, args.seed),
                                  args.repeats))
    full = PRESETS["full"]
    grid = n_grid(int(full["n_min"]), int(full["n_max"]), int(full["num_n"]))  # type: ignore
    per = int(full["replicates"]) * int(full["restarts"])  # type: ignore[call-overload]
    e2_cpu = {s: sum(extrapolate(cases, f"E2-{g}", s, grid) for g in ("norga", "linear")) * per
              for s in SOLVERS}
    payload = {
        "benchmark": "solver",
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": os.cpu_count(), "loadavg_at_start": load,
                    "loadavg_at_end": os.getloadavg()},
        "rss_same_rtol": RSS_SAME,
        "cases": cases,
        "extrapolated": {
            "E2_full_cpu_seconds": e2_cpu,
            "E2_full_wall_seconds_two_cores": {s: v / 2 for s, v in e2_cpu.items()},
            "note": "E2 part of the E1-E4 full preset, extrapolated from the measured seconds "
                    "per fit (log-log interpolation over the 20-n grid x 40 replicates x 3 "
                    "restarts x 2 gates); E1 and E3 run the full LM under both settings",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload["extrapolated"], indent=1))
    print(f"load average at start {load}, at end {os.getloadavg()}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
