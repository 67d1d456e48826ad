"""Synthetic example results in the exact on-disk formats of ``rates.py`` and ``cl.py``.

These are **not results**. They exist to exercise the figure code (tests, the README example
images before real runs exist) and every run they write has ``"synthetic": true`` in its
``config.json``; figures drawn from such runs carry a visible "synthetic example data" mark.
The loss levels imitate the prototype numbers of docs/theory-background.md#reference-numbers (Fisher
constants 38.6 and 10.9 for E1) so that the example figures look like the real ones.
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from norga.io import CHECKSUMS_FILE, record_checksums
from norga.schemas import FIT_COLUMNS, TIMING_COLUMNS

N_GRID = (100, 316, 1000, 3162, 10000, 31622, 100000)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _ols_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope of y on x and its plain standard error (enough for example data)."""
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    sigma2 = resid @ resid / max(len(y) - 2, 1)
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return float(coef[1]), float(np.sqrt(cov[1, 1]))


def write_example_rates_run(
    path: str | os.PathLike[str],
    settings: tuple[str, ...] = ("exact", "over"),
    replicates: int = 12,
    seed: int = 0,
) -> Path:
    """Write a synthetic rates run directory (``config.json``, ``fits.csv``, ``timing.csv``,
    ``summary.json``, ``mechanism.json``) and return its path."""
    rng = np.random.default_rng(seed)
    run = Path(path)
    run.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for setting in settings:
        expert = "tanh" if setting == "over-tanh" else "affine"
        summary[setting] = {}
        for gate, c_fisher in (("linear", 38.6), ("norga", 10.9)):
            act = "none" if gate == "linear" else "tanh"
            for n in N_GRID:
                for r in range(replicates):
                    noise = rng.lognormal(0.0, 0.45)
                    if setting == "exact":
                        loss = c_fisher / np.sqrt(n) * noise
                        parts = (0.3 * loss, 0.3 * loss, 0.4 * loss)
                    else:
                        plateau = 3.5 if gate == "linear" else 0.0
                        eta = (plateau + 40.0 * n**-0.3) * rng.lognormal(0.0, 0.8)
                        parts = (2.0 * n**-0.5 * noise, 4.0 * n**-0.45 * noise, eta)
                        loss = float(sum(parts))
                    capped = setting != "exact" and rng.random() < 0.3
                    rows.append({
                        "setting": setting, "gate": gate, "activation": act, "expert": expert,
                        "n": n, "replicate": r, "voronoi_loss": loss,
                        "voronoi_loss_r": loss * 0.8, "loss_mass": parts[0],
                        "loss_beta1": parts[1], "loss_eta": parts[2],
                        "l2_error": 0.17 * n**-0.5 * rng.lognormal(0.0, 0.25),
                        "rss": 0.01 * n, "converged": not capped,
                        "status": "capped" if capped else "converged", "at_bound": False,
                        "n_iter": 400 if capped else int(rng.integers(10, 60)), "restarts": 1,
                        "cell_sizes": f"{n // 2};{n - n // 2}",
                    })
                    timing.append({"setting": setting, "gate": gate, "n": n, "replicate": r,
                                   "seconds": 0.01 * n**0.5})
            sel = [x for x in rows if x["setting"] == setting and x["gate"] == gate]
            n_used = [n for n in N_GRID if setting == "exact" or n >= 1000]
            used = [x for x in sel if x["n"] in n_used]
            lx = np.log([x["n"] for x in used])
            s, se = _ols_slope(lx, np.log([x["voronoi_loss"] for x in used]))
            s2, se2 = _ols_slope(lx, np.log([x["l2_error"] for x in used]))
            med_n = np.asarray(n_used, dtype=float)
            meds = [np.median([x["voronoi_loss"] for x in used if x["n"] == n]) for n in n_used]
            sm, sem = _ols_slope(np.log(med_n), np.log(meds))
            summary[setting][gate] = {
                "slope": s, "slope_ci": [s - 1.96 * se, s + 1.96 * se],
                "slope_median": sm, "slope_median_ci": [sm - 1.96 * sem, sm + 1.96 * sem],
                "l2_slope": s2, "l2_slope_ci": [s2 - 1.96 * se2, s2 + 1.96 * se2],
                "n_used": n_used,
                "fisher_C": c_fisher if setting == "exact" else None,
                "verdict": f"power law, slope {s:.2f} (synthetic example)",
                "n_fits": len(sel), "n_converged": sum(x["converged"] for x in sel),
                "n_capped": sum(not x["converged"] for x in sel),
            }
    for name, columns, table in (("fits.csv", FIT_COLUMNS, rows),
                                 ("timing.csv", TIMING_COLUMNS, timing)):
        with (run / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    _write_json(run / "summary.json", {"kind": "rates", "version": 1, "settings": summary})
    _write_json(run / "config.json", {"kind": "rates", "synthetic": True, "seed": seed,
                                      "settings": list(settings), "replicates": replicates})
    _write_json(run / "mechanism.json", {
        "pde_residual": {"linear": 2e-8, "norga": 1.37},
        "fisher": [
            {"gate": "linear", "expert": "affine", "lambda_min": 1.45e-5, "cond": 1.7e4},
            {"gate": "norga", "expert": "affine", "lambda_min": 1.9e-4, "cond": 1.9e3},
            {"gate": "linear", "expert": "tanh", "lambda_min": 3.9e-4, "cond": 3.8e2},
            {"gate": "norga", "expert": "tanh", "lambda_min": 1.9e-4, "cond": 1.1e3},
        ],
    })
    return run


def example_accuracy_matrix(
    n_tasks: int, final: float, forgetting: float, rng: np.random.Generator
) -> np.ndarray:
    """A plausible lower-triangular accuracy matrix (percent; nan above the diagonal)."""
    matrix = np.full((n_tasks, n_tasks), np.nan)
    start = np.clip(final + forgetting + rng.normal(0, 1.0, n_tasks), 0, 100)
    for t in range(n_tasks):
        for i in range(t + 1):
            decay = forgetting * (t - i) / max(n_tasks - 1, 1)
            matrix[t, i] = float(np.clip(start[i] - decay + rng.normal(0, 0.4), 0, 100))
    return matrix


def cl_metrics(matrix: np.ndarray) -> dict[str, Any]:
    """FA, CA and FM of a finished accuracy matrix (docs/cl-background.md#metrics)."""
    n_tasks = matrix.shape[1]
    last = matrix[-1]
    fa = float(np.mean(last))
    ca = float(np.mean([np.mean(matrix[t, : t + 1]) for t in range(n_tasks)]))
    if n_tasks > 1:
        fm = float(np.mean([np.nanmax(matrix[i:, i]) - last[i] for i in range(n_tasks - 1)]))
    else:
        fm = 0.0
    return {"FA": fa, "CA": ca, "FM": fm, "per_task": [float(v) for v in last]}


def write_example_cl_run(
    path: str | os.PathLike[str],
    method: str,
    dataset: str,
    backbone: str,
    seed: int,
    *,
    final: float = 85.0,
    forgetting: float = 4.0,
    n_tasks: int = 10,
    gate_act: str | None = None,
    expert_frequency: bool = False,
) -> Path:
    """Write a synthetic CL run directory and return its path."""
    # crc32, not hash(): Python salts string hashes per process and the data must not change.
    tag = f"{method}|{dataset}|{backbone}|{seed}|{gate_act}"
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    run = Path(path)
    run.mkdir(parents=True, exist_ok=True)
    matrix = example_accuracy_matrix(n_tasks, final, forgetting, rng)
    with (run / "accuracy_matrix.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["after_task", *[f"task_{i}" for i in range(n_tasks)]])
        for t in range(n_tasks):
            writer.writerow([t, *[f"{v:.2f}" if np.isfinite(v) else "" for v in matrix[t]]])
    metrics = cl_metrics(np.round(matrix, 2))
    metrics.update({"TII_accuracy": final + 5.0, "TIL_accuracy": final + 8.0, "method": method,
                    "dataset": dataset, "backbone": backbone, "seed": seed})
    if gate_act:
        metrics["gate_act"] = gate_act
    _write_json(run / "metrics.json", metrics)
    config = {"kind": "cl", "synthetic": True, "method": method, "dataset": dataset,
              "backbone": backbone, "seed": seed, "n_tasks": n_tasks}
    if gate_act:
        config["gate_act"] = gate_act
    _write_json(run / "config.json", config)
    _write_json(run / "env.json", {"synthetic": True})
    if expert_frequency:
        layers = []
        for _layer in range(6):
            heads = [rng.dirichlet(np.full(25, 0.4)) * 1000 for _ in range(12)]
            layers.append([[round(float(c), 1) for c in h] for h in heads])
        _write_json(run / "expert_frequency.json", {"kind": "expert_frequency", "version": 1,
                                                    "layer_ids": list(range(6)),
                                                    "after_task": n_tasks - 1, "layers": layers})
    return run


def write_example_results(root: str | os.PathLike[str], seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A whole synthetic results tree: one rates run and CL runs for several methods,
    backbones, seeds, an activation ablation and one SMoPE run with expert frequencies."""
    root = Path(root)
    write_example_rates_run(root / "rates" / "example")
    levels = {"norga": (94.4, 1.5), "hide": (92.6, 1.6), "dualprompt": (87.3, 3.9),
              "l2p": (83.1, 5.6)}
    for backbone, shift in (("sup21k", 0.0), ("ibot21k", -2.0)):
        for method, (fa, fm) in levels.items():
            for seed in seeds:
                act = ("sigmoid" if backbone == "sup21k" else "tanh") if method == "norga" else None
                write_example_cl_run(root / "cl" / f"cifar100_{backbone}_{method}_s{seed}",
                                     method, "cifar100", backbone, seed, final=fa + shift,
                                     forgetting=fm, gate_act=act)
    for act, fa in (("tanh", 94.36), ("gelu", 94.05)):
        for seed in seeds:
            write_example_cl_run(root / "cl" / f"cifar100_sup21k_norga-{act}_s{seed}", "norga",
                                 "cifar100", "sup21k", seed, final=fa, forgetting=1.5, gate_act=act)
    write_example_cl_run(root / "cl" / "imagenet-r_sup1k_smope_s0", "smope", "imagenet-r",
                         "sup1k", 0, final=79.3, forgetting=3.0, expert_frequency=True)
    for run in [root / "rates" / "example", *sorted((root / "cl").iterdir())]:
        # checksums, as the real commands write them (a run without them is noted unverified)
        record_checksums(run, {p.name: p.read_bytes() for p in sorted(run.iterdir())
                               if p.is_file() and p.name != CHECKSUMS_FILE})
    return root
