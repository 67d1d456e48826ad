"""Batched LM fitter vs a per-replicate scipy loop on the same data and starting points.

For each (setting, gate, n) the script draws the R replicate data sets and near-truth starts of
the rate sweep (same seeds and streams as ``moe_theory.rates.fit_task``, restart 0), then fits
them two ways:

* **batched**: ``moe_theory.estimate.fit_batched`` on all R replicates at once;
* **reference**: a plain loop over replicates calling ``scipy.optimize.least_squares`` with the
  analytic Jacobian (``method="lm"``; ``method="trf"`` with the box for bounded settings),
  ``xtol = ftol = gtol = 1e-12`` and ``max_nfev = 400``. Residuals and Jacobian come from the
  same model kernel as the batched path (``moe_theory.model.mixture``, the one behind
  ``regression_and_jacobian``) with the pretrained terms cached per replicate, so the two paths
  do the same per-sample arithmetic and the ratio measures the fitter and the batching.

Both run with BLAS limited to one thread (threadpoolctl), after a warm-up; the timed repeats of
the two paths are interleaved so background load hits both alike, and medians are reported.
The RSS of both is compared replicate by replicate on fits that both report converged.

Examples
--------
    python benchmarks/estimator.py                       # E1 exact + E2 over, n = 1e3, 1e4
    python benchmarks/estimator.py --settings exact --repeats 3 --ref-repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_theory.estimate import fit_batched, near_truth_starts  # noqa: E402
from moe_theory.model import PrefixMoE, collapse_pretrained, mixture, n_params  # noqa: E402
from moe_theory.settings import THETA_BOUND, get_setting  # noqa: E402
from moe_theory.simulate import INIT_STREAM, replicate_seed, simulate  # noqa: E402

RSS_RTOL = 1e-6  # agreement required on fits that both paths report converged
MAX_NFEV = 400
TOL = 1e-12


def machine() -> dict[str, object]:
    """A short description of the machine the numbers come from."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "git_head": commit,
    }


def problem(
    setting: str, gate: str, n: int, replicates: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, PrefixMoE, float | None]:
    """Data, starts, fitted structure and bound exactly as the rate sweep draws them."""
    base = get_setting(setting)
    truth = base.truth(gate, "tanh")
    structure = truth.with_theta(np.zeros(n_params(base.n_fitted, truth.dim)))
    bound = THETA_BOUND if base.bounded else None
    reps = list(range(replicates))
    X, Y = simulate(truth, n, reps, seed=seed, setting=setting)
    starts = np.stack(
        [
            near_truth_starts(
                truth,
                base.n_fitted,
                1,
                np.random.default_rng(replicate_seed(seed, setting, n, r, INIT_STREAM)),
                0.1,
                bound,
            )[0]
            for r in reps
        ]
    )
    return X, Y, starts, structure, bound


def fit_reference(
    X: np.ndarray, Y: np.ndarray, starts: np.ndarray, structure: PrefixMoE, bound: float | None
) -> dict[str, np.ndarray]:
    """One ``scipy.optimize.least_squares`` call per replicate (analytic Jacobian)."""
    rss, converged, nfev, njev = [], [], [], []
    P = starts.shape[1]
    for r in range(len(X)):
        XT, Yr = X[r].T, Y[r]
        # the same model kernel as the batched path, pretrained terms cached per replicate
        lse, mean_out = collapse_pretrained(*structure.pretrained.logits_and_outputs(X[r]))

        def fun(th: np.ndarray, XT=XT, Yr=Yr, lse=lse, mean_out=mean_out) -> np.ndarray:
            return mixture(XT, lse, mean_out, th, structure) - Yr

        def jac(th: np.ndarray, XT=XT, lse=lse, mean_out=mean_out) -> np.ndarray:
            J = np.empty((P, XT.shape[1]))  # fresh: scipy may keep the previous one
            mixture(XT, lse, mean_out, th, structure, jac_out=J)
            return J.T  # (n, P), Fortran-ordered as MINPACK wants it

        if bound is None:
            kw: dict[str, object] = {"method": "lm"}
        else:
            kw = {"method": "trf", "bounds": (-bound, bound)}
        res = least_squares(
            fun, starts[r], jac=jac, xtol=TOL, ftol=TOL, gtol=TOL, max_nfev=MAX_NFEV, **kw
        )
        rss.append(2.0 * res.cost)
        converged.append(res.status > 0)  # status 0: stopped by max_nfev
        nfev.append(res.nfev)
        njev.append(res.njev if res.njev is not None else -1)
    return {
        "rss": np.array(rss),
        "converged": np.array(converged),
        "nfev": np.array(nfev),
        "njev": np.array(njev),
    }


