"""benchmarks/fit_cap.py: the fit-by-fit comparison of two caps, on hand-made run folders.

The script runs as users run it (``python benchmarks/fit_cap.py``), in a subprocess: it imports
its sibling scripts from its own folder.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fit_cap.py"


def fit_cap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


FIELDS = ("setting", "gate", "n", "replicate", "rss", "voronoi_loss", "status", "at_bound")


def write_run(folder: Path, rows: list[tuple], wall: float) -> None:
    """A run folder as fit_cap.py reads it: fits.csv, summary.json and its run.json record."""
    folder.mkdir(parents=True)
    with open(folder / "fits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    capped = sum(r[6] == "capped" for r in rows)
    summary = {"settings": {"over": {"linear": {"slope": -0.2, "slope_ci": [-0.3, -0.1],
                                                "n_capped": capped, "verdict": "v"}}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "run.json").write_text(json.dumps({"wall_seconds": wall, "cpu_seconds": 2 * wall,
                                                 "status": {}}))


# (setting, gate, n, replicate, rss, L_1, status, at_bound) at the low cap -> at the high cap
LOW = [
    ("over", "linear", 100, 0, 1.0, 5.0, "capped", False),      # -> converged off the box
    ("over", "linear", 100, 1, 1.0, 5.0, "capped", False),      # -> converged on the box
    ("over", "linear", 100, 2, 1.0, 5.0, "capped", True),       # -> capped again on the box
    ("over", "linear", 100, 3, 1.0, 5.0, "capped", False),      # -> capped again off the box
    ("over", "linear", 100, 4, 1.0, 5.0, "capped", True),       # -> converged on the box
    ("exact", "norga", 100, 0, 1.0, 2.0, "capped", False),      # -> converged, no box
    ("exact", "norga", 100, 1, 1.0, 2.0, "converged", False),   # unchanged
    ("over", "norga", 100, 0, 1.0, 3.0, "converged", True),     # -> higher RSS (auto)
    ("over", "norga", 100, 1, 1.0, 3.0, "converged", True),     # -> same RSS, other L_1
]
HIGH = [
    ("over", "linear", 100, 0, 0.9, 4.0, "converged", False),
    ("over", "linear", 100, 1, 0.9, 9.0, "converged", True),
    ("over", "linear", 100, 2, 0.95, 5.0, "capped", True),
    ("over", "linear", 100, 3, 0.99, 5.0, "capped", False),
    ("over", "linear", 100, 4, 0.98, 7.0, "converged", True),
    ("exact", "norga", 100, 0, 0.999, 2.0, "converged", False),
    ("exact", "norga", 100, 1, 1.0, 2.0, "converged", False),
    ("over", "norga", 100, 0, 1.1, 3.0, "converged", True),
    ("over", "norga", 100, 1, 1.0, 3.5, "converged", True),
]


def test_fates_changes_and_cost_of_two_reused_runs(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "cap-400", LOW, wall=100.0)
    write_run(runs / "cap-5000", HIGH, wall=250.0)
    out = tmp_path / "fit_cap.json"
    done = fit_cap("--runs", str(runs), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["capped_at_low_cap_by_fate"] == {
        "exact/norga": {"converged, no box": 1},
        "over/linear": {"interior": 1, "box": 3, "capped again, off the box": 1},
    }
    assert result["changed_fits"]["over/linear"] == {"fits": 5, "changed": 5, "rss_lower": 5,
                                                     "rss_higher": 0}
    assert result["changed_fits"]["exact/norga"] == {"fits": 2, "changed": 1, "rss_lower": 1,
                                                     "rss_higher": 0}
    # an L_1 change alone counts as a change, with no RSS direction
    assert result["changed_fits"]["over/norga"] == {"fits": 2, "changed": 2, "rss_lower": 0,
                                                    "rss_higher": 1}
    assert result["changed_fits_total"] == 8
    assert result["cost_ratio_wall"] == pytest.approx(2.5)
    assert all(run["reused"] for run in result["runs"].values())
    assert (result["summary"]["400"]["over/linear"]["n_capped"],
            result["summary"]["5000"]["over/linear"]["n_capped"]) == (6, 2)


def test_bad_caps_and_unfinished_runs_are_refused(tmp_path):
    # an unfinished run folder: a script that let LOW == HIGH through stops there, not in a
    # half-hour preset run
    (tmp_path / "cap-400").mkdir()
    done = fit_cap("--runs", str(tmp_path), "--caps", "400", "400")
    assert done.returncode == 2
    assert "LOW < HIGH" in done.stderr
    done = fit_cap("--runs", str(tmp_path), "--out", str(tmp_path / "x.json"))
    assert done.returncode == 1
    assert "without run.json" in done.stderr
    assert not (tmp_path / "x.json").exists()
