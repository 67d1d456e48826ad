"""The task loop: build data and model, train task by task, evaluate, checkpoint, resume.

The run directory (its files, resume decisions, ``--overwrite`` staging, the run lock's checks
and the result files) is handled by :mod:`cl.run.directory`; this module builds the run and trains
and evaluates task by task.

Under ``torchrun`` (``WORLD_SIZE > 1``) training data are sharded over the processes, evaluation
and class statistics count every image exactly once, and only rank 0 writes; see
:mod:`cl.run.distributed`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from cl import metrics as M
from cl.backbones.loading import build_backbone
from cl.data import registry
from cl.data.base import Benchmark
from cl.data.registry import build_benchmark
from cl.errors import ConfigError
from cl.methods.base import Method, Task, get_method
from cl.numerics import NonFiniteLossError
from cl.options import CLConfig, MethodOptions
from cl.run.accuracy_log import AccuracyLog

# RunDirError, load_config, ...: re-exported, cl.run.engine's public API
from cl.run.directory import (
    STAGING,
    ResumeDecision,
    RunBusyError,  # noqa: F401
    RunDirError,  # noqa: F401
    RunResult,
    TaskState,
    _check_same_config,  # noqa: F401
    _JsonlLog,
    _latest_good_checkpoint,  # noqa: F401
    _prepare,
    _promote,
    _save_task,
    load_config,  # noqa: F401
    locked_run_dir,
    write_matrices,
    write_run_files,
)
from cl.run.distributed import (
    DistContext,
    SharedShuffleSampler,
    broadcast_parameters,
    eval_shard,
    local_device,
    modules_of,
    process_group,
    sync_gradients,
)
from cl.run.environment import environment
from cl.run.files import json_text, record_checksum, write_result_file
from cl.run.loggers import CSVLogger, RunLogger
from cl.run.precision import apply_precision
from cl.run.seeding import derive_seed, torch_generator
from norga.choices import ChoiceError
from norga.cli import gib, total_memory

log = logging.getLogger(__name__)

T_ = TypeVar("T_")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; else a CPU or an existing CUDA/MPS device.

    Raises
    ------
    ConfigError
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
        raise ConfigError("device", f"{name!r} is not a device; allowed: {allowed}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and cuda and (device.index is None or device.index < cuda):
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ConfigError("device", f"{name!r} is not available here; allowed: {allowed}")


def _build_benchmark(cfg: CLConfig) -> Benchmark:
    """The registry's benchmark, with bad ``dataset_options`` reported as a :class:`ConfigError`."""
    try:
        return build_benchmark(cfg.dataset, data_root=cfg.data_root, seed=cfg.seed,
                               download=cfg.download, **cfg.dataset_options)
    except TypeError as exc:
        builder = registry.registered_builder(cfg.dataset)
        names = [p for p in inspect.signature(builder).parameters
                 if p not in ("data_root", "seed", "download")] if builder else []
        raise ConfigError("dataset_options", f"{cfg.dataset_options} does not fit the "
                          f"{cfg.dataset} benchmark ({exc}); allowed keys: "
                          f"{', '.join(names) or 'none'}") from None
    except ValueError as exc:
        raise ConfigError("dataset_options", str(exc)) from None


def _check_data_sizes(cfg: CLConfig, bench: Benchmark) -> None:
    """Refuse sizes the data cannot support, which would otherwise fail every resume the same
    way: a task whose test set is empty (its accuracy is undefined), and more k-means clusters
    per class (``n_centroids``) than a class has training images (the class statistics become
    NaN after the first task)."""
    opts = cfg.method_options
    if getattr(opts, "stats_method", None) == "multi-centroid" and hasattr(opts, "n_centroids"):
        for c in range(bench.num_classes):
            have = len(bench.train_eval.indices_of([c]))
            if have < opts.n_centroids:
                raise ConfigError("method_options.n_centroids", f"{opts.n_centroids} clusters "
                                  f"per class, but class {c} has {have} training images; "
                                  f"allowed: 1 to {have}")
    for t, classes in enumerate(bench.task_classes):
        if len(bench.test.indices_of(classes)) == 0:
            raise ConfigError(
                "dataset_options", f"task {t} has no test images (classes "
                f"{', '.join(map(str, classes[:6]))}{', ...' if len(classes) > 6 else ''}), so "
                "its accuracy would be undefined; give every class test images (e.g. "
                "test_per_class >= 1)")


