"""Whole-sweep wall time and the peak memory of one large task.

Three measurements, each in a fresh subprocess (so one cannot warm or bloat another):

* ``quick``: the default command ``experiments/rates.py --gate norga`` (quick preset: E1 with
  both gates + E4, 7 values of n in 1e2..1e5, R = 12), with ``--no-cache`` and a temporary
  ``--out``; wall time of the whole process, figures included.
* ``paper`` and ``full``: the presets of ``moe_theory.rates.sweep.PRESETS`` (at the time of writing
  ``paper`` = E1 + E4 and ``full`` = E1-E4, both with 20 values of n in 1e2..1e5, R = 40,
  3 restarts, both gates), through ``run_rates`` with ``--jobs`` workers and no cache.
  ``--paper-replicates`` / ``--full-replicates`` below 40 run a documented fraction: every task
  is the same as in the whole run (same seeds; block = 6 replicates), only fewer blocks run, and
  the whole-preset time is extrapolated as measured x 40 / replicates. The time per (setting,
  gate) and per n, the iteration counts and the capped fits show where the time goes.
* ``memory``: one task at n = 1e6 with R = 40 replicates in one block (E1, NoRGa, 1 restart),
  peak resident memory from ``resource.getrusage`` (``ru_maxrss``) of that process.

Examples
--------
    python benchmarks/sweep.py                        # all three
    python benchmarks/sweep.py --only quick memory
    python benchmarks/sweep.py --only full --full-replicates 40  # all of E1-E4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from estimator import machine  # sibling script (this folder is first on the import path)

ROOT = Path(__file__).resolve().parents[1]

PYTHON = sys.executable
GIB = 2.0**30

# Runs in a child process: a preset (or a fraction of it) through run_rates.
PAPER_CHILD = """
import json, sys, time
from moe_theory.rates.sweep import PRESETS, RateConfig, n_grid, run_rates
p = PRESETS[sys.argv[4]]
reps, jobs = int(sys.argv[1]), int(sys.argv[2])
config = RateConfig(settings=p["settings"], gates=("norga", "linear"),
                    n_values=n_grid(p["n_min"], p["n_max"], p["num_n"]), replicates=reps,
                    restarts=p["restarts"], preset=sys.argv[4])
t0 = time.perf_counter()
res = run_rates(config, jobs=jobs, cache_dir=None)
wall = time.perf_counter() - t0
json.dump({"wall": wall, "records": [r.to_row() for r in res.records]}, open(sys.argv[3], "w"))
"""

# Runs in a child process: one task at large n; peak RSS of the process.
MEMORY_CHILD = """
import json, resource, sys, time
from moe_theory.rates.sweep import RateConfig, fit_task
n, reps = int(sys.argv[1]), int(sys.argv[2])
# a valid sweep needs 3 n for its slope fit; only the task at n runs here
config = RateConfig(settings=("exact",), gates=("norga",), n_values=(n, n + 1, n + 2),
                    replicates=reps, block=reps)
t0 = time.perf_counter()
rows = fit_task(config, "exact", "norga", n, tuple(range(reps)), "bench")
wall = time.perf_counter() - t0
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
json.dump({"wall": wall, "peak_rss_bytes": peak_kib * 1024,
           "n_iter": [r.n_iter for r in rows],
           "converged": sum(r.converged for r in rows)}, open(sys.argv[3], "w"))
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    return env


def run_quick(jobs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            PYTHON,
            str(ROOT / "experiments" / "rates.py"),
            "--gate",
            "norga",
            "--no-cache",
            "--jobs",
            str(jobs),
            "--out",
            str(Path(tmp) / "quick"),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"quick preset failed:\n{proc.stderr[-2000:]}")
    return {
        "command": "python experiments/rates.py --gate norga --no-cache --jobs "
        f"{jobs} --out <tmp>",
        "wall_seconds": wall,
        "target_seconds": 120.0,
        "meets_target": wall < 120.0,
    }


def _group(records: list[dict], key) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in records:
        k = key(r)
        e = out.setdefault(k, {"fits": 0, "cpu_seconds": 0.0, "capped": 0, "n_iter_sum": 0})
        e["fits"] += 1
        e["cpu_seconds"] += r["seconds"]  # block wall time / block size, per fit
        e["capped"] += int(not r["converged"])
        e["n_iter_sum"] += r["n_iter"]
    for e in out.values():
        e["mean_n_iter_best_restart"] = e.pop("n_iter_sum") / e["fits"]
    return out


