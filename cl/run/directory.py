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
from typing import Any

import numpy as np
import torch

from cl.config import CLConfig, config_from_dict
from cl.run.files import (
    CHECKSUMS_FILE,
    CheckpointError,
    accuracy_matrix_csv,
    json_line,
    json_text,
    load_checkpoint,
    record_checksum,
    sidecar_path,
    torch_save_atomic,
    write_result_file,
    write_text_atomic,
)
from norga.cli import output_dir_problem
from norga.io import verify_checksums
from norga.runlock import RunLockedError, run_lock

log = logging.getLogger(__name__)

# Config keys that may change between an interrupted run and its resumption.
# (compile changes how, not what, is computed.)
RUNTIME_KEYS = frozenset({"device", "num_workers", "data_root", "download", "compile"})
BEFORE_ALIGNMENT_CSV = "accuracy_matrix_before_alignment.csv"
RUN_FILES = ("config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
             BEFORE_ALIGNMENT_CSV, "metrics.json", "log.jsonl", "expert_frequency.json",
             "task_selection.json", CHECKSUMS_FILE)
# Result files verified against SHA256SUMS before a finished or resumed run is trusted. log.jsonl
# grows during a run (its sum is refreshed after every task), so it is not among them.
CHECKED_FILES = tuple(n for n in RUN_FILES if n not in ("log.jsonl", CHECKSUMS_FILE))
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
            if isinstance(record, dict) and record.get("task", -1) <= last_task:
                kept.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        record_checksum(self.path.parent, self.path.name)

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json_line({"time": round(time.time(), 3), **record}) + "\n")


# ---------------------------------------------------------------------------- run directory
def _check_usable(out: Path) -> None:
    """Refuse a run directory that is a file or cannot be written (before writing anything)."""
    problem = output_dir_problem(out)
    if problem:
        raise RunDirError(f"--out {problem}")


def _check_same_config(out: Path, cfg: CLConfig) -> None:
    problem = verify_checksums(out, ["config.json"])
    if problem:
        raise RunDirError(f"--out {out}: {problem}; restore it, use another --out or pass "
                          "--overwrite")
    try:
        saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunDirError(f"--out {out} holds an unreadable config.json; use another --out or "
                          "pass --overwrite") from None
    if not isinstance(saved, dict) or "method" not in saved or "dataset" not in saved:
        kind = saved.get("kind", "non-CL") if isinstance(saved, dict) else "non-CL"
        raise RunDirError(f"--out {out} holds a {kind} run, not a CL run; use another --out")
    now = cfg.to_dict()
    # a key added after the run was started (e.g. precision) counts with its default value
    defaults = CLConfig().to_dict()
    diff = sorted(k for k in set(saved) | set(now)
                  if k not in RUNTIME_KEYS and saved.get(k, defaults.get(k)) != now.get(k))
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
    if not overwrite and (out / "config.json").exists():
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
    for name in (*RUN_FILES, "checkpoints", "metrics.json.corrupt"):
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


def _prepare(out: Path, cfg: CLConfig, overwrite: bool, num_tasks: int) -> dict[str, Any]:
    """Rank 0: decide what to do with ``out`` (finished / fresh / resume from a checkpoint).

    With ``overwrite`` and an existing run, the new run is started in ``out/.overwrite``
    (``"staging"``); nothing of the old run is touched here.
    """
    _check_usable(out)
    shutil.rmtree(out / STAGING, ignore_errors=True)  # an --overwrite killed before its result
    if overwrite:
        if _has_run(out):
            return {"status": "run", "task": None, "path": None, "ckpt": None, "skipped": [],
                    "staging": True}
    elif (out / "metrics.json").exists():
        _check_same_config(out, cfg)
        problem = verify_checksums(out, CHECKED_FILES)
        if problem is None:
            try:
                return {"status": "finished", "result": _load_finished(out)}
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"metrics.json cannot be parsed ({type(exc).__name__})"
        log.warning("%s: %s; recomputing the results from the last good checkpoint", out,
                    problem)
        (out / "metrics.json").replace(out / "metrics.json.corrupt")
    elif (out / "config.json").exists():
        _check_same_config(out, cfg)
    _remove_stale_temporaries(out)
    t, path, ckpt, problems = _latest_good_checkpoint(out, num_tasks)
    return {"status": "run", "task": t, "path": str(path) if path else None, "ckpt": ckpt,
            "skipped": problems, "staging": False}


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


