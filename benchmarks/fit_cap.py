"""How much the evaluation cap decides the E1-E4 `full` preset: the preset at two caps, fit by fit.

Each run is the real command a user runs, in a fresh process with no fit cache::

    python experiments/rates.py --preset full --solver auto --max-iter C --jobs J --no-cache ...

(the same call as :mod:`presets`, with wall time and the CPU time of the process and its
workers). Every fit of the lowest cap is then compared with the same fit (setting, gate, n,
replicate) at the highest cap:

* **cost** and status counts per cap;
* **the fits capped at the low cap**, by what the high cap makes of them: ``interior``
  (converged, no coordinate on the box: the low cap stopped it short of an interior optimum),
  ``box`` (ends with a coordinate on the box ``|theta| <= 5``, converged or capped again),
  ``capped again, off the box``; in the unbounded E1 ``converged, no box`` or ``capped again,
  no box`` (``fits.csv`` cannot tell a far optimum from a divergence; E1's capped fits,
  continued by hand, run off to ``|theta| ~ 1e7``: the one-atom fit has no finite optimum on
  those data sets);
* **changed fits**: every fit whose RSS or ``L_1`` differs, with how many moved to a lower and
  to a higher RSS. A fit changes when any of its restarts was capped at the low cap; a higher
  RSS is possible with ``auto``, whose full-LM fallback runs only for fits that variable
  projection leaves unconverged;
* **the summary per (setting, gate)** at each cap: ``L_1`` slope with its interval, capped
  count and verdict line.

Runs are written to ``--runs DIR`` as ``DIR/cap-<C>`` with a ``run.json`` record; a folder that
already has its record is reused (its wall and CPU time are the recorded ones), so the
comparison can be redone without the half hour of fitting.

Examples
--------
    python benchmarks/fit_cap.py --runs /tmp/cap-runs                 # caps 400 and 5000
    python benchmarks/fit_cap.py --runs /tmp/cap-runs --caps 400 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import Counter
from pathlib import Path

from estimator import machine  # sibling script (this folder is first on the import path)
from presets import run_command

from moe_theory.settings import get_setting

ROOT = Path(__file__).resolve().parents[1]
KEY = ("setting", "gate", "n", "replicate")


def read_fits(run: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """The rows of ``run/fits.csv`` keyed by (setting, gate, n, replicate)."""
    with open(run / "fits.csv", newline="") as fh:
        return {tuple(row[k] for k in KEY): row for row in csv.DictReader(fh)}


def run_or_reuse(runs: Path, cap: int, jobs: int) -> dict[str, object]:
    """The run record of cap ``cap``: read from ``runs/cap-<cap>/run.json`` or made now."""
    folder = runs / f"cap-{cap}"
    record_file = folder / "run.json"
    if record_file.exists():
        record = json.loads(record_file.read_text())
        record["reused"] = True
        return record
    if folder.exists():
        raise SystemExit(f"{folder} exists without run.json (an unfinished run?); remove it or "
                         "choose another --runs folder")
    record = run_command(["--preset", "full", "--solver", "auto", "--max-iter", str(cap),
                          "--jobs", str(jobs)], "fits.csv", folder)
    record["cap"] = cap
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    record["reused"] = False
    return record


def fate_of_capped(low: dict, high: dict) -> dict[str, Counter]:
    """Per (setting, gate), what the high cap makes of every fit capped at the low cap."""
    fates: dict[str, Counter] = {}
    for key, row in low.items():
        if row["status"] != "capped":
            continue
        later = high[key]
        ended = "converged" if later["status"] == "converged" else f"{later['status']} again"
        if not get_setting(key[0]).bounded:
            # No box: a fit that runs on may be diverging (E1's do); fits.csv cannot tell.
            fate = f"{ended}, no box"
        elif later["at_bound"] == "True":
            fate = "box"
        elif ended == "converged":
            fate = "interior"
        else:
            fate = f"{ended}, off the box"
        fates.setdefault(f"{key[0]}/{key[1]}", Counter())[fate] += 1
    return fates


def changed_fits(low: dict, high: dict) -> dict[str, dict[str, int]]:
    """Per (setting, gate), fits whose RSS or L_1 differ, and the direction of the RSS change."""
    out: dict[str, dict[str, int]] = {}
    for key, row in low.items():
        later = high[key]
        group = out.setdefault(f"{key[0]}/{key[1]}", {"fits": 0, "changed": 0,
                                                      "rss_lower": 0, "rss_higher": 0})
        group["fits"] += 1
        if row["rss"] == later["rss"] and row["voronoi_loss"] == later["voronoi_loss"]:
            continue
        group["changed"] += 1
        if float(later["rss"]) < float(row["rss"]):
            group["rss_lower"] += 1
        elif float(later["rss"]) > float(row["rss"]):
            group["rss_higher"] += 1
    return out


def summaries(run: Path) -> dict[str, dict[str, object]]:
    """Per (setting, gate): L_1 slope and interval, capped count and verdict of summary.json."""
    data = json.loads((run / "summary.json").read_text())["settings"]
    return {
        f"{setting}/{gate}": {"slope": s["slope"], "slope_ci": s["slope_ci"],
                              "n_capped": s["n_capped"], "verdict": s.get("verdict")}
        for setting, gates in data.items() for gate, s in gates.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, metavar="DIR",
                   help="folder of the runs (DIR/cap-<C>); finished runs in it are reused")
    p.add_argument("--caps", type=int, nargs=2, default=(400, 5000), metavar=("LOW", "HIGH"))
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fit_cap.json"))
    args = p.parse_args(argv)
    low_cap, high_cap = args.caps
    if not 1 <= low_cap < high_cap:
        p.error(f"argument --caps: need 1 <= LOW < HIGH; got {low_cap} {high_cap}")
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    records = {cap: run_or_reuse(runs, cap, args.jobs) for cap in (low_cap, high_cap)}
    low = read_fits(runs / f"cap-{low_cap}")
    high = read_fits(runs / f"cap-{high_cap}")
    if low.keys() != high.keys():
        raise SystemExit("the two runs hold different fits; were they made with one preset?")
    fates = fate_of_capped(low, high)
    changed = changed_fits(low, high)
    payload = {
        "benchmark": "fit_cap", "machine": machine(), "loadavg_end": os.getloadavg(),
        "caps": [low_cap, high_cap],
        "runs": {str(cap): rec for cap, rec in records.items()},
        "cost_ratio_wall": records[high_cap]["wall_seconds"] / records[low_cap]["wall_seconds"],
        "capped_at_low_cap_by_fate": {g: dict(c) for g, c in sorted(fates.items())},
        "capped_at_low_cap_total_by_fate": dict(sum(fates.values(), Counter())),
        "changed_fits": changed,
        "changed_fits_total": sum(g["changed"] for g in changed.values()),
        "summary": {str(cap): summaries(runs / f"cap-{cap}") for cap in (low_cap, high_cap)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    for cap, rec in records.items():
        print(f"cap {cap}: {rec['wall_seconds']:.0f} s wall, {rec['cpu_seconds']:.0f} CPU-s, "
              f"{rec['status']}{' (reused)' if rec['reused'] else ''}")
    print(f"capped at {low_cap}, at {high_cap}: {payload['capped_at_low_cap_total_by_fate']}")
    print(f"fits changed: {payload['changed_fits_total']} of {len(low)}")
    for group, s in payload["summary"][str(low_cap)].items():
        t = payload["summary"][str(high_cap)][group]
        print(f"  {group:18s} slope {s['slope']:+.3f} -> {t['slope']:+.3f}, "
              f"capped {s['n_capped']} -> {t['n_capped']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