def compare(batched, reference: dict[str, np.ndarray]) -> dict[str, object]:
    """RSS agreement, replicate by replicate."""
    both = batched.converged & reference["converged"]
    rel = np.abs(batched.rss - reference["rss"]) / np.maximum(reference["rss"], 1e-300)
    out: dict[str, object] = {
        "both_converged": int(both.sum()),
        "batched_converged": int(batched.converged.sum()),
        "reference_converged": int(reference["converged"].sum()),
        "max_rel_rss_diff_converged": float(rel[both].max()) if both.any() else None,
        "median_rel_rss_diff_converged": float(np.median(rel[both])) if both.any() else None,
        "mismatches_converged": int((rel[both] > RSS_RTOL).sum()),
        "max_rel_rss_diff_all": float(rel.max()),
        "batched_lower_rss_by_1e-6": int((batched.rss < reference["rss"] * (1 - RSS_RTOL)).sum()),
        "reference_lower_rss_by_1e-6": int(
            (reference["rss"] < batched.rss * (1 - RSS_RTOL)).sum()
        ),
    }
    out["agree"] = out["mismatches_converged"] == 0
    return out


def run_case(
    setting: str, gate: str, n: int, replicates: int, seed: int, repeats: int, ref_repeats: int
) -> dict[str, object]:
    X, Y, starts, structure, bound = problem(setting, gate, n, replicates, seed)
    # Warm-up: caches, allocator, lazy imports of both paths (not timed).
    fit_batched(X[:2], Y[:2], starts[:2], structure, bound=bound)
    fit_reference(X[:1], Y[:1], starts[:1], structure, bound)

    t_batched, t_ref = [], []
    batched = reference = None
    for k in range(max(repeats, ref_repeats)):
        # interleaved: background load affects both paths alike
        if k < repeats:
            t0 = time.perf_counter()
            batched = fit_batched(X, Y, starts, structure, bound=bound)
            t_batched.append(time.perf_counter() - t0)
        if k < ref_repeats:
            t0 = time.perf_counter()
            reference = fit_reference(X, Y, starts, structure, bound)
            t_ref.append(time.perf_counter() - t0)
    assert batched is not None and reference is not None
    tb, tr = float(np.median(t_batched)), float(np.median(t_ref))
    return {
        "setting": setting,
        "gate": gate,
        "n": n,
        "replicates": replicates,
        "bounded": bound is not None,
        "reference_method": "lm" if bound is None else "trf (bounds)",
        "batched_seconds": t_batched,
        "reference_seconds": t_ref,
        "batched_median_s": tb,
        "reference_median_s": tr,
        "speed_ratio": tr / tb,
        "batched_fits_per_core_second": replicates / tb,
        "reference_fits_per_core_second": replicates / tr,
        "batched_jacobian_evals": {
            "median": float(np.median(batched.n_iter)),
            "max": int(batched.n_iter.max()),
        },
        "reference_nfev": {
            "median": float(np.median(reference["nfev"])),
            "max": int(reference["nfev"].max()),
        },
        "rss": compare(batched, reference),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="exact,over", help="comma list of exact, over, over-tanh")
    p.add_argument("--gates", default="linear,norga")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--replicates", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the batched fitter")
    p.add_argument("--ref-repeats", type=int, default=3, help="timed runs of the scipy loop")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "estimator.json"))
    args = p.parse_args(argv)

    cases = []
    start = time.time()
    load_start = os.getloadavg()
    with threadpool_limits(limits=1):
        for setting in args.settings.split(","):
            for gate in args.gates.split(","):
                for n in args.n:
                    c = run_case(
                        setting, gate, n, args.replicates, args.seed, args.repeats, args.ref_repeats
                    )
                    cases.append(c)
                    r = c["rss"]
                    diff = r["max_rel_rss_diff_converged"]
                    print(
                        f"{setting:9s} {gate:6s} n={n:>6d}  batched {c['batched_median_s']:7.3f} s "
                        f"({c['batched_fits_per_core_second']:7.1f} fits/core-s)  scipy "
                        f"{c['reference_median_s']:7.3f} s  ratio {c['speed_ratio']:5.1f}x  "
                        f"RSS max rel diff (both converged {r['both_converged']}/"
                        f"{args.replicates}) {diff if diff is None else f'{diff:.1e}'}; "
                        f"mismatches {r['mismatches_converged']}",
                        flush=True,
                    )
    ratios = [c["speed_ratio"] for c in cases]
    at_1e3 = [c["batched_fits_per_core_second"] for c in cases if c["n"] == 1000]
    by_setting = {
        s: min(c["batched_fits_per_core_second"] for c in cases if c["n"] == 1000
               and c["setting"] == s)
        for s in dict.fromkeys(c["setting"] for c in cases if c["n"] == 1000)
    }
    summary = {
        "min_speed_ratio": min(ratios),
        "median_speed_ratio": float(np.median(ratios)),
        "speed_ratio_by_case": {f"{c['setting']}/{c['gate']}/{c['n']}": c["speed_ratio"]
                                for c in cases},
        "min_fits_per_core_second_n1000": min(at_1e3) if at_1e3 else None,
        "min_fits_per_core_second_n1000_by_setting": by_setting,
        "all_rss_agree": all(c["rss"]["agree"] for c in cases),
        "target_speed_ratio": 20.0,
        "target_fits_per_core_second_n1000": 100.0,
    }
    summary["meets_speed_ratio"] = summary["min_speed_ratio"] >= 20.0
    summary["meets_fits_per_core_second"] = (
        summary["min_fits_per_core_second_n1000"] is not None
        and summary["min_fits_per_core_second_n1000"] >= 100.0
    )
    result = {
        "kind": "estimator-benchmark",
        "command": "python benchmarks/estimator.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "threads": "BLAS limited to 1 thread for both paths (threadpoolctl); one process",
        "timing": "median of interleaved repeats after a warm-up; wall clock (perf_counter)",
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "wall_seconds": time.time() - start,
        "rss_rtol": RSS_RTOL,
        "reference": f"scipy.optimize.least_squares per replicate, analytic Jacobian, "
        f"xtol=ftol=gtol={TOL}, max_nfev={MAX_NFEV}; lm (unbounded) or trf (bounded)",
        "batched": f"moe_theory.estimate.fit_batched, max_iter={MAX_NFEV} Jacobian evaluations, "
        f"tolerances {TOL}",
        "cases": cases,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for s, v in by_setting.items():
        print(f"fits per core-second at n=1e3, {s}: >= {v:.0f}")
    print(
        f"min speed ratio {summary['min_speed_ratio']:.1f}x (median "
        f"{summary['median_speed_ratio']:.1f}x); fits per core-second at n=1e3 >= "
        f"{summary['min_fits_per_core_second_n1000'] or float('nan'):.0f}; RSS agree on converged "
        f"fits: {summary['all_rss_agree']}; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
