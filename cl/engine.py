"""The task loop: build data and model, train task by task, evaluate, checkpoint, resume.

Run directory (design.md section 2)::

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

Under ``torchrun`` (``WORLD_SIZE > 1``) training data are sharded over the processes, evaluation
and class statistics count every image exactly once, and only rank 0 writes; see
:mod:`cl.distributed`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import pickle
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from cl import metrics as M
from cl.backbones import build_backbone
from cl.config import CLConfig, config_from_dict
from cl.data import registry
from cl.data.base import Benchmark
from cl.data.registry import build_benchmark
from cl.distributed import (
    DistContext,
    SharedShuffleSampler,
    broadcast_parameters,
    eval_shard,
    local_device,
    modules_of,
    process_group,
    sync_gradients,
)
from cl.environment import environment
from cl.methods.base import Method, Task, get_method
from cl.numerics import NonFiniteLossError
from cl.precision import apply_precision
from cl.runio import (
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
from cl.seeding import derive_seed, torch_generator
from norga.cli import gib, output_dir_problem, total_memory
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

T_ = TypeVar("T_")


class RunDirError(RuntimeError):
    """The run directory holds a different run or is unusable; a CLI reports it with exit 2."""


class RunBusyError(RunDirError):
    """Another process is writing into the run directory (it holds its lock)."""


class ConfigError(ValueError):
    """The configuration cannot run (found before anything is written); exit 2 in a CLI.

    The message starts with the config field at fault (``prompt_layers: ...``).
    """


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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; else a CPU or an existing CUDA/MPS device.

    Raises
    ------
    ValueError
        ``name`` is not a device, or not one this machine has (the message lists the allowed).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    allowed = "auto, cpu" + (f", cuda, cuda:0..cuda:{cuda - 1}" if cuda else
                             " (no CUDA device on this machine)")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: {name!r} is not a device; allowed: {allowed}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and cuda and (device.index is None or device.index < cuda):
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ValueError(f"device: {name!r} is not available here; allowed: {allowed}")


def _build_benchmark(cfg: CLConfig) -> Benchmark:
    """The registry's benchmark, with bad ``dataset_options`` reported as a :class:`ConfigError`."""
    try:
        return build_benchmark(cfg.dataset, data_root=cfg.data_root, seed=cfg.seed,
                               download=cfg.download, **cfg.dataset_options)
    except TypeError as exc:
        builder = registry.registered_builder(cfg.dataset)
        names = [p for p in inspect.signature(builder).parameters
                 if p not in ("data_root", "seed", "download")] if builder else []
        raise ConfigError(f"dataset_options: {cfg.dataset_options} does not fit the "
                          f"{cfg.dataset} benchmark ({exc}); allowed keys: "
                          f"{', '.join(names) or 'none'}") from None
    except ValueError as exc:
        raise ConfigError(f"dataset_options: {exc}") from None


def _check_memory(cfg: CLConfig, num_tasks: int, vit: torch.nn.Module,
                  device: torch.device) -> None:
    """Refuse a configuration whose memory would exceed the machine's (a lower bound: prompts
    of every task with gradients and two optimizer moments, the token activations and the
    fused attention's helper matrix, which grows with the square of ``prompt_length``)."""
    dim = int(getattr(vit, "embed_dim", 0) or 0)
    depth = len(getattr(vit, "blocks", ()))
    patches = getattr(getattr(vit, "patch_embed", None), "num_patches", 0) or 0
    tokens = cfg.prompt_length + int(patches) + 1
    prompts = num_tasks * max(len(cfg.prompt_layers), 1) * 2 * cfg.prompt_length * dim * 4 * 4
    activations = cfg.batch_size * tokens * dim * depth * 4 * 2
    # the fused prefix attention builds a (prompt + tokens) x (prompt + width) helper matrix
    helper = 4 * tokens * (cfg.prompt_length + 8)
    need = prompts + activations + helper
    if device.type == "cuda":
        have: int | None = torch.cuda.get_device_properties(device).total_memory
    else:
        have = total_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"prompt_length: {cfg.prompt_length} (with {len(cfg.prompt_layers)} prompt layers, "
            f"{num_tasks} tasks, batch_size {cfg.batch_size}) needs at least {gib(need)} of "
            f"memory; this {device.type.upper()} has {gib(have)}")