def _check_memory(cfg: CLConfig, num_tasks: int, vit: torch.nn.Module,
                  device: torch.device, num_classes: int = 0) -> None:
    """Refuse a configuration whose memory would exceed the machine's (a lower bound of every
    size that scales an allocation: prompts of every task with gradients and two optimizer
    moments, the token activations at the backbone's image size, the fused attention's helper
    matrix, which grows with the square of ``prompt_length``, the TII MLP of ``tii_mlp`` with its
    optimizer state, and the ``tap_samples_mult * batch_size`` replayed features per class)."""
    dim = int(getattr(vit, "embed_dim", 0) or 0)
    depth = len(getattr(vit, "blocks", ()))
    patches = getattr(getattr(vit, "patch_embed", None), "num_patches", 0) or 0
    # HiDe-Prompt-style options name their prefix length and layers; other methods count as
    # prompt-free here (a lower bound)
    length = int(getattr(cfg.method_options, "prompt_length", 0))
    layers = list(getattr(cfg.method_options, "prompt_layers", []))
    tokens = length + int(patches) + 1
    prompts = num_tasks * max(len(layers), 1) * 2 * length * dim * 4 * 4
    activations = cfg.batch_size * tokens * dim * depth * 4 * 2
    # the fused prefix attention builds a (prompt + tokens) x (prompt + width) helper matrix
    helper = 4 * tokens * (length + 8)
    mlp = [int(m) for m in getattr(cfg.method_options, "tii_mlp", [])]
    widths = [dim, *(dim * m for m in mlp), dim]
    tii = (sum(a * b for a, b in zip(widths, widths[1:], strict=False)) * 4 * 4
           + cfg.batch_size * max(widths) * 4 * 2) if mlp else 0
    mult = int(getattr(cfg.method_options, "tap_samples_mult", 0))
    replay = mult * cfg.batch_size * num_classes * dim * 4
    parts = {"prompt_length": prompts + activations + helper, "tii_mlp": tii,
             "tap_samples_mult": replay}
    need = sum(parts.values())
    if device.type == "cuda":
        have: int | None = torch.cuda.get_device_properties(device).total_memory
    else:
        have = total_memory()
    if have is not None and need > have:
        culprit = max(parts, key=parts.__getitem__)
        detail = {
            "prompt_length": f"{length} (with {len(layers)} prompt "
                             f"layers, {num_tasks} tasks, batch_size {cfg.batch_size}, "
                             f"{tokens} tokens)",
            "tii_mlp": f"{mlp} (hidden widths {widths[1:-1]} of a {dim}-wide "
                       "feature)",
            "tap_samples_mult": f"{mult} (x batch_size {cfg.batch_size} "
                                f"replayed features for each of {num_classes} classes)",
        }[culprit]
        raise ConfigError(
            f"method_options.{culprit}", f"{detail} needs at least {gib(parts[culprit])} of "
            f"memory ({gib(need)} in all); this {device.type.upper()} has {gib(have)}")


def _option_names(cfg: CLConfig) -> set[str]:
    options = cfg.method_options
    return set(options.field_names() if isinstance(options, MethodOptions) else options)


