"""Runs of different configurations are never averaged: grouping, figures, tables, compare.

Each check builds run directories by hand (the ``cl.py`` file format), so the expected numbers
are computed here independently of ``figures`` (``statistics.mean`` / ``stdev``).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from figures import cli as figures_cli
from figures.accuracy import plot_accuracy_curves, plot_activation_ablation, plot_fa_bars
from figures.compare import compare_runs, to_csv, to_markdown_table
from figures.grouping import group_by_variant, variant_label
from figures.runs import read_cl_run
from figures.tables import TABLES, fill_table
from norga.digest import config_digest, differing_fields

BASE = {"method": "hide", "dataset": "cifar100", "backbone": "sup21k", "epochs": 50,
        "lr": 0.03, "protocol": "default", "device": "cpu", "num_workers": 0,
        "method_options": {"top_k": 1}}


def write_run(path: Path, config: dict, fa: float) -> Path:
    """A finished 2-task CL run whose last row averages to ``fa``."""
    path.mkdir(parents=True)
    matrix = [[fa + 1.0, None], [fa - 1.0, fa + 1.0]]
    with (path / "accuracy_matrix.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["after_task", "task_0", "task_1"])
        for t, row in enumerate(matrix):
            w.writerow([t, *["" if v is None else repr(v) for v in row]])
    metrics = {"FA": fa, "CA": fa + 0.5, "FM": 2.0, "method": config["method"],
               "dataset": config["dataset"], "backbone": config["backbone"],
               "seed": config["seed"], "backbone_weights_sha256": "ab" * 32}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def two_configs(tmp_path):
    """hide with epochs 50 (seeds 1, 2) and epochs 20 (seeds 1, 2, 3), one setting."""
    fas = {50: [90.0, 92.0], 20: [80.0, 81.0, 85.0]}
    runs = []
    for epochs, values in fas.items():
        for seed, fa in enumerate(values, start=1):
            cfg = {**BASE, "epochs": epochs, "seed": seed}
            runs.append(read_cl_run(write_run(tmp_path / f"e{epochs}-s{seed}", cfg, fa)))
    return runs, fas


def test_digest_ignores_the_seed_and_runtime_fields_only():
    a = config_digest({**BASE, "seed": 1})
    assert a == config_digest({**BASE, "seed": 7, "device": "cuda", "num_workers": 8,
                               "data_root": "/x", "weights": "/w.npz", "compile": True,
                               "keep_checkpoints": "all"})
    for key, value in (("epochs", 51), ("lr", 0.031), ("protocol", "official"),
                       ("method_options", {"top_k": 2}), ("method", "norga")):
        assert config_digest({**BASE, "seed": 1, key: value}) != a, key
    assert len(a) == 8 and int(a, 16) >= 0
    assert differing_fields([BASE, {**BASE, "lr": 0.1, "seed": 3},
                             {**BASE, "method_options": {"top_k": 2}}]) == [
        "lr", "method_options.top_k"]
    assert differing_fields([BASE, {**BASE, "protocol": "official", "epochs": 1}])[0] == \
        "protocol"


def test_one_field_apart_is_never_averaged_and_the_label_names_it(two_configs):
    runs, fas = two_configs
    groups = group_by_variant(runs)
    assert set(groups) == {"hide[epochs=50]", "hide[epochs=20]"}
    for epochs, values in fas.items():
        key = f"hide[epochs={epochs}]"
        assert sorted(r.seed for r in groups[key]) == list(range(1, len(values) + 1))
        assert "epochs=" + str(epochs) in variant_label(key)
    # figure data: one curve per configuration, each from its own seeds
    ax = plot_accuracy_curves(runs).axes[0]
    labels = {line.get_label() for line in ax.lines}
    assert any("epochs=50" in lab and "2 seeds" in lab for lab in labels), labels
    assert any("epochs=20" in lab and "3 seeds" in lab for lab in labels), labels
    colors = {line.get_gid(): line.get_color() for line in ax.lines if line.get_gid()}
    assert colors["mean:hide[epochs=20]"] != colors["mean:hide[epochs=50]"]  # told apart
    ax = plot_fa_bars(runs).axes[0]
    for epochs, values in fas.items():
        bar = next(p for p in ax.patches if p.get_gid() == f"bar:sup21k:hide[epochs={epochs}]")
        assert bar.get_height() == pytest.approx(statistics.mean(values))
    # tables: two rows, each with its own mean and count
    col = next(c for c in TABLES["table1"].columns if (c.dataset, c.metric) == ("cifar100", "FA"))
    cells = fill_table(TABLES["table1"], runs)
    assert len(cells) == 2
    for (_, variant), row in cells.items():
        values = fas[int(variant.split("=")[1].rstrip("]"))]
        assert row[col].ours.count == len(values)
        assert row[col].ours.mean == pytest.approx(statistics.mean(values))
        assert row[col].paper == 92.61  # HiDe-Prompt's published number beside each row


def test_seeds_and_runtime_fields_are_one_configuration(tmp_path):
    runs = []
    for seed, (device, fa) in enumerate((("cpu", 90.0), ("cuda", 91.0), ("cuda:1", 95.0))):
        cfg = {**BASE, "seed": seed, "device": device, "num_workers": seed}
        runs.append(read_cl_run(write_run(tmp_path / f"s{seed}", cfg, fa)))
    (key, group), = group_by_variant(runs).items()
    assert key == "hide" and len(group) == 3
    rows, columns = compare_runs(runs)
    (row,) = rows
    assert columns == [] and row.stats["FA"].count == 3
    assert row.stats["FA"].mean == pytest.approx(statistics.mean([90.0, 91.0, 95.0]))
    assert row.stats["FA"].std == pytest.approx(statistics.stdev([90.0, 91.0, 95.0]))
    assert row.digest == config_digest(runs[0].config)  # as in the run directory's name


def test_different_weights_are_different_configurations(tmp_path):
    runs = [read_cl_run(write_run(tmp_path / f"s{s}", {**BASE, "seed": s}, 90.0))
            for s in (1, 2)]
    runs[1].metrics["backbone_weights_sha256"] = "cd" * 32
    assert len(group_by_variant(runs)) == 2


def test_activation_ablation_splits_other_fields(tmp_path):
    runs = []
    for seed, (lr, fa) in enumerate(((0.03, 90.0), (0.03, 92.0), (0.1, 70.0))):
        cfg = {**BASE, "method": "norga", "gate_act": "tanh", "seed": seed, "lr": lr}
        runs.append(read_cl_run(write_run(tmp_path / f"s{seed}", cfg, fa)))
    ax = plot_activation_ablation(runs).axes[0]
    heights = {p.get_gid(): p.get_height() for p in ax.patches if p.get_gid()}
    assert heights["bar:cifar100/sup21k:norga-tanh[lr=0.03]"] == pytest.approx(91.0)
    assert heights["bar:cifar100/sup21k:norga-tanh[lr=0.1]"] == pytest.approx(70.0)


def test_compare_table_rows_columns_and_published(two_configs):
    runs, fas = two_configs
    rows, columns = compare_runs(runs)
    assert columns == ["epochs"]
    assert [(r.config["epochs"], len(r.runs)) for r in rows] == [(20, 3), (50, 2)]
    text = to_csv(rows, columns)
    table = list(csv.DictReader(text.splitlines()))
    for line in table:
        values = fas[int(line["epochs"])]
        assert int(line["n_seeds"]) == len(values)
        assert float(line["FA_mean"]) == pytest.approx(statistics.mean(values), abs=1e-4)
        assert float(line["FA_sd"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert (line["FA_paper"], line["FA_paper_sd"]) == ("92.61", "0.28")
        assert line["paper_table"] == "norga_table1"
    md = to_markdown_table(rows, columns)
    assert md.count("\n") == 3 and "| epochs |" in md and "92.61 ± 0.28" in md
    assert f"{statistics.mean(fas[50]):.2f} ± {statistics.stdev(fas[50]):.2f}" in md


def test_compare_command_writes_csv_and_markdown(two_configs, tmp_path, capsys):
    runs, _ = two_configs
    out = tmp_path / "cmp"
    code = figures_cli.main(["compare", str(runs[0].path.parent), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "compare.md").read_text().strip() in printed
    assert (out / "compare.csv").read_text().startswith("dataset,backbone,method,config,")
    assert "5 runs, 2 configurations" in printed


@pytest.mark.parametrize("args, text", [
    (["compare", "/nonexistent/run"], "does not exist"),
    (["compare"], "required"),
])
def test_compare_command_bad_input_one_line_exit_2(args, text, capsys):
    with pytest.raises(SystemExit) as info:
        figures_cli.main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and text in err and err.count("\n") == 1


def test_compare_command_without_cl_runs_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        figures_cli.main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert info.value.code == 2 and "no readable CL run" in capsys.readouterr().err
    np.testing.assert_equal((tmp_path / "o").exists(), False)
