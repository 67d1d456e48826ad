"""Figure of E5 (near-coincident prompts): ``convergence_near.{png,pdf}``.

Three panels, read from a run directory's ``near.json`` (numbers are never recomputed here):

(a) the smallest Fisher eigenvalue ``lambda_min(t)`` of the fitted cluster for each gate, log-log,
    with the fitted exponent ``p_1`` in the legend (dashed: the fitted power line);
(b) mean ``L_1`` (95% CI) against ``n`` at each fixed separation ``t``, with the Fisher
    predictions ``C(t)/sqrt(n)`` as thin dashed lines (and a dotted mark where the replicates
    drop, ``reduced_above``, e.g. in the full preset);
(c) the schedules ``t_n = t_0 (n/n_0)^-gamma``: the geometric mean of ``L_1`` (the mean whose
    slope is fitted) against ``n`` with the measured slope (95% CI); the slope the Fisher curve
    predicts, dashed, only for schedules inside the expansion's range (the others faded and
    labelled "outside the expansion").

Artists carry gids (``lambda:<gate>``, ``fixed:<gate>:<t>``, ``fisher:<gate>:<t>``,
``schedule:<gate>:<gamma>``, ``predicted:<gate>:<gamma>``, ``reduced``) so tests can find them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from figures.runs import RunFormatError
from figures.style import figure_size, figure_style, gate_color, gate_label, save_figure

_MARKERS = ("o", "s", "^", "D", "v")
_DASHES = ((0, ()), (0, (4, 1.5)), (0, (1, 1.2)), (0, (5, 1.5, 1, 1.5)))


def read_near(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``near.json`` of a run directory (one-line :class:`RunFormatError` when unusable)."""
    run = Path(path)
    file = run / "near.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFormatError(f"{run}: cannot read near.json ({err})") from err
    if data.get("kind") != "near" or data.get("version") != 1:
        raise RunFormatError(f"{run}: near.json is not kind 'near' version 1")
    return data


def _fitted_case(near: Mapping[str, Any], gate: str) -> Mapping[str, Any] | None:
    cfg = near["config"]
    act = "none" if gate == "linear" else cfg["activation"]
    for case in near["mechanism"]["cases"]:
        if (case["base"], case["size"], case["expert"], case["split"], case["gate"],
                case["activation"]) == ("default", 2, cfg["expert"], cfg["split"], gate, act):
            return case
    return None


def _gates(near: Mapping[str, Any]) -> list[str]:
    return sorted(near["config"]["gates"], key=lambda g: 0 if g == "linear" else 1)