def run_preset(preset: str, jobs: int, replicates: int) -> dict[str, object]:
    from moe_theory.rates.sweep import PRESETS

    spec = PRESETS[preset]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paper.json"
        cmd = [PYTHON, "-c", PAPER_CHILD, str(replicates), str(jobs), str(path), preset]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=child_env(), check=True)
        wall = time.perf_counter() - t0
        data = json.loads(path.read_text())
    records = data["records"]
    total_reps = int(spec["replicates"])
    scale = total_reps / replicates
    by_group = _group(records, lambda r: f"{r['setting']}/{r['gate']}")
    by_n = _group(records, lambda r: str(r["n"]))
    total_cpu = sum(e["cpu_seconds"] for e in by_group.values())
    for e in (*by_group.values(), *by_n.values()):
        e["share_of_fit_time"] = e["cpu_seconds"] / total_cpu
    estimate = wall * scale
    return {
        "what_ran": f"preset {preset!r} (settings {list(spec['settings'])}, {spec['num_n']} n in "
        f"{spec['n_min']}..{spec['n_max']}, {spec['restarts']} restarts, both gates) with "
        f"replicates 0..{replicates - 1} of {total_reps} (block = 6: every task is the same as "
        "in the full run)",
        "settings": list(spec["settings"]),
        "jobs": jobs,
        "wall_seconds_measured": wall,
        "sweep_seconds_in_process": data["wall"],
        "fraction_of_full_sweep": replicates / total_reps,
        "full_sweep_seconds_extrapolated": estimate,
        "target_seconds": 1200.0,
        "meets_target_extrapolated": estimate < 1200.0,
        "fit_seconds_by_setting_gate": by_group,
        "fit_seconds_by_n": by_n,
        "note": "cpu_seconds: sum over fits of the task wall time per replicate (all restarts), "
        "one core each; capped: best restart hit max_iter=400 without converging",
    }


def run_memory(n: int, replicates: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mem.json"
        cmd = [PYTHON, "-c", MEMORY_CHILD, str(n), str(replicates), str(path)]
        subprocess.run(cmd, cwd=ROOT, env=child_env(), check=True)
        data = json.loads(path.read_text())
    peak = data["peak_rss_bytes"]
    return {
        "what_ran": f"moe_theory.rates.sweep.fit_task: E1 exact, NoRGa, n={n}, R={replicates} "
        "in one block, 1 restart (simulation, fit, losses), one process, BLAS 1 thread",
        "wall_seconds": data["wall"],
        "peak_rss_bytes": peak,
        "peak_rss_gib": peak / GIB,
        "target_gib": 4.0,
        "meets_target": peak / GIB < 4.0,
        "converged": data["converged"],
        "n_iter_max": max(data["n_iter"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=("quick", "paper", "full", "memory"),
                   default=["quick", "paper", "full", "memory"])
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--paper-replicates", type=int, default=40, help="40: the whole preset")
    p.add_argument("--full-replicates", type=int, default=6, help="a fraction of the 40")
    p.add_argument("--memory-n", type=int, default=1_000_000)
    p.add_argument("--memory-replicates", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
    args = p.parse_args(argv)

    out = Path(args.out)
    # Sections measured by earlier runs are kept (each carries its own command and load).
    result: dict[str, object] = json.loads(out.read_text()) if out.exists() else {}
    result.update({"kind": "sweep-benchmark", "machine": machine()})
    command = "python benchmarks/sweep.py " + " ".join(argv or sys.argv[1:])

    def stamp(section: dict[str, object], load: tuple[float, ...]) -> None:
        section.update(
            {
                "run_by": command,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "loadavg_start": load,
                "loadavg_end": os.getloadavg(),
            }
        )

    if "quick" in args.only:
        load = os.getloadavg()
        result["quick"] = q = run_quick(args.jobs)
        stamp(q, load)
        print(f"quick preset: {q['wall_seconds']:.1f} s (target < 120 s)", flush=True)
    if "memory" in args.only:
        load = os.getloadavg()
        result["memory"] = m = run_memory(args.memory_n, args.memory_replicates)
        stamp(m, load)
        print(
            f"one task n={args.memory_n} R={args.memory_replicates}: peak RSS "
            f"{m['peak_rss_gib']:.2f} GiB (target < 4 GiB), {m['wall_seconds']:.1f} s",
            flush=True,
        )
    for preset, reps in (("paper", args.paper_replicates), ("full", args.full_replicates)):
        if preset not in args.only:
            continue
        load = os.getloadavg()
        result[preset] = pp = run_preset(preset, args.jobs, reps)
        stamp(pp, load)
        print(
            f"{preset} preset {pp['settings']}, {reps} replicates: "
            f"{pp['wall_seconds_measured']:.1f} s -> whole preset ~"
            f"{pp['full_sweep_seconds_extrapolated'] / 60:.1f} min (target < 20 min)",
            flush=True,
        )
        for k, e in pp["fit_seconds_by_setting_gate"].items():
            print(
                f"  {k:18s} {e['share_of_fit_time']:6.1%} of fit time, capped "
                f"{e['capped']}/{e['fits']}, mean Jacobian evals "
                f"{e['mean_n_iter_best_restart']:.0f}"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