def _build_method(cfg: CLConfig, vit: torch.nn.Module, bench: Benchmark, device: torch.device,
                  progress: Any, log_fn: Any) -> Method:
    """The method's models, built before anything is written: a configuration they reject
    (e.g. ``prompt_layers`` beyond the ViT's depth) is a :class:`ConfigError`."""
    try:
        return get_method(cfg.method)(cfg, vit, bench.num_classes, bench.task_classes,
                                      device=device, progress=progress, log=log_fn)
    except ConfigError as exc:  # names its field; a model names an option by its plain name
        if exc.field in _option_names(cfg):
            raise ConfigError(f"method_options.{exc.field}", exc.reason) from None
        raise
    except ChoiceError as exc:  # a choice checked inside a model: its name is the field if any
        if exc.name in _option_names(cfg):
            raise ConfigError(f"method_options.{exc.name}", exc.reason) from None
        if exc.name in cfg.to_dict():
            raise ConfigError(exc.name, exc.reason) from None
        raise ConfigError("method", f"the {cfg.method} model cannot be built with this "
                          f"configuration: {exc}") from None
    except (ValueError, TypeError, IndexError, RuntimeError) as exc:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("method", f"the {cfg.method} model cannot be built with this "
                          f"configuration: {text}") from None


def _task_subset(split, classes: list[int]) -> Subset:
    return Subset(split.dataset, split.indices_of(classes).tolist())


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
    ``loader`` holds this rank's share of the test set (see :func:`cl.run.distributed.eval_shard`,
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
    # an accuracy over no images is undefined, never 0 % (_check_data_sizes refuses such runs)
    pct = 100.0 / n if n else math.nan
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
        "per_sample_prompts": not getattr(cfg.method_options, "batchwise_prompt", False),
    }


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
    loggers: Sequence[RunLogger] | None = None,
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
        A pre-built benchmark (skips the registry); a dataset registered with
        :func:`cl.data.registry.register_dataset` needs none.
    loggers:
        Where the run's records go besides ``log.jsonl`` (:mod:`cl.run.loggers`); default a
        :class:`~cl.run.loggers.CSVLogger` (``epochs.csv`` and ``tasks.csv``). The CLI adds a
        one-line summary per task on stderr and, on request, TensorBoard or W&B.

    Raises
    ------
    cl.data.registry.DatasetError, cl.backbones.loading.BackboneWeightsError
        Data or weights missing; nothing is written in that case.
    ConfigError
        The configuration cannot run (bad device, ``dataset_options``, ``stop_after_task``,
        a model the method cannot build, more memory than the machine has); nothing is written.
    RunDirError
        ``out_dir`` is unusable or holds a different run and ``overwrite`` is False;
        :class:`RunBusyError` when another process is writing into it.
    cl.numerics.NonFiniteLossError
        A training loss became NaN or inf; the checkpoints of finished tasks are kept.
    cl.run.files.WriteFailedError
        A result file or checkpoint could not be written (disk full, permissions); the
        previous version of that file is intact.
    """
    cfg.validate()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    run_loggers = list(loggers) if loggers is not None else [CSVLogger()]
    try:
        with process_group(device) as ctx:
            return _run_in_group(cfg, out, local_device(device, ctx), ctx, overwrite=overwrite,
                                 stop_after_task=stop_after_task, progress=progress,
                                 benchmark=benchmark, loggers=run_loggers)
    finally:
        for run_logger in run_loggers:
            run_logger.close()
    raise AssertionError("unreachable")  # pragma: no cover - for type checkers


def _run_in_group(cfg: CLConfig, out: Path, device: torch.device, ctx: DistContext, *,
                  overwrite: bool, stop_after_task: int | None,
                  progress: Callable[[Iterable, str], Iterable] | None,
                  benchmark: Benchmark | None, loggers: list[RunLogger]) -> RunResult:
    # Everything that may fail for missing or bad inputs happens before anything is written:
    # data, weights, the method's models and the memory they need.
    bench = benchmark or _build_benchmark(cfg)
    T = bench.num_tasks
    if stop_after_task is not None and not 0 <= stop_after_task < T:
        raise ConfigError("stop_after_task", f"{stop_after_task} is not a task of this "
                          f"benchmark; allowed: 0 to {T - 1}")
    _check_data_sizes(cfg, bench)
    backbone = build_backbone(cfg.backbone, weights=cfg.weights, img_size=bench.image_size,
                              seed=cfg.seed)
    _check_memory(cfg, T, backbone.model, device, bench.num_classes)
    jsonl = _JsonlLog(out / "log.jsonl", enabled=ctx.is_main)
    for run_logger in loggers:
        run_logger.start(T)
    jsonl.listeners = loggers
    method = _build_method(cfg, backbone.model, bench, device, progress, jsonl)

    with locked_run_dir(out, cfg, overwrite=overwrite, main=ctx.is_main):  # one writer
        return _run_locked(cfg, out, ctx, device, bench, backbone, method, jsonl, overwrite,
                           stop_after_task)
    raise AssertionError("unreachable")  # pragma: no cover - for type checkers


def _run_locked(cfg: CLConfig, out: Path, ctx: DistContext, device: torch.device,
                bench: Benchmark, backbone: Any, method: Method, jsonl: _JsonlLog,
                overwrite: bool, stop_after_task: int | None) -> RunResult:
    """The part of :func:`run_experiment` that runs under the run directory's lock."""
    T = bench.num_tasks
    decision = _on_main(ctx, lambda: _prepare(out, cfg, overwrite, T))
    if decision.finished is not None:
        return decision.finished
    work = out / STAGING if decision.staging else out  # where this run writes until it is promoted
    jsonl.path = work / "log.jsonl"
    env = _run_env(device, backbone, bench, ctx)
    _on_main(ctx, partial(write_run_files, work, cfg, env, bench.task_classes))

    # bf16 autocast / torch.compile of the ViT forward passes (fp32: untouched)
    apply_precision(method, device=device, precision=cfg.precision, compile=cfg.compile)
    loader_gen = torch_generator(cfg.seed, "train-loader")
    torch.manual_seed(derive_seed(cfg.seed, "global"))
    accuracy = _resume(decision, out, ctx, method, loader_gen, jsonl, T)
    decision = dataclasses.replace(decision, checkpoint=None)  # its memory is not needed now
    broadcast_parameters(modules_of(method), ctx)
    last_good = decision.checkpoint_path
    before_alignment = _BeforeAlignmentProbe(method, bench, cfg, ctx, device, jsonl)
    hooks: list[Any] = []
    for t in range(decision.start_task, T):
        classes = bench.task_classes[t]
        train_loader = _train_loader(_task_subset(bench.train, classes), cfg, ctx, device,
                                     loader_gen)
        stats_loader = _eval_loader(_task_subset(bench.train_eval, classes), cfg, ctx)
        task = Task(t, classes, bench.task_classes, stats_loader, before_alignment)
        t0 = time.time()
        hooks = _train_task(method, task, train_loader, hooks, ctx, jsonl, last_good)
        rows, results = _evaluate_seen(method, bench, t, cfg, ctx, device)
        accuracy.record_task(rows, _before_alignment_row(
            t, rows["acc"], before_alignment.rows.pop(t, None), method.has_alignment, cfg))
        log.info("task %d: avg acc %.2f", t, float(np.mean(rows["acc"][: t + 1])))
        # the config through JSON: the pickle then does not depend on which values share one
        # object (a run from a config file holds the same values, made by the JSON parser)
        state = TaskState(t, method, loader_gen, accuracy, json.loads(json_text(cfg.to_dict())),
                          method.has_alignment, task_selection(method, t, T, results))
        _on_main(ctx, partial(_save_task, work, cfg, state, rows, jsonl, time.time() - t0))
        if work != out:  # the new run has its first result: now it replaces the old one
            _on_main(ctx, partial(_promote, work, out))
            work = out
            jsonl.path = out / "log.jsonl"
        last_good = out / "checkpoints" / f"task_{t}.pt"
        if stop_after_task is not None and t >= stop_after_task and t < T - 1:
            _remove_hooks(hooks)
            return _run_result(out, accuracy, None, decision, env)
    _remove_hooks(hooks)
    if decision.start_task == T:  # resumed to recompute damaged results
        _rewrite_method_files(out, ctx, method, decision.task_selection)
    result_metrics = final_metrics(cfg, accuracy.acc, accuracy.tii, accuracy.til, backbone.info(),
                                   accuracy.til_oracle,
                                   accuracy.acc_before if method.has_alignment else None)
    _on_main(ctx, lambda: write_result_file(out, "metrics.json", json_text(result_metrics)))
    return _run_result(out, accuracy, result_metrics, decision, env)


