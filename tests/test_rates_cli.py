"""experiments/rates.py as a user runs it: --help, a tiny end-to-end run, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# every test starts experiments/rates.py in a subprocess (seconds each): left out of the fast
# subset, pytest -m "not slow"
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "rates.py"
TINY = ["--n-min", "100", "--n-max", "400", "--num-n", "3", "--replicates", "3",
        "--fit-n-min", "100", "--jobs", "1", "--no-cache"]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def test_help_lists_every_flag():
    res = run("--help")
    assert res.returncode == 0
    for flag in ("--gate", "--activation", "--expert", "--setting", "--n-min", "--n-max",
                 "--num-n", "--replicates", "--restarts", "--seed", "--jobs", "--out",
                 "--preset", "quick", "paper"):
        assert flag in res.stdout


def test_tiny_run_writes_every_file_and_reruns_identically(tmp_path):
    out = tmp_path / "run"
    res = run(*TINY, "--setting", "exact", "mechanism", "--out", str(out))
    assert res.returncode == 0, res.stderr
    for name in ("fits.csv", "timing.csv", "summary.json", "mechanism.json", "config.json",
                 "summary.txt", "convergence_exact.png", "convergence_exact.pdf"):
        assert (out / name).stat().st_size > 0, name
    header = (out / "fits.csv").read_text().splitlines()[0].split(",")
    for column in ("setting", "gate", "activation", "expert", "n", "replicate", "voronoi_loss",
                   "loss_mass", "loss_beta1", "loss_eta", "l2_error", "rss", "converged",
                   "status", "at_bound", "n_iter"):
        assert column in header
    assert "seconds" not in header  # wall-clock time lives in timing.csv
    timing = (out / "timing.csv").read_text().splitlines()
    assert timing[0] == "setting,gate,n,replicate,seconds" and len(timing) == 1 + 2 * 3 * 3
    rows = (out / "fits.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 * 3 * 3  # gates x n x replicates
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["settings"]["exact"]) == {"norga", "linear"}
    assert "slope_ci" in summary["settings"]["exact"]["norga"]
    assert "verdict" in summary["settings"]["exact"]["linear"]
    mech = json.loads((out / "mechanism.json").read_text())
    assert mech["pde_residual"]["linear"] < 1e-6 < 0.1 < mech["pde_residual"]["norga"]
    assert "L_1 slope" in res.stdout and str(out) in res.stdout

    config = json.loads((out / "config.json").read_text())
    prov = config["provenance"]
    assert len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)
    assert set(prov["packages"]) == {"numpy", "scipy", "numba", "statsmodels"}
    assert prov["packages"]["numpy"] == np.__version__
    assert "--fit-n-min 100" in prov["command"] and str(out) in prov["command"]

    first = {name: (out / name).read_bytes() for name in ("fits.csv", "summary.json")}
    again = run(*TINY, "--setting", "exact", "mechanism", "--out", str(out), "--no-figure")
    assert again.returncode == 0, again.stderr  # same run: provenance does not make it "different"
    for name, data in first.items():
        assert (out / name).read_bytes() == data, name


@pytest.mark.parametrize("args, flag", [
    (["--gate", "softmax"], "--gate"),
    (["--activation", "relu"], "--activation"),
    (["--n-min", "1000", "--n-max", "100"], "--n-min"),
    (["--replicates", "0"], "--replicates"),
    (["--replicates", "-3"], "--replicates"),
    (["--num-n", "two"], "--num-n"),
    (["--setting", "huge"], "--setting"),
    (["--seed", "-1"], "--seed"),
    (["--jobs", "0"], "--jobs"),
    (["--expert", "affine", "--setting", "over-tanh"], "--expert"),
    (["--fit-n-min", "200000"], "--fit-n-min"),
    (["--n-max", "5000", "--fit-n-min", "5001"], "--fit-n-min"),
    (["--solver", "gn"], "--solver"),
    (["--solver", "varpro", "--setting", "over-tanh"], "--solver"),
    (["--global-starts", "-2"], "--global-starts"),
])
def test_bad_values_exit_2_with_one_line_naming_the_flag(args, flag, tmp_path):
    res = run(*args, "--out", str(tmp_path / "never"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "never").exists()


def test_out_that_is_a_file_or_holds_another_run_is_refused_untouched(tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    res = run(*TINY, "--out", str(a_file))
    assert res.returncode == 2 and "--out" in res.stderr and len(res.stderr.splitlines()) == 1
    assert a_file.read_text() == "keep me"

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"kind": "rates", "seed": 99}))
    (out / "fits.csv").write_text("earlier results")
    res = run(*TINY, "--out", str(out))
    assert res.returncode == 2 and "different run" in res.stderr
    assert (out / "fits.csv").read_text() == "earlier results"
