"""E5 presets: the full preset reaches n = 1e6 with the replicate schedule its --help states."""

import re
from collections import Counter
from pathlib import Path

import pytest

from moe_theory.cli import build_parser
from moe_theory.near.cli import near_config_from_args
from moe_theory.near.config import NearConfig
from moe_theory.near.sweep import plan_near_tasks, run_near


def near_config(tmp_path: Path, *flags: str) -> NearConfig:
    parser = build_parser()
    args = parser.parse_args(["--setting", "near", *flags])
    return near_config_from_args(args, parser, tmp_path / "out")


def fits_per_cell(config: NearConfig) -> Counter:
    """Replicates planned per (kind, value, gate, n)."""
    cells: Counter = Counter()
    for kind, value, gate, n, block in plan_near_tasks(config):
        cells[kind, value, gate, n] += len(block)
    return cells


def help_text() -> str:
    return " ".join(build_parser().format_help().split())


def test_full_preset_reaches_1e6_with_the_schedule_its_help_states(tmp_path):
    config = near_config(tmp_path, "--preset", "full")
    # 13 n, 3 per decade from 1e2 to 1e6 (so the quick grid is a part of it)
    assert len(config.n_values) == 13 and config.n_values[0] == 100
    assert config.n_values[-1] == 1_000_000
    assert set(near_config(tmp_path, "--preset", "quick").n_values) < set(config.n_values)
    text = help_text()
    assert "full = 13 n in 1e2..1e6, R = 16 up to n = 1e5 and R = 8 above" in text
    assert "schedules on n <= 1e5" in text
    cells = fits_per_cell(config)
    for (kind, value, gate, n), fits in cells.items():
        assert fits == (16 if n <= 100_000 else 8), (kind, value, gate, n)
    fixed_n = {n for (kind, _, _, n) in cells if kind == "fixed"}
    schedule_n = {n for (kind, _, _, n) in cells if kind == "schedule"}
    assert fixed_n == set(config.n_values)
    assert schedule_n == {n for n in config.n_values if 1000 <= n <= 100_000}
    assert len(config.gammas) == 4 and len(cells) == 2 * (3 * 13 + 4 * 7)
    # the reduced replicates are the first blocks of the full count: a larger run reuses them
    blocks_1e6 = {b for (k, _, _, n, b) in plan_near_tasks(config) if n == 1_000_000}
    blocks_1e5 = {b for (k, _, _, n, b) in plan_near_tasks(config) if n == 100_000}
    assert blocks_1e6 == {(0, 1, 2, 3), (4, 5, 6, 7)} and blocks_1e6 < blocks_1e5


def test_quick_and_paper_fit_every_replicate_at_every_n(tmp_path):
    for preset, size, top in (("quick", 8, 10_000), ("paper", 16, 100_000)):
        config = near_config(tmp_path, "--preset", preset)
        assert max(config.n_values) == top
        assert set(fits_per_cell(config).values()) == {size}
        assert config.schedule_values() == tuple(n for n in config.n_values if n >= 1000)
    match = re.search(r"paper = 9 n in 1e2\.\.1e5, R = 16", help_text())
    assert match is not None


@pytest.mark.parametrize("flag, below, above", [("4", 4, 4), ("20", 20, 8)])
def test_replicates_flag_sets_the_small_n_count_and_caps_the_large_n_one(tmp_path, flag, below,
                                                                        above):
    config = near_config(tmp_path, "--preset", "full", "--replicates", flag)
    assert config.replicates_at(100_000) == below
    assert config.replicates_at(100_001) == above
    assert config.replicates_at(1_000_000) == above


@pytest.mark.parametrize("changes, message", [
    ({"reduced_above": 1000}, "go together"),
    ({"reduced_replicates": 2}, "go together"),
    ({"reduced_above": 1000, "reduced_replicates": 9}, "in 1..replicates=8; got 9"),
    ({"reduced_above": 1000, "reduced_replicates": 0}, "in 1..replicates=8; got 0"),
    ({"schedule_n_max": 2154}, "schedule_n_max=2154"),
])
def test_bad_reduction_or_schedule_range_is_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        NearConfig(**changes)


@pytest.fixture(scope="module")
def reduced_result():
    config = NearConfig(t_values=(0.8,), gammas=(0.1,), n_values=(500, 1000, 2000, 4000),
                        replicates=3, reduced_above=1000, reduced_replicates=2,
                        schedule_n_max=4000, bases=("default",), seed=2, block=2)
    return run_near(config)


@pytest.mark.slow
def test_analysis_counts_the_fits_each_n_really_has(reduced_result):
    result = reduced_result
    per_rep = Counter((r["kind"], r["gate"], r["n"]) for r in result.records)
    assert {key: c for key, c in per_rep.items() if key[2] <= 1000} == {
        key: 3 for key in per_rep if key[2] <= 1000}
    assert {c for key, c in per_rep.items() if key[2] > 1000} == {2}
    fixed = result.analyse()["fixed"]["0.8"]["linear"]
    counts = [e["converged"] + e["capped"] + e["stalled"] for e in fixed["per_n"]]
    assert counts == [3, 3, 2, 2] and fixed["fits"] == 10


@pytest.mark.slow
def test_figure_marks_where_the_replicates_drop(reduced_result):
    import json

    import numpy as np

    from figures.convergence_near import plot_near

    near = json.loads(json.dumps(reduced_result.to_json()))
    panel_b = plot_near(near).axes[1]
    marks = [line for line in panel_b.lines if line.get_gid() == "reduced"]
    assert len(marks) == 1
    np.testing.assert_allclose(marks[0].get_xdata(), [1000, 1000])
    assert {"R = 3", "R = 2"} <= {text.get_text() for text in panel_b.texts}
    near["config"]["reduced_above"] = None
    assert not [line for line in plot_near(near).axes[1].lines if line.get_gid() == "reduced"]
