"""Accuracy figures of the continual-learning runs (docs/cl-background.md#metrics).

- :func:`plot_accuracy_curves`: average accuracy over the tasks seen so far vs the number of
  tasks seen, mean +/- std over seeds, one line per method (one dataset and backbone).
- :func:`plot_accuracy_matrix`: the accuracy matrix A[t, i] of one run as a heatmap.
- :func:`plot_accuracy_matrices`: several matrices side by side on one colour scale (e.g.
  before and after the head alignment).
- :func:`plot_fa_bars`: final average accuracy per backbone and method (one dataset).
- :func:`plot_expert_frequency`: SMoPE expert activation frequency per layer and head.
- :func:`plot_task_selection`: which prompt (NoRGa / HiDe: the TII choice) or which experts
  (SMoPE) each task's test samples selected.
- :func:`plot_activation_ablation`: HiDe-Prompt vs NoRGa with tanh / sigmoid / GELU.

Conventions a reviewer can rely on: task indices are 0-based everywhere (as in
``accuracy_matrix.csv`` ``task_0...``, ``after_task`` and ``--stop-after-task``); "number of
tasks seen" is a count (1..T). Shaded bands and error bars are +/- 1 standard deviation over
seeds (``ddof=1``), clipped to [0, 100] %, and say so in the legend; results from a single seed
have no band and are labelled "1 seed". Bar axes start at 0 or show a broken-axis mark.
Heatmaps of accuracies use one fixed colour scale, 0-100 %.

Artists carry gids (``mean:<variant>``, ``std:<variant>``, ``bar:<group>:<variant>``,
``matrix``, ``freq:layer<l>``) so tests can read the plotted numbers back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from figures.aggregate import mean_std, seen_task_average
from figures.grouping import (
    group_by_setting,
    group_by_variant,
    legend_label,
    method_of,
    variant_colors,
    variant_label,
    variant_sort_key,
)
from figures.names import BACKBONE_LABELS, backbone_label, dataset_label
from figures.runs import CLRun
from figures.style import figure_size, figure_style, method_marker, save_figure

logger = logging.getLogger(__name__)

StemLike = str | os.PathLike[str] | None


def _finish(fig: Figure, out_stem: StemLike) -> Figure:
    fig.tight_layout(pad=0.4)
    if out_stem is not None:
        save_figure(fig, out_stem)
    return fig


def accuracy_curve(runs: Sequence[CLRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tasks seen (1..T), mean and std over runs of the seen-task average accuracy.

    Runs may be unfinished; the curve stops at the shortest run so every point averages the
    same seeds.
    """
    curves = [seen_task_average(r.accuracy_matrix) for r in runs]
    length = min(len(c) for c in curves)
    stacked = np.vstack([c[:length] for c in curves])
    mean = stacked.mean(axis=0)
    std = stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(length)
    return np.arange(1, length + 1, dtype=float), mean, std


