"""Analysis of E5 fits (the content of ``near.json``): per-n statistics against the Fisher
prediction, regime diagnostics, the parametric-regime verdicts, the slopes of ``L_1`` along the
schedules.

The Fisher line ``C(t)/sqrt(n)`` is a first-order prediction: it assumes every fitted atom stays
in its own true atom's Voronoi cell, i.e. that the weakest eigen-direction of ``I(t)`` (for two
atoms: the one that moves them towards each other) is resolved. A flat ``L_1`` curve crosses
that line somewhere, so a verdict "parametric from n" is only given when, at that n and every
larger n of the grid,

* at most :data:`MAX_MERGED_FRACTION` of the fits put two fitted atoms into one cell (a true
  atom's cell left empty),
* the weak direction is resolved: ``sqrt(nu / (n lambda_1)) <= RESOLVED_SD_FRACTION * h`` with
  ``h`` half the distance between the two true atoms in ``(beta_1, a, b)``,

and, on those n together (at least three), the level passes an equivalence test: the
:data:`EQUIVALENCE_LEVEL` t-interval of the mean of ``L_1 / (C/sqrt(n))`` over their fits lies
inside :data:`RATIO_BAND` (two one-sided tests at 5%; a wider interval, e.g. from fewer
replicates, makes a pass *less* likely; the fits are pooled because ``L_1`` scatters with a
coefficient of variation near 0.75, so one n with 8-16 fits almost never passes), and the
``L_1`` slope fitted on them has a 95% CI containing -1/2. Otherwise the verdict is "not
reached", with the reasons at the largest n. Per n, ``level_equivalent`` reports the same test
on that n alone (a diagnostic, not part of the verdict).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from moe_theory.gates import GateKind
from moe_theory.inference import fit_rate
from moe_theory.near import mechanism as near
from moe_theory.near.config import NearConfig

# Equivalence band of mean L_1 / (C/sqrt(n)) and the level of the interval that must lie in it
# (90%: two one-sided 5% tests).
RATIO_BAND = (0.7, 1.3)
EQUIVALENCE_LEVEL = 0.90
# At most this fraction of the fits at an n may have merged atoms (an empty true cell).
MAX_MERGED_FRACTION = 0.1
# The weak direction is resolved when its sd is at most this fraction of the half-separation.
RESOLVED_SD_FRACTION = 0.5
# A schedule t_n = t0 (n/n0)^-gamma tests the first-order expansion only where the weak
# direction's sd, which scales like n^((gamma p_1 - 1)/2), shrinks clearly: gamma p_1 <= this.
EXPANSION_LIMIT = 0.8


def _mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-interval."""
    m = float(np.mean(values))
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(
        len(values))
    return m, m - half, m + half


def slope_fit(n: np.ndarray, loss: np.ndarray,
              capped: np.ndarray | None = None) -> dict[str, object]:
    """Slope of the geometric mean of ``L_1`` against n (:func:`moe_theory.inference.fit_rate`),
    its 95% CI, intercept and the capped-fits flag; ``None`` with fewer than three n.

    Fits whose ``L_1`` is not finite and positive (diverged, or exact) are left out and counted
    as ``n_excluded`` (present only when > 0), so one bad fit never loses the sweep.
    """
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    usable = np.isfinite(loss) & (loss > 0)
    excluded = {} if usable.all() else {"n_excluded": int((~usable).sum())}
    n, loss = n[usable], loss[usable]
    if capped is not None:
        capped = np.asarray(capped)[usable]
    if len(np.unique(n)) < 3:
        return None
    res = fit_rate(n, loss, capped=capped)
    lo, hi = res.conf_int(0.05)
    return {"slope": float(res.slope), "ci": [float(lo), float(hi)],
            "intercept": float(res.intercept), "capped_flag": res.capped_flag,
            "method": "inference.fit_rate (slope of the geometric mean)", **excluded}


def merged(row: dict[str, object]) -> bool:
    """Whether a fit left a true atom's Voronoi cell empty (two fitted atoms in one cell)."""
    return any(int(c) == 0 for c in str(row["cell_sizes"]).split(";"))


