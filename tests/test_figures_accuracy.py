"""Accuracy figures: curves, heatmaps, bars and expert frequencies show exactly the input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from figures.accuracy import (
    plot_accuracy_curves,
    plot_accuracy_matrix,
    plot_activation_ablation,
    plot_expert_frequency,
    plot_fa_bars,
)
from figures.runs import RunFormatError, find_runs, read_cl_run

T = 4


def write_cl_run(path: Path, method: str, backbone: str, seed: int, matrix: np.ndarray,
                 fa: float, gate_act: str | None = None, dataset: str = "cifar100") -> Path:
    """A CL run directory in the cl.py format (written independently of figures.examples)."""
    path.mkdir(parents=True)
    with (path / "accuracy_matrix.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["after_task", *[f"task_{i}" for i in range(matrix.shape[1])]])
        for t, row in enumerate(matrix):
            w.writerow([t, *["" if np.isnan(v) else repr(float(v)) for v in row]])
    metrics = {"FA": fa, "CA": fa + 1, "FM": 2.0, "TII_accuracy": 90.0, "TIL_accuracy": 95.0,
               "per_task": [], "method": method, "dataset": dataset, "backbone": backbone,
               "seed": seed}
    if gate_act:
        metrics["gate_act"] = gate_act
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.json").write_text(json.dumps({"kind": "cl", "method": method,
                                                  "dataset": dataset, "backbone": backbone,
                                                  "seed": seed}))
    return path


def lower_triangular(rng: np.random.Generator, level: float) -> np.ndarray:
    m = np.full((T, T), np.nan)
    for t in range(T):
        m[t, : t + 1] = level + rng.normal(0, 2, t + 1)
    return m


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cl")
    rng = np.random.default_rng(7)
    out = []
    fas = {("norga", "sup21k"): [94.1, 94.9, 93.7], ("hide", "sup21k"): [92.0, 92.8, 91.5],
           ("norga", "ibot21k"): [93.0, 93.4, 92.2], ("hide", "ibot21k"): [90.3, 91.0, 91.9]}
    for (method, bb), values in fas.items():
        for seed, fa in enumerate(values):
            act = "tanh" if method == "norga" else None
            out.append(read_cl_run(write_cl_run(root / f"{method}_{bb}_{seed}", method, bb, seed,
                                                lower_triangular(rng, fa), fa, act)))
    for seed, fa in enumerate([94.6, 94.2]):
        out.append(read_cl_run(write_cl_run(root / f"sig_{seed}", "norga", "sup21k", seed,
                                            lower_triangular(rng, fa), fa, "sigmoid")))
    return out


def _gid(ax, gid):
    for a in [*ax.lines, *ax.collections, *ax.patches, *ax.images]:
        if a.get_gid() == gid:
            return a
    raise AssertionError(f"no artist {gid}")


def test_accuracy_curves_mean_and_std(runs):
    sup = [r for r in runs if r.backbone == "sup21k"]
    fig = plot_accuracy_curves(sup)
    ax = fig.axes[0]
    hide = [r for r in sup if r.method == "hide"]
    # Independent reference: average of row t over columns 0..t, then mean/std over seeds.
    per_seed = np.array([[np.mean(r.accuracy_matrix[t, : t + 1]) for t in range(T)]
                         for r in hide])
    xy = _gid(ax, "mean:hide").get_xydata()
    # each curve is shifted sideways by less than a tenth of a task, never onto another's x
    shift = xy[0, 0] - 1
    assert 0 < abs(shift) < 0.1
    np.testing.assert_allclose(xy[:, 0], np.arange(1, T + 1) + shift)
    np.testing.assert_allclose(xy[:, 1], per_seed.mean(axis=0))
    shifts = {round(line.get_xydata()[0, 0] - 1, 9) for line in ax.lines
              if (line.get_gid() or "").startswith("mean:")}
    assert len(shifts) == len([a for a in ax.lines if (a.get_gid() or "").startswith("mean:")])
    markers = [line.get_marker() for line in ax.lines if (line.get_gid() or "").startswith(
        "mean:") and not (line.get_gid() or "").startswith("mean:norga")]
    assert len(set(markers)) == len(markers)  # a marker per method: apart in greyscale too
    verts = _gid(ax, "std:hide").get_paths()[0].vertices
    std = per_seed.std(axis=0, ddof=1)
    for t in range(T):
        ys = verts[np.isclose(verts[:, 0], t + 1 + shift), 1]
        assert ys.min() == pytest.approx(per_seed.mean(0)[t] - std[t])
        assert ys.max() == pytest.approx(per_seed.mean(0)[t] + std[t])
    # Two NoRGa activations in one setting are split, never averaged together.
    assert {a.get_gid() for a in ax.lines} >= {"mean:norga-tanh", "mean:norga-sigmoid"}


def test_accuracy_matrix_heatmap(runs):
    run = runs[0]
    fig = plot_accuracy_matrix(run)
    data = _gid(fig.axes[0], "matrix").get_array()
    np.testing.assert_allclose(np.ma.filled(data, np.nan), run.accuracy_matrix, equal_nan=True)
    assert np.ma.getmaskarray(data)[0, 1]  # unseen task is blank


def test_fa_bars_heights_and_errors(runs):
    fig = plot_fa_bars(runs)
    ax = fig.axes[0]
    for bb in ("sup21k", "ibot21k"):
        values = [r.metrics["FA"] for r in runs if r.method == "hide" and r.backbone == bb]
        bar = _gid(ax, f"bar:{bb}:hide")
        assert bar.get_height() == pytest.approx(np.mean(values))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["Sup-21K", "iBOT-21K"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "HiDe-Prompt" in legend


def test_activation_ablation_bars_and_paper_markers(runs):
    published = {("cifar100/sup21k", "norga-tanh"): 94.36}
    fig = plot_activation_ablation(runs, published=published)
    ax = fig.axes[0]
    sig = [r.metrics["FA"] for r in runs if r.gate_act == "sigmoid"]
    assert _gid(ax, "bar:cifar100/sup21k:norga-sigmoid").get_height() == pytest.approx(
        np.mean(sig))
    assert _gid(ax, "paper:cifar100/sup21k:norga-tanh").get_xydata()[0, 1] == 94.36


def test_expert_frequency_normalised_per_head():
    counts = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    fig = plot_expert_frequency({"layers": counts.tolist(), "layer_ids": [0, 5]})
    img = _gid(fig.axes[1], "freq:layer5")
    np.testing.assert_allclose(img.get_array(), counts[1] / counts[1].sum(-1, keepdims=True))


def test_corrupt_cl_run_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    run = write_cl_run(tmp_path / "r", "norga", "sup21k", 0, lower_triangular(rng, 90), 90.0)
    (run / "metrics.json").write_text("{")
    with pytest.raises(RunFormatError) as err:
        read_cl_run(run)
    assert "metrics.json" in str(err.value) and "\n" not in str(err.value)
    (run / "metrics.json").write_text(json.dumps({"FA": 1, "CA": 1, "FM": 1, "method": "x",
                                                  "dataset": "y"}))
    (run / "accuracy_matrix.csv").write_text("after_task,task_0\n0,abc\n")
    with pytest.raises(RunFormatError, match="accuracy_matrix.csv row 1"):
        read_cl_run(run)


def test_find_runs_by_kind_and_fallback(tmp_path, runs):
    rng = np.random.default_rng(1)
    a = write_cl_run(tmp_path / "deep" / "a", "hide", "sup21k", 0, lower_triangular(rng, 90), 90.)
    (a / "config.json").unlink()  # no config: recognised from its files
    (tmp_path / "rates").mkdir()
    (tmp_path / "rates" / "config.json").write_text(json.dumps({"kind": "rates"}))
    found = {(r.path.name, r.kind) for r in find_runs(tmp_path)}
    assert found == {("a", "cl"), ("rates", "rates")}


def test_bands_clipped_and_single_seed_marked(tmp_path):
    rng = np.random.default_rng(3)
    near_top = [read_cl_run(write_cl_run(tmp_path / f"a{s}", "norga", "sup21k", s,
                                         lower_triangular(rng, 99.0) * 0 + v, v, "tanh"))
                for s, v in enumerate([99.5, 90.0])]  # mean + std > 100 on purpose
    single = read_cl_run(write_cl_run(tmp_path / "h0", "hide", "sup21k", 0,
                                      lower_triangular(rng, 80.0), 80.0))
    fig = plot_accuracy_curves([*near_top, single])
    ax = fig.axes[0]
    band = next(a for a in ax.collections if str(a.get_gid()).startswith("std:norga"))
    verts = band.get_paths()[0].vertices
    assert verts[:, 1].max() <= 100.0 and verts[:, 1].min() >= 0.0
    assert not any(a.get_gid() == "std:hide" for a in ax.collections)  # 1 seed: no band
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("1 seed" in t for t in legend) and any("std over seeds" in t for t in legend)


def test_bars_start_at_zero_or_mark_a_broken_axis(runs, tmp_path):
    ax = plot_fa_bars(runs).axes[0]
    assert ax.get_ylim()[0] > 0  # zoomed to ~90 %: must carry the break mark
    assert any(a.get_gid() == "broken-axis" for a in ax.lines)
    low = [read_cl_run(write_cl_run(tmp_path / f"l{s}", "hide", "sup21k", s,
                                    lower_triangular(np.random.default_rng(s), 12.0), v))
           for s, v in enumerate([12.0, 15.0])]
    ax = plot_fa_bars(low).axes[0]
    assert ax.get_ylim()[0] == 0 and not any(a.get_gid() == "broken-axis" for a in ax.lines)
    one = [r for r in runs if r.method == "hide" and r.backbone == "sup21k"][:1]
    ax = plot_fa_bars(one).axes[0]
    assert any(t.get_gid() == "single:sup21k:hide" and t.get_text() == "1 seed"
               for t in ax.texts)


def test_matrices_share_one_colour_scale_and_0_based_tasks(runs):
    from figures.accuracy import plot_accuracy_matrices

    a = runs[0].accuracy_matrix
    b = a * 0.5  # a very different range: the scales must still agree
    fig = plot_accuracy_matrices({"before": b, "after": a})
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 2 and {im.get_clim() for im in images} == {(0.0, 100.0)}
    assert plot_accuracy_matrix(a).axes[0].images[0].get_clim() == (0.0, 100.0)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(T)]


def test_task_selection_shares_equal_the_counts():
    from figures.selection import plot_task_selection

    prompts = [[8, 2, 0], [1, 9, 0], [0, 5, 5]]
    experts = np.arange(3 * 2 * 2 * 4, dtype=float).reshape(3, 2, 2, 4)  # task, layer, head, e
    fig = plot_task_selection({"kind": "task_selection", "version": 1, "method": "norga",
                               "after_task": 2, "prompts": prompts, "experts": experts.tolist(),
                               "layer_ids": [0, 5]})
    img = _gid(fig.axes[0], "prompts")
    np.testing.assert_allclose(img.get_array(), 100 * np.array(prompts) / 10.0)  # percent
    # the numbers in the cells are the colours' values, in the colour bar's unit
    cells = [float(t.get_text()) for t in fig.axes[0].texts]
    np.testing.assert_allclose(cells, 100 * np.array(prompts).ravel() / 10.0)
    assert fig.axes[-1].get_ylabel().endswith("(%)")  # the colour bar
    img = _gid(fig.axes[2], "experts:layer5")
    summed = experts[:, 1].sum(axis=1)  # layer 5 = index 1, summed over heads
    np.testing.assert_allclose(img.get_array(), 100 * summed / summed.sum(-1, keepdims=True))
    clims = {im.get_clim() for ax in fig.axes for im in ax.images}
    assert len(clims) == 1  # one colour scale for every panel
