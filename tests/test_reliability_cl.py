"""Crash safety of CL runs: SIGKILL at several points, corrupted checkpoints, full disk, NaN loss.

Every scenario ends by comparing against one uninterrupted run of the same tiny synthetic
configuration (CPU, fixed seed, one thread), which must match exactly.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import norga.io as norga_io
from cl.config import resolve_config
from cl.data.registry import build_benchmark
from cl.numerics import NonFiniteLossError
from cl.run.engine import run_experiment
from cl.run.files import (
    CheckpointError,
    WriteFailedError,
    load_checkpoint,
    sidecar_path,
    torch_save_atomic,
    verify_result_file,
    write_result_file,
)
from norga.matrix import read_accuracy_matrix

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = {  # every checkpoint kept: the fallback and kill tests need the earlier ones
    "keep_checkpoints": "all",
    "epochs": 2, "tii_epochs": 2, "tii_ca_epochs": 2, "tap_epochs": 2, "batch_size": 16,
    "dataset_options": {"num_classes": 6, "num_tasks": 3, "train_per_class": 12,
                        "test_per_class": 8},
    "seed": 5, "device": "cpu",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg():
    return resolve_config("synthetic", "norga", overrides=dict(OVERRIDES))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:
    """Accuracy matrix of the uninterrupted run."""
    result = run_experiment(_cfg(), tmp_path_factory.mktemp("ref") / "run")
    assert result.finished
    return result.accuracy


# ---------------------------------------------------------------------------- checksums
def test_checkpoint_checksum_detects_truncation_corruption_and_missing_sidecar(tmp_path):
    path = tmp_path / "task_0.pt"
    torch_save_atomic(path, {"task": 0, "x": torch.arange(1000.0)})
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(1000.0))
    data = path.read_bytes()

    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(path)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(path)
    path.write_bytes(data)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="checksum file"):
        load_checkpoint(path)


def test_result_files_are_listed_in_sha256sums(tmp_path):
    write_result_file(tmp_path, "metrics.json", '{"FA": 1}\n')
    write_result_file(tmp_path, "config.json", "{}\n")
    assert verify_result_file(tmp_path, "metrics.json") is None
    sums = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == ["config.json", "metrics.json"]
    (tmp_path / "metrics.json").write_text('{"FA": 2}\n')
    assert "SHA-256" in verify_result_file(tmp_path, "metrics.json")


# ---------------------------------------------------------------------------- corrupted state
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, reference, damage, caplog):
    out = tmp_path / "run"
    part = run_experiment(_cfg(), out, stop_after_task=1)
    assert not part.finished
    latest = out / "checkpoints/task_1.pt"
    data = latest.read_bytes()
    if damage == "truncate":
        latest.write_bytes(data[: len(data) // 3])
    else:
        latest.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with caplog.at_level("WARNING", logger="cl.run.engine"):
        resumed = run_experiment(_cfg(), out)
    assert resumed.resumed_after_task == 0, "must fall back to the task-0 checkpoint"
    assert len(resumed.skipped_checkpoints) == 1
    assert "task_1.pt" in resumed.skipped_checkpoints[0]
    assert any("task_1.pt" in r.getMessage() and "falling back" in r.getMessage()
               for r in caplog.records)
    assert (out / "checkpoints/task_1.pt.corrupt").exists()  # kept for inspection
    np.testing.assert_array_equal(resumed.accuracy, reference)
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "checkpoint_rejected" for e in events)


@pytest.mark.slow
def test_corrupted_metrics_json_is_recomputed_not_trusted(tmp_path, reference):
    out = tmp_path / "run"
    run_experiment(_cfg(), out)
    (out / "metrics.json").write_text('{"FA": 99.0, "accuracy_matrix": [[99.0]]}')
    again = run_experiment(_cfg(), out)
    assert not again.already_finished and again.finished
    np.testing.assert_array_equal(again.accuracy, reference)
    assert verify_result_file(out, "metrics.json") is None


# ---------------------------------------------------------------------------- SIGKILL
KILLER = r"""
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from cl.config import resolve_config
from cl.run.engine import run_experiment

mode, arg, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":  # the arg-th optimizer step of this process
    count = [0]
    def hook(optimizer, args, kwargs):
        count[0] += 1
        if count[0] == int(arg):
            die()
    from torch.optim.optimizer import register_optimizer_step_post_hook
    register_optimizer_step_post_hook(hook)
elif mode in ("before_rename", "after_rename"):
    real_replace = os.replace
    def replace(src, dst):
        if Path(dst).name == arg and mode == "before_rename":
            die()  # the temporary file is complete but not yet renamed
        real_replace(src, dst)
        if Path(dst).name == arg:
            die()
    os.replace = replace