def fisher_terms(truth, noise_sd: float, seed: int) -> dict[str, float]:
    """Fisher quantities of one truth that the regime diagnostics need.

    ``C`` (of the arithmetic mean, ``E L_1 ~ C/sqrt(n)``, as
    :func:`moe_theory.near.mechanism.fisher_constant` computes it from the same draws), ``G``
    (of the geometric mean, ``exp E log L_1 ~ G/sqrt(n)``: what :func:`slope_fit` fits),
    ``weak_sd_1`` (the sd along the weakest eigen-direction at n = 1, ``nu^1/2 / s_min``),
    ``half_separation`` (half the distance of the first two atoms in ``(beta_1, a, b)``) and
    ``weak_share``: the mean first-order ``L_1`` of the weakest direction alone over ``C``.
    """
    s, vt = near.fisher_svd(truth)
    xi = np.random.default_rng(np.random.SeedSequence(seed)).standard_normal((100_000, len(s)))
    loss = near.first_order_loss(noise_sd * (xi / s) @ vt, truth)
    weak = near.first_order_loss(noise_sd * (xi[:, -1:] / s[-1]) * vt[-1], truth)
    omega = np.column_stack([truth.beta1, truth.a, truth.b])
    return {"C": float(loss.mean()), "G": float(np.exp(np.mean(np.log(loss)))),
            "weak_sd_1": float(noise_sd / s[-1]),
            "half_separation": float(np.linalg.norm(omega[0] - omega[1]) / 2),
            "weak_share": float(weak.mean() / loss.mean())}


def _status_counts(rows: list[dict[str, object]]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in ("converged", "capped", "stalled")}


def _per_n(rows: list[dict[str, object]], config: NearConfig, kind: str, value: float,
           terms: dict[float, dict[str, float]]) -> list[dict[str, object]]:
    out = []
    for n in sorted({int(r["n"]) for r in rows}):
        sel = [r for r in rows if r["n"] == n]
        loss = np.array([r["voronoi_loss"] for r in sel])
        t = config.t_of(kind, value, n)
        term = terms[round(t, 12)]
        pred = term["C"] / np.sqrt(n)
        mean, lo, hi = _mean_ci(loss)
        _, elo, ehi = _mean_ci(loss, EQUIVALENCE_LEVEL)
        weak_sd = term["weak_sd_1"] / np.sqrt(n)
        n_merged = sum(merged(r) for r in sel)
        entry = {
            "n": n, "t": t, "mean": mean, "mean_ci": [lo, hi], "median": float(np.median(loss)),
            "geomean": float(np.exp(np.mean(np.log(loss)))),
            "predicted": float(pred), "ratio": mean / pred, "ratio_ci": [lo / pred, hi / pred],
            "ratio_ci_equivalence": [elo / pred, ehi / pred],
            "level_equivalent": bool(RATIO_BAND[0] <= elo / pred and ehi / pred <= RATIO_BAND[1]),
            "fits": len(sel), "merged": n_merged, "merged_fraction": n_merged / len(sel),
            "weak_sd": float(weak_sd), "half_separation": term["half_separation"],
            "resolved": bool(weak_sd <= RESOLVED_SD_FRACTION * term["half_separation"]),
            "l2_median": float(np.median([r["l2_error"] for r in sel])),
            **{f"{part}_mean": float(np.mean([r[f"loss_{part}"] for r in sel]))
               for part in ("mass", "beta1", "eta")},
            **_status_counts(sel),
        }
        out.append(entry)
    return out


def _per_n_problems(entry: dict[str, object]) -> list[str]:
    """Why one n fails the regime conditions (empty: it passes them)."""
    out = []
    if entry["merged_fraction"] > MAX_MERGED_FRACTION:
        out.append(f"{entry['merged']} of {entry['fits']} fits merged "
                   f"(> {MAX_MERGED_FRACTION:.0%})")
    if not entry["resolved"]:
        out.append(f"weak-direction sd {entry['weak_sd']:.3g} > {RESOLVED_SD_FRACTION:g} x "
                   f"half-separation {entry['half_separation']:.3g}")
    return out


