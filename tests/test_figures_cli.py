"""norga-figures (experiments/figures.py): regenerates what it finds, lists files, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_figures_accuracy import lower_triangular, write_cl_run
from test_figures_convergence import _records, _write_run

from figures import cli as figures_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "figures.py"


def _load_cli():
    return figures_cli


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    _write_run(root / "rates" / "e1", _records())
    rng = np.random.default_rng(2)
    for seed, fa in enumerate([93.0, 94.0]):
        write_cl_run(root / "cl" / "a" / f"norga_s{seed}", "norga", "sup21k", seed,
                     lower_triangular(rng, fa), fa, "tanh")
    broken = write_cl_run(root / "cl" / "broken", "hide", "sup21k", 0,
                          lower_triangular(rng, 90.0), 90.0)
    (broken / "metrics.json").write_text("{ truncated")
    old = _write_run(root / "rates" / "old", _records(), summary_version=0)
    assert old.exists()
    return root


@pytest.mark.slow
def test_cli_writes_and_lists_files(results, tmp_path, capsys):
    out = tmp_path / "figs"
    assert _load_cli().main([str(results), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    listed = [Path(line.strip()) for line in stdout.splitlines() if line.startswith("  ")]
    names = {p.name for p in listed}
    assert {"convergence_rates_e1_exact.pdf", "convergence_rates_e1_exact.png",
            "accuracy_cifar100_sup21k.pdf", "fa_bars_cifar100.png", "activation_ablation.pdf",
            "table1.md", "table1.tex"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in listed)
    # unreadable runs: one line each, naming the run and the problem, no traceback
    notes = [line for line in stdout.splitlines() if line.startswith("note:")]
    assert any("broken" in n and "metrics.json" in n for n in notes)
    assert any("old" in n and "version" in n for n in notes)
    assert any("expert" in n for n in notes)  # missing SMoPE file noted, not fatal
    assert "Traceback" not in stdout


def test_cli_bad_input_exits_2_with_one_line(results, tmp_path, capsys):
    not_dir = tmp_path / "file.txt"
    not_dir.write_text("x")
    cli = _load_cli()
    for args, flag in (([str(tmp_path / "nope")], "RESULTS_DIR"),
                       ([str(results), "--out", str(not_dir)], "--out"),
                       ([str(results), "--readme-images", str(not_dir)], "--readme-images")):
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0]


@pytest.mark.slow
def test_cli_script_runs_as_a_program(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_cli_empty_root_notes_everything_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _load_cli().main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 0
    stdout = capsys.readouterr().out
    assert "no rates run" in stdout and "no CL run" in stdout
    assert "0 files written" in stdout


@pytest.mark.slow
def test_cli_does_not_read_its_own_output(results, tmp_path, capsys):
    # default --out is RESULTS_DIR/figures; its files must not be taken for runs
    out = tmp_path / "r"
    _write_run(out / "rates", _records())
    (out / "figures").mkdir()
    (out / "figures" / "metrics.json").write_text(json.dumps({"x": 1}))
    assert _load_cli().main([str(out)]) == 0
    assert "skip cl run" not in capsys.readouterr().out