def plot_accuracy_curves(
    runs: Sequence[CLRun], out_stem: StemLike = None, *, title: str | None = None
) -> Figure:
    """Accuracy vs number of tasks seen, mean +/- std over seeds, one line per method.

    Parameters
    ----------
    runs:
        CL runs of one dataset and backbone (several methods and seeds).
    out_stem:
        When given, save as PDF and PNG.
    title:
        Axes title; by default "<dataset>, <backbone>".

    Returns
    -------
    Figure
    """
    with figure_style():
        fig = Figure(figsize=figure_size("one", aspect=0.95))
        ax = fig.subplots()
        banded = False
        lows = [100.0]
        variants = group_by_variant(runs)
        colors = variant_colors(list(variants))
        split = any("[" in v for v in variants)
        markers = iter("osD^vP" * len(variants))  # configurations of one method, told apart
        for k, (variant, vruns) in enumerate(variants.items()):
            x, mean, std = accuracy_curve(vruns)
            color = colors[variant]
            single = len(vruns) == 1
            # Methods with equal accuracies would hide each other: each curve is shifted by a
            # small, fixed fraction of a task (the x values stay integers in the data).
            shift = DODGE * (k - (len(variants) - 1) / 2)
            if not single:  # +/- 1 std over seeds, never beyond what an accuracy can be
                band = ax.fill_between(x + shift, np.clip(mean - std, 0, 100),
                                       np.clip(mean + std, 0, 100), color=color, alpha=0.12,
                                       linewidth=0)
                band.set_gid(f"std:{variant}")
                banded = True
            marker = next(markers) if "[" in variant else method_marker(method_of(variant))
            (line,) = ax.plot(x + shift, mean, marker=marker, markersize=3.2, color=color,
                              markerfacecolor="white" if single else color,
                              linestyle="--" if single else "-",
                              label=f"{legend_label(variant)} ({len(vruns)} seed"
                                    f"{'s' if not single else ', no band'})")
            line.set_gid(f"mean:{variant}")
            lows.append(float(np.min(np.clip(mean - std, 0, 100))))
        ax.set_xlabel("number of tasks seen")
        ax.set_ylabel("average accuracy on seen tasks (%)")
        if runs:
            ax.set_title(title or f"{dataset_label(runs[0].dataset)}, "
                                  f"{backbone_label(runs[0].backbone)}", loc="left")
            ax.xaxis.set_major_locator(_integer_locator())
        ax.set_ylim(max(0.0, 10 * np.floor((min(lows) - 3) / 10)), 100.5)  # top: 100 %
        handles, labels = ax.get_legend_handles_labels()
        if banded:
            from matplotlib.patches import Patch

            handles.append(Patch(color="0.6", alpha=0.4, linewidth=0))
            labels.append("band: mean \u00b1 1 std over seeds")
        # Below the axes: curves of strong methods sit near the top, weak ones near the bottom,
        # so no corner inside the axes is reliably free.
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.27 if split
                                                                        else -0.2),
                  ncol=1 if split else 2,
                  frameon=False)
        return _finish(fig, out_stem)


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


#: Horizontal shift between neighbouring curves of an accuracy-vs-tasks plot (in tasks).
DODGE = 0.07

#: Colour scale of every accuracy heatmap (percent): fixed, so matrices compare across figures.
ACCURACY_RANGE = (0.0, 100.0)


def _draw_matrix(ax: Axes, matrix: np.ndarray, vmin: float, vmax: float) -> Any:
    """One accuracy heatmap, 0-based task indices, values in cells for <= 10 tasks."""
    n_rows, n_tasks = matrix.shape
    img = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=vmin, vmax=vmax,
                    aspect="auto", interpolation="nearest")
    img.set_gid("matrix")
    if n_tasks <= 10:
        for t in range(n_rows):
            for i in range(n_tasks):
                if np.isfinite(matrix[t, i]):
                    light = (matrix[t, i] - vmin) / max(vmax - vmin, 1e-9) > 0.6
                    ax.text(i, t, f"{matrix[t, i]:.0f}" if n_tasks > 6 else f"{matrix[t, i]:.1f}",
                            ha="center", va="center", fontsize=6.5,
                            color="black" if light else "white")
    ax.set_xticks(range(n_tasks), [str(i) for i in range(n_tasks)])
    ax.set_yticks(range(n_rows), [str(t) for t in range(n_rows)])
    ax.set_xlabel("evaluated task $i$")
    ax.set_ylabel("after training task $t$")
    ax.grid(False)
    return img


def plot_accuracy_matrices(
    matrices: Mapping[str, np.ndarray], out_stem: StemLike = None, *, title: str | None = None,
) -> Figure:
    """Accuracy matrices side by side on one colour scale (0-100 %) with one colour bar.

    Parameters
    ----------
    matrices:
        ``{panel title: matrix}`` (percent, nan above the diagonal), e.g. before and after the
        head alignment of one run.
    out_stem:
        When given, save as PDF and PNG.
    title:
        Figure title.
    """
    vmin, vmax = ACCURACY_RANGE
    with figure_style():
        fig = Figure(figsize=(3.3 * len(matrices) + 0.6, 2.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(matrices), squeeze=False)).ravel()
        img = None
        for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
            img = _draw_matrix(ax, np.asarray(matrix, dtype=float), vmin, vmax)
            img.set_gid(f"matrix:{name}")
            ax.set_title(name, loc="left", fontsize=7)
        if img is not None:
            cbar = fig.colorbar(img, ax=list(axes), fraction=0.04, pad=0.02)
            cbar.set_label("accuracy (%), one scale for all panels")
        if title:
            fig.suptitle(title, fontsize=8)
        if out_stem is not None:
            save_figure(fig, out_stem)
        return fig


