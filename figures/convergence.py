"""Convergence figures of the rates experiments (moe-theory spec, sections 5.2-5.6).

What they show: the Voronoi loss L_1 of the least-squares estimator against the sample size n
on log-log axes, one curve per gate (the mean with its 95 % confidence band for the
exact-specified setting, the median with the inter-quartile band for the over-specified ones,
always with faint replicate points), the fitted slope with its confidence interval in the
legend (read from ``summary.json``, never refitted here; of the per-n means or medians, as
plotted), grey reference rates n^-1/2, n^-1/4 and 1/log n named in their own legend, and the
Fisher prediction C/sqrt(n) where the run computed it. A second panel shows the L2
error of the regression function, which converges at about n^-1/2 for both gates (Thm 4.1).
For over-specified settings a loss-parts figure splits L_1 into mass, beta_1 and eta parts.

Medians for the over-specified settings: their fits have heavy-tailed losses
(docs/theory-background.md#reference-numbers), and the band is the IQR so one wild replicate
cannot stretch it.

Artists carry gids (``mean:<curve>`` and ``ci:<curve>`` or ``median:<curve>`` and
``iqr:<curve>``, ``points:<curve>``, ``fisher:<curve>``, ``ref:<name>``) so tests and users can
find them again.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from figures.aggregate import MeanCurve, QuantileCurve, mean_curve, quantile_curve
from figures.style import (
    GATE_MARKERS,
    REFERENCE_GREY,
    figure_size,
    figure_style,
    gate_color,
    gate_label,
    save_figure,
)

logger = logging.getLogger(__name__)

Record = Mapping[str, Any]

#: Short description of each rates setting, used in figure titles.
SETTING_TITLES: dict[str, str] = {
    # U+2032 PRIME inside the math: mathtext sets both "L'" and "L^\prime" as a detached tick
    "exact": "E1 exact-specified ($L\u2032 = L = 1$), affine experts",
    "over": "E2 over-specified ($L\u2032 = 2$, $L = 1$), affine experts (gate contrast "
            "heuristic)",
    "over-tanh": "E3 over-specified ($L\u2032 = 2$, $L = 1$), tanh experts",
}

#: Reference rates drawn in grey: name -> (mathtext label, line style, function of n).
REFERENCE_RATES: dict[str, tuple[str, Any, Any]] = {
    "n^-1/2": (r"$n^{-1/2}$", (0, (4, 2)), lambda n: n**-0.5),
    "n^-1/4": (r"$n^{-1/4}$", (0, (1, 1.5)), lambda n: n**-0.25),
    "1/log n": (r"$1/\log n$", (0, (5, 1.5, 1, 1.5)), lambda n: 1.0 / np.log(n)),
}

LOSS_PARTS: dict[str, str] = {
    "loss_mass": r"mass part",
    "loss_beta1": r"$\beta_1$ part",
    "loss_eta": r"$\eta$ part",
}

_GATE_ORDER = {"linear": 0, "norga": 1}


# ----------------------------------------------------------------------------- grouping


def _group_curves(records: Sequence[Record]) -> dict[tuple[str, str], list[Record]]:
    """Split fit rows into curves keyed by (gate, activation), linear first."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for rec in records:
        key = (str(rec["gate"]), str(rec.get("activation", "none") or "none"))
        groups.setdefault(key, []).append(rec)
    return dict(sorted(groups.items(), key=lambda kv: (_GATE_ORDER.get(kv[0][0], 9), kv[0][1])))


def _curve_id(gate: str, activation: str, n_acts: int) -> str:
    return gate if n_acts <= 1 else f"{gate}-{activation}"


def _summary_entry(
    summary_setting: Mapping[str, Any], gate: str, activation: str, n_acts: int
) -> Mapping[str, Any] | None:
    """The summary entry of one curve: keyed by gate, or by gate-activation when a gate has
    several activations in one setting."""
    candidates = [f"{gate}-{activation}", f"{gate}_{activation}"]
    if n_acts <= 1:
        candidates.insert(0, gate)
    for key in candidates:
        if key in summary_setting:
            return summary_setting[key]
    return None


def _filter(records: Sequence[Record], converged_only: bool) -> list[Record]:
    if not converged_only:
        return list(records)
    return [r for r in records if bool(r.get("converged", True))]


# ----------------------------------------------------------------------------- labels


