"""Run loggers: where a run's records go besides ``log.jsonl``.

Every record a run writes to ``log.jsonl`` (one per training epoch of every phase, one per
evaluation, events such as a resume) is also handed to each logger of the run, on rank 0 only.
A logger is any object with the three methods of :class:`RunLogger`; the ones here:

- :class:`CSVLogger` (default): ``epochs.csv`` (one row per epoch and logged quantity, long
  format: ``task,phase,epoch,name,value``) and ``tasks.csv`` (one row per finished task: average
  accuracy on the tasks seen, TII and TIL averages, seconds) in the run directory. Both are
  rebuilt from ``log.jsonl`` when a run starts or resumes, so they never hold records of a task
  that a resume redoes.
- :class:`TaskSummary`: one line per finished task on a stream (the CLI: stderr).
- :class:`TensorBoardLogger`: scalars for TensorBoard via ``torch.utils.tensorboard`` (needs the
  ``tensorboard`` package, an optional extra).
- :class:`WandbLogger`: Weights & Biases (needs ``wandb``; optional, never imported otherwise).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from cl.errors import ConfigError

EPOCHS_CSV = "epochs.csv"
TASKS_CSV = "tasks.csv"
EPOCH_COLUMNS = ("task", "phase", "epoch", "name", "value")
TASK_COLUMNS = ("task", "avg_acc", "last_acc", "tii_avg", "til_avg", "seconds")
# keys of an epoch record that identify it rather than measure something
_EPOCH_KEYS = ("time", "phase", "task", "epoch")


class RunLogger:
    """The logger interface; subclasses override what they need (every method is a no-op)."""

    def start(self, num_tasks: int) -> None:
        """Called once before the first record, with the benchmark's number of tasks."""

    def record(self, record: Mapping[str, Any], folder: Path) -> None:
        """One record as written to ``log.jsonl``; ``folder`` is where the run writes now."""

    def close(self) -> None:
        """Called once when the run returns or fails."""


def is_epoch(record: Mapping[str, Any]) -> bool:
    """A training-epoch record (``phase`` and ``epoch`` present)."""
    return "epoch" in record and "phase" in record


def is_task_eval(record: Mapping[str, Any]) -> bool:
    """The evaluation record written after a task is finished."""
    return record.get("phase") == "eval" and "avg_acc" in record


def epoch_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """``[task, phase, epoch, name, value]`` for every number in an epoch record."""
    return [[record.get("task"), record.get("phase"), record.get("epoch"), name, value]
            for name, value in record.items()
            if name not in _EPOCH_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool)]


