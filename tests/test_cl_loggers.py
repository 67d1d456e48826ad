"""Run loggers: CSV views equal log.jsonl, one summary line per task, TensorBoard scalars,
progress bars only on a terminal (no carriage returns in a log file or pipe)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from cl_engine_helpers import log_records, tiny_cfg

from cl.errors import ConfigError
from cl.run.engine import run_experiment
from cl.run.loggers import RunLogger, TaskSummary, TensorBoardLogger
from norga.cli import progress_enabled

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"epochs": 2, "tii_epochs": 1}


def _csv(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def _expected_epochs(records: list[dict]) -> list[list[str]]:
    """Long-format rows, computed from the JSON lines without the logger's code."""
    rows = [["task", "phase", "epoch", "name", "value"]]
    for rec in records:
        if "epoch" not in rec or "phase" not in rec:
            continue
        for name, value in rec.items():
            if name in ("time", "phase", "task", "epoch") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            rows.append([str(rec["task"]), rec["phase"], str(rec["epoch"]), name, str(value)])
    return rows


def _expected_tasks(records: list[dict]) -> list[list[str]]:
    rows = [["task", "avg_acc", "last_acc", "tii_avg", "til_avg", "seconds"]]
    for rec in records:
        if rec.get("phase") == "eval":
            tii, til = rec["tii"], rec["til"]
            rows.append([str(rec["task"]), str(rec["avg_acc"]), str(rec["acc"][-1]),
                         str(sum(tii) / len(tii)), str(sum(til) / len(til)),
                         str(rec["seconds"])])
    return rows


class Recorder(RunLogger):
    def __init__(self) -> None:
        self.calls: list = []

    def start(self, num_tasks: int) -> None:
        self.calls.append(("start", num_tasks))

    def record(self, record, folder) -> None:
        self.calls.append(("record", dict(record), folder))

    def close(self) -> None:
        self.calls.append(("close",))


@pytest.mark.slow
def test_csv_views_equal_the_json_log_and_survive_a_resume(tmp_path):
    cfg = tiny_cfg("hide", **TRAIN)
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=0)
    # a process killed during task 1 left records of it behind; the resume redoes task 1
    stale = {"time": 0.0, "phase": "wtp", "task": 1, "epoch": 99, "loss": 123.0}
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps(stale) + "\n")
    with open(out / "epochs.csv", "a") as fh:
        fh.write("1,wtp,99,loss,123.0\n")
    run_experiment(cfg, out)  # resumes after task 0: the CSVs are rebuilt, then appended to
    records = log_records(out)
    assert _csv(out / "epochs.csv") == _expected_epochs(records)
    tasks = _csv(out / "tasks.csv")
    assert tasks == _expected_tasks(records)
    assert [row[0] for row in tasks[1:]] == ["0", "1", "2"]  # each task once
    assert len(_csv(out / "epochs.csv")) > 1 + 3 * 2  # several quantities per epoch


@pytest.mark.slow
def test_loggers_see_every_record_in_order_and_are_closed(tmp_path):
    rec = Recorder()
    out = tmp_path / "run"
    run_experiment(tiny_cfg("hide", **TRAIN), out, loggers=[rec])
    assert rec.calls[0] == ("start", 3) and rec.calls[-1] == ("close",)
    seen = [c[1] for c in rec.calls if c[0] == "record"]
    assert seen == log_records(out)
    assert {c[2] for c in rec.calls if c[0] == "record"} == {out}
    assert not (out / "epochs.csv").exists()  # the loggers given replace the default


def test_task_summary_one_line_per_task():
    stream = io.StringIO()
    summary = TaskSummary(stream)
    summary.start(10)
    summary.record({"phase": "wtp", "task": 0, "epoch": 0, "loss": 1.0}, Path("."))
    summary.record({"phase": "eval", "task": 2, "acc": [90.0, 80.0, 70.0], "avg_acc": 80.0,
                    "tii": [100.0, 50.0, 0.0], "seconds": 1.25}, Path("."))
    assert stream.getvalue() == "task 3/10: avg acc 80.00 on 3 seen tasks, TII 50.0, 1.2 s\n"


@pytest.mark.slow
def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_experiment(tiny_cfg("hide", **TRAIN), out, loggers=[TensorBoardLogger()])
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    evals = [r for r in log_records(out) if r.get("phase") == "eval"]
    got = [(e.step, e.value) for e in acc.Scalars("eval/avg_acc")]
    assert got == [(r["task"], pytest.approx(r["avg_acc"], abs=1e-4)) for r in evals]
    wtp = [r["loss"] for r in log_records(out) if r.get("phase") == "wtp"]
    assert [e.value for e in acc.Scalars("wtp/loss")] == pytest.approx(wtp, abs=1e-5)


def test_tensorboard_missing_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError) as info:
        TensorBoardLogger()
    assert info.value.field == "loggers" and "pip install" in str(info.value)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_only_on_a_terminal():
    on = Namespace(no_progress=False, quiet=False)
    assert progress_enabled(on, _Stream(True))
    assert not progress_enabled(on, _Stream(False))
    assert not progress_enabled(Namespace(no_progress=True, quiet=False), _Stream(True))
    assert not progress_enabled(Namespace(no_progress=False, quiet=True), _Stream(True))


@pytest.mark.slow
def test_cli_writes_no_carriage_returns_when_stderr_is_not_a_terminal(tmp_path):
    """The real command with stderr on a pipe: no progress bar updates, one line per task."""
    options = json.dumps({"num_classes": 6, "num_tasks": 3, "train_per_class": 4,
                          "test_per_class": 5})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments/cl.py"), "--dataset", "synthetic",
         "--method", "hide", "--epochs", "1", "--set", f"dataset_options={options}",
         "--set", "tap_epochs=1", "--set", "tii_ca_epochs=1", "--device", "cpu",
         "--out", str(tmp_path / "run")],
        capture_output=True, env=env, timeout=600, check=False)  # bytes: "\r" kept as is
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert b"\r" not in done.stderr and b"\r" not in done.stdout
    lines = [x for x in stderr.splitlines() if x.startswith("task ")]
    assert [x.split(":")[0] for x in lines] == ["task 1/3", "task 2/3", "task 3/3"]
    assert (tmp_path / "run/epochs.csv").exists() and (tmp_path / "run/tasks.csv").exists()


def test_wandb_logger_sends_the_scalars(monkeypatch, tmp_path):
    """With a stand-in ``wandb`` module: one init with the config, the epoch and task scalars."""
    import types

    calls = []

    class FakeRun:
        def log(self, data):
            calls.append(("log", data))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from cl.run.loggers import WandbLogger

    logger = WandbLogger("proj", {"lr": 0.1})
    logger.record({"time": 1.0, "phase": "wtp", "task": 0, "epoch": 0, "loss": 0.5,
                   "flag": True}, tmp_path)
    logger.record({"phase": "eval", "task": 0, "acc": [80.0], "avg_acc": 80.0, "tii": [90.0],
                   "til": [95.0], "seconds": 2.0}, tmp_path)
    logger.close()
    assert calls == [
        ("init", {"project": "proj", "config": {"lr": 0.1}, "dir": str(tmp_path)}),
        ("log", {"wtp/loss": 0.5}),
        ("log", {"eval/avg_acc": 80.0, "eval/last_acc": 80.0, "eval/tii_avg": 90.0,
                 "eval/til_avg": 95.0, "eval/seconds": 2.0}),
        ("finish",)]
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="pip install wandb"):
        WandbLogger("proj")