def rewrite_matrices(out: Path, acc: np.ndarray, before: np.ndarray, has_alignment: bool) -> None:
    """Rank 0, on resume: the accuracy matrices of the restored checkpoint (a kill between the
    checkpoint and the matrix may have left the matrix behind)."""
    write_result_file(out, "accuracy_matrix.csv", accuracy_matrix_csv(acc))
    if has_alignment:
        write_result_file(out, BEFORE_ALIGNMENT_CSV, accuracy_matrix_csv(before))


def _save_task(out: Path, cfg: CLConfig, state: dict[str, Any], rows: dict[str, np.ndarray],
               jsonl: _JsonlLog, seconds: float) -> None:
    """Rank 0: the eval record, the checkpoint after task ``state["task"]``, then the matrix.

    The checkpoint precedes ``accuracy_matrix.csv``, so the matrix never runs ahead of what a
    resume restores.
    """
    t = state["task"]
    ckpt_dir = out / "checkpoints"
    # The log record goes first: if the process dies before the checkpoint exists, the resume
    # drops records of unfinished tasks; the other way round a finished task would lack one.
    jsonl({"phase": "eval", "task": t,
           **{k: v[: t + 1].tolist() for k, v in rows.items()},
           "avg_acc": float(np.mean(rows["acc"][: t + 1])), "seconds": round(seconds, 2)})
    torch_save_atomic(ckpt_dir / f"task_{t}.pt", {
        **state,
        # tensors, not numpy arrays: a checkpoint holds plain data only (weights_only loading)
        **{k: torch.tensor(state[k], dtype=torch.float64)
           for k in ("acc", "tii", "til", "til_oracle", "acc_before")},
        "method": state["method"].state_dict(),
        "loader_gen": state["loader_gen"].get_state(),
        "torch_rng": torch.get_rng_state(),
    })
    write_result_file(out, "accuracy_matrix.csv", accuracy_matrix_csv(state["acc"]))
    if state["has_alignment"]:
        write_result_file(out, BEFORE_ALIGNMENT_CSV, accuracy_matrix_csv(state["acc_before"]))
    for name, content in state["method"].run_files().items():  # e.g. expert_frequency.json
        write_result_file(out, name, json_text(content))
    if state["task_selection"] is not None:
        write_result_file(out, "task_selection.json", json_text(state["task_selection"]))
    if cfg.keep_checkpoints == "last" and t > 0:
        previous = ckpt_dir / f"task_{t - 1}.pt"
        for p in (previous, sidecar_path(previous)):
            p.unlink(missing_ok=True)
    record_checksum(out, "log.jsonl")  # every record of tasks 0..t is in the log by now


def _as_array(value: Any) -> np.ndarray:
    """A float64 matrix from a checkpoint (a tensor; a numpy array in older checkpoints)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy().copy()
    return np.asarray(value, dtype=float)


def _load_finished(out: Path) -> RunResult:
    data = json.loads((out / "metrics.json").read_text())
    acc = np.array([[math.nan if v is None else v for v in r] for r in data["accuracy_matrix"]])
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    return RunResult(out, acc, np.full_like(acc, np.nan), np.full_like(acc, np.nan), data,
                     True, None, already_finished=True, env=env)


def load_config(out_dir: str | Path) -> CLConfig:
    """The configuration saved in a run directory."""
    return config_from_dict(json.loads((Path(out_dir) / "config.json").read_text()))
