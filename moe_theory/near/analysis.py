"""Analysis of E5 fits (the content of ``near.json``): per-n statistics against the Fisher
prediction, the parametric-regime verdicts, the slopes of ``L_1`` along the schedules."""

from __future__ import annotations

import numpy as np
from scipy import stats

from moe_theory.near import mechanism as near
from moe_theory.near.config import NearConfig

# Fisher criterion (spec 7 / the rate-inference issue): the 95% CI of mean L_1 / (C/sqrt(n))
# overlaps [0.7, 1.3].
RATIO_BAND = (0.7, 1.3)


def _mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-interval."""
    m = float(np.mean(values))
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(
        len(values))
    return m, m - half, m + half


def slope_fit(n: np.ndarray, loss: np.ndarray) -> dict[str, object]:
    """Slope of log L_1 on log n with a 95% CI.

    Uses ``moe_theory.inference.fit_rate`` (the calibrated interval of the rate-inference work)
    when it exists, otherwise the cluster-robust OLS of :func:`moe_theory.inference.ols_slope`.
    """
    from moe_theory import inference

    fit_rate = getattr(inference, "fit_rate", None)
    if fit_rate is not None:
        res = fit_rate(np.asarray(n, float), np.asarray(loss, float))
        lo, hi = res.conf_int(0.05)
        return {"slope": float(res.slope), "ci": [float(lo), float(hi)],
                "method": "inference.fit_rate"}
    res = inference.ols_slope(np.asarray(n, float), np.asarray(loss, float))
    return {"slope": res.slope, "ci": list(res.ci),
            "method": "inference.ols_slope (cluster-robust by n; fit_rate not available)"}


def _status_counts(rows: list[dict[str, object]]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in ("converged", "capped", "stalled")}


def _per_n(rows: list[dict[str, object]], config: NearConfig, kind: str, value: float,
           gate: str, constants: dict[float, float]) -> list[dict[str, object]]:
    out = []
    for n in sorted({int(r["n"]) for r in rows}):
        sel = [r for r in rows if r["n"] == n]
        loss = np.array([r["voronoi_loss"] for r in sel])
        t = config.t_of(kind, value, n)
        pred = constants[round(t, 12)] / np.sqrt(n)
        mean, lo, hi = _mean_ci(loss)
        entry = {
            "n": n, "t": t, "mean": mean, "mean_ci": [lo, hi], "median": float(np.median(loss)),
            "predicted": float(pred), "ratio": mean / pred, "ratio_ci": [lo / pred, hi / pred],
            "consistent": bool(lo / pred <= RATIO_BAND[1] and hi / pred >= RATIO_BAND[0]),
            "l2_median": float(np.median([r["l2_error"] for r in sel])),
            **{f"{part}_mean": float(np.mean([r[f"loss_{part}"] for r in sel]))
               for part in ("mass", "beta1", "eta")},
            **_status_counts(sel),
        }
        out.append(entry)
    return out


def parametric_from(per_n: list[dict[str, object]]) -> int | None:
    """Smallest n from which every larger n is consistent with the Fisher prediction."""
    first = None
    for entry in reversed(per_n):
        if not entry["consistent"]:
            break
        first = entry["n"]
    return first


def _case_exponent(cfg: NearConfig, mechanism: dict[str, object],
                   gate: str) -> dict[str, object] | None:
    """Mechanism-table entry of the fitted cluster (default base, 2 atoms) under ``gate``."""
    act = cfg.gate(gate).activation_name
    for case in mechanism["cases"]:  # type: ignore[union-attr]
        if (case["base"], case["size"], case["expert"], case["split"], case["gate"],
                case["activation"]) == ("default", 2, cfg.expert, cfg.split, gate, act):
            return case
    return None


def group_rows(records: list[dict[str, object]], kind: str, value: float,
               gate: str) -> list[dict[str, object]]:
    """The fits of one (kind, value, gate)."""
    key = "t" if kind == "fixed" else "gamma"
    return [r for r in records if r["kind"] == kind and r["gate"] == gate and (r[key] == value)]


def analyse_near(cfg: NearConfig, records: list[dict[str, object]],
                 mechanism: dict[str, object]) -> dict[str, object]:
    """Per (kind, value, gate): losses vs n, Fisher predictions, regime, slopes, counts."""
    fixed: dict[str, dict[str, object]] = {}
    schedule: dict[str, dict[str, object]] = {}
    for gate in cfg.gates:
        case = _case_exponent(cfg, mechanism, gate)
        p1 = None
        if case is None and "default" in cfg.bases:
            case = near.analyse_case(
                near.CaseSpec("default", 2, cfg.expert, cfg.split, gate, cfg.activation),
                near.t_grid(), noise_sd=cfg.noise_sd, eps=cfg.eps)
        if case is not None and case["exponents"][0] is not None:
            p1 = case["exponents"][0]["p"]
        for kind, value in cfg.groups():
            rows = group_rows(records, kind, value, gate)
            if not rows:
                continue
            ts = sorted({round(float(r["t"]), 12) for r in rows})
            constants = {}
            for t in ts:
                fc = near.fisher_constant(cfg.truth(gate, t), cfg.noise_sd, seed=cfg.seed)
                constants[t] = fc["C"]
            per_n = _per_n(rows, cfg, kind, value, gate, constants)
            n = np.array([r["n"] for r in rows], float)
            loss = np.array([r["voronoi_loss"] for r in rows], float)
            entry: dict[str, object] = {
                "gate": gate, "activation": cfg.gate(gate).activation_name,
                "per_n": per_n, "slope": slope_fit(n, loss), **_status_counts(rows),
                "fits": len(rows), "at_bound": sum(bool(r["at_bound"]) for r in rows),
            }
            if kind == "fixed":
                entry["C"] = constants[round(value, 12)]
                entry["lambda_min"] = float(near.fisher_eigenvalues(cfg.truth(gate, value))[0])
                entry["parametric_from"] = parametric_from(per_n)
                fixed.setdefault(f"{value:g}", {})[gate] = entry
            else:
                ns = np.array([e["n"] for e in per_n], float)
                pred = np.array([e["predicted"] for e in per_n])
                entry["predicted_slope_fisher"] = float(np.polyfit(np.log(ns), np.log(pred),
                                                                   1)[0])
                entry["exponent_p1"] = p1
                entry["predicted_slope_asymptotic"] = (
                    None if p1 is None else float(value * p1 / 2 - 0.5))
                entry["t_range"] = [per_n[0]["t"], per_n[-1]["t"]]
                lo, hi = entry["slope"]["ci"]  # type: ignore[index]
                entry["prediction_in_ci"] = bool(lo <= entry["predicted_slope_fisher"] <= hi)
                entry["parametric_all_n"] = all(e["consistent"] for e in per_n)
                schedule.setdefault(f"{value:g}", {})[gate] = entry
    counts = _status_counts(records)
    return {"fixed": fixed, "schedule": schedule, "status_counts": counts,
            "criterion": (
                f"parametric at n: the 95% t-interval of mean L_1 / (C(t)/sqrt(n)) overlaps "
                f"[{RATIO_BAND[0]}, {RATIO_BAND[1]}]; 'from n' = every larger n of the grid too"),
            "init": "near-truth (oracle starts; measures the statistical rate, not "
                    "optimisation)"}
