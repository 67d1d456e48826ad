"""The run directory's lifecycle: checks, resume decisions, ``--overwrite`` staging, result files.

Run directory (docs/architecture.md#run-directory)::

    config.json          resolved configuration
    env.json             versions, git SHA, device, backbone + weights SHA-256, dataset provenance
    class_order.json     the seeded class order and the task split
    accuracy_matrix.csv  after_task,task_0,...  (percent; empty for tasks not yet seen)
    accuracy_matrix_before_alignment.csv
                         the same just before the head alignment (methods with one: HiDe-Prompt,
                         NoRGa, SMoPE; row 0 equals accuracy_matrix.csv, no alignment at task 0)
    metrics.json         FA, CA, FM, TII / TIL accuracy, per-task numbers (written last; strict
                         JSON: a metric that does not apply is null)
    log.jsonl            one JSON record per epoch / phase / evaluation (strict JSON lines)
    SHA256SUMS           checksums of the result files above, log.jsonl included (its sum is
                         refreshed after every task; ``sha256sum -c SHA256SUMS``)
    checkpoints/task_<t>.pt (+ .sha256)   everything needed to continue after task t

Re-running with the same configuration resumes after the last checkpoint that passes its
checksum (a corrupted or truncated latest checkpoint is reported, set aside as ``*.corrupt``, and
the previous good one is used); a finished run (one with a valid ``metrics.json``) is left alone
unless ``overwrite=True``. Every file is written atomically, so a run killed at any point (even
``SIGKILL``) resumes on re-run and ends with the same accuracy matrix as an uninterrupted one.

The functions that read or write files run on rank 0 only (the task loop in :mod:`cl.run.engine`
calls them through its ``_on_main``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cl.config import CLConfig, config_from_dict, flat_dict
from cl.errors import ConfigError
from cl.run.accuracy_log import AccuracyLog
from cl.run.files import (
    CHECKSUMS_FILE,
    CheckpointError,
    WriteFailedError,
    json_line,
    json_text,
    load_checkpoint,
    read_checksums,
    record_checksum,
    sha256_hex,
    sidecar_path,
    torch_save_atomic,
    write_result_file,
    write_text_atomic,
)
from norga.cli import output_dir_problem
from norga.io import checksum_problems
from norga.matrix import accuracy_matrix_csv
from norga.runlock import RunLockedError, run_lock

log = logging.getLogger(__name__)

# Config keys that may change between an interrupted run and its resumption.
# (compile changes how, not what, is computed.)
# (keep_checkpoints only decides which checkpoints stay on disk.)
RUNTIME_KEYS = frozenset({"device", "num_workers", "data_root", "download", "compile",
                          "keep_checkpoints"})
BEFORE_ALIGNMENT_CSV = "accuracy_matrix_before_alignment.csv"
# the CSV views of log.jsonl (cl.run.loggers.CSVLogger), rebuilt from it when a run starts
LOG_VIEWS = ("epochs.csv", "tasks.csv")
RUN_FILES = ("config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
             BEFORE_ALIGNMENT_CSV, "metrics.json", "log.jsonl", "expert_frequency.json",
             "task_selection.json", CHECKSUMS_FILE, *LOG_VIEWS)
# Result files verified against SHA256SUMS before a finished or resumed run is trusted. log.jsonl
# grows during a run (its sum is refreshed after every task), so it is not among them, nor are
# its CSV views.
CHECKED_FILES = tuple(n for n in RUN_FILES
                      if n not in ("log.jsonl", CHECKSUMS_FILE, *LOG_VIEWS))
# Files every finished run has (the rest depend on the method).
REQUIRED_FILES = ("config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
                  "metrics.json")
# --overwrite builds the new run here and moves it into the run directory once its first task
# is checkpointed; until then the old run stays untouched.
STAGING = ".overwrite"


class RunDirError(RuntimeError):
    """The run directory holds a different run or is unusable; a CLI reports it with exit 2."""


class RunBusyError(RunDirError):
    """Another process is writing into the run directory (it holds its lock)."""


@dataclass
class RunResult:
    """Outcome of :func:`run_experiment`.

    ``accuracy``, ``tii``, ``til`` (official ``--task_inc``: the method's own prompt choice,
    logits restricted to the true task's classes), ``til_oracle`` (the true task's prompt, same
    restriction) and ``accuracy_before_alignment`` are ``(finished tasks, T)`` percent matrices
    (``nan`` for tasks not yet seen or not applicable); ``metrics`` is ``None`` while the run is
    unfinished.
    ``skipped_checkpoints`` names the checkpoints that failed verification on resume.
    """

    out_dir: Path
    accuracy: np.ndarray
    tii: np.ndarray
    til: np.ndarray
    metrics: dict[str, Any] | None
    finished: bool
    resumed_after_task: int | None = None
    already_finished: bool = False
    env: dict[str, Any] = field(default_factory=dict)
    skipped_checkpoints: list[str] = field(default_factory=list)
    til_oracle: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    accuracy_before_alignment: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


class _JsonlLog:
    """Appends one JSON record per line; silent on ranks other than 0."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        # run loggers (cl.run.loggers): each record goes to them after the line is written
        self.listeners: list[Any] = []

    def truncate_after(self, last_task: int) -> None:
        """Drop records of tasks after ``last_task`` and any line cut short by a crash."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line half-written when the process was killed
                continue
            if not isinstance(record, dict):
                continue
            task = record.get("task", -1)
            # a hand-added or foreign line ({"task": null}) belongs to no task: it is kept
            if not isinstance(task, int | float) or isinstance(task, bool) or task <= last_task:
                kept.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        record_checksum(self.path.parent, self.path.name)

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        full = {"time": round(time.time(), 3), **record}
        line = json_line(full) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError as exc:  # full disk, run directory deleted, log.jsonl not a file
            reason = exc.strerror or type(exc).__name__
            raise WriteFailedError(exc.errno, f"could not append to {self.path}: {reason}; the "
                                   "checkpoints and result files written so far are intact"
                                   ) from None
        for listener in self.listeners:
            listener.record(full, self.path.parent)


# ---------------------------------------------------------------------------- run directory
def _check_usable(out: Path) -> None:
    """Refuse a run directory that is a file or cannot be written (before writing anything)."""
    problem = output_dir_problem(out)
    if problem:
        raise RunDirError(f"--out {problem}")
    # a run file that is a folder, or a checkpoints "folder" that is a file, fails every resume
    # the same way: refused here, naming it, instead of a write error mid-run
    checkpoints = out / "checkpoints"
    if checkpoints.exists() and not checkpoints.is_dir():
        raise RunDirError(f"--out {out}: {checkpoints} is a file, not the checkpoints folder; "
                          "move it away (nothing else there is changed)")
    for name in RUN_FILES:
        if (out / name).is_dir():
            raise RunDirError(f"--out {out}: {out / name} is a folder, not the run's {name}; "
                              "move it away (nothing else there is changed)")


def _checkpoint_config(out: Path) -> tuple[dict[str, Any], str] | None:
    """The configuration saved in the newest checkpoint that passes its checksum (and its
    file name), or ``None``. Read-only: nothing is set aside here."""
    found = []
    for path in (out / "checkpoints").glob("task_*.pt"):
        try:
            found.append((int(path.stem.split("_")[1]), path))
        except (IndexError, ValueError):
            continue
    for _, path in sorted(found, reverse=True):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            continue
        if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
            return ckpt["config"], path.name
    return None


def _read_config_json(path: Path) -> Any:
    """The JSON value in ``path`` (``None`` when it is not JSON; any other value is reported
    by :func:`_check_same_config` as a non-CL run)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _saved_config(out: Path) -> Any:
    """The configuration of the run in ``out``: ``config.json`` when it verifies, else the one
    its newest good checkpoint holds (``config.json`` is then rewritten by the resumed run);
    ``None`` when ``out`` holds neither.

    Raises
    ------
    RunDirError
        ``config.json`` was edited or damaged (its SHA-256 differs, or it cannot be read) and
        no checkpoint holds a configuration to fall back to.
    """
    path = out / "config.json"
    problem = edited = None
    saved = _read_config_json(path) if path.exists() else None
    if path.exists():
        sums = read_checksums(out)
        try:
            digest = sha256_hex(path.read_bytes())
        except OSError as exc:
            digest, edited = "", f"config.json is unreadable ({exc.strerror})"
        if edited is None and "config.json" in sums and digest != sums["config.json"]:
            edited = (f"config.json does not match its SHA-256 in {CHECKSUMS_FILE} (edited, "
                      "corrupted or truncated)")
        elif edited is None and saved is None:
            edited = "config.json is not readable JSON"
        elif edited is None and "config.json" not in sums:
            problem = (f"{CHECKSUMS_FILE} is missing" if not (out / CHECKSUMS_FILE).exists()
                       else f"config.json has no entry in {CHECKSUMS_FILE}")
        if edited is None and problem is None:
            return saved
    fallback = _checkpoint_config(out)
    if fallback is not None:
        if edited or problem:
            log.warning("%s: %s; using the configuration in checkpoint %s instead (config.json "
                        "is rewritten from it)", out, edited or problem, fallback[1])
        return fallback[0]
    if edited:
        raise RunDirError(
            f"--out {out}: {edited}; restore config.json from a backup, or pass --overwrite "
            "(no checkpoint holds a configuration to check it against, so no finished task "
            "is lost)")
    if problem:  # only the checksum was lost and no checkpoint exists: the run restarts
        log.warning("%s: %s and no checkpoint can confirm config.json; the run starts from "
                    "task 0", out, problem)
    return saved


