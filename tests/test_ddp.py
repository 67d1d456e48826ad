"""DDP on CPU: ``torchrun --nproc_per_node=2 experiments/cl.py`` with the gloo backend.

* With every training budget at zero the pipeline is statistics + evaluation only, so the two
  processes must reproduce the single-process accuracy matrix exactly (every test image counted
  once; 21 images per task, so padding duplicates would show) and the Gaussian statistics (float64
  sums of x, x x^T and counts) up to summation order.
* With training, a 2-process run stops after task 0 and a second ``torchrun`` resumes all ranks
  from rank 0's checkpoint, finishes, and leaves one complete run directory written by rank 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cl.config import resolve_config
from cl.run.engine import run_experiment
from cl.run.files import load_checkpoint
from norga.matrix import read_accuracy_matrix

ROOT = Path(__file__).resolve().parent.parent
DATA = {"num_classes": 9, "num_tasks": 3, "train_per_class": 12, "test_per_class": 7}

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not torch.distributed.is_available(),
                       reason="torch.distributed is not available"),
]


def _overrides(budget: int) -> dict:
    return {"epochs": budget, "tii_epochs": budget, "tii_ca_epochs": budget,
            "tap_epochs": budget, "batch_size": 16, "dataset_options": DATA, "seed": 3}


def _torchrun(out: Path, budget: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["--dataset", "synthetic", "--no-progress", "--device", "cpu", "--seed", "3",
            "--batch-size", "16", "--set", f"dataset_options={json.dumps(DATA)}",
            "--out", str(out), *extra]
    for key in ("epochs", "tii_epochs", "tii_ca_epochs", "tap_epochs"):
        args += ["--set", f"{key}={budget}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "experiments/cl.py"), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.mark.slow
def test_two_processes_evaluate_and_collect_statistics_like_one(tmp_path):
    single = run_experiment(resolve_config("synthetic", "norga", overrides=_overrides(0)),
                            tmp_path / "single")
    res = _torchrun(tmp_path / "ddp", 0)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp_acc = read_accuracy_matrix(tmp_path / "ddp/accuracy_matrix.csv")
    np.testing.assert_array_equal(ddp_acc, np.round(single.accuracy, 4))
    metrics = json.loads((tmp_path / "ddp/metrics.json").read_text())
    assert metrics["accuracy_matrix"] == json.loads(
        (tmp_path / "single/metrics.json").read_text())["accuracy_matrix"]
    assert metrics["TII_accuracy"] == pytest.approx(single.metrics["TII_accuracy"], abs=0)
    a = load_checkpoint(tmp_path / "single/checkpoints/task_2.pt")["method"]
    b = load_checkpoint(tmp_path / "ddp/checkpoints/task_2.pt")["method"]
    for stats in ("tii_stats", "prompt_stats"):
        assert a[stats]["classes"] == b[stats]["classes"] == list(range(9))
        # counts are exact: each training image entered the sums exactly once
        assert [float(c) for c in a[stats]["count"]] == [float(c) for c in b[stats]["count"]]
        for key in ("sum", "sum_sq"):
            for x, y in zip(a[stats][key], b[stats][key], strict=True):
                assert x.dtype == y.dtype == torch.float64
                torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-9)
    env = json.loads((tmp_path / "ddp/env.json").read_text())
    assert env["world_size"] == 2


@pytest.mark.slow
def test_two_processes_train_stop_and_resume_from_rank0_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    first = _torchrun(out, 1, "--stop-after-task", "0")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("stopped after task 0") == 1, "only rank 0 prints"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task_0.pt",
                                                                       "task_0.pt.sha256"]
    second = _torchrun(out, 1)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resumed after task 0") == 1
    for name in ("config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
                 "metrics.json", "log.jsonl", "SHA256SUMS"):
        assert (out / name).stat().st_size > 0, name
    acc = read_accuracy_matrix(out / "accuracy_matrix.csv")
    assert acc.shape == (3, 3) and np.isfinite(np.tril(acc)).all()
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    # rank 0 alone writes the log: one evaluation record per task, one resume event
    assert [r["task"] for r in records if r.get("phase") == "eval"] == [0, 1, 2]
    assert sum(r.get("event") == "resume" for r in records) == 1
    # one TII-training record per (task, epoch), not one per rank
    tii = [(r["task"], r["epoch"]) for r in records if r.get("phase") == "tii"]
    assert tii == [(0, 0), (1, 0), (2, 0)]
    assert load_checkpoint(out / "checkpoints/task_2.pt")["task"] == 2
