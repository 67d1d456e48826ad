"""E2 global mode: near-truth starts (lm, varpro) vs Latin-hypercube starts over the gate box.

For E2 (one true atom, two fitted, |theta| <= 5) at n = 1e3 (R = 16) and 1e4 (R = 8), seed 1:
the sweep's near-truth start (restart 0) fitted with ``lm`` and with ``varpro``, and 8 global
starts (``moe_theory.varpro.global_starts``, their own seed stream) with ``varpro``, lowest RSS
kept. Prints per case how often the global optimum has a lower / higher RSS than the near-truth
``lm`` fit (1e-8 relative), mean ``L_1``, capped counts and CPU seconds; writes
``benchmarks/results/global_mode.json``.

    python benchmarks/global_mode.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

# run as a script (python benchmarks/global_mode.py): its own folder is on the import path
from solver import rates_problem
from threadpoolctl import threadpool_limits

from moe_theory.estimate import fit_restarts
from moe_theory.settings import THETA_BOUND, get_setting
from moe_theory.simulate import replicate_seed
from moe_theory.varpro import GLOBAL_STREAM, global_starts
from moe_theory.voronoi import voronoi_loss

HERE = Path(__file__).resolve().parent
CASES = [(1000, 16), (10_000, 8)]
N_GLOBAL = 8


def run(gate: str, n: int, R: int, seed: int = 1) -> dict[str, object]:
    X, Y, starts, structure, bound, cap = rates_problem("over", gate, n, R, seed)
    truth = get_setting("over").truth(gate, "tanh")
    glob = np.stack([
        global_starts(2, 1, N_GLOBAL, np.random.default_rng(
            replicate_seed(seed, "over", n, r, GLOBAL_STREAM)), THETA_BOUND)
        for r in range(R)
    ])
    fits = {}
    with threadpool_limits(1):
        for name, s, solver in (("lm-near", starts, "lm"), ("varpro-near", starts, "varpro"),
                                (f"varpro-global{N_GLOBAL}", glob, "varpro")):
            t0 = time.process_time()
            res = fit_restarts(X, Y, s, structure, bound=bound, max_iter=cap, solver=solver)
            fits[name] = {"cpu": time.process_time() - t0, "rss": res.rss.tolist(),
                          "L1": voronoi_loss(res.theta, truth.theta, 1).total.tolist(),
                          "status": res.status.tolist()}
    g, near, lm = (np.array(fits[k]["rss"]) for k in
                   (f"varpro-global{N_GLOBAL}", "varpro-near", "lm-near"))
    summary = {
        "gate": gate, "n": n, "R": R,
        "global_lower_than_varpro_near": int(np.sum(g < near * (1 - 1e-8))),
        "global_lower_than_lm_near": int(np.sum(g < lm * (1 - 1e-8))),
        "global_higher_than_lm_near": int(np.sum(g > lm * (1 + 1e-8))),
        "max_rel_gain_vs_lm": float(np.max((lm - g) / lm)),
        "meanL1": {k: float(np.mean(v["L1"])) for k, v in fits.items()},
        "cpu": {k: v["cpu"] for k, v in fits.items()},
        "capped": {k: v["status"].count("capped") for k, v in fits.items()},
    }
    print(json.dumps(summary), flush=True)
    return {"summary": summary, "fits": fits}


def main() -> int:
    out = {f"{gate}-{n}": run(gate, n, R) for gate in ("norga", "linear") for n, R in CASES}
    (HERE / "results" / "global_mode.json").write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