def format_number(x: float, digits: int = 2) -> str:
    """``x`` with a fixed number of decimals and a typographic minus sign."""
    return f"{x:.{digits}f}".replace("-", "\u2212")


def slope_label(
    name: str, entry: Mapping[str, Any] | None, slope_key: str = "slope", ci_key: str = "slope_ci"
) -> str:
    """Legend text ``"NoRGa (tanh): slope -0.52 [-0.58, -0.46]"`` from a summary entry.

    Parameters
    ----------
    name:
        Display name of the curve.
    entry:
        ``summary["settings"][setting][gate]``; when ``None`` or lacking the slope, the label
        is just ``name``.
    slope_key, ci_key:
        Which slope of the entry to show (``slope``/``slope_ci``, ``slope_median``/
        ``slope_median_ci`` or ``l2_slope``/``l2_slope_ci``).
    """
    if not entry or entry.get(slope_key) is None or not math.isfinite(float(entry[slope_key])):
        return name
    text = f"{name}: slope {format_number(float(entry[slope_key]))}"
    ci = entry.get(ci_key)
    if ci is not None and len(ci) == 2 and all(c is not None for c in ci):
        text += f" [{format_number(float(ci[0]))}, {format_number(float(ci[1]))}]"
    return text


# ----------------------------------------------------------------------------- drawing


def _draw_curve(
    ax: Axes,
    recs: Sequence[Record],
    key: str,
    curve_id: str,
    gate: str,
    label: str,
    n_used: Sequence[float] | None,
    points: bool,
    statistic: str = "median",
) -> QuantileCurve | MeanCurve:
    """One gate's curve: the median with its IQR band (gids ``median:``/``iqr:``) or the mean
    with its 95 % CI band (gids ``mean:``/``ci:``), plus the replicates as faint points."""
    color = gate_color(gate)
    marker = GATE_MARKERS.get(gate, "D")
    curve: QuantileCurve | MeanCurve
    if statistic == "mean":
        curve = mean_curve(recs, key)
        center, lo, hi, names = curve.mean, curve.lo, curve.hi, ("mean", "ci")
    else:
        curve = quantile_curve(recs, key)
        center, lo, hi, names = curve.median, curve.q25, curve.q75, ("median", "iqr")
    if curve.n.size == 0:
        logger.warning("curve %s has no positive finite %s values; skipped", curve_id, key)
        return curve
    if points:
        xs = np.asarray([float(r["n"]) for r in recs])
        ys = np.asarray([float(r[key]) for r in recs])
        ok = np.isfinite(ys) & (ys > 0)
        sc = ax.scatter(xs[ok], ys[ok], s=4, color=color, alpha=0.22, linewidths=0,
                        zorder=2, rasterized=False)
        sc.set_gid(f"points:{curve_id}")
    band = ax.fill_between(curve.n, lo, hi, color=color, alpha=0.18, linewidth=0, zorder=1)
    band.set_gid(f"{names[1]}:{curve_id}")
    (line,) = ax.plot(curve.n, center, color=color, marker=marker, markersize=3.2,
                      label=label, zorder=4)
    line.set_gid(f"{names[0]}:{curve_id}")
    if n_used:
        # Open markers flag the n values that did not enter the slope fit (pre-asymptotic).
        used = {float(v) for v in n_used}
        out = np.asarray([n not in used for n in curve.n])
        if out.any():
            (hollow,) = ax.plot(curve.n[out], center[out], linestyle="none", marker=marker,
                                markersize=3.2, markerfacecolor="white", markeredgecolor=color,
                                zorder=5)
            hollow.set_gid(f"excluded:{curve_id}")
    return curve


def _draw_references(
    ax: Axes, n_min: float, n_max: float, y0: float, names: Sequence[str]
) -> list[float]:
    """Grey reference rates, all through (n_min, y0), over the sampled range of n only. They are
    named in a legend of their own in the lower right corner (in the strip kept free of data
    for the legends), never by labels on the lines, which bands and points could cover."""
    grid = np.geomspace(n_min, n_max, 60)
    ends = []
    handles = []
    for name in names:
        text, style, fn = REFERENCE_RATES[name]
        ys = y0 * fn(grid) / fn(n_min)
        (line,) = ax.plot(grid, ys, color=REFERENCE_GREY, linestyle=style, linewidth=0.8,
                          zorder=0.5, label="_nolegend_")
        line.set_gid(f"ref:{name}")
        handles.append(Line2D([], [], color=REFERENCE_GREY, linestyle=style, linewidth=0.8,
                              label=f"rate {text}"))
        ends.extend([ys[0], ys[-1]])
    # lower right: inside the strip that _set_ylim_with_legend_room keeps free of data, beside
    # the gates' legend in the lower left
    refs = ax.legend(handles=handles, loc="lower right", handlelength=2.6, borderaxespad=0.4)
    refs.set_gid("legend:references")
    ax.add_artist(refs)  # the gate legend drawn later does not replace it
    return ends