run_experiment(resolve_config("synthetic", "norga", overrides=overrides), out)
"""


def _run_killable(mode: str, arg: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", KILLER, mode, arg, str(out), json.dumps(OVERRIDES)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    # Each step resumes the previous, killed one and is itself killed somewhere else.
    steps = [
        ("after_rename", "task_0.pt.sha256"),  # right after the first checkpoint is complete
        ("step", "5"),                          # mid task 1 (TII has 4 steps, so in WTP)
        ("after_rename", "task_1.pt"),          # checkpoint renamed, checksum not yet written
        ("before_rename", "metrics.json"),      # while writing the final result file
    ]
    for mode, arg in steps:
        res = _run_killable(mode, arg, out)
        assert res.returncode == -signal.SIGKILL, (mode, arg, res.stderr[-2000:])
        if (mode, arg) == ("after_rename", "task_0.pt.sha256"):
            assert sorted(p.name for p in ckpts.glob("task_*.pt")) == ["task_0.pt"]
        if mode == "step":
            assert not (ckpts / "task_1.pt").exists()
            assert read_accuracy_matrix(out / "accuracy_matrix.csv").shape[0] == 1
        if arg == "task_1.pt":
            assert (ckpts / "task_1.pt").exists() and not sidecar_path(ckpts / "task_1.pt").exists()
        if arg == "metrics.json":
            assert not (out / "metrics.json").exists()
            assert list(out.glob(".metrics.json.*.tmp")), "a half-finished write was left"
    final = run_experiment(_cfg(), out)
    assert final.finished and final.resumed_after_task == 2
    np.testing.assert_array_equal(final.accuracy, reference)
    np.testing.assert_array_equal(read_accuracy_matrix(out / "accuracy_matrix.csv"),
                                  np.round(reference, 4))
    assert not list(out.rglob(".*.tmp")), "stale temporary files are cleaned up"
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    rejected = [e for e in events if e.get("event") == "checkpoint_rejected"]
    assert len(rejected) == 1 and "task_1.pt" in rejected[0]["reason"]
    # the log holds exactly one evaluation record per task, despite the repeats
    assert [e["task"] for e in events if e.get("phase") == "eval"] == [0, 1, 2]


# ---------------------------------------------------------------------------- disk full
@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_previous_state(tmp_path, reference, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == "task_1.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(norga_io.os, "replace", full_disk)
    with pytest.raises(WriteFailedError, match="No space left.*task_1.pt.*intact"):
        run_experiment(_cfg(), out)
    monkeypatch.setattr(norga_io.os, "replace", real_replace)
    assert not (out / "checkpoints/task_1.pt").exists()
    assert load_checkpoint(out / "checkpoints/task_0.pt")["task"] == 0
    assert read_accuracy_matrix(out / "accuracy_matrix.csv").shape[0] == 1
    assert not list(out.rglob(".*.tmp"))
    resumed = run_experiment(_cfg(), out)
    assert resumed.resumed_after_task == 0
    np.testing.assert_array_equal(resumed.accuracy, reference)


def test_disk_full_while_writing_a_result_file_keeps_the_old_one(tmp_path, monkeypatch):
    write_result_file(tmp_path, "metrics.json", '{"FA": 1}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_fsync = os.fsync

    def full_disk(fd):  # delayed allocation: a full disk often shows up only at fsync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteFailedError, match="metrics.json.*intact"):
        write_result_file(tmp_path, "metrics.json", '{"FA": 2}\n')
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------------------- NaN loss
def test_nan_loss_stops_with_task_epoch_step_and_keeps_last_checkpoint(tmp_path):
    cfg = _cfg()
    bench = build_benchmark("synthetic", seed=cfg.seed, **cfg.dataset_options)
    first_of_task1 = int(bench.train.indices_of(bench.task_classes[1])[0])
    bench.train.dataset.images[first_of_task1] = float("nan")  # one poisoned training image
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        run_experiment(cfg, out, benchmark=bench)
    err = info.value
    assert (err.phase, err.task, err.epoch) == ("tii", 1, 0)
    assert f"task 1, epoch 0, step {err.step}" in str(err)
    assert "task_0.pt is kept" in str(err)
    assert load_checkpoint(out / "checkpoints/task_0.pt")["task"] == 0
    assert not (out / "checkpoints/task_1.pt").exists()
    assert not (out / "metrics.json").exists()
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "nonfinite_loss" and events[-1]["task"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("method, phase", [
    ("l2p", "train"), ("dualprompt", "train"), ("sprompt", "train"), ("coda-prompt", "coda"),
    ("smope", "smope"),
])
def test_nan_loss_stops_the_baselines_too(tmp_path, method, phase):
    """The baselines' training loops share the step with the non-finite check (one call site)."""
    overrides = {**OVERRIDES, "epochs": 1, "tap_epochs": 1}
    # one budget for every method, whatever phases it has
    cfg = resolve_config("synthetic", method, overrides=overrides, allow_unused=True)
    bench = build_benchmark("synthetic", seed=cfg.seed, **cfg.dataset_options)
    first_of_task1 = int(bench.train.indices_of(bench.task_classes[1])[0])
    bench.train.dataset.images[first_of_task1] = float("nan")
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        run_experiment(cfg, out, benchmark=bench)
    assert (info.value.phase, info.value.task, info.value.epoch) == (phase, 1, 0)
    assert load_checkpoint(out / "checkpoints/task_0.pt")["task"] == 0
    assert not (out / "checkpoints/task_1.pt").exists()
    assert not (out / "metrics.json").exists()
