"""Ctrl-C and SIGTERM during rates.py and cl.py: one line ("interrupted; re-run the same command
to resume"), exit 130 / 143, no traceback, no worker process left, and the re-run resumes to the
results of an uninterrupted run (issue 15)."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl import cli as cl_cli
from moe_theory import cli as rates_cli
from norga.signals import MESSAGE, descendant_pids

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# every task is large enough that the sweep is still fitting when the first block is cached
RATES = [sys.executable, str(ROOT / "experiments/rates.py"), "--n-min", "10000", "--n-max",
         "30000", "--num-n", "3", "--replicates", "12", "--jobs", "2", "--no-figure"]
CL = [sys.executable, str(ROOT / "experiments/cl.py"), "--dataset", "synthetic", "--no-progress",
      "--epochs", "1", "--set", "tii_ca_epochs=1", "--set", "tap_epochs=1", "--batch-size", "16",
      "--seed", "5", "--set",
      'dataset_options={"num_classes":6,"num_tasks":3,"train_per_class":10,"test_per_class":4}']

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _interrupt(argv: list[str], ready, sig: int) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Start ``argv``, wait until ``ready()``, send ``sig``; the finished process and the pids of
    its workers at the time of the signal."""
    # SIGINT as at a terminal: a test run started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = descendant_pids(proc.pid)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), workers


def _check_interrupted(done: subprocess.CompletedProcess, workers: list[int], sig: int,
                       prog: str) -> None:
    assert done.returncode == 128 + sig, done.stderr[-2000:]
    # progress-bar refreshes and norga-cl's one-line summary per finished task aside
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines()
             if line.strip() and "%|" not in line and not re.match(r"task \d+/\d+: ", line)]
    assert lines == [f"{prog}: {MESSAGE}"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the CLI"


def _fits_without_seconds(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _in_process(argv: list[str]) -> None:
    """Run a CLI of ``argv`` in this process (saves an interpreter start on a slow machine)."""
    module = {"rates": rates_cli, "cl": cl_cli}[Path(argv[1]).stem]
    assert module.main(argv[2:]) == 0


@pytest.fixture(scope="module")
def rates_reference(tmp_path_factory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("rates-ref") / "run"
    _in_process([*RATES, "--no-cache", "--out", str(out)])
    return _fits_without_seconds(out / "fits.csv")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_rates_interrupted_then_resumed(tmp_path, rates_reference, sig):
    cache = tmp_path / "cache"
    argv = [*RATES, "--cache-dir", str(cache), "--out", str(tmp_path / "run")]
    entries = cache / "fits-v1"
    done, workers = _interrupt(argv, lambda: entries.is_dir() and any(entries.glob("*.json")),
                               sig)
    assert workers, "the sweep runs in worker processes"
    _check_interrupted(done, workers, sig, "rates.py")
    kept = len(list(entries.glob("*.json")))
    assert kept >= 1 and not (tmp_path / "run" / "fits.csv").exists()
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _fits_without_seconds(tmp_path / "run" / "fits.csv") == rates_reference


@pytest.fixture(scope="module")
def cl_reference(tmp_path_factory) -> dict[str, bytes]:
    import torch

    out = tmp_path_factory.mktemp("cl-ref") / "run"
    threads = torch.get_num_threads()
    try:
        _in_process([*CL, "--out", str(out)])  # sets one torch thread, as the CLI does
    finally:
        torch.set_num_threads(threads)
    return {n: (out / n).read_bytes() for n in ("accuracy_matrix.csv", "metrics.json")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cl_interrupted_then_resumed(tmp_path, cl_reference, sig):
    run = tmp_path / "run"
    argv = [*CL, "--out", str(run)]
    done, workers = _interrupt(argv, lambda: (run / "checkpoints" / "task_0.pt.sha256").exists(),
                               sig)
    _check_interrupted(done, workers, sig, "cl.py")
    assert not (run / "metrics.json").exists()
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed after task" in again.stdout
    for name, data in cl_reference.items():
        assert (run / name).read_bytes() == data, name