def _check_same_config(out: Path, cfg: CLConfig) -> None:
    saved = _saved_config(out)
    if saved is None:
        return
    if not isinstance(saved, dict) or "method" not in saved or "dataset" not in saved:
        kind = saved.get("kind", "non-CL") if isinstance(saved, dict) else "non-CL"
        raise RunDirError(f"--out {out} holds a {kind} run, not a CL run; use another --out")
    now = flat_dict(cfg)
    # a key added after the run was started (e.g. precision) counts with its default value; a
    # config.json from before options were typed is read in the current shape
    try:
        saved = flat_dict(config_from_dict(saved))
    except (ConfigError, TypeError):
        saved = {k: v for k, v in saved.items() if not isinstance(v, dict)}
    defaults = flat_dict(CLConfig())
    diff = sorted(k for k in set(saved) | set(now)
                  if k.split(".")[0] not in RUNTIME_KEYS
                  and saved.get(k, defaults.get(k)) != now.get(k))
    if diff:
        raise RunDirError(
            f"{out} holds a run with a different configuration (differs in: {', '.join(diff)}); "
            "use another --out or pass --overwrite"
        )


@contextlib.contextmanager
def locked_run_dir(out: Path, cfg: CLConfig, *, overwrite: bool, main: bool) -> Iterator[None]:
    """Rank 0 (``main``): refuse an unusable ``out`` or, without ``overwrite``, one that holds a
    different run, then hold ``out``'s run lock for the ``with`` block; other ranks: nothing.

    The checks are read-only and come first, so a refused run does not even create the lock file.

    Raises
    ------
    RunDirError
        ``out`` is unusable or holds a different run; :class:`RunBusyError` when another process
        holds the lock.
    """
    if not main:
        yield
        return
    _check_usable(out)
    if not overwrite and _has_run(out):
        _check_same_config(out, cfg)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(out))
        except RunLockedError as exc:
            raise RunBusyError(str(exc)) from None
        yield