def plot_accuracy_matrix(
    run: CLRun | np.ndarray, out_stem: StemLike = None, *, title: str | None = None
) -> Figure:
    """Heatmap of the accuracy matrix A[t, i] (row: after task t; column: task i; 0-based).

    Cells above the diagonal (tasks not seen yet) are blank; values are written in the cells
    when there are at most 10 tasks. The colour scale is always 0-100 %
    (:data:`ACCURACY_RANGE`), so heatmaps of different runs compare.

    Parameters
    ----------
    run:
        A :class:`~figures.runs.CLRun` or the matrix itself (percent, nan above the diagonal).
    out_stem:
        When given, save as PDF and PNG.
    title:
        Axes title; by default "<method>, <dataset>, <backbone>, seed <s>".
    """
    matrix = run.accuracy_matrix if isinstance(run, CLRun) else np.asarray(run, dtype=float)
    if title is None and isinstance(run, CLRun):
        title = (f"{variant_label(run.method)}, {dataset_label(run.dataset)}, "
                 f"{backbone_label(run.backbone)}, seed {run.seed}")
    with figure_style():
        fig = Figure(figsize=figure_size("one", aspect=0.85))
        ax = fig.subplots()
        img = _draw_matrix(ax, matrix, *ACCURACY_RANGE)
        cbar = fig.colorbar(img, ax=ax, fraction=0.05, pad=0.02)
        cbar.set_label("accuracy (%)")
        if title:
            ax.set_title(title, loc="left", fontsize=7)
        return _finish(fig, out_stem)


def _grouped_bars(
    ax: Axes,
    groups: Mapping[str, Mapping[str, Sequence[float]]],
    group_labels: Mapping[str, str],
    variants: Sequence[str],
    published: Mapping[tuple[str, str], float] | None = None,
) -> None:
    """Bars of mean +/- std per (group, variant); optional published values as markers."""
    width = 0.8 / max(len(variants), 1)
    colors = variant_colors(variants)
    for j, variant in enumerate(variants):
        for g, group in enumerate(groups):
            values = groups[group].get(variant)
            if not values:
                continue
            stats = mean_std(values)
            x = g - 0.4 + width * (j + 0.5)
            (bar,) = ax.bar(x, stats.mean, width=width * 0.92, color=colors[variant],
                            hatch=_hatch(variant), edgecolor="white", linewidth=0.3,
                            label=legend_label(variant) if group == _first_group(groups, variant)
                            else None)
            bar.set_gid(f"bar:{group}:{variant}")
            if len(values) > 1:
                lo = max(stats.mean - stats.std, 0.0)  # clipped to [0, 100]
                hi = min(stats.mean + stats.std, 100.0)
                ax.errorbar(x, stats.mean, yerr=[[stats.mean - lo], [hi - stats.mean]],
                            color="0.15", capsize=1.5, linewidth=0.7, capthick=0.7,
                            gid=f"err:{group}:{variant}")
            else:  # no spread to show: say so on the bar
                ax.annotate("1 seed", (x, stats.mean), xytext=(0, 1.5),
                            textcoords="offset points", ha="center", va="bottom", fontsize=4.5,
                            rotation=90, color="0.25", gid=f"single:{group}:{variant}")
            if published and (group, variant) in published:
                ax.plot(x, published[(group, variant)], marker="D", markersize=3,
                        markerfacecolor="white", markeredgecolor="black", linestyle="none",
                        zorder=5, gid=f"paper:{group}:{variant}")
    ax.set_xticks(range(len(groups)), [group_labels[g] for g in groups])
    ax.grid(axis="x", visible=False)


def _hatch(variant: str) -> str | None:
    # Activation variants of NoRGa share its hue; hatching keeps them apart in print.
    base = variant.split("[", 1)[0]
    return {"norga-tanh": "////", "norga-sigmoid": "....", "norga-gelu": "xxxx"}.get(base)


def _first_group(groups: Mapping[str, Mapping[str, Sequence[float]]], variant: str) -> str:
    return next(g for g in groups if groups[g].get(variant))