def _legend_below(ax: Any) -> None:
    """Legend under the axes, so it never hides data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=5.8, frameon=False,
              handlelength=2.6)


def _panel_spectrum(ax: Any, near: Mapping[str, Any]) -> None:
    act = near["config"]["activation"]
    for gate in _gates(near):
        case = _fitted_case(near, gate)
        if case is None:
            continue
        t = np.asarray(case["t"])
        lam = np.asarray(case["lambda_smallest"])[:, 0]
        ok = lam > np.asarray(case["floor"])
        fit = case["exponents"][0]
        label = gate_label(gate, act)
        if fit is not None:
            label += f": $p_1 = {fit['p']:.2f}$"
        (line,) = ax.plot(t[ok], lam[ok], marker="o" if gate == "linear" else "s", markersize=3,
                          color=gate_color(gate), label=label)
        line.set_gid(f"lambda:{gate}")
        if fit is not None:
            used = fit["t_used"]
            grid = np.geomspace(min(used) / 1.3, max(used) * 1.3, 20)
            ax.plot(grid, fit["c"] * grid ** fit["p"], color=gate_color(gate), linewidth=0.8,
                    linestyle=(0, (3, 1.5)), alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("separation $t$")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(r"$\lambda_{\min}(I(t))$")
    ax.set_title(r"(a) Fisher: $\lambda_{\min} \sim t^{p_1}$", loc="left")
    _legend_below(ax)


def _mean_errorbar(ax: Any, per_n: list[Mapping[str, Any]], **kw: Any) -> Any:
    n = np.array([e["n"] for e in per_n], float)
    mean = np.array([e["mean"] for e in per_n])
    lo = np.array([e["mean_ci"][0] for e in per_n])
    hi = np.array([e["mean_ci"][1] for e in per_n])
    lo = np.where(np.isfinite(lo) & (lo > 0), lo, mean / 3)
    hi = np.where(np.isfinite(hi), hi, mean)
    return ax.errorbar(n, mean, yerr=[mean - lo, hi - mean], markersize=3, capsize=1.5,
                       elinewidth=0.6, **kw)


def _label_line_ends(ax: Any, ends: list[tuple[float, float, str, Any]],
                     min_ratio: float = 1.45) -> None:
    """Label line ends at the right edge, nudging labels apart (log y) so none overlap."""
    placed: list[float] = []
    for y, x, text, color in sorted(ends):
        y_text = max([y, *(p * min_ratio for p in placed[-1:])])
        placed.append(y_text)
        ax.annotate(text, (x, y), xytext=(x * 1.08, y_text), textcoords="data", fontsize=5,
                    color=color, va="center", annotation_clip=False)


def _panel_fixed(ax: Any, near: Mapping[str, Any]) -> None:
    act = near["config"]["activation"]
    ends: list[tuple[float, float, str, Any]] = []  # Fisher line ends: (y, x, text, colour)
    for i, (t_key, by_gate) in enumerate(near["fixed"].items()):
        for gate in _gates(near):
            e = by_gate.get(gate)
            if e is None:
                continue
            color = gate_color(gate)
            reg = e["parametric_from"]
            label = f"{gate_label(gate, act)}, $t={t_key}$" + (
                f" (Fisher from $n\\approx${reg:g})" if reg is not None else " (not reached)")
            cont = _mean_errorbar(ax, e["per_n"], color=color, marker=_MARKERS[i % 5],
                                  linestyle=_DASHES[i % 4], linewidth=1.0, label=label)
            cont.lines[0].set_gid(f"fixed:{gate}:{t_key}")
            n = np.array([p["n"] for p in e["per_n"]], float)
            (fl,) = ax.plot(n, e["C"] / np.sqrt(n), color=color, linewidth=0.6, alpha=0.6,
                            linestyle=(0, (2, 2)))
            fl.set_gid(f"fisher:{gate}:{t_key}")
            ends.append((e["C"] / np.sqrt(n[-1]), n[-1], f"$t={t_key}$", color))
    _label_line_ends(ax, ends)
    cfg = near["config"]
    if cfg.get("reduced_above") is not None:  # fewer replicates at the largest n: say where
        (mark,) = ax.plot([cfg["reduced_above"]] * 2, [0.02, 0.98], color="0.55", linewidth=0.6,
                          linestyle=(0, (1, 1.5)), transform=ax.get_xaxis_transform())
        mark.set_gid("reduced")
        for factor, count, side in ((0.85, cfg["replicates"], "right"),
                                    (1.18, cfg["reduced_replicates"], "left")):
            ax.text(cfg["reduced_above"] * factor, 0.97, f"R = {count}", fontsize=5,
                    color="0.4", va="top", ha=side, transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size $n$")
    ax.set_ylabel(r"mean $\mathcal{L}_1$ (95% CI)")
    ax.set_title(r"(b) fixed $t$; thin dashed: $C(t)/\sqrt{n}$", loc="left")
    _legend_below(ax)


def _panel_schedule(ax: Any, near: Mapping[str, Any]) -> None:
    cfg = near["config"]
    act = cfg["activation"]
    for i, (g_key, by_gate) in enumerate(near["schedule"].items()):
        for gate in _gates(near):
            e = by_gate.get(gate)
            if e is None:
                continue
            color = gate_color(gate)
            s = e["slope"]
            inside = e.get("expansion") == "inside"
            measured = ("--" if s is None else
                        f"{s['slope']:+.2f} [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}]")
            status = e.get("expansion", "")
            note = (f"pred. {e['predicted_slope_fisher']:+.2f}" if inside
                    else "outside the expansion" if status.startswith("outside")
                    else "weak direction unresolved")
            label = (f"{gate_label(gate, act)}, $\\gamma={g_key}$: {measured}, {note}"
                     ).replace("-", "\u2212")
            n = np.array([p["n"] for p in e["per_n"]], float)
            geo = np.array([p["geomean"] for p in e["per_n"]])
            (line,) = ax.plot(n, geo, color=color, marker=_MARKERS[i % 5], markersize=3,
                              linestyle=_DASHES[i % 4], linewidth=1.0, label=label,
                              alpha=1.0 if inside else 0.45)
            line.set_gid(f"schedule:{gate}:{g_key}")
            if inside:  # the prediction is only compared where the expansion holds
                pred = np.exp(e["predicted_intercept_fisher"]
                              + e["predicted_slope_fisher"] * np.log(n))
                (pl,) = ax.plot(n, pred, color=color, linewidth=0.6, alpha=0.6,
                                linestyle=(0, (2, 2)))
                pl.set_gid(f"predicted:{gate}:{g_key}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size $n$")
    ax.set_ylabel(r"geometric mean $\mathcal{L}_1$")
    ax.set_title(f"(c) $t_n = {cfg['t0']:g}(n/{cfg['schedule_n0']})^{{-\\gamma}}$; dashed: "
                 "Fisher (tested only)", loc="left")
    _legend_below(ax)


def plot_near(near: Mapping[str, Any], out_stem: str | os.PathLike[str] | None = None) -> Figure:
    """The three-panel E5 figure from a loaded ``near.json``; saved as PDF and PNG if asked."""
    cfg = near["config"]
    with figure_style():
        fig = Figure(figsize=figure_size("two", aspect=0.64))
        axes = fig.subplots(1, 3)
        _panel_spectrum(axes[0], near)
        _panel_fixed(axes[1], near)
        _panel_schedule(axes[2], near)
        fig.suptitle(
            f"E5 near-coincident prompts: $L = L\u2032 = 2$, {cfg['expert']} experts split "
            f"'{cfg['split']}', noise sd {cfg['noise_sd']:g}, near-truth starts",
            fontsize=8.5, y=0.995,
        )
        fig.tight_layout(pad=0.4, w_pad=1.0)
        if out_stem is not None:
            save_figure(fig, out_stem)
    return fig


def near_figure_for_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw ``convergence_near.{pdf,png}`` into a run directory that holds ``near.json``."""
    near = read_near(run_dir)
    return save_figure(plot_near(near), Path(run_dir) / "convergence_near")
