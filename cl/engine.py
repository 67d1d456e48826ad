"""The task loop: build data and model, train task by task, evaluate, checkpoint, resume.

Run directory (design.md section 2)::

    config.json          resolved configuration
    env.json             versions, git SHA, device, backbone + weights SHA-256, dataset provenance
    class_order.json     the seeded class order and the task split
    accuracy_matrix.csv  after_task,task_0,...  (percent; empty for tasks not yet seen)
    metrics.json         FA, CA, FM, TII / TIL accuracy, per-task numbers (written last)
    log.jsonl            one JSON record per epoch / phase / evaluation
    checkpoints/task_<t>.pt   everything needed to continue after task t

Re-running with the same configuration resumes after the last checkpoint; a finished run (one
with ``metrics.json``) is left alone unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from cl import metrics as M
from cl.backbones import build_backbone
from cl.config import CLConfig, config_from_dict
from cl.data.base import Benchmark
from cl.data.registry import build_benchmark
from cl.environment import environment
from cl.methods.base import Method, Task, get_method
from cl.runio import (
    accuracy_matrix_csv,
    torch_save_atomic,
    write_json_atomic,
    write_text_atomic,
)
from cl.seeding import derive_seed, torch_generator

log = logging.getLogger(__name__)

# Config keys that may change between an interrupted run and its resumption.
RUNTIME_KEYS = frozenset({"device", "num_workers", "data_root", "download"})
RUN_FILES = ("config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
             "metrics.json", "log.jsonl")


class RunDirError(RuntimeError):
    """The run directory holds a different run; a CLI reports it with exit code 2."""


@dataclass
class RunResult:
    """Outcome of :func:`run_experiment`.

    ``accuracy``, ``tii`` and ``til`` are ``(finished tasks, T)`` percent matrices (``nan`` for
    tasks not yet seen); ``metrics`` is ``None`` while the run is unfinished.
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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def _task_subset(split, classes: list[int]) -> Subset:
    return Subset(split.dataset, split.indices_of(classes).tolist())


class _JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, last_task: int) -> None:
        """Drop records of tasks after ``last_task`` (left by an interrupted run)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("task", -1) <= last_task]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def __call__(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def evaluate_task(
    method: Method, loader: DataLoader, task: int, device: torch.device
) -> dict[str, float]:
    """Accuracy (class-incremental), TII accuracy and TIL accuracy on one task's test set."""
    n = correct = tii_correct = til_correct = 0
    has_tii = has_til = True
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits, tasks = method.predict_with_tasks(x)
        correct += int((logits.argmax(1) == y).sum())
        if tasks is None:
            has_tii = False
        else:
            tii_correct += int((tasks == task).sum())
        oracle = method.predict_oracle(x, torch.full_like(y, task))
        if oracle is None:
            has_til = False
        else:
            til_correct += int((oracle.argmax(1) == y).sum())
        n += len(y)
    pct = 100.0 / max(n, 1)
    return {
        "acc": correct * pct,
        "tii": tii_correct * pct if has_tii else math.nan,
        "til": til_correct * pct if has_til else math.nan,
    }


def final_metrics(
    cfg: CLConfig, acc: np.ndarray, tii: np.ndarray, til: np.ndarray, backbone_info: dict
) -> dict[str, Any]:
    """The ``metrics.json`` content of a finished run."""
    summary = M.summarize(acc)
    return {
        **summary,
        "TII_accuracy": float(np.mean(tii[-1])),
        "TIL_accuracy": float(np.mean(til[-1])),
        "per_task": [float(v) for v in acc[-1]],
        "tii_per_task": [float(v) for v in tii[-1]],
        "til_per_task": [float(v) for v in til[-1]],
        "accuracy_matrix": [[None if math.isnan(v) else float(v) for v in r] for r in acc],
        "method": cfg.method,
        "dataset": cfg.dataset,
        "backbone": cfg.backbone,
        "backbone_weights_sha256": backbone_info["weights_sha256"],
        "seed": cfg.seed,
        "num_tasks": int(acc.shape[1]),
        "test_batch_size": cfg.eval_batch_size,
        "per_sample_prompts": not cfg.batchwise_prompt,
    }


def _clear_run_dir(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def _check_same_config(out: Path, cfg: CLConfig) -> None:
    saved = json.loads((out / "config.json").read_text())
    now = cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(now)
                  if k not in RUNTIME_KEYS and saved.get(k) != now.get(k))
    if diff:
        raise RunDirError(
            f"{out} holds a run with a different configuration (differs in: {', '.join(diff)}); "
            "use another --out or pass --overwrite"
        )