def _build_method(cfg: CLConfig, vit: torch.nn.Module, bench: Benchmark, device: torch.device,
                  progress: Any, log_fn: Any) -> Method:
    """The method's models, built before anything is written: a configuration they reject
    (e.g. ``prompt_layers`` beyond the ViT's depth) is a :class:`ConfigError`."""
    try:
        return get_method(cfg.method)(cfg, vit, bench.num_classes, bench.task_classes,
                                      device=device, progress=progress, log=log_fn)
    except (ValueError, TypeError, IndexError, RuntimeError) as exc:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        field_name = text.split()[0].rstrip(":") if text else ""
        if field_name in cfg.to_dict():
            text = f"{field_name}: {text.removeprefix(field_name).lstrip(': ')}"
        else:
            text = f"method: the {cfg.method} model cannot be built with this configuration: {text}"
        raise ConfigError(text) from None


def _task_subset(split, classes: list[int]) -> Subset:
    return Subset(split.dataset, split.indices_of(classes).tolist())


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


def evaluate_task(
    method: Method,
    loader: DataLoader,
    task: int,
    device: torch.device,
    ctx: DistContext | None = None,
    *,
    task_classes: list[int] | None = None,
    full: bool = True,
    num_tasks: int | None = None,
) -> dict[str, Any]:
    """Accuracies on one task's test set (percent).

    ``acc``
        Class-incremental: argmax over the method's logits, task unknown.
    ``tii``
        Task-identity accuracy: share of samples whose selected task (TII prediction or
        prompt-key match) is ``task``; ``nan`` for methods without a task choice.
    ``til``
        Task-incremental accuracy as the official ``--task_inc`` flag defines it: the *same*
        forward pass as ``acc`` (the prompt the method chose itself, e.g. by TII), argmax over
        the logits of ``task_classes`` (the true task's classes) only. ``nan`` without
        ``task_classes``.
    ``til_oracle``
        The true task's prompt *and* the restriction to its classes
        (``Method.predict_oracle``): an upper bound on ``til`` for task-selecting methods;
        ``nan`` where the method has no oracle pass.

    ``prompt_counts`` (with ``num_tasks``) counts the samples per selected task / prompt
    (``None`` without a task choice); ``expert_counts`` sums
    :meth:`~cl.methods.base.Method.expert_selection` ``(layers, heads, experts)`` over the test
    set (``None`` for methods without prompt experts).

    ``full=False`` computes ``acc`` only (the others are ``nan``). Under ``torch.distributed``
    ``loader`` holds this rank's share of the test set (see :func:`cl.distributed.eval_shard`,
    no padding); the counts are summed over ranks, so every test image is counted exactly once.
    """
    n = correct = tii_correct = til_correct = oracle_correct = 0
    no_tii = no_oracle = 0
    allowed = None
    if task_classes is not None:
        allowed = torch.as_tensor(list(task_classes), dtype=torch.long, device=device)
    prompt_counts: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if not full:
            logits = method.predict(x)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
            continue
        logits, tasks = method.predict_with_tasks(x)
        correct += int((logits.argmax(1) == y).sum())
        if allowed is not None:  # --task_inc: mask every class outside the true task
            til_correct += int((allowed[logits[:, allowed].argmax(1)] == y).sum())
        if tasks is None:
            no_tii += 1
        else:
            tii_correct += int((tasks == task).sum())
            if num_tasks is not None:
                counts = torch.bincount(tasks.flatten().cpu().clamp_min(0), minlength=num_tasks)
                prompt_counts = counts if prompt_counts is None else prompt_counts + counts
        selection = method.expert_selection()
        if selection is not None:
            expert_counts = selection if expert_counts is None else expert_counts + selection
        oracle = method.predict_oracle(x, torch.full_like(y, task))
        if oracle is None:
            no_oracle += 1
        else:
            oracle_correct += int((oracle.argmax(1) == y).sum())
        n += len(y)
    if ctx is not None and ctx.enabled:
        n, correct, tii_correct, til_correct, oracle_correct, no_tii, no_oracle = (
            int(v) for v in ctx.all_sum([n, correct, tii_correct, til_correct, oracle_correct,
                                         no_tii, no_oracle]))
        # (every rank sees the same method, so all or none of them have counts)
        if prompt_counts is not None:
            prompt_counts = torch.tensor(ctx.all_sum(prompt_counts.tolist())).long()
        if expert_counts is not None:
            shape = expert_counts.shape
            expert_counts = torch.tensor(ctx.all_sum(expert_counts.flatten().tolist())).long()
            expert_counts = expert_counts.reshape(shape)
    pct = 100.0 / max(n, 1)
    return {
        "acc": correct * pct,
        "tii": tii_correct * pct if full and no_tii == 0 else math.nan,
        "til": til_correct * pct if full and allowed is not None else math.nan,
        "til_oracle": oracle_correct * pct if full and no_oracle == 0 else math.nan,
        "n": n,
        "prompt_counts": None if prompt_counts is None else prompt_counts.tolist(),
        "expert_counts": None if expert_counts is None else expert_counts.tolist(),
    }