def draw_rate_panel(
    ax: Axes,
    records: Sequence[Record],
    summary_setting: Mapping[str, Any],
    *,
    key: str = "voronoi_loss",
    slope_key: str = "slope",
    ci_key: str = "slope_ci",
    references: Sequence[str] = ("n^-1/2", "n^-1/4", "1/log n"),
    fisher: bool = True,
    points: bool = True,
    converged_only: bool = False,
    ylabel: str | None = None,
    statistic: str = "median",
) -> dict[str, QuantileCurve | MeanCurve]:
    """Draw one log-log panel: ``record[key]`` vs n for every gate of one setting.

    Parameters
    ----------
    ax:
        Axes to draw into.
    records:
        Fit rows of one setting (``fits.csv`` rows, typed).
    summary_setting:
        ``summary["settings"][setting]``: ``{gate: entry}`` with the fitted slopes.
    key:
        Column drawn on the y axis.
    slope_key, ci_key:
        Summary fields shown in the legend.
    references:
        Names from :data:`REFERENCE_RATES` to draw in grey.
    fisher:
        Draw ``fisher_C / sqrt(n)`` per gate when the entry has a finite ``fisher_C``.
    points:
        Draw the individual replicates as faint points.
    converged_only:
        Drop fits with ``converged == False`` (all fits are drawn by default).
    ylabel:
        y-axis label.
    statistic:
        ``"median"`` (median and inter-quartile band) or ``"mean"`` (mean and 95 % t CI of the
        mean): the statistic of the curve, which should be the one the legend's slope was
        fitted to.

    Returns
    -------
    dict
        The plotted :class:`~figures.aggregate.QuantileCurve` or
        :class:`~figures.aggregate.MeanCurve` per curve id.
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    groups = _group_curves(_filter(records, converged_only))
    acts_per_gate: dict[str, int] = {}
    for gate, _ in groups:
        acts_per_gate[gate] = acts_per_gate.get(gate, 0) + 1
    curves: dict[str, QuantileCurve | MeanCurve] = {}
    y_values: list[float] = []
    fisher_drawn = False
    for (gate, act), recs in groups.items():
        n_acts = acts_per_gate[gate]
        cid = _curve_id(gate, act, n_acts)
        entry = _summary_entry(summary_setting, gate, act, n_acts)
        if entry is None and summary_setting:
            logger.warning("no summary entry for gate %s (%s); legend shows no slope", gate, act)
        label = slope_label(gate_label(gate, act), entry, slope_key, ci_key)
        curve = _draw_curve(ax, recs, key, cid, gate, label,
                            (entry or {}).get("n_used"), points, statistic)
        if curve.n.size == 0:
            continue
        curves[cid] = curve
        if isinstance(curve, MeanCurve):
            y_values.extend([*curve.lo, *curve.hi, *curve.mean])
        else:
            y_values.extend([*curve.q25, *curve.q75, *curve.median])
        if points:
            # Keep most replicate points in view; only the extreme 5% per side may be clipped.
            vals = [float(r[key]) for r in recs]
            pos = [v for v in vals if math.isfinite(v) and v > 0]
            y_values.extend(np.quantile(pos, [0.05, 0.95]).tolist() if pos else [])
        c_fisher = (entry or {}).get("fisher_C")
        if fisher and c_fisher is not None and math.isfinite(float(c_fisher)) and c_fisher > 0:
            grid = np.geomspace(curve.n.min(), curve.n.max(), 40)
            # thin, solid, in the gate's colour, with "x" marks: never confused with the grey
            # dashed n^-1/2 reference of the same slope, nor with the median curves
            (fl,) = ax.plot(grid, float(c_fisher) / np.sqrt(grid), color=gate_color(gate),
                            linestyle="-", linewidth=0.7, alpha=0.85, zorder=3, marker="x",
                            markersize=2.6, markevery=6, markeredgewidth=0.7)
            fl.set_gid(f"fisher:{cid}")
            y_values.extend([float(c_fisher) / math.sqrt(curve.n.min()),
                             float(c_fisher) / math.sqrt(curve.n.max())])
            fisher_drawn = True
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size $n$")
    if ylabel:
        ax.set_ylabel(ylabel)
    if not curves:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        return curves
    n_min = min(c.n.min() for c in curves.values())
    n_max = max(c.n.max() for c in curves.values())
    start = max((c.mean if isinstance(c, MeanCurve) else c.median)[0] for c in curves.values())
    positive = [v for v in y_values if v > 0 and math.isfinite(v)]
    if references:
        # Anchor the references above the highest curve at the smallest n, so they show slopes
        # to compare by eye without hiding the data.
        y_values.extend(_draw_references(ax, n_min, n_max, 2.0 * start, references))
        positive = [v for v in y_values if v > 0 and math.isfinite(v)]
    ax.set_xlim(n_min / 1.15, n_max * 1.15)  # the axis ends at the data
    handles, labels = ax.get_legend_handles_labels()
    if fisher_drawn:
        handles.append(Line2D([], [], color="0.2", linestyle="-", linewidth=0.7, marker="x",
                              markersize=2.6, markeredgewidth=0.7))
        labels.append(r"Fisher prediction $C/\sqrt{n}$")
    if any(a.get_gid() and a.get_gid().startswith("excluded:") for a in ax.lines):
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=3.2,
                              markerfacecolor="white", markeredgecolor="0.2"))
        labels.append("open marker: not in slope fit")
    _set_ylim_with_legend_room(ax, min(positive), max(positive),
                               max(len(labels), len(references)))
    ax.legend(handles, labels, loc="lower left", handlelength=2.0, borderaxespad=0.4)
    return curves


def _set_ylim_with_legend_room(ax: Axes, lo: float, hi: float, n_entries: int) -> None:
    """Log y-limits that leave an empty strip at the bottom for the legend.

    The legend sits in the lower left; data never enter the strip, so it cannot hide them
    whatever the curves look like.
    """
    top = math.log10(hi * 1.6)
    bottom = math.log10(lo / 1.5)
    frac = min(0.06 * n_entries + 0.05, 0.6)  # share of the axes height the legend needs
    bottom -= (top - bottom) * frac / (1.0 - frac)
    ax.set_ylim(10**bottom, 10**top)


def plot_convergence(
    records: Sequence[Record],
    summary_setting: Mapping[str, Any],
    setting: str,
    out_stem: str | os.PathLike[str] | None = None,
    *,
    slope_key: str | None = None,
    converged_only: bool = False,
    statistic: str | None = None,
) -> Figure:
    """Convergence figure of one setting: (a) Voronoi loss L_1 vs n, (b) L2 error vs n.

    One statistic per panel, named on its y axis: for the exact-specified setting the **mean**
    over replicates with its 95 % t confidence band (the statistic of the Fisher check and of
    the fitted slopes, which regress the per-n means of ``log L``); for the over-specified
    settings, whose losses are heavy-tailed, the **median** with the inter-quartile band and
    the slope fitted to the per-n medians.

    Parameters
    ----------
    records:
        Typed ``fits.csv`` rows; rows of other settings are ignored.
    summary_setting:
        ``summary["settings"][setting]`` (``{gate: entry}``); the slopes and CIs shown in the
        legends are taken from it unchanged (``slope``/``slope_ci`` or
        ``slope_median``/``slope_median_ci`` for L_1, ``l2_slope``/``l2_slope_ci`` for L2).
    setting:
        ``exact``, ``over`` or ``over-tanh`` (any name is accepted).
    out_stem:
        When given, the figure is saved as ``<out_stem>.pdf`` and ``<out_stem>.png``.
    slope_key:
        The summary slope of panel (a); by default ``"slope"`` with means and
        ``"slope_median"`` with medians.
    converged_only:
        Drop non-converged fits before plotting.
    statistic:
        ``"mean"`` or ``"median"``; by default ``"mean"`` for ``exact`` and ``"median"``
        otherwise.

    Returns
    -------
    Figure
        Two axes: ``fig.axes[0]`` the Voronoi loss, ``fig.axes[1]`` the L2 error.
    """
    statistic = statistic or ("mean" if setting == "exact" else "median")
    slope_key = slope_key or ("slope" if statistic == "mean" else "slope_median")
    spread = "mean, 95% CI" if statistic == "mean" else "median, IQR"
    rows = [r for r in records if r.get("setting", setting) == setting]
    with figure_style():
        fig = Figure(figsize=figure_size("two", aspect=0.46))
        ax_loss, ax_l2 = fig.subplots(1, 2)
        draw_rate_panel(ax_loss, rows, summary_setting, key="voronoi_loss", slope_key=slope_key,
                        ci_key=f"{slope_key}_ci", converged_only=converged_only,
                        ylabel=rf"Voronoi loss $\mathcal{{L}}_1$ ({spread})", statistic=statistic)
        ax_loss.set_title(r"(a) parameters: Voronoi loss $\mathcal{L}_1$", loc="left")
        draw_rate_panel(ax_l2, rows, summary_setting, key="l2_error", slope_key="l2_slope",
                        ci_key="l2_slope_ci", references=("n^-1/2",), fisher=False,
                        converged_only=converged_only, statistic=statistic,
                        ylabel=r"$\Vert g_{\widehat{G}_n} - g_{G_*}\Vert_{L^2}$" + f" ({spread})")
        ax_l2.set_title(r"(b) regression function: $L^2$ error", loc="left")
        fig.suptitle(SETTING_TITLES.get(setting, f"setting {setting}"), fontsize=8.5, y=0.995)
        fig.tight_layout(pad=0.4, w_pad=1.2)
        if out_stem is not None:
            save_figure(fig, out_stem)
    return fig


def plot_loss_parts(
    records: Sequence[Record],
    setting: str,
    out_stem: str | os.PathLike[str] | None = None,
    *,
    converged_only: bool = False,
) -> Figure:
    """The three parts of L_1 (mass, beta_1, eta) vs n, median and IQR per gate.

    The split separates "gate parameters converge" (mass, beta_1) from "expert parameters
    converge" (eta), which is what distinguishes the gates in over-specified settings.

    Parameters
    ----------
    records:
        Typed ``fits.csv`` rows with ``loss_mass``, ``loss_beta1`` and ``loss_eta``.
    setting:
        Setting to draw; rows of other settings are ignored.
    out_stem:
        When given, save as PDF and PNG.
    converged_only:
        Drop non-converged fits before plotting.

    Returns
    -------
    Figure
        Three axes in the order mass, beta_1, eta.
    """
    rows = [r for r in records if r.get("setting", setting) == setting]
    with figure_style():
        fig = Figure(figsize=figure_size("two", aspect=0.36))
        axes = fig.subplots(1, 3)
        for i, (ax, (key, title)) in enumerate(zip(axes, LOSS_PARTS.items(), strict=True)):
            present = [r for r in rows if key in r]
            draw_rate_panel(ax, present, {}, key=key, references=("n^-1/2",), fisher=False,
                            points=False, converged_only=converged_only,
                            ylabel="median, IQR" if i == 0 else None)
            ax.set_title(f"({'abc'[i]}) {title}", loc="left")
            if i > 0 and ax.get_legend() is not None:
                ax.get_legend().remove()
        fig.suptitle(r"Parts of $\mathcal{L}_1$: " + SETTING_TITLES.get(setting, setting),
                     fontsize=8.5, y=0.995)
        fig.tight_layout(pad=0.4, w_pad=1.0)
        if out_stem is not None:
            save_figure(fig, out_stem)
    return fig


def convergence_figures_for_run(run: Any, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw every convergence figure of a rates run and return the files written.

    Parameters
    ----------
    run:
        A :class:`figures.runs.RatesRun` (or any object with ``settings``, ``records_for`` and
        ``summary_for``).
    out_dir:
        Folder for ``convergence_<setting>.{pdf,png}`` and, for settings other than ``exact``
        that record the loss parts, ``loss_parts_<setting>.{pdf,png}``.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    for setting in run.settings:
        rows = run.records_for(setting)
        fig = plot_convergence(rows, run.summary_for(setting), setting)
        written += save_figure(fig, out_dir / f"convergence_{setting}")
        if setting != "exact" and all(k in rows[0] for k in LOSS_PARTS):
            fig = plot_loss_parts(rows, setting)
            written += save_figure(fig, out_dir / f"loss_parts_{setting}")
    return written