def pooled_level(ratios: np.ndarray) -> dict[str, object]:
    """Equivalence test of the mean of ``L_1 / (C/sqrt(n))`` over pooled fits."""
    mean, lo, hi = _mean_ci(np.asarray(ratios, float), EQUIVALENCE_LEVEL)
    return {"ratio": mean, "ci": [lo, hi], "fits": int(len(ratios)),
            "equivalent": bool(RATIO_BAND[0] <= lo and hi <= RATIO_BAND[1])}


def regime_verdict(per_n: list[dict[str, object]], loss_by_n: dict[int, np.ndarray]
                   ) -> dict[str, object]:
    """The parametric-regime verdict of one (gate, t) (see the module docstring).

    Parameters
    ----------
    per_n:
        Entries of :func:`_per_n` (ascending n).
    loss_by_n:
        The ``L_1`` of the fits at each n, for the slope from a candidate n on.

    Returns
    -------
    dict
        ``from`` (the smallest n from which every condition holds, or None), ``slope`` and
        ``level`` (the slope fit and pooled level test on those n; when not reached, on the
        widest window of n that passes the per-n checks, at least the last three n) and
        ``reason`` (why not reached; None when reached).
    """
    ns = [int(e["n"]) for e in per_n]

    def window(i: int) -> tuple[dict[str, object] | None, dict[str, object]]:
        n = np.concatenate([np.full(len(loss_by_n[m]), m, float) for m in ns[i:]])
        loss = np.concatenate([loss_by_n[m] for m in ns[i:]])
        ratios = np.concatenate([loss_by_n[e["n"]] / e["predicted"] for e in per_n[i:]])
        return slope_fit(n, loss), pooled_level(ratios)

    def window_ok(fit: dict[str, object] | None, level: dict[str, object]) -> bool:
        return (fit is not None and fit["ci"][0] <= -0.5 <= fit["ci"][1]
                and bool(level["equivalent"]))

    best, widest = None, len(ns)
    for i in range(len(ns) - 1, -1, -1):
        if _per_n_problems(per_n[i]):
            break
        widest = i
        fit, level = window(i)
        if window_ok(fit, level):
            best = {"from": ns[i], "slope": fit, "level": level, "reason": None}
    if best is not None:
        return best
    # why not: the per-n checks that fail (at the largest n, or at the n below the few that
    # pass them), else the slope and level of the widest window those checks allow
    if len(ns) < 3:
        return {"from": None, "slope": None, "level": None, "reason": "fewer than 3 values of n"}
    i = min(widest, len(ns) - 3)
    fit, level = window(i)
    if widest == len(ns):
        reasons = [f"at n = {ns[-1]}: " + "; ".join(_per_n_problems(per_n[-1]))]
    elif widest > len(ns) - 3:
        reasons = [f"at n = {ns[widest - 1]}: " + "; ".join(_per_n_problems(per_n[widest - 1]))
                   + f" (the per-n checks hold only from n = {ns[widest]}, fewer than 3 n)"]
    else:
        reasons = []
        if not fit["ci"][0] <= -0.5 <= fit["ci"][1]:
            reasons.append(f"slope over n >= {ns[i]} {fit['slope']:+.2f} "
                           f"[{fit['ci'][0]:+.2f}, {fit['ci'][1]:+.2f}] excludes -1/2")
        if not level["equivalent"]:
            reasons.append(f"pooled ratio over n >= {ns[i]} {level['ratio']:.2f}, "
                           f"{EQUIVALENCE_LEVEL:.0%} CI [{level['ci'][0]:.2f}, "
                           f"{level['ci'][1]:.2f}] not inside [{RATIO_BAND[0]}, {RATIO_BAND[1]}]")
        if not reasons:  # a passing wide window whose narrower ones fail: say so
            reasons.append(f"no window of n passes both tests from n = {ns[i]} on")
    return {"from": None, "slope": fit, "level": level, "reason": "; ".join(reasons)}


def expansion_label(gamma: float, p1: float | None, per_n: list[dict[str, object]]) -> str:
    """``inside`` when a schedule tests the first-order expansion, else why it does not."""
    if p1 is None:
        return "no exponent"
    if gamma * p1 > EXPANSION_LIMIT:
        return f"outside the expansion (gamma p_1 = {gamma * p1:.2f} > {EXPANSION_LIMIT:g})"
    unresolved = [e["n"] for e in per_n if not e["resolved"]]
    if unresolved:
        return f"weak direction unresolved at n = {', '.join(map(str, unresolved))}"
    return "inside"