def _has_run(out: Path) -> bool:
    """Whether ``out`` holds any file of a run (which --overwrite must not lose early)."""
    return any((out / name).exists() for name in RUN_FILES) or (out / "checkpoints").exists()


def _promote(staging: Path, out: Path) -> None:
    """Replace the old run in ``out`` by the staged new one (called once the new run has its
    first checkpoint). The old files are moved aside first, then deleted."""
    old = out / ".replaced"
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    for name in (*RUN_FILES, "checkpoints", "metrics.json.corrupt", "tensorboard"):
        if (out / name).exists():
            (out / name).replace(old / name)
    for item in staging.iterdir():
        item.replace(out / item.name)
    staging.rmdir()
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_candidates(out: Path, num_tasks: int) -> list[tuple[int, Path]]:
    found = []
    for path in (out / "checkpoints").glob("task_*.pt"):
        try:
            t = int(path.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if 0 <= t < num_tasks:
            found.append((t, path))
    return sorted(found, reverse=True)


def _set_aside(path: Path) -> None:
    """Rename a bad checkpoint (and its sidecar) to ``*.corrupt``: kept for inspection, ignored
    by later resumes, and out of the way of the re-written one."""
    for p in (path, sidecar_path(path)):
        if p.exists():
            p.replace(p.with_name(p.name + ".corrupt"))


def _latest_good_checkpoint(
    out: Path, num_tasks: int
) -> tuple[int | None, Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint that passes its checksum and loads, plus the reasons newer ones
    were rejected (those are set aside as ``*.corrupt``)."""
    problems: list[str] = []
    for t, path in _checkpoint_candidates(out, num_tasks):
        try:
            ckpt = load_checkpoint(path)
            if not isinstance(ckpt, dict) or ckpt.get("task") != t:
                raise CheckpointError(f"{path.name}: does not hold the state after task {t}")
        except CheckpointError as exc:
            log.warning("checkpoint %s is unusable: %s; falling back to the previous one",
                        path, exc)
            _set_aside(path)
            problems.append(str(exc))
            continue
        return t, path, ckpt, problems
    return None, None, None, problems


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of writes cut short by a crash (``.<name>.<random>.tmp``)."""
    for folder in (out, out / "checkpoints"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ResumeDecision:
    """What :func:`_prepare` decided to do with a run directory.

    Attributes
    ----------
    finished:
        The finished run ``out`` holds (nothing to do; the other fields are unused), else
        ``None``.
    staging:
        ``--overwrite`` of an existing run: the new run is built in ``out/.overwrite`` until its
        first task is checkpointed.
    task:
        The last task of the checkpoint to resume from; ``None`` for a fresh start.
    checkpoint_path, checkpoint:
        That checkpoint's path and content (method state, random streams, accuracy matrices).
    task_selection:
        The checkpoint's ``task_selection.json`` content (rewritten if the run was finished).
    skipped:
        Why newer checkpoints were rejected (set aside as ``*.corrupt``).
    """

    finished: RunResult | None = None
    staging: bool = False
    task: int | None = None
    checkpoint_path: Path | None = None
    checkpoint: dict[str, Any] | None = None
    task_selection: dict[str, Any] | None = None
    skipped: tuple[str, ...] = ()

    @property
    def start_task(self) -> int:
        """The first task to train (``num_tasks`` when only the results must be redone)."""
        return 0 if self.task is None else self.task + 1

    @property
    def resumes(self) -> bool:
        """Whether a checkpoint is restored (and the result files it covers rewritten)."""
        return self.task is not None


def _prepare(out: Path, cfg: CLConfig, overwrite: bool, num_tasks: int) -> ResumeDecision:
    """Rank 0: decide what to do with ``out`` (finished / fresh / resume from a checkpoint).

    With ``overwrite`` and an existing run, the new run is started in ``out/.overwrite``
    (``staging``); nothing of the old run is touched here.
    """
    _check_usable(out)
    shutil.rmtree(out / STAGING, ignore_errors=True)  # an --overwrite killed before its result
    if overwrite:
        if _has_run(out):
            return ResumeDecision(staging=True)
    elif (out / "metrics.json").exists():
        _check_same_config(out, cfg)
        problems = _finished_run_problems(out)
        if not problems:
            try:
                return ResumeDecision(finished=_load_finished(out))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                problems = [f"metrics.json cannot be parsed ({type(exc).__name__})"]
        log.warning("%s: %s; recomputing the results from the last good checkpoint (they "
                    "derive from it; nothing is retrained when it is the final one)", out,
                    "; ".join(problems))
        (out / "metrics.json").replace(out / "metrics.json.corrupt")
    elif _has_run(out):
        _check_same_config(out, cfg)
    _remove_stale_temporaries(out)
    t, path, ckpt, problems = _latest_good_checkpoint(out, num_tasks)
    return ResumeDecision(task=t, checkpoint_path=path, checkpoint=ckpt,
                          task_selection=None if ckpt is None else ckpt.get("task_selection"),
                          skipped=tuple(problems))


def _finished_run_problems(out: Path) -> list[str]:
    """Why the results of a finished run in ``out`` cannot be trusted as they are (empty when
    they can): ``SHA256SUMS`` missing, a result file missing, or one that does not verify."""
    missing = [name for name in REQUIRED_FILES if not (out / name).exists()]
    present = [name for name in CHECKED_FILES if name not in missing]
    return ([f"{name} is missing" for name in missing]
            + checksum_problems(out, present, require_sums=True))


def write_run_files(work: Path, cfg: CLConfig, env: dict[str, Any],
                    task_classes: list[list[int]]) -> None:
    """Rank 0: ``config.json``, ``env.json`` and ``class_order.json`` of a starting run."""
    work.mkdir(parents=True, exist_ok=True)
    write_result_file(work, "config.json", json_text(cfg.to_dict()))
    write_result_file(work, "env.json", json_text(env))
    write_result_file(work, "class_order.json", json_text({
        "seed": cfg.seed,
        "class_order": [c for t in task_classes for c in t],
        "task_classes": task_classes,
    }))


def write_matrices(out: Path, accuracy: AccuracyLog, has_alignment: bool) -> None:
    """Rank 0: ``accuracy_matrix.csv`` and, for a method with a head alignment,
    ``accuracy_matrix_before_alignment.csv`` (also on resume: a kill between the checkpoint and
    the matrix may have left the matrix behind)."""
    write_result_file(out, "accuracy_matrix.csv", accuracy_matrix_csv(accuracy.acc))
    if has_alignment:
        write_result_file(out, BEFORE_ALIGNMENT_CSV, accuracy_matrix_csv(accuracy.acc_before))


class _TrainedMethod(Protocol):
    """What a checkpoint needs of a method."""

    def state_dict(self) -> dict[str, Any]: ...

    def run_files(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TaskState:
    """The state after a finished task, which its checkpoint stores."""

    task: int
    method: _TrainedMethod
    loader_gen: torch.Generator
    accuracy: AccuracyLog
    config: dict[str, Any]
    has_alignment: bool
    task_selection: dict[str, Any] | None

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint's plain data (its key order is part of the file's bytes: kept)."""
        return {"task": self.task, "method": self.method.state_dict(),
                "loader_gen": self.loader_gen.get_state(), **self.accuracy.to_state(),
                "config": self.config, "has_alignment": self.has_alignment,
                "task_selection": self.task_selection, "torch_rng": torch.get_rng_state()}


def _save_task(out: Path, cfg: CLConfig, state: TaskState, rows: dict[str, np.ndarray],
               jsonl: _JsonlLog, seconds: float) -> None:
    """Rank 0: the eval record, the checkpoint after task ``state.task``, then the matrix.

    The checkpoint precedes ``accuracy_matrix.csv``, so the matrix never runs ahead of what a
    resume restores.
    """
    t = state.task
    ckpt_dir = out / "checkpoints"
    # The log record goes first: if the process dies before the checkpoint exists, the resume
    # drops records of unfinished tasks; the other way round a finished task would lack one.
    jsonl({"phase": "eval", "task": t,
           **{k: v[: t + 1].tolist() for k, v in rows.items()},
           "avg_acc": float(np.mean(rows["acc"][: t + 1])), "seconds": round(seconds, 2)})
    torch_save_atomic(ckpt_dir / f"task_{t}.pt", state.checkpoint())
    write_matrices(out, state.accuracy, state.has_alignment)
    for name, content in state.method.run_files().items():  # e.g. expert_frequency.json
        write_result_file(out, name, json_text(content))
    if state.task_selection is not None:
        write_result_file(out, "task_selection.json", json_text(state.task_selection))
    if cfg.keep_checkpoints == "last" and t > 0:
        previous = ckpt_dir / f"task_{t - 1}.pt"
        for p in (previous, sidecar_path(previous)):
            p.unlink(missing_ok=True)
    record_checksum(out, "log.jsonl")  # every record of tasks 0..t is in the log by now


def _load_finished(out: Path) -> RunResult:
    data = json.loads((out / "metrics.json").read_text())
    acc = np.array([[math.nan if v is None else v for v in r] for r in data["accuracy_matrix"]])
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    return RunResult(out, acc, np.full_like(acc, np.nan), np.full_like(acc, np.nan), data,
                     True, None, already_finished=True, env=env)


def load_config(out_dir: str | Path) -> CLConfig:
    """The configuration saved in a run directory."""
    return config_from_dict(json.loads((Path(out_dir) / "config.json").read_text()))
