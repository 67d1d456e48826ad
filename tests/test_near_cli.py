"""experiments/rates.py --setting near (E5) end to end, same seed -> same bytes, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_theory.near.config import NearConfig
from moe_theory.near.sweep import run_near

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "rates.py"
TINY = ["--setting", "near", "--n-min", "1000", "--n-max", "3000", "--num-n", "3",
        "--replicates", "2", "--near-t", "0.8", "--near-gamma", "0.1", "--jobs", "1",
        "--no-cache", "--seed", "3"]


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_near_quick_end_to_end_and_same_seed_same_bytes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    res = run(*TINY, "--out", str(first))
    assert res.returncode == 0, res.stderr
    for name in ("near.json", "near_fits.csv", "summary_near.txt", "near_config.json",
                 "near_timing.csv", "convergence_near.png", "convergence_near.pdf"):
        assert (first / name).stat().st_size > 0, name
    near = json.loads((first / "near.json").read_text())
    assert set(near["fixed"]["0.8"]) == {"norga", "linear"}
    assert set(near["schedule"]["0.1"]) == {"norga", "linear"}
    assert len(near["mechanism"]["cases"]) == 3 * 2 * 2 * 4 * 4
    rows = (first / "near_fits.csv").read_text().splitlines()
    assert len(rows) - 1 == 2 * 2 * (3 + 3)  # gates x replicates x (fixed n + schedule n)
    assert "parametric regime" in res.stdout and "Schedules" in res.stdout
    # the report says how the fits were made (default solver, near-truth starts)
    assert "near-truth starts, solver auto, |theta| <= 5." in res.stdout
    # provenance: only E5 files, each listed in SHA256SUMS, which sha256sum -c verifies
    assert not (first / "config.json").exists()  # no E1-E4 config of a sweep that never ran
    prov = json.loads((first / "near_provenance.json").read_text())
    assert prov["kind"] == "near" and prov["noise_sd"] == 0.001 and prov["max_iter"] == 2000
    assert "--near-gamma" in prov["provenance"]["command"]
    listed = {line.split("  ", 1)[1] for line in
              (first / "SHA256SUMS").read_text().splitlines()}
    present = {p.name for p in first.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert listed == present - {"SHA256SUMS"}, (listed, present)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=first, capture_output=True,
                           text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(listed), check.stdout
    again = run(*TINY, "--out", str(second), "--no-figure")
    assert again.returncode == 0, again.stderr
    for name in ("near.json", "near_fits.csv", "summary_near.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # a different E5 configuration is not written over the first one
    other = run(*TINY[:-1], "4", "--out", str(first), "--no-figure")
    assert other.returncode == 2 and "--out" in other.stderr
    assert (first / "near.json").read_bytes() == (second / "near.json").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("args, flag", [
    (["--near-t", "0"], "--near-t"),
    (["--near-t", "1.5"], "--near-t"),
    (["--near-gamma", "1.2"], "--near-gamma"),
    (["--noise-sd", "-1"], "--noise-sd"),
    (["--near-split", "c"], "--near-split"),
    (["--n-min", "100", "--n-max", "1000", "--num-n", "3"], "--n-min"),
])
def test_near_bad_values_exit_2_with_one_line(args, flag, tmp_path):
    res = run("--setting", "near", *args, "--out", str(tmp_path / "never"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def tiny_result():
    config = NearConfig(t_values=(0.8,), gammas=(0.1,), n_values=(500, 1000, 2000, 4000),
                        replicates=3, bases=("default",), seed=2)
    return run_near(config)


@pytest.mark.slow
def test_analysis_levels_ratios_and_counts_from_the_records(tiny_result):
    e = tiny_result.analyse()["fixed"]["0.8"]["linear"]
    rows = [r for r in tiny_result.records if r["gate"] == "linear" and r["kind"] == "fixed"]
    for entry in e["per_n"]:
        losses = [r["voronoi_loss"] for r in rows if r["n"] == entry["n"]]
        assert entry["mean"] == pytest.approx(sum(losses) / 3)
        assert entry["predicted"] == pytest.approx(e["C"] / entry["n"] ** 0.5)
        assert entry["ratio"] == pytest.approx(entry["mean"] / entry["predicted"])
        lo, hi = entry["ratio_ci_equivalence"]  # 90%: inside the 95% interval
        assert entry["ratio_ci"][0] < lo < hi < entry["ratio_ci"][1]
        assert entry["level_equivalent"] == (0.7 <= lo and hi <= 1.3)
        assert entry["geomean"] == pytest.approx(np.exp(np.mean(np.log(losses))))
        assert entry["merged"] == sum("0" in r["cell_sizes"].split(";") for r in rows
                                      if r["n"] == entry["n"])
    assert e["converged"] + e["capped"] + e["stalled"] == e["fits"] == 12
    assert {r["status"] for r in rows} <= {"converged", "capped", "stalled"}
    s = tiny_result.analyse()["schedule"]["0.1"]["norga"]
    ts = [p["t"] for p in s["per_n"]]
    assert ts == pytest.approx([0.8 * (n / 1000) ** -0.1 for n in (1000, 2000, 4000)])
    assert s["predicted_slope_asymptotic"] == pytest.approx(0.1 * s["exponent_p1"] / 2 - 0.5)


@pytest.mark.slow
def test_figure_draws_spectrum_levels_and_schedules_from_near_json(tiny_result):
    import numpy as np

    from figures.convergence_near import plot_near

    near = json.loads(json.dumps(tiny_result.to_json()))
    fig = plot_near(near)
    gids = {line.get_gid(): line for ax in fig.axes for line in ax.lines if line.get_gid()}
    for gate in ("linear", "norga"):
        for gid in (f"lambda:{gate}", f"fixed:{gate}:0.8", f"fisher:{gate}:0.8",
                    f"schedule:{gate}:0.1"):
            assert gid in gids, gid
        sched = near["schedule"]["0.1"][gate]
        assert (f"predicted:{gate}:0.1" in gids) == (sched["expansion"] == "inside")
        _, geo = gids[f"schedule:{gate}:0.1"].get_data()  # the mean whose slope is fitted
        np.testing.assert_allclose(geo, [p["geomean"] for p in sched["per_n"]])
        entry = near["fixed"]["0.8"][gate]
        x, y = gids[f"fisher:{gate}:0.8"].get_data()
        np.testing.assert_allclose(y, entry["C"] / np.sqrt(x))
        _, means = gids[f"fixed:{gate}:0.8"].get_data()
        np.testing.assert_allclose(means, [p["mean"] for p in entry["per_n"]])