def _case_exponent(cfg: NearConfig, mechanism: dict[str, object],
                   gate: GateKind) -> dict[str, object] | None:
    """Mechanism-table entry of the fitted cluster (default base, 2 atoms) under ``gate``."""
    act = cfg.gate(gate).activation_name
    for case in mechanism["cases"]:  # type: ignore[union-attr]
        if (case["base"], case["size"], case["expert"], case["split"], case["gate"],
                case["activation"]) == ("default", 2, cfg.expert, cfg.split, gate, act):
            return case
    return None


def group_rows(records: list[dict[str, object]], kind: str, value: float,
               gate: GateKind) -> list[dict[str, object]]:
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
            terms = {t: fisher_terms(cfg.truth(gate, t), cfg.noise_sd, cfg.seed) for t in ts}
            per_n = _per_n(rows, cfg, kind, value, terms)
            n = np.array([r["n"] for r in rows], float)
            loss = np.array([r["voronoi_loss"] for r in rows], float)
            capped = np.array([r["status"] == "capped" for r in rows])
            entry: dict[str, object] = {
                "gate": gate, "activation": cfg.gate(gate).activation_name,
                "per_n": per_n, "slope": slope_fit(n, loss, capped), **_status_counts(rows),
                "fits": len(rows), "at_bound": sum(bool(r["at_bound"]) for r in rows),
                "merged": sum(merged(r) for r in rows),
            }
            if kind == "fixed":
                term = terms[round(value, 12)]
                entry["C"] = term["C"]
                entry["G"] = term["G"]
                entry["weak_share"] = term["weak_share"]
                entry["lambda_min"] = float(near.fisher_eigenvalues(cfg.truth(gate, value))[0])
                verdict = regime_verdict(per_n, {e["n"]: loss[n == e["n"]] for e in per_n})
                entry["parametric_from"] = verdict["from"]
                entry["regime_slope"] = verdict["slope"]
                entry["regime_level"] = verdict["level"]
                entry["not_reached_because"] = verdict["reason"]
                fixed.setdefault(f"{value:g}", {})[gate] = entry
            else:
                ns = np.array([e["n"] for e in per_n], float)
                geo = np.array([terms[round(e["t"], 12)]["G"] / np.sqrt(e["n"]) for e in per_n])
                entry["predicted_slope_fisher"] = float(np.polyfit(np.log(ns), np.log(geo), 1)[0])
                entry["predicted_intercept_fisher"] = float(
                    np.polyfit(np.log(ns), np.log(geo), 1)[1])
                entry["exponent_p1"] = p1
                entry["predicted_slope_asymptotic"] = (
                    None if p1 is None else float(value * p1 / 2 - 0.5))
                entry["t_range"] = [per_n[0]["t"], per_n[-1]["t"]]
                entry["expansion"] = expansion_label(value, p1, per_n)
                fit = entry["slope"]
                entry["prediction_in_ci"] = (
                    None if entry["expansion"] != "inside" or fit is None
                    else bool(fit["ci"][0] <= entry["predicted_slope_fisher"] <= fit["ci"][1]))
                entry["regime_all_n"] = all(not _per_n_problems(e) for e in per_n)
                schedule.setdefault(f"{value:g}", {})[gate] = entry
    counts = _status_counts(records)
    return {"fixed": fixed, "schedule": schedule, "status_counts": counts,
            "criterion": (
                f"parametric from n: at that n and every larger n, at most "
                f"{MAX_MERGED_FRACTION:.0%} of the fits merged, weak-direction sd <= "
                f"{RESOLVED_SD_FRACTION:g} x half-separation; on those n pooled (>= 3 n), the "
                f"{EQUIVALENCE_LEVEL:.0%} t-interval of mean L_1 / (C(t)/sqrt(n)) inside "
                f"[{RATIO_BAND[0]}, {RATIO_BAND[1]}] (equivalence test) and the L_1 slope with "
                f"a 95% CI containing -1/2"),
            "expansion_limit": EXPANSION_LIMIT,
            "init": "near-truth (oracle starts; measures the statistical rate, not "
                    "optimisation)"}