def _mean(values: Any) -> float | None:
    nums = [float(v) for v in values or [] if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(nums) / len(nums) if nums else None


def task_row(record: Mapping[str, Any]) -> list[Any]:
    """The ``tasks.csv`` row of an evaluation record."""
    acc = record.get("acc") or []
    return [record.get("task"), record.get("avg_acc"), acc[-1] if acc else None,
            _mean(record.get("tii")), _mean(record.get("til")), record.get("seconds")]


def _csv_text(rows: Iterable[Iterable[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


class CSVLogger(RunLogger):
    """``epochs.csv`` and ``tasks.csv`` in the run directory (see the module docstring)."""

    def __init__(self) -> None:
        self._folder: Path | None = None

    def record(self, record: Mapping[str, Any], folder: Path) -> None:
        if folder != self._folder:  # first record, or the run moved out of its staging folder
            self._folder = folder
            self._rebuild(folder)
            return
        if is_epoch(record):
            self._append(folder / EPOCHS_CSV, epoch_rows(record))
        elif is_task_eval(record):
            self._append(folder / TASKS_CSV, [task_row(record)])

    @staticmethod
    def _append(path: Path, rows: list[list[Any]]) -> None:
        with open(path, "a", encoding="utf-8", newline="") as fh:
            fh.write(_csv_text(rows))

    @staticmethod
    def _rebuild(folder: Path) -> None:
        """Both files from ``log.jsonl`` (which already holds the current record)."""
        from norga.io import atomic_write_text

        epochs: list[list[Any]] = [list(EPOCH_COLUMNS)]
        tasks: list[list[Any]] = [list(TASK_COLUMNS)]
        log_path = folder / "log.jsonl"
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines() \
            if log_path.exists() else []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if is_epoch(rec):
                epochs += epoch_rows(rec)
            elif is_task_eval(rec):
                tasks.append(task_row(rec))
        atomic_write_text(folder / EPOCHS_CSV, _csv_text(epochs))
        atomic_write_text(folder / TASKS_CSV, _csv_text(tasks))


class TaskSummary(RunLogger):
    """One line per finished task, e.g. ``task 3/10: avg acc 85.21 on 4 seen tasks, TII 91.0,
    12.3 s``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.num_tasks: int | None = None

    def start(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks

    def record(self, record: Mapping[str, Any], folder: Path) -> None:
        if not is_task_eval(record):
            return
        t = int(record["task"])
        total = f"/{self.num_tasks}" if self.num_tasks else ""
        tii = _mean(record.get("tii"))
        parts = [f"task {t + 1}{total}: avg acc {record['avg_acc']:.2f} on {t + 1} seen task"
                 + ("s" if t else "")]
        if tii is not None:
            parts.append(f"TII {tii:.1f}")
        if record.get("seconds") is not None:
            parts.append(f"{record['seconds']:.1f} s")
        stream = self.stream or sys.stderr
        print(", ".join(parts), file=stream, flush=True)


class TensorBoardLogger(RunLogger):
    """Scalars for TensorBoard under ``<run>/tensorboard`` (or ``log_dir``).

    Epoch quantities are written as ``<phase>/<name>`` with a step that counts epochs of that
    phase over the whole run; task results as ``eval/avg_acc`` etc. with the task as step.

    Raises
    ------
    ConfigError
        (``field`` ``"loggers"``) when ``tensorboard`` is not installed.
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch.utils.tensorboard needs the tensorboard package
            raise ConfigError("loggers", "tensorboard needs the optional package tensorboard: "
                              "pip install 'norga[tensorboard]' (or pip install tensorboard)"
                              ) from None
        self._writer_cls = SummaryWriter
        self._writer: Any = None
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._steps: dict[str, int] = {}

    def _get(self, folder: Path) -> Any:
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=str(self._log_dir or folder / "tensorboard"))
        return self._writer

    def record(self, record: Mapping[str, Any], folder: Path) -> None:
        if is_epoch(record):
            phase = str(record["phase"])
            step = self._steps.get(phase, 0)
            self._steps[phase] = step + 1
            for _, _, _, name, value in epoch_rows(record):
                self._get(folder).add_scalar(f"{phase}/{name}", value, step)
        elif is_task_eval(record):
            row = dict(zip(TASK_COLUMNS, task_row(record), strict=True))
            for name in ("avg_acc", "last_acc", "tii_avg", "til_avg"):
                if row[name] is not None:
                    self._get(folder).add_scalar(f"eval/{name}", row[name], int(record["task"]))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class WandbLogger(RunLogger):
    """Weights & Biases: the same scalars as :class:`TensorBoardLogger` (``wandb`` optional).

    Raises
    ------
    ConfigError
        (``field`` ``"loggers"``) when ``wandb`` is not installed.
    """

    def __init__(self, project: str, config: Mapping[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("loggers", "wandb needs the optional package wandb: "
                              "pip install wandb") from None
        self._wandb = wandb
        self._project = project
        self._config = dict(config or {})
        self._run: Any = None

    def record(self, record: Mapping[str, Any], folder: Path) -> None:
        if self._run is None:
            self._run = self._wandb.init(project=self._project, config=self._config,
                                         dir=str(folder))
        if is_epoch(record):
            self._run.log({f"{record['phase']}/{name}": value
                           for _, _, _, name, value in epoch_rows(record)})
        elif is_task_eval(record):
            row = dict(zip(TASK_COLUMNS, task_row(record), strict=True))
            self._run.log({f"eval/{k}": v for k, v in row.items()
                           if k != "task" and v is not None})

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