def task_selection(method: Method, after_task: int, num_tasks: int,
                   results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``task_selection.json`` content: which prompt / experts each task's test samples
    chose in the evaluation after ``after_task`` (``None`` if the method chooses nothing).

    ``prompts[i][j]``: test samples of task ``i`` that used prompt (= predicted task) ``j``;
    ``experts[i][l][h][e]``: selections of expert ``e`` in prompted layer ``l``, head ``h`` by
    the test samples of task ``i`` (each sample picks ``top_k`` experts per layer and head).
    """
    prompts = [r["prompt_counts"] for r in results]
    experts = [r["expert_counts"] for r in results]
    has_prompts = all(p is not None for p in prompts)
    has_experts = all(e is not None for e in experts)
    if not (has_prompts or has_experts):
        return None
    return {
        "kind": "task_selection",
        "version": 1,
        "method": method.name,
        "after_task": after_task,
        "num_tasks": num_tasks,
        "test_samples": [r["n"] for r in results],
        "prompts": prompts if has_prompts else None,
        "experts": experts if has_experts else None,
        "layer_ids": list(getattr(getattr(method, "model", None), "prompt_layers", []) or []),
    }


def _mean_or_none(row: np.ndarray) -> float | None:
    """Mean of a finished row; ``None`` (JSON ``null``) if the metric does not apply."""
    value = float(np.mean(row))
    return value if math.isfinite(value) else None


def _list_or_none(row: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in row]


def final_metrics(
    cfg: CLConfig, acc: np.ndarray, tii: np.ndarray, til: np.ndarray, backbone_info: dict,
    til_oracle: np.ndarray | None = None, before: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` content of a finished run.

    ``TIL_accuracy`` is the official ``--task_inc`` number (the method's own prompt choice,
    logits of the true task's classes); ``TIL_oracle_prompt_accuracy`` uses the true task's
    prompt as well. Metrics that do not apply (TII accuracy of CODA-Prompt or SMoPE) are
    ``None``, written as JSON ``null``. With a before-alignment matrix, its FA / CA / FM are
    added with the suffix ``_before_alignment``.
    """
    summary = M.summarize(acc)
    if til_oracle is None or til_oracle.shape != acc.shape:
        til_oracle = np.full_like(acc, np.nan)
    extra: dict[str, Any] = {}
    if before is not None and before.shape == acc.shape:
        extra = {f"{k}_before_alignment": v for k, v in M.summarize(before).items()
                 if k in ("FA", "CA", "FM")}
        extra["accuracy_matrix_before_alignment"] = [_list_or_none(r) for r in before]
    return {
        **summary,
        **extra,
        "TII_accuracy": _mean_or_none(tii[-1]),
        "TIL_accuracy": _mean_or_none(til[-1]),
        "TIL_oracle_prompt_accuracy": _mean_or_none(til_oracle[-1]),
        "per_task": [float(v) for v in acc[-1]],
        "tii_per_task": _list_or_none(tii[-1]),
        "til_per_task": _list_or_none(til[-1]),
        "til_oracle_prompt_per_task": _list_or_none(til_oracle[-1]),
        "accuracy_matrix": [_list_or_none(r) for r in acc],
        "method": cfg.method,
        "dataset": cfg.dataset,
        "backbone": cfg.backbone,
        "backbone_weights_sha256": backbone_info["weights_sha256"],
        "seed": cfg.seed,
        "num_tasks": int(acc.shape[1]),
        "test_batch_size": cfg.eval_batch_size,
        "per_sample_prompts": not cfg.batchwise_prompt,
    }


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


def _on_main(ctx: DistContext, fn: Callable[[], T_]) -> T_:
    """Run ``fn`` on rank 0 only; every rank gets its result, or raises its error.

    Keeps the ranks in step when rank 0 fails (a full disk, a different run in ``out``):
    instead of the others waiting at the next collective, all of them raise.
    """
    if not ctx.enabled:
        return fn()
    payload: Any = None
    if ctx.is_main:
        try:
            payload = ("ok", fn())
        except Exception as exc:  # re-raised here and, through the broadcast, on every rank
            try:
                pickle.dumps(exc)
                payload = ("error", exc)
            except Exception:  # noqa: BLE001 - an exception that cannot travel
                payload = ("error", RuntimeError(f"rank 0: {exc}"))
            ctx.broadcast_object(payload)
            raise
    status, value = ctx.broadcast_object(payload)
    if status == "error":
        raise value
    return value


# ---------------------------------------------------------------------------- the loop
def run_experiment(
    cfg: CLConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    stop_after_task: int | None = None,
    progress: Callable[[Iterable, str], Iterable] | None = None,
    benchmark: Benchmark | None = None,
) -> RunResult:
    """Run (or resume) a continual-learning experiment.

    Parameters
    ----------
    cfg:
        Resolved configuration (:func:`cl.config.resolve_config`).
    out_dir:
        Run directory.
    overwrite:
        Replace a finished or different run in ``out_dir``. The whole new configuration is
        checked first; the new run is then built in ``out_dir/.overwrite`` and replaces the old
        files only once its first task is checkpointed, so an invalid or interrupted overwrite
        keeps the old run.
    stop_after_task:
        Stop after checkpointing this task (to test or to split a long run).
    progress:
        Wraps iterables to show progress (the CLI passes ``tqdm``); default silent.
    benchmark:
        A pre-built benchmark (skips the registry; for tests).

    Raises
    ------
    cl.data.registry.DatasetError, cl.backbones.BackboneWeightsError
        Data or weights missing; nothing is written in that case.
    ConfigError
        The configuration cannot run (bad device, ``dataset_options``, ``stop_after_task``,
        a model the method cannot build, more memory than the machine has); nothing is written.
    RunDirError
        ``out_dir`` is unusable or holds a different run and ``overwrite`` is False;
        :class:`RunBusyError` when another process is writing into it.
    cl.numerics.NonFiniteLossError
        A training loss became NaN or inf; the checkpoints of finished tasks are kept.
    cl.runio.WriteFailedError
        A result file or checkpoint could not be written (disk full, permissions); the
        previous version of that file is intact.
    """
    cfg.validate()
    out = Path(out_dir)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    with process_group(device) as ctx:
        return _run_in_group(cfg, out, local_device(device, ctx), ctx, overwrite=overwrite,
                             stop_after_task=stop_after_task, progress=progress,
                             benchmark=benchmark)
    raise AssertionError("unreachable")  # pragma: no cover - for type checkers


def _run_in_group(cfg: CLConfig, out: Path, device: torch.device, ctx: DistContext, *,
                  overwrite: bool, stop_after_task: int | None,
                  progress: Callable[[Iterable, str], Iterable] | None,
                  benchmark: Benchmark | None) -> RunResult:
    # Everything that may fail for missing or bad inputs happens before anything is written:
    # data, weights, the method's models and the memory they need.
    bench = benchmark or _build_benchmark(cfg)
    T = bench.num_tasks
    if stop_after_task is not None and not 0 <= stop_after_task < T:
        raise ConfigError(f"stop_after_task: {stop_after_task} is not a task of this benchmark; "
                          f"allowed: 0 to {T - 1}")
    backbone = build_backbone(cfg.backbone, weights=cfg.weights, img_size=bench.image_size,
                              seed=cfg.seed)
    _check_memory(cfg, T, backbone.model, device)
    jsonl = _JsonlLog(out / "log.jsonl", enabled=ctx.is_main)
    method = _build_method(cfg, backbone.model, bench, device, progress, jsonl)

    if ctx.is_main:  # read-only checks first: a refused run must not even create the lock file
        _check_usable(out)
        if not overwrite and (out / "config.json").exists():
            _check_same_config(out, cfg)
    with contextlib.ExitStack() as stack:
        if ctx.is_main:  # one writer per run directory
            try:
                stack.enter_context(run_lock(out))
            except RunLockedError as exc:
                raise RunBusyError(str(exc)) from None
        return _run_locked(cfg, out, ctx, device, bench, backbone, method, jsonl, overwrite,
                           stop_after_task)
    raise AssertionError("unreachable")  # pragma: no cover - for type checkers


def _run_locked(cfg: CLConfig, out: Path, ctx: DistContext, device: torch.device,
                bench: Benchmark, backbone: Any, method: Method, jsonl: _JsonlLog,
                overwrite: bool, stop_after_task: int | None) -> RunResult:
    """The part of :func:`run_experiment` that runs under the run directory's lock."""
    T = bench.num_tasks
    decision = _on_main(ctx, lambda: _prepare(out, cfg, overwrite, T))
    if decision["status"] == "finished":
        return decision["result"]
    staging = decision["staging"]
    work = out / STAGING if staging else out  # where this run writes until it is promoted
    jsonl.path = work / "log.jsonl"

    env = {
        **environment(device),
        "backbone": backbone.info(),
        "dataset": {"name": bench.name, "num_classes": bench.num_classes, "num_tasks": T,
                    "image_size": bench.image_size, **bench.info},
        "world_size": ctx.world_size,
    }

    def write_run_files() -> None:
        work.mkdir(parents=True, exist_ok=True)
        write_result_file(work, "config.json", json_text(cfg.to_dict()))
        write_result_file(work, "env.json", json_text(env))
        write_result_file(work, "class_order.json", json_text({
            "seed": cfg.seed,
            "class_order": [c for t in bench.task_classes for c in t],
            "task_classes": bench.task_classes,
        }))

    _on_main(ctx, write_run_files)

    # bf16 autocast / torch.compile of the ViT forward passes (fp32: untouched)
    apply_precision(method, device=device, precision=cfg.precision, compile=cfg.compile)
    loader_gen = torch_generator(cfg.seed, "train-loader")
    torch.manual_seed(derive_seed(cfg.seed, "global"))
    acc = np.full((0, T), np.nan)
    tii, til, til_oracle, before = acc.copy(), acc.copy(), acc.copy(), acc.copy()
    start, resumed = 0, None
    restored_selection = None  # the checkpoint's task_selection.json content
    skipped: list[str] = decision["skipped"]
    for problem in skipped:
        jsonl({"event": "checkpoint_rejected", "reason": problem})
    if decision["ckpt"] is not None:
        t_done, ckpt = decision["task"], decision["ckpt"]
        method.load_state_dict(ckpt["method"])
        loader_gen.set_state(ckpt["loader_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        acc, tii, til = (_as_array(ckpt[k]) for k in ("acc", "tii", "til"))
        # checkpoints written before these existed: not applicable (nan)
        til_oracle, before = (_as_array(ckpt.get(k, np.full_like(acc, np.nan)))
                              for k in ("til_oracle", "acc_before"))
        start, resumed = t_done + 1, t_done
        restored_selection = ckpt.get("task_selection")
        _on_main(ctx, lambda: jsonl.truncate_after(t_done))
        # A kill between the checkpoint and the matrix may have left the matrix behind.
        _on_main(ctx, lambda: write_result_file(out, "accuracy_matrix.csv",
                                                accuracy_matrix_csv(acc)))
        if method.has_alignment:
            _on_main(ctx, lambda: write_result_file(out, BEFORE_ALIGNMENT_CSV,
                                                    accuracy_matrix_csv(before)))
        jsonl({"event": "resume", "task": t_done, "checkpoint": decision["path"]})
        log.info("resuming after task %d from %s", t_done, decision["path"])
    else:
        _on_main(ctx, lambda: jsonl.truncate_after(-1))  # records of a killed first task
    del decision
    broadcast_parameters(modules_of(method), ctx)
    last_good = None if resumed is None else out / "checkpoints" / f"task_{resumed}.pt"

    hooks: list[Any] = []
    pre_row: dict[int, np.ndarray] = {}

    def evaluate_before_alignment(task: Task) -> None:
        """Class-incremental accuracies on tasks ``0..t`` just before the head alignment."""
        row = np.full(T, np.nan)
        for i in range(task.index + 1):
            loader = _eval_loader(_task_subset(bench.test, bench.task_classes[i]), cfg, ctx)
            row[i] = evaluate_task(method, loader, i, device, ctx, full=False)["acc"]
        jsonl({"phase": "eval_before_alignment", "task": task.index,
               "acc": row[: task.index + 1].tolist()})
        pre_row[task.index] = row

    method.before_alignment = evaluate_before_alignment
    for t in range(start, T):
        classes = bench.task_classes[t]
        train_set = _task_subset(bench.train, classes)
        if ctx.enabled:
            train_loader = DataLoader(
                train_set, batch_size=cfg.batch_size,
                sampler=SharedShuffleSampler(train_set, ctx, loader_gen),
                num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                drop_last=cfg.legacy_drop_last)
        else:  # the single-process path of every earlier run: keep its numbers unchanged
            train_loader = DataLoader(
                train_set, batch_size=cfg.batch_size, shuffle=True, generator=loader_gen,
                num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                drop_last=cfg.legacy_drop_last)  # CODA / SMoPE code: drop_last=True
        stats_loader = _eval_loader(_task_subset(bench.train_eval, classes), cfg, ctx)
        task = Task(t, classes, bench.task_classes, stats_loader)
        t0 = time.time()
        try:
            method.begin_task(task)
            for handle in hooks:
                handle.remove()
            hooks = sync_gradients(modules_of(method), ctx)  # what is trained changes per task
            method.train_task(train_loader)
            method.end_task(task)
        except NonFiniteLossError as exc:
            kept = f"the last good checkpoint {last_good} is kept" if last_good else \
                "no task had finished, so there is no checkpoint"
            exc.args = (f"{exc}; training stopped, {kept}",)
            jsonl({"event": "nonfinite_loss", "task": exc.task, "phase": exc.phase,
                   "epoch": exc.epoch, "step": exc.step, "value": exc.value})
            raise

        row, tii_row, til_row, oracle_row = (np.full(T, np.nan) for _ in range(4))
        results = []
        for i in range(t + 1):
            loader = _eval_loader(_task_subset(bench.test, bench.task_classes[i]), cfg, ctx)
            res = evaluate_task(method, loader, i, device, ctx,
                                task_classes=bench.task_classes[i], num_tasks=T)
            results.append(res)
            row[i], tii_row[i], til_row[i], oracle_row[i] = (
                res["acc"], res["tii"], res["til"], res["til_oracle"])
        # no alignment happened (task 0, or a method without one): "before" equals "after"
        pre = pre_row.pop(t, row) if method.has_alignment else np.full(T, np.nan)
        acc, tii, til, til_oracle, before = (
            np.vstack([m, r]) for m, r in ((acc, row), (tii, tii_row), (til, til_row),
                                           (til_oracle, oracle_row), (before, pre)))
        log.info("task %d: avg acc %.2f", t, float(np.mean(row[: t + 1])))
        state = {
            "task": t, "method": method, "loader_gen": loader_gen,
            "acc": acc, "tii": tii, "til": til, "til_oracle": til_oracle, "acc_before": before,
            "config": cfg.to_dict(), "has_alignment": method.has_alignment,
            "task_selection": task_selection(method, t, T, results),
        }
        rows = {"acc": row, "tii": tii_row, "til": til_row, "til_oracle": oracle_row}
        _on_main(ctx, partial(_save_task, work, cfg, state, rows, jsonl, time.time() - t0))
        if work != out:  # the new run has its first result: now it replaces the old one
            _on_main(ctx, partial(_promote, work, out))
            work = out
            jsonl.path = out / "log.jsonl"
        last_good = out / "checkpoints" / f"task_{t}.pt"
        if stop_after_task is not None and t >= stop_after_task and t < T - 1:
            for handle in hooks:
                handle.remove()
            return RunResult(out, acc, tii, til, None, False, resumed, env=env,
                             skipped_checkpoints=skipped, til_oracle=til_oracle,
                             accuracy_before_alignment=before)
    for handle in hooks:
        handle.remove()

    if start == T:  # resumed to recompute damaged results: the method's files are redone too
        for name, content in method.run_files().items():
            _on_main(ctx, partial(write_result_file, out, name, json_text(content)))
        if restored_selection is not None:
            _on_main(ctx, partial(write_result_file, out, "task_selection.json",
                                  json_text(restored_selection)))
        # the resume record came after the last task's refresh of the log's checksum
        _on_main(ctx, partial(record_checksum, out, "log.jsonl"))
    result_metrics = final_metrics(cfg, acc, tii, til, backbone.info(), til_oracle,
                                   before if method.has_alignment else None)
    _on_main(ctx, lambda: write_result_file(out, "metrics.json", json_text(result_metrics)))
    return RunResult(out, acc, tii, til, result_metrics, True, resumed, env=env,
                     skipped_checkpoints=skipped, til_oracle=til_oracle,
                     accuracy_before_alignment=before)


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


def _eval_loader(dataset: Dataset, cfg: CLConfig, ctx: DistContext) -> DataLoader:
    """In-order loader over this rank's unpadded share of ``dataset``."""
    return DataLoader(eval_shard(dataset, ctx), batch_size=cfg.eval_batch_size, shuffle=False,
                      num_workers=cfg.num_workers)


def _load_finished(out: Path) -> RunResult:
    data = json.loads((out / "metrics.json").read_text())
    acc = np.array([[math.nan if v is None else v for v in r] for r in data["accuracy_matrix"]])
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    return RunResult(out, acc, np.full_like(acc, np.nan), np.full_like(acc, np.nan), data,
                     True, None, already_finished=True, env=env)


def load_config(out_dir: str | Path) -> CLConfig:
    """The configuration saved in a run directory."""
    return config_from_dict(json.loads((Path(out_dir) / "config.json").read_text()))