def _run_env(device: torch.device, backbone: Any, bench: Benchmark,
             ctx: DistContext) -> dict[str, Any]:
    """The ``env.json`` content: software and device, backbone, dataset, world size."""
    return {
        **environment(device),
        "backbone": backbone.info(),
        "dataset": {"name": bench.name, "num_classes": bench.num_classes,
                    "num_tasks": bench.num_tasks, "image_size": bench.image_size, **bench.info},
        "world_size": ctx.world_size,
    }


def _resume(decision: ResumeDecision, out: Path, ctx: DistContext, method: Method,
            loader_gen: torch.Generator, jsonl: _JsonlLog, num_tasks: int) -> AccuracyLog:
    """Restore the checkpoint ``decision`` names into ``method`` and the random streams, rewrite
    the matrices it covers and log the resume; return its accuracy log (empty if none)."""
    for problem in decision.skipped:
        jsonl({"event": "checkpoint_rejected", "reason": problem})
    if decision.checkpoint is None:
        _on_main(ctx, lambda: jsonl.truncate_after(-1))  # records of a killed first task
        return AccuracyLog.empty(num_tasks)
    t_done = decision.task
    accuracy = _restore(decision.checkpoint, method, loader_gen)
    _on_main(ctx, lambda: jsonl.truncate_after(t_done))
    _on_main(ctx, partial(write_matrices, out, accuracy, method.has_alignment))
    jsonl({"event": "resume", "task": t_done, "checkpoint": str(decision.checkpoint_path)})
    log.info("resuming after task %d from %s", t_done, decision.checkpoint_path)
    return accuracy


