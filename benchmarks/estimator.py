"""Batched LM fitter vs per-replicate scipy loops on the same data and starting points.

For each (setting, gate, n) the script draws the R replicate data sets and near-truth starts of
the rate sweep (same seeds and streams as ``moe_theory.rates.sweep.fit_task``, restart 0), then fits
them three ways:

* **batched**: ``moe_theory.estimate.fit_batched`` on all R replicates at once (compiled kernel
  when numba is installed), timed with 1 thread (per-core figures) and with every core;
* **plain reference**: what a simulation study usually writes: a loop over replicates calling
  ``scipy.optimize.least_squares`` on a textbook residual (softmax over all ``N + L'`` experts
  with ``scipy.special.softmax``) and scipy's default finite-difference Jacobian;
* **tuned reference**: the same scipy loop, but with our analytic Jacobian and residuals from the
  model kernel of the numpy path (``moe_theory.model.mixture``) with the pretrained terms cached
  per replicate, so only the fitter and the batching differ from the batched path.

Both scipy loops use ``method="lm"`` (``method="trf"`` with the box for bounded settings),
``xtol = ftol = gtol = 1e-12`` and the same cap of 400 Jacobian evaluations. Everything runs with
BLAS limited to one thread (threadpoolctl), after a warm-up; timed repeats of all paths are
interleaved so background load hits them alike, and medians are reported. RSS values are
compared replicate by replicate on fits that both paths report converged.

Speed ratios are wall-clock ratios on this machine: ``*_per_core`` compares the 1-thread batched
run with the (single-threaded) scipy loop; the others compare the all-core batched run with it.

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

from moe_theory.estimate import fit_batched, near_truth_starts
from moe_theory.model import PrefixMoE, mixture, n_params, textbook_regression
from moe_theory.settings import THETA_BOUND, get_setting
from moe_theory.simulate import INIT_STREAM, replicate_seed, simulate

ROOT = Path(__file__).resolve().parents[1]

RSS_RTOL = 1e-6  # agreement required on fits that both paths report converged
MAX_NFEV = 400
TOL = 1e-12
TARGET_RATIO = 20.0
TARGET_FITS = 100.0  # per core-second at n = 1e3
REFERENCES = ("plain", "tuned")


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
    X: np.ndarray,
    Y: np.ndarray,
    starts: np.ndarray,
    structure: PrefixMoE,
    bound: float | None,
    kind: str,
) -> dict[str, np.ndarray]:
    """One ``scipy.optimize.least_squares`` call per replicate.

    ``kind="plain"``: textbook residual, scipy's 2-point finite-difference Jacobian.
    ``kind="tuned"``: our model kernel and analytic Jacobian.
    """
    rss, converged, nfev, njev = [], [], [], []
    P = starts.shape[1]
    for r in range(len(X)):
        if kind == "plain":

            def fun(th: np.ndarray, Xr=X[r], Yr=Y[r]) -> np.ndarray:
                return textbook_regression(Xr, th, structure) - Yr

            jac: object = "2-point"
        else:
            XT, Yr = X[r].T, Y[r]
            # the same model kernel as the numpy batched path, pretrained terms cached
            lse, mean_out = structure.pretrained.collapsed(X[r])

            def fun(th: np.ndarray, XT=XT, Yr=Yr, lse=lse, mean_out=mean_out) -> np.ndarray:
                return mixture(XT, lse, mean_out, th, structure) - Yr

            def jac(th: np.ndarray, XT=XT, lse=lse, mean_out=mean_out) -> np.ndarray:
                J = np.empty((P, XT.shape[1]))  # fresh: scipy may keep the previous one
                mixture(XT, lse, mean_out, th, structure, jac_out=J)
                return J.T  # (n, P), Fortran-ordered as MINPACK wants it

        if bound is None:
            kw: dict[str, object] = {"method": "lm"}
            # MINPACK's lm counts the P evaluations of a finite-difference Jacobian in nfev
            cap = MAX_NFEV * (P + 1) if kind == "plain" else MAX_NFEV
        else:
            kw = {"method": "trf", "bounds": (-bound, bound)}
            cap = MAX_NFEV
        res = least_squares(
            fun, starts[r], jac=jac, xtol=TOL, ftol=TOL, gtol=TOL, max_nfev=cap, **kw
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


def _median(times: list[float]) -> float:
    return float(np.median(times))


def run_case(
    setting: str,
    gate: str,
    n: int,
    replicates: int,
    seed: int,
    repeats: int,
    ref_repeats: int,
    cores: int,
) -> dict[str, object]:
    X, Y, starts, structure, bound = problem(setting, gate, n, replicates, seed)
    batched_paths = {"1thread": 1, f"{cores}threads": cores}
    # Warm-up: compilation, caches, allocator, lazy imports of every path (not timed).
    for threads in batched_paths.values():
        fit_batched(X[:2], Y[:2], starts[:2], structure, bound=bound, threads=threads)
    for kind in REFERENCES:
        fit_reference(X[:1], Y[:1], starts[:1], structure, bound, kind)

    times: dict[str, list[float]] = {name: [] for name in [*batched_paths, *REFERENCES]}
    fits: dict[str, object] = {}
    for k in range(max(repeats, ref_repeats)):
        # interleaved: background load affects every path alike
        if k < repeats:
            for name, threads in batched_paths.items():
                t0 = time.perf_counter()
                fits[name] = fit_batched(X, Y, starts, structure, bound=bound, threads=threads)
                times[name].append(time.perf_counter() - t0)
        if k < ref_repeats:
            for kind in REFERENCES:
                t0 = time.perf_counter()
                fits[kind] = fit_reference(X, Y, starts, structure, bound, kind)
                times[kind].append(time.perf_counter() - t0)
    batched = fits["1thread"]
    t1, tc = _median(times["1thread"]), _median(times[f"{cores}threads"])
    case: dict[str, object] = {
        "setting": setting,
        "gate": gate,
        "n": n,
        "replicates": replicates,
        "bounded": bound is not None,
        "reference_method": "lm" if bound is None else "trf (bounds)",
        "seconds": times,
        "median_s": {name: _median(t) for name, t in times.items()},
        "batched_fits_per_core_second": replicates / t1,
        "batched_fits_per_core_second_all_cores": replicates / (tc * cores),
        "batched_jacobian_evals": {
            "median": float(np.median(batched.n_iter)),
            "max": int(batched.n_iter.max()),
        },
        "batched_threads_identical": bool(
            np.array_equal(batched.rss, fits[f"{cores}threads"].rss)
        ),
    }
    for kind in REFERENCES:
        tr = _median(times[kind])
        ref = fits[kind]
        case[kind] = {
            "fits_per_core_second": replicates / tr,
            "speed_ratio": tr / tc,
            "speed_ratio_per_core": tr / t1,
            "nfev": {"median": float(np.median(ref["nfev"])), "max": int(ref["nfev"].max())},
            "rss": compare(batched, ref),
        }
    return case


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--settings", default="exact,over", help="comma list of exact, over, over-tanh")
    p.add_argument("--gates", default="linear,norga")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--replicates", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the batched fitter")
    p.add_argument("--ref-repeats", type=int, default=3, help="timed runs of each scipy loop")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="threads of the all-core batched run (default: every core)")
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
                    c = run_case(setting, gate, n, args.replicates, args.seed, args.repeats,
                                 args.ref_repeats, args.cores)
                    cases.append(c)
                    med = c["median_s"]
                    line = (
                        f"{setting:9s} {gate:6s} n={n:>6d}  batched {med['1thread']:7.3f} s "
                        f"({c['batched_fits_per_core_second']:7.1f} fits/core-s), "
                        f"{args.cores} threads {med[f'{args.cores}threads']:7.3f} s"
                    )
                    for kind in REFERENCES:
                        r = c[kind]
                        diff = r["rss"]["max_rel_rss_diff_converged"]
                        line += (
                            f" | {kind} {med[kind]:7.2f} s ratio {r['speed_ratio']:5.1f}x "
                            f"({r['speed_ratio_per_core']:4.1f}x per core), RSS max rel diff "
                            f"{diff if diff is None else f'{diff:.0e}'} on "
                            f"{r['rss']['both_converged']}/{args.replicates}"
                        )
                    print(line, flush=True)
    at_1e3 = [c["batched_fits_per_core_second"] for c in cases if c["n"] == 1000]
    by_setting = {
        s: min(c["batched_fits_per_core_second"] for c in cases if c["n"] == 1000
               and c["setting"] == s)
        for s in dict.fromkeys(c["setting"] for c in cases if c["n"] == 1000)
    }
    summary: dict[str, object] = {
        "target_speed_ratio": TARGET_RATIO,
        "target_fits_per_core_second_n1000": TARGET_FITS,
        "min_fits_per_core_second_n1000": min(at_1e3) if at_1e3 else None,
        "min_fits_per_core_second_n1000_by_setting": by_setting,
    }
    for kind in REFERENCES:
        for key in ("speed_ratio", "speed_ratio_per_core"):
            ratios = [c[kind][key] for c in cases]
            summary[f"{kind}/min_{key}"] = min(ratios)
            summary[f"{kind}/median_{key}"] = float(np.median(ratios))
        summary[f"{kind}/speed_ratio_by_case"] = {
            f"{c['setting']}/{c['gate']}/{c['n']}": c[kind]["speed_ratio"] for c in cases
        }
        summary[f"{kind}/all_rss_agree"] = all(c[kind]["rss"]["agree"] for c in cases)
        summary[f"{kind}/meets_speed_ratio"] = summary[f"{kind}/min_speed_ratio"] >= TARGET_RATIO
    summary["meets_fits_per_core_second"] = bool(at_1e3) and min(at_1e3) >= TARGET_FITS
    summary["batched_threads_identical"] = all(c["batched_threads_identical"] for c in cases)
    result = {
        "kind": "estimator-benchmark",
        "command": "python benchmarks/estimator.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "threads": f"BLAS limited to 1 thread (threadpoolctl); batched kernel with 1 and "
        f"{args.cores} threads; scipy loops single-threaded; one process",
        "timing": "median of interleaved repeats after a warm-up; wall clock (perf_counter)",
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "wall_seconds": time.time() - start,
        "rss_rtol": RSS_RTOL,
        "references": {
            "plain": "scipy.optimize.least_squares per replicate on a textbook residual "
            "(scipy.special.softmax over all N + L' experts), 2-point finite-difference Jacobian",
            "tuned": "scipy.optimize.least_squares per replicate, analytic Jacobian and "
            "residuals from moe_theory.model.mixture with cached pretrained terms",
            "both": f"xtol=ftol=gtol={TOL}; lm (unbounded) or trf (bounded); cap {MAX_NFEV} "
            "Jacobian evaluations",
        },
        "batched": f"moe_theory.estimate.fit_batched (backend auto), max_iter={MAX_NFEV} "
        f"Jacobian evaluations, tolerances {TOL}",
        "cases": cases,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for s, v in by_setting.items():
        print(f"fits per core-second at n=1e3, {s}: >= {v:.0f} (target {TARGET_FITS:.0f})")
    for kind in REFERENCES:
        print(
            f"vs {kind} scipy loop: min speed ratio {summary[f'{kind}/min_speed_ratio']:.1f}x "
            f"on {args.cores} cores ({summary[f'{kind}/min_speed_ratio_per_core']:.1f}x per core; "
            f"target {TARGET_RATIO:.0f}x); RSS agree on converged fits: "
            f"{summary[f'{kind}/all_rss_agree']}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
