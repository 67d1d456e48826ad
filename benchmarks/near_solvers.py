"""E5 fixed-t fits of the quick preset under three fitters: lm and varpro from near-truth
starts, and varpro from 8 global starts over the gate box (``--global-starts 8``).

Seed 1, the quick preset's n grid (7 values in 1e2..1e4) and replicates (8), fixed t only (no
schedules). Prints each run's E5 summary (the fixed-t table: mean ``L_1`` at the largest n,
slope, capped counts) and its CPU seconds (``time.process_time``, including the mechanism
table, which is the same for all three); writes the fit rows to
``benchmarks/results/near_solvers.json``.

    python benchmarks/near_solvers.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from moe_theory.near.sweep import NEAR_PRESETS, NearConfig, run_near
from moe_theory.rates.config import n_grid

VARIANTS = {
    "lm-near": {"solver": "lm"},
    "varpro-near": {"solver": "varpro"},
    "varpro-global8": {"solver": "varpro", "global_starts": 8},
}


def main() -> int:
    quick = NEAR_PRESETS["quick"]
    base = {"n_values": n_grid(quick["n_min"], quick["n_max"], quick["num_n"]),  # type: ignore
            "replicates": quick["replicates"], "restarts": quick["restarts"], "gammas": (),
            "seed": 1}
    out = {}
    for name, options in VARIANTS.items():
        config = NearConfig(**base, **options)  # type: ignore[arg-type]
        cpu, wall = time.process_time(), time.perf_counter()
        result = run_near(config, jobs=1)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        out[name] = {"cpu_s": cpu, "wall_s": wall, "records": result.records}
        print(f"== {name}: cpu {cpu:.1f} s, wall {wall:.1f} s, load {os.getloadavg()}",
              flush=True)
        print(result.summary(), flush=True)
    path = Path(__file__).resolve().parent / "results" / "near_solvers.json"
    path.write_text(json.dumps(out, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