class _BeforeAlignmentProbe:
    """The hook a method calls just before its head alignment (:attr:`Task.before_alignment`):
    class-incremental accuracies on tasks ``0..t``, logged and kept in :attr:`rows` by task."""

    def __init__(self, method: Method, bench: Benchmark, cfg: CLConfig, ctx: DistContext,
                 device: torch.device, jsonl: _JsonlLog) -> None:
        self.method, self.bench, self.cfg, self.ctx = method, bench, cfg, ctx
        self.device, self.jsonl = device, jsonl
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, task: Task) -> None:
        bench = self.bench
        row = np.full(bench.num_tasks, np.nan)
        for i in range(task.index + 1):
            loader = _eval_loader(_task_subset(bench.test, bench.task_classes[i]), self.cfg,
                                  self.ctx)
            row[i] = evaluate_task(self.method, loader, i, self.device, self.ctx,
                                   full=False)["acc"]
        self.jsonl({"phase": "eval_before_alignment", "task": task.index,
                    "acc": row[: task.index + 1].tolist()})
        self.rows[task.index] = row


def _train_task(method: Method, task: Task, train_loader: DataLoader, hooks: list[Any],
                ctx: DistContext, jsonl: _JsonlLog, last_good: Path | None) -> list[Any]:
    """Train ``task`` (begin, train, end); return the gradient-sync hooks now in place.

    A non-finite loss is logged and re-raised, its message naming the checkpoint that is kept.
    """
    try:
        method.begin_task(task)
        _remove_hooks(hooks)
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
    return hooks


def _remove_hooks(hooks: list[Any]) -> None:
    for handle in hooks:
        handle.remove()


def _rewrite_method_files(out: Path, ctx: DistContext, method: Method,
                          selection: dict[str, Any] | None) -> None:
    """A finished run resumed to recompute damaged results: the method's files are redone too."""
    for name, content in method.run_files().items():
        _on_main(ctx, partial(write_result_file, out, name, json_text(content)))
    if selection is not None:
        _on_main(ctx, partial(write_result_file, out, "task_selection.json",
                              json_text(selection)))
    # the resume record came after the last task's refresh of the log's checksum
    _on_main(ctx, partial(record_checksum, out, "log.jsonl"))