def _zoom_ylim(ax: Axes, values: Sequence[float]) -> None:
    """Zoom the bar axis to the data (accuracies near 90 % are unreadable from 0, the papers
    zoom too); when it then starts above 0, the axis gets a broken-axis mark at the bottom and
    the lowest tick says where it starts, so no bar length is read as a ratio."""
    vals = [v for v in values if np.isfinite(v)]
    if not vals:
        return
    lo = max(0.0, 5 * np.floor((min(vals) - 5) / 5))
    lo = 0.0 if lo < 20 else lo  # little to gain: start at 0
    ax.set_ylim(lo, min(100.0, max(vals) + 6))
    if lo > 0:
        _broken_axis_mark(ax)


def _broken_axis_mark(ax: Axes) -> None:
    """Two short parallel slashes across the bottom of the y axis (the usual "axis does not
    start at 0" sign), drawn in axes coordinates so they stay put."""
    kw = dict(transform=ax.transAxes, color="black", linewidth=0.8, clip_on=False, zorder=10)
    for dy in (0.0, 0.025):
        ax.plot([-0.018, 0.018], [0.02 + dy, 0.045 + dy], gid="broken-axis", **kw)
    ax.plot([-0.005, 0.005], [0.035, 0.035], transform=ax.transAxes, color="white",
            linewidth=2.0, clip_on=False, zorder=9)


