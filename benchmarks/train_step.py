#!/usr/bin/env python
"""Training-step throughput of every registered CL method on one backbone and batch.

Each method is built with the CIFAR-100 presets (100 classes, 10 tasks) on the same frozen
backbone, and one training step of task 0 is timed: ``method.train_task`` on a loader holding
one batch with one epoch of every phase (``epochs = tii_epochs = 1``). That is

* HiDe-Prompt / NoRGa: one TII step (prompt-free frozen pass + adapter) and one prompt step
  (prompted pass + backward): **two ViT passes**;
* L2P / DualPrompt / S-Prompt++ / CODA-Prompt: a frozen query pass, then the prompted pass +
  backward: **two ViT passes**;
* SMoPE: one prompted pass + backward (its steady top-K phase; the dense warm-up of task 0 is
  switched off): **one ViT pass**.

The reference is a plain frozen-backbone forward pass (``torch.no_grad``) on the same batch;
``step_over_plain_forward`` is the step time in units of that pass. ViT passes are counted
with a forward hook on the backbone's final norm, which every pass goes through; a pass whose
output needs no gradient is *frozen*, and the hook records whether autograd was off for it
(``frozen_passes_with_grad_enabled`` must be 0: a frozen pass with autograd on would not cost
memory here, since nothing in it requires grad, but the issue asks for ``torch.no_grad``).

Defaults: CPU, ``vit-tiny-random`` (32x32), batch 32, float32; with CUDA present, ViT-B/16
(``vit-b16-random``, 224x224), batch 32, bf16 autocast (``--precision``).

Timing: one warm-up round, then ``--repeats`` rounds running every method in turn (interleaved,
so machine noise hits all alike); the median is reported.

Usage::

    python benchmarks/train_step.py              # ~1 min on 2 cores
    python benchmarks/train_step.py --methods norga smope --repeats 20

Writes ``benchmarks/results/train_step.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cl.backbones.loading import build_backbone
from cl.config import method_uses, resolve_config
from cl.methods import Task, available_methods, get_method
from cl.run.files import write_json_atomic
from cl.run.precision import apply_precision, autocast

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("train_step")

DATASET, NUM_CLASSES, NUM_TASKS = "cifar100", 100, 10
#: Measure SMoPE's steady top-K step, not the dense warm-up of its first task.
EXTRA_OVERRIDES: dict[str, dict[str, Any]] = {
    "smope": {"method_options": {"warmup_fraction": 0.0}},
}


class PassCounter:
    """Forward hook on the backbone's final norm: one call per ViT pass.

    For each pass it records whether the output needs a gradient (prompted pass feeding a loss)
    and whether autograd was enabled.
    """

    def __init__(self, vit: nn.Module) -> None:
        self.records: list[tuple[bool, bool]] = []
        self.handle = vit.norm.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.records.append((bool(output.requires_grad), torch.is_grad_enabled()))

    def summary(self) -> dict[str, int]:
        frozen = [grad_on for needs_grad, grad_on in self.records if not needs_grad]
        return {
            "vit_passes": len(self.records),
            "trained_passes": sum(needs for needs, _ in self.records),
            "frozen_passes": len(frozen),
            "frozen_passes_with_grad_enabled": sum(frozen),
        }

    def reset(self) -> None:
        self.records.clear()

    def remove(self) -> None:
        self.handle.remove()


def _tii_budget(name: str) -> dict[str, int]:
    # only HiDe / NoRGa train a TII model; the baselines refuse a tii_epochs they would ignore
    return {"tii_epochs": 1} if method_uses(name, "tii_epochs") else {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_method(name: str, backbone: str, image_size: int, batch: int, device: torch.device,
                 precision: str) -> tuple[Any, nn.Module, Task]:
    """A fresh method on its own copy of the (seeded, identical) backbone, task 0 begun."""
    overrides = {"epochs": 1, **_tii_budget(name), "batch_size": batch, "device": str(device),
                 "seed": 0, "precision": precision, **EXTRA_OVERRIDES.get(name, {})}
    cfg = resolve_config(DATASET, name, backbone, overrides=overrides)
    vit = build_backbone(backbone, img_size=image_size, seed=0).model
    per_task = NUM_CLASSES // NUM_TASKS
    task_classes = [list(range(t * per_task, (t + 1) * per_task)) for t in range(NUM_TASKS)]
    method = get_method(name)(cfg, vit, NUM_CLASSES, task_classes, device=device)
    with warnings.catch_warnings():  # bf16 on a CPU warns once per method: said in the JSON
        warnings.simplefilter("ignore", RuntimeWarning)
        apply_precision(method, device=device, precision=precision)
    task = Task(0, task_classes[0], task_classes)
    method.begin_task(task)
    return method, vit, task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--backbone", help="default vit-tiny-random on a CPU, vit-b16-random "
                        "on a GPU")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="default fp32 on a CPU, bf16 on a GPU")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("cl").setLevel(logging.WARNING)  # no per-method build messages
    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    backbone = args.backbone or ("vit-b16-random" if cuda else "vit-tiny-random")
    image_size = 224 if backbone != "vit-tiny-random" else 32
    precision = args.precision or ("bf16" if cuda else "fp32")
    registered = available_methods()
    names = args.methods or registered
    unknown = sorted(set(names) - set(registered))
    if unknown or args.batch_size <= 0 or args.repeats <= 0:
        parser.error(f"unknown methods {unknown} (registered: {', '.join(registered)})"
                     if unknown else "--batch-size and --repeats must be positive")
    t_start = time.time()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, image_size, image_size, generator=g)
    y = torch.randint(0, NUM_CLASSES // NUM_TASKS, (args.batch_size,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size)
    x_dev = x.to(device)

    plain = build_backbone(backbone, img_size=image_size, seed=0).model.to(device).eval()
    for p in plain.parameters():
        p.requires_grad_(False)

    def plain_forward() -> None:
        with torch.no_grad(), autocast(device, precision):
            plain.forward_features(x_dev)

    steps: dict[str, Callable[[], None]] = {"plain_forward": plain_forward}
    counters: dict[str, PassCounter] = {}
    methods: dict[str, Any] = {}
    for name in names:
        method, vit, _ = build_method(name, backbone, image_size, args.batch_size, device,
                                      precision)
        methods[name] = method
        counters[name] = PassCounter(vit)
        steps[name] = (lambda m: lambda: m.train_task(loader))(method)

    times: dict[str, list[float]] = {k: [] for k in steps}
    for round_ in range(args.repeats + 1):
        for key, fn in steps.items():
            if key in counters:
                counters[key].reset()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if round_ > 0:  # round 0 warms up
                times[key].append(time.perf_counter() - t0)
        log.info("round %d/%d done", round_, args.repeats)

    plain_s = statistics.median(times["plain_forward"])
    results: dict[str, Any] = {}
    problems: list[str] = []
    for name in names:
        med = statistics.median(times[name])
        passes = counters[name].summary()
        counters[name].remove()
        if passes["frozen_passes_with_grad_enabled"]:
            problems.append(f"{name}: {passes['frozen_passes_with_grad_enabled']} frozen pass(es) "
                            "run with autograd enabled (not under torch.no_grad)")
        results[name] = {
            "step_median_s": med,
            "images_per_s": args.batch_size / med,
            "step_over_plain_forward": med / plain_s,
            **passes,
            "times_s": [round(t, 5) for t in times[name]],
        }
    smope = results.get("smope")
    payload = {
        "kind": "train_step",
        "version": 1,
        "device": str(device),
        "precision": precision,
        "gpu": (f"measured on {torch.cuda.get_device_name(device)}" if cuda else
                "no CUDA device on this machine: CPU only; with a GPU the script measures "
                "ViT-B/16 under bf16 autocast (not run here)"),
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": args.batch_size,
        "dataset_presets": DATASET,
        "repeats": args.repeats,
        "timing": "median of interleaved rounds after one warm-up round",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": args.threads, "torch": torch.__version__,
                    **({"gpu": torch.cuda.get_device_name(device)} if cuda else {})},
        "plain_forward": {"median_s": plain_s, "images_per_s": args.batch_size / plain_s,
                          "times_s": [round(t, 5) for t in times["plain_forward"]]},
        "methods": results,
        "smope_step_over_others": ({m: smope["step_median_s"] / r["step_median_s"]
                                    for m, r in results.items() if m != "smope"}
                                   if smope else None),
        "no_grad_problems": problems,
        "seconds": round(time.time() - t_start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "train_step.json", payload)

    print(f"\n{backbone} {image_size}x{image_size}, batch {args.batch_size}, {device} "
          f"{precision}, {args.threads} threads, median of {args.repeats}")
    print(f"plain frozen forward: {plain_s * 1e3:.1f} ms = {args.batch_size / plain_s:.0f} "
          "images/s")
    print(f"{'method':<12} {'step ms':>9} {'images/s':>9} {'x plain fwd':>11} "
          f"{'ViT passes':>10} {'frozen':>6} {'frozen w/ grad':>14}")
    for name, r in results.items():
        print(f"{name:<12} {r['step_median_s'] * 1e3:9.1f} {r['images_per_s']:9.0f} "
              f"{r['step_over_plain_forward']:11.2f} {r['vit_passes']:10d} "
              f"{r['frozen_passes']:6d} {r['frozen_passes_with_grad_enabled']:14d}")
    if payload["smope_step_over_others"]:
        print("SMoPE step / other step: " + ", ".join(
            f"{m} {v:.2f}" for m, v in payload["smope_step_over_others"].items()))
    print("frozen passes under torch.no_grad: "
          + ("all" if not problems else "; ".join(problems)))
    print(f"wrote {args.out / 'train_step.json'} ({payload['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