def _latest_checkpoint(out: Path, num_tasks: int) -> tuple[int, Path] | None:
    found = []
    for path in (out / "checkpoints").glob("task_*.pt"):
        try:
            t = int(path.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if 0 <= t < num_tasks:
            found.append((t, path))
    return max(found) if found else None


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
        Replace a finished or different run in ``out_dir``.
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
    RunDirError
        ``out_dir`` holds a different run and ``overwrite`` is False.
    """
    cfg.validate()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    # Everything that may fail for missing inputs happens before anything is written.
    bench = benchmark or build_benchmark(cfg.dataset, data_root=cfg.data_root, seed=cfg.seed,
                                         download=cfg.download, **cfg.dataset_options)
    backbone = build_backbone(cfg.backbone, weights=cfg.weights, img_size=bench.image_size,
                              seed=cfg.seed)
    T = bench.num_tasks

    if overwrite:
        _clear_run_dir(out)
    elif (out / "metrics.json").exists():
        _check_same_config(out, cfg)
        return _load_finished(out)
    elif (out / "config.json").exists():
        _check_same_config(out, cfg)

    env = {
        **environment(device),
        "backbone": backbone.info(),
        "dataset": {"name": bench.name, "num_classes": bench.num_classes, "num_tasks": T,
                    "image_size": bench.image_size, **bench.info},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_json_atomic(out / "env.json", env)
    write_json_atomic(out / "class_order.json", {
        "seed": cfg.seed,
        "class_order": [c for t in bench.task_classes for c in t],
        "task_classes": bench.task_classes,
    })
    jsonl = _JsonlLog(out / "log.jsonl")

    method = get_method(cfg.method)(cfg, backbone.model, bench.num_classes, bench.task_classes,
                                    device=device, progress=progress, log=jsonl)
    loader_gen = torch_generator(cfg.seed, "train-loader")
    torch.manual_seed(derive_seed(cfg.seed, "global"))
    acc = np.full((0, T), np.nan)
    tii = acc.copy()
    til = acc.copy()
    start, resumed = 0, None
    latest = _latest_checkpoint(out, T)
    if latest is not None:
        t_done, path = latest
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        method.load_state_dict(ckpt["method"])
        loader_gen.set_state(ckpt["loader_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        acc, tii, til = (np.asarray(ckpt[k], dtype=float) for k in ("acc", "tii", "til"))
        start, resumed = t_done + 1, t_done
        jsonl.truncate_after(t_done)
        jsonl({"event": "resume", "task": t_done, "checkpoint": str(path)})
        log.info("resuming after task %d from %s", t_done, path)

    for t in range(start, T):
        classes = bench.task_classes[t]
        train_loader = DataLoader(
            _task_subset(bench.train, classes), batch_size=cfg.batch_size, shuffle=True,
            generator=loader_gen, num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda")
        stats_loader = DataLoader(
            _task_subset(bench.train_eval, classes), batch_size=cfg.eval_batch_size,
            shuffle=False, num_workers=cfg.num_workers)
        task = Task(t, classes, bench.task_classes, stats_loader)
        t0 = time.time()
        method.begin_task(task)
        method.train_task(train_loader)
        method.end_task(task)

        row, tii_row, til_row = (np.full(T, np.nan) for _ in range(3))
        for i in range(t + 1):
            loader = DataLoader(_task_subset(bench.test, bench.task_classes[i]),
                                batch_size=cfg.eval_batch_size, shuffle=False,
                                num_workers=cfg.num_workers)
            res = evaluate_task(method, loader, i, device)
            row[i], tii_row[i], til_row[i] = res["acc"], res["tii"], res["til"]
        acc, tii, til = (np.vstack([m, r]) for m, r in ((acc, row), (tii, tii_row), (til, til_row)))
        jsonl({"phase": "eval", "task": t, "acc": row[: t + 1].tolist(),
               "tii": tii_row[: t + 1].tolist(), "til": til_row[: t + 1].tolist(),
               "avg_acc": float(np.mean(row[: t + 1])), "seconds": round(time.time() - t0, 2)})
        log.info("task %d: avg acc %.2f", t, float(np.mean(row[: t + 1])))
        write_text_atomic(out / "accuracy_matrix.csv", accuracy_matrix_csv(acc))
        ckpt_dir = out / "checkpoints"
        torch_save_atomic(ckpt_dir / f"task_{t}.pt", {
            "task": t,
            "method": method.state_dict(),
            "loader_gen": loader_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "acc": acc, "tii": tii, "til": til,
            "config": cfg.to_dict(),
        })
        if cfg.keep_checkpoints == "last" and t > 0:
            (ckpt_dir / f"task_{t - 1}.pt").unlink(missing_ok=True)
        if stop_after_task is not None and t >= stop_after_task and t < T - 1:
            return RunResult(out, acc, tii, til, None, False, resumed, env=env)

    result_metrics = final_metrics(cfg, acc, tii, til, backbone.info())
    write_json_atomic(out / "metrics.json", result_metrics)
    return RunResult(out, acc, tii, til, result_metrics, True, resumed, env=env)


def _load_finished(out: Path) -> RunResult:
    data = json.loads((out / "metrics.json").read_text())
    acc = np.array([[math.nan if v is None else v for v in r] for r in data["accuracy_matrix"]])
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    return RunResult(out, acc, np.full_like(acc, np.nan), np.full_like(acc, np.nan), data,
                     True, None, already_finished=True, env=env)


def load_config(out_dir: str | Path) -> CLConfig:
    """The configuration saved in a run directory."""
    return config_from_dict(json.loads((Path(out_dir) / "config.json").read_text()))