def plot_fa_bars(
    runs: Sequence[CLRun], out_stem: StemLike = None, *, metric: str = "FA",
    title: str | None = None,
) -> Figure:
    """Final average accuracy (or another metric) per backbone and method, mean +/- std.

    Parameters
    ----------
    runs:
        CL runs of one dataset (any backbones, methods and seeds).
    out_stem:
        When given, save as PDF and PNG.
    metric:
        Key of ``metrics.json`` to plot (``FA`` by default).
    title:
        Axes title; by default the dataset name.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    all_variants: set[str] = set()
    for (_, backbone), sruns in group_by_setting(runs).items():
        for variant, vruns in group_by_variant(sruns).items():
            groups.setdefault(backbone, {})[variant] = [float(r.metrics[metric]) for r in vruns]
            all_variants.add(variant)
    # Backbones in the papers' order (Sup-21K first), unknown ones last.
    known = list(BACKBONE_LABELS)
    groups = dict(sorted(groups.items(), key=lambda kv: (
        known.index(kv[0]) if kv[0] in known else len(known), kv[0])))
    variants = sorted(all_variants, key=variant_sort_key)
    with figure_style():
        fig = Figure(figsize=figure_size("one" if len(groups) <= 2 else "two", aspect=0.7
                                         if len(groups) <= 2 else 0.35))
        ax = fig.subplots()
        _grouped_bars(ax, groups, {b: backbone_label(b) for b in groups}, variants)
        _zoom_ylim(ax, [v for g in groups.values() for vals in g.values() for v in vals])
        ax.set_ylabel(f"{metric} (%), mean \u00b1 1 std over seeds")
        if runs:
            ax.set_title(title or dataset_label(runs[0].dataset), loc="left")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12),
                  ncol=1 if any("[" in v for v in variants) else 3, frameon=False)
        return _finish(fig, out_stem)


def expert_frequency_array(freq: Mapping[str, Any]) -> np.ndarray:
    """``freq["layers"]`` as an array (layer, head, expert), normalised per (layer, head).

    Each row sums to one (a head with no selections stays all zero).
    """
    counts = np.asarray(freq["layers"], dtype=float)
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_expert_frequency(
    freq: Mapping[str, Any], out_stem: StemLike = None, *, title: str | None = None
) -> Figure:
    """SMoPE prompt-expert activation frequency: one heatmap per layer, heads x experts.

    Parameters
    ----------
    freq:
        Content of ``expert_frequency.json`` (see :mod:`figures.runs`).
    out_stem:
        When given, save as PDF and PNG.
    title:
        Figure title.
    """
    share = expert_frequency_array(freq)
    n_layers = share.shape[0]
    layer_ids = list(freq.get("layer_ids") or range(n_layers))
    ncols = min(n_layers, 3)
    nrows = int(np.ceil(n_layers / ncols))
    vmax = float(share.max()) if share.size else 1.0
    with figure_style():
        # Constrained layout keeps layer titles clear of the tick labels of the row above.
        fig = Figure(figsize=(6.8, 1.7 * nrows + 0.5), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        img = None
        for k, ax in enumerate(axes):
            if k >= n_layers:
                ax.set_visible(False)
                continue
            img = ax.imshow(share[k], cmap="rocket_r" if _has_rocket() else "magma_r", vmin=0,
                            vmax=vmax, aspect="auto", interpolation="nearest")
            img.set_gid(f"freq:layer{layer_ids[k]}")
            ax.set_title(f"layer {layer_ids[k]}", loc="left", fontsize=7)
            ax.set_yticks(range(share.shape[1]))  # heads are integers (0-based)
            ax.grid(False)
            ax.set_xlabel("expert" if k // ncols == nrows - 1 else "")
            ax.set_ylabel("head" if k % ncols == 0 else "")
            ax.tick_params(labelsize=5.5)
        if img is not None:
            cbar = fig.colorbar(img, ax=list(axes[:n_layers]), fraction=0.025, pad=0.01)
            cbar.set_label("share of selections")
        after = freq.get("after_task")
        suffix = f" (counted after task {int(after)}, 0-based)" if after is not None else ""
        fig.suptitle(title or f"SMoPE expert activation frequency per head{suffix}",
                     fontsize=8.5)
        if out_stem is not None:
            save_figure(fig, out_stem)
        return fig


def _has_rocket() -> bool:
    import matplotlib

    return "rocket_r" in matplotlib.colormaps


def plot_activation_ablation(
    runs: Sequence[CLRun],
    out_stem: StemLike = None,
    *,
    published: Mapping[tuple[str, str], float] | None = None,
    metric: str = "FA",
) -> Figure:
    """HiDe-Prompt vs NoRGa with each gate activation, mean +/- std FA per setting.

    Parameters
    ----------
    runs:
        CL runs; only ``hide`` runs and ``norga`` runs with a recorded ``gate_act`` are used.
    out_stem:
        When given, save as PDF and PNG.
    published:
        Optional published values keyed by (``"<dataset>/<backbone>"``, variant), drawn as open
        diamonds (variants ``hide``, ``norga-tanh``, ``norga-sigmoid``, ``norga-gelu``).
    metric:
        Key of ``metrics.json`` to plot.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    labels: dict[str, str] = {}
    for (dataset, backbone), sruns in group_by_setting(runs).items():
        key = f"{dataset}/{backbone}"
        chosen = [r for r in sruns
                  if r.method == "hide" or (r.method == "norga" and r.gate_act)]
        for variant, vruns in group_by_variant(chosen).items():
            if variant.split("[", 1)[0] == "norga":  # one activation: name it anyway
                variant = f"norga-{vruns[0].gate_act}{variant[len('norga'):]}"
            groups.setdefault(key, {})[variant] = [float(r.metrics[metric]) for r in vruns]
        if key in groups:
            short = dataset_label(dataset).replace("Split ", "")
            labels[key] = f"{short}\n{backbone_label(backbone)}"
    # configurations that differ in more than the activation keep their own bars
    variants = sorted({v for g in groups.values() for v in g}, key=variant_sort_key)
    with figure_style():
        fig = Figure(figsize=figure_size("one" if len(groups) <= 2 else "two", aspect=0.7
                                         if len(groups) <= 2 else 0.35))
        ax = fig.subplots()
        _grouped_bars(ax, groups, labels, variants, published)
        values = [v for g in groups.values() for vals in g.values() for v in vals]
        if published:
            values += [v for (g, _), v in published.items() if g in groups]
        _zoom_ylim(ax, values)
        ax.set_ylabel(f"{metric} (%), mean \u00b1 1 std over seeds")
        ax.set_title("Gate activation ablation", loc="left")
        handles, names = ax.get_legend_handles_labels()
        if published and any(a.get_gid() and a.get_gid().startswith("paper:") for a in ax.lines):
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], marker="D", markersize=3, markerfacecolor="white",
                                  markeredgecolor="black", linestyle="none"))
            names.append("paper")
        ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3,
                  frameon=False)
        return _finish(fig, out_stem)


__all__ = [
    "accuracy_curve",
    "expert_frequency_array",
    "plot_accuracy_curves",
    "plot_accuracy_matrix",
    "plot_activation_ablation",
    "plot_expert_frequency",
    "plot_fa_bars",
]
