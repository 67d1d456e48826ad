"""Expert-usage figure: how often each prompt / prompt expert is selected, per task.

Reads the ``task_selection.json`` a CL run writes after every task (format in
:mod:`figures.runs`) and draws, as shares of each task's test samples:

* prompt methods with a task choice (NoRGa, HiDe-Prompt: the TII-selected prompt; the
  key-matched baselines: the matched prompt's task): evaluated task ``i`` (rows) against the
  prompt used (columns). A perfect task identity is the identity matrix; off-diagonal mass is
  the share of samples that ran with another task's prompt.
* SMoPE (prompt experts shared by all tasks): one panel per prompted layer, evaluated task
  (rows) against expert (columns), the selections summed over heads and normalised per task,
  so each row shows how that task's samples spread their top-K choices over the experts.

All panels share one colour scale (0 to the largest share). Task indices are 0-based, as in
``accuracy_matrix.csv``. Artists carry gids ``prompts`` and ``experts:layer<l>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import figure_style, save_figure


def prompt_shares(selection: Mapping[str, Any]) -> np.ndarray | None:
    """``(tasks evaluated, prompts)`` share of each task's test samples per selected prompt."""
    counts = selection.get("prompts")
    if counts is None:
        return None
    a = np.asarray(counts, dtype=float)
    totals = a.sum(axis=1, keepdims=True)
    return np.divide(a, totals, out=np.zeros_like(a), where=totals > 0)


def expert_shares(selection: Mapping[str, Any]) -> np.ndarray | None:
    """``(layers, tasks evaluated, experts)``: each task's expert selections summed over heads,
    as shares of that task's selections in the layer."""
    counts = selection.get("experts")
    if counts is None:
        return None
    a = np.asarray(counts, dtype=float).sum(axis=2)  # (tasks, layers, experts)
    a = np.transpose(a, (1, 0, 2))
    totals = a.sum(axis=2, keepdims=True)
    return np.divide(a, totals, out=np.zeros_like(a), where=totals > 0)


def plot_task_selection(
    selection: Mapping[str, Any], out_stem: str | os.PathLike[str] | None = None, *,
    title: str | None = None,
) -> Figure:
    """Prompt / expert usage per task from ``task_selection.json`` (see module docstring).

    Parameters
    ----------
    selection:
        Content of ``task_selection.json``.
    out_stem:
        When given, save as PDF and PNG.
    title:
        Figure title; by default it names the method and the evaluation.
    """
    prompts = prompt_shares(selection)
    experts = expert_shares(selection)
    if prompts is None and experts is None:
        raise ValueError("task_selection has neither 'prompts' nor 'experts' counts")
    panels: list[tuple[str, str, np.ndarray, str]] = []
    if prompts is not None:
        panels.append(("prompts", "selected prompt (task it belongs to)", prompts,
                       "prompt used"))
    if experts is not None:
        layer_ids = list(selection.get("layer_ids") or range(experts.shape[0]))
        for k, layer in enumerate(layer_ids):
            panels.append((f"experts:layer{layer}", f"layer {layer}", experts[k], "expert"))
    # percent everywhere: the colour bar and the cell numbers show the same values
    vmax = 100 * max(float(p[2].max()) for p in panels) or 100.0
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    with figure_style():
        wide = experts is not None
        fig = Figure(figsize=(6.8 if wide else 3.4, (1.6 if wide else 2.6) * nrows + 0.6),
                     layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        img = None
        for k, ax in enumerate(axes):
            if k >= len(panels):
                ax.set_visible(False)
                continue
            gid, name, share, xlabel = panels[k]
            img = ax.imshow(100 * share, cmap="magma_r", vmin=0, vmax=vmax, aspect="auto",
                            interpolation="nearest")
            img.set_gid(gid)
            n_tasks, n_cols = share.shape
            if gid == "prompts" and n_cols <= 10:
                for i in range(n_tasks):
                    for j in range(n_cols):
                        light = 100 * share[i, j] / vmax < 0.55
                        ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center",
                                fontsize=6.5, color="black" if light else "white")
                ax.set_xticks(range(n_cols), [str(j) for j in range(n_cols)])
            ax.set_yticks(range(n_tasks), [str(i) for i in range(n_tasks)])
            ax.set_title(name, loc="left", fontsize=7)
            ax.set_xlabel(xlabel if k // ncols == nrows - 1 or gid == "prompts" else "")
            ax.set_ylabel("evaluated task" if k % ncols == 0 else "")
            ax.grid(False)
            ax.tick_params(labelsize=5.5)
        if img is not None:
            cbar = fig.colorbar(img, ax=list(axes[:len(panels)]), fraction=0.03, pad=0.01)
            cbar.set_label("share of the task's test selections (%)" if experts is not None
                           else "share of the task's test samples (%)")
        after = selection.get("after_task")
        method = str(selection.get("method", "")).replace("norga", "NoRGa").replace(
            "smope", "SMoPE").replace("hide", "HiDe-Prompt")
        what = "experts per task" if experts is not None else "prompt choice per task"
        when = f", test sets after task {after} (0-based)" if after is not None else ""
        fig.suptitle(title or f"{method}: {what}{when}", fontsize=8)
        if out_stem is not None:
            save_figure(fig, out_stem)
        return fig


__all__ = ["expert_shares", "plot_task_selection", "prompt_shares"]
