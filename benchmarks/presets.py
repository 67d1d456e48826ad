"""The `full` presets end to end, per solver, in one run: E1-E4 wall time and E5 CPU time.

Each measurement is the real command a user runs, in a fresh process with no fit cache::

    python experiments/rates.py --preset full --solver S --no-cache --no-figure --jobs J ...
    python experiments/rates.py --setting near --preset full --solver S --no-cache ...

and records the wall time, the CPU time of the process and all its workers
(``resource.getrusage(RUSAGE_CHILDREN)``), and the fits' status counts from ``fits.csv`` /
``near_fits.csv`` (capped: stopped at the evaluation cap; per setting and gate).

``--rates-replicates K`` below 40 runs replicates ``0 .. K-1`` of the E1-E4 preset: every task is
the same as in the whole run (same seeds, blocks of 6), only fewer blocks run; the whole-preset
time is then extrapolated as measured x 40 / K and labelled as such. E5 always runs whole.

Examples
--------
    python benchmarks/presets.py                            # both presets, lm and auto
    python benchmarks/presets.py --only rates --rates-replicates 12
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from estimator import machine  # sibling script (this folder is first on the import path)

ROOT = Path(__file__).resolve().parents[1]
RATES_REPLICATES = 40  # the E1-E4 full preset's replicates


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(args: list[str], fits_name: str, keep: Path | None = None
                ) -> dict[str, object]:
    """Run one preset command; wall, CPU and the status counts of its fit file. With ``keep``,
    the run directory is written there (it must not exist) instead of a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        out = keep if keep is not None else Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "experiments" / "rates.py"), *args, "--no-cache",
               "--no-figure", "--no-progress", "--out", str(out)]
        cpu0, t0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        with open(out / fits_name, newline="") as fh:
            rows = list(csv.DictReader(fh))
    status = Counter(r["status"] for r in rows)
    capped = Counter(f"{r.get('setting', 'near')}/{r['gate']}" for r in rows
                     if r["status"] == "capped")
    return {"command": "python experiments/rates.py " + " ".join(args), "wall_seconds": wall,
            "cpu_seconds": cpu, "fits": len(rows), "status": dict(status),
            "capped_by_group": dict(sorted(capped.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=("rates", "near"), default=("rates", "near"))
    p.add_argument("--solvers", nargs="+", choices=("lm", "auto", "varpro"),
                   default=("lm", "auto"))
    p.add_argument("--rates-replicates", type=int, default=RATES_REPLICATES,
                   help="replicates 0..K-1 of the E1-E4 preset's 40 (default: all)")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "presets.json"))
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="keep every run directory, as DIR/<preset>-<solver> (default: none)")
    args = p.parse_args(argv)
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists():
        p.error(f"argument --keep: {keep} exists; choose a new folder")
    if keep is not None:
        keep.mkdir(parents=True)
    if not 1 <= args.rates_replicates <= RATES_REPLICATES:
        p.error(f"argument --rates-replicates: must be in 1..{RATES_REPLICATES}; got "
                f"{args.rates_replicates}")
    payload: dict[str, object] = {"benchmark": "presets", "machine": machine(),
                                  "jobs": args.jobs, "loadavg_start": os.getloadavg()}
    jobs = ["--jobs", str(args.jobs)]
    if "rates" in args.only:
        scale = RATES_REPLICATES / args.rates_replicates
        runs = {}
        for solver in args.solvers:
            run = run_command(["--preset", "full", "--solver", solver, "--replicates",
                               str(args.rates_replicates), *jobs], "fits.csv",
                              keep / f"rates-{solver}" if keep else None)
            run["wall_seconds_whole_preset"] = run["wall_seconds"] * scale  # type: ignore
            runs[solver] = run
            print(f"E1-E4 full, {solver}: {run['wall_seconds']:.0f} s wall "
                  f"(whole preset {run['wall_seconds_whole_preset']:.0f} s), "
                  f"{run['cpu_seconds']:.0f} CPU-s, {run['status']}", flush=True)
        payload["rates_full"] = {
            "replicates_run": args.rates_replicates, "extrapolation_factor": scale,
            "runs": runs, "goal_wall_seconds": 300.0,
            "ratios_vs_lm": {s: runs["lm"]["wall_seconds"] / r["wall_seconds"]  # type: ignore
                             for s, r in runs.items() if "lm" in runs},
        }
    if "near" in args.only:
        runs = {}
        for solver in args.solvers:
            run = run_command(["--setting", "near", "--preset", "full", "--solver", solver,
                               *jobs], "near_fits.csv", keep / f"near-{solver}" if keep else None)
            runs[solver] = run
            print(f"E5 full, {solver}: {run['cpu_seconds'] / 60:.1f} CPU-min, "
                  f"{run['wall_seconds']:.0f} s wall, {run['status']}", flush=True)
        payload["near_full"] = {
            "runs": runs, "goal_cpu_seconds": 480.0,
            "ratios_vs_lm": {s: runs["lm"]["cpu_seconds"] / r["cpu_seconds"]  # type: ignore
                             for s, r in runs.items() if "lm" in runs},
        }
    payload["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