def _run_result(out: Path, accuracy: AccuracyLog, metrics: dict[str, Any] | None,
                decision: ResumeDecision, env: dict[str, Any]) -> RunResult:
    """The :class:`RunResult` of a run that trained (finished when ``metrics`` is given)."""
    return RunResult(out, accuracy.acc, accuracy.tii, accuracy.til, metrics, metrics is not None,
                     decision.task, env=env, skipped_checkpoints=list(decision.skipped),
                     til_oracle=accuracy.til_oracle,
                     accuracy_before_alignment=accuracy.acc_before)


def _before_alignment_row(t: int, row: np.ndarray, evaluated: np.ndarray | None,
                          has_alignment: bool, cfg: CLConfig) -> np.ndarray:
    """Row ``t`` of the before-alignment matrix.

    The row the method evaluated just before its head alignment; where nothing was aligned
    (task 0) the final row ``row``, or, with ``legacy_before_alignment_row0``, zeros as in the
    official code, which evaluates "before CA" for tasks > 0 only and leaves the rest of its
    ``np.zeros`` matrix (MoE_PromptCL e418337 ``engines/norga_prompt_engine.py`` l.211 and 391-398,
    ``engines/hide_promtp_wtp_and_tap_engine.py`` l.204 and 331-338); NaN for a method without
    alignment.
    """
    if not has_alignment:
        return np.full(len(row), np.nan)
    if evaluated is not None:
        return evaluated
    if getattr(cfg.method_options, "legacy_before_alignment_row0", False):
        return np.where(np.arange(len(row)) <= t, 0.0, np.nan)
    return row


def _restore(ckpt: dict[str, Any], method: Method, loader_gen: torch.Generator) -> AccuracyLog:
    """Load the state after a checkpointed task into ``method`` and the random streams; return
    its accuracy matrices."""
    method.load_state_dict(ckpt["method"])
    loader_gen.set_state(ckpt["loader_gen"])
    torch.set_rng_state(ckpt["torch_rng"])
    return AccuracyLog.from_state(ckpt)


def _train_loader(train_set: Dataset, cfg: CLConfig, ctx: DistContext, device: torch.device,
                  loader_gen: torch.Generator) -> DataLoader:
    """One task's shuffled training loader (sharded over the ranks under ``torchrun``)."""
    if ctx.enabled:
        return DataLoader(
            train_set, batch_size=cfg.batch_size,
            sampler=SharedShuffleSampler(train_set, ctx, loader_gen),
            num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
            drop_last=cfg.legacy_drop_last)
    # the single-process path of every earlier run: keep its numbers unchanged
    return DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, generator=loader_gen,
        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        drop_last=cfg.legacy_drop_last)  # CODA / SMoPE code: drop_last=True


def _evaluate_seen(method: Method, bench: Benchmark, t: int, cfg: CLConfig, ctx: DistContext,
                   device: torch.device) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Evaluate tasks ``0..t`` after training task ``t``: rows ``acc``, ``tii``, ``til``,
    ``til_oracle`` (``nan`` for tasks not yet seen) and each task's :func:`evaluate_task`."""
    T = bench.num_tasks
    rows = {k: np.full(T, np.nan) for k in ("acc", "tii", "til", "til_oracle")}
    results = []
    for i in range(t + 1):
        loader = _eval_loader(_task_subset(bench.test, bench.task_classes[i]), cfg, ctx)
        res = evaluate_task(method, loader, i, device, ctx,
                            task_classes=bench.task_classes[i], num_tasks=T)
        results.append(res)
        for k in rows:
            rows[k][i] = res[k]
    return rows, results


def _eval_loader(dataset: Dataset, cfg: CLConfig, ctx: DistContext) -> DataLoader:
    """In-order loader over this rank's unpadded share of ``dataset``."""
    return DataLoader(eval_shard(dataset, ctx), batch_size=cfg.eval_batch_size, shuffle=False,
                      num_workers=cfg.num_workers)
