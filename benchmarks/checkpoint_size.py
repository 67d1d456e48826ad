#!/usr/bin/env python
"""Disk size of a NoRGa / HiDe-Prompt checkpoint on ViT-B/16 at 10, 100 and 200 classes.

A checkpoint (``checkpoints/task_<t>.pt``) holds what the run learned (prompts, heads, the TII
model, their optimizer states) and the class statistics of every class seen so far: a float64
sum of outer products (``d x d``, d = 768) per class for the prompted features (head
alignment) and another for the frozen backbone's features (TII). Those grow with the classes
and dominate the size.

The numbers are measured, not estimated: a real run of the engine writes the checkpoints, with
the randomly initialised timm ViT-B/16 (``vit-b16-random``: the architecture, no weights; the
size does not depend on the weights) on synthetic data with C classes in 10 tasks and no
training epochs (the size does not depend on the epochs either). The frozen ViT is not saved,
so the image size does not change the contents: 32x32 images keep the run short (``--check``
repeats C = 10 at 64x64 to show it). The run stops after every task and resumes, so that each
task's checkpoint can be measured while only the last one is kept on disk.

Usage::

    python benchmarks/checkpoint_size.py              # ~2-5 min on 2 cores
    python benchmarks/checkpoint_size.py --classes 10 --check

Writes ``benchmarks/results/checkpoint_size.json`` and ``checkpoint_size.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cl.config import resolve_config
from cl.run.engine import run_experiment
from cl.run.files import safe_torch_load, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
NUM_TASKS = 10
ZERO = {"epochs": 0, "tii_epochs": 0, "tii_ca_epochs": 0, "tap_epochs": 0}


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested checkpoint object."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def measure(num_classes: int, method: str, image_size: int, workdir: Path) -> dict[str, Any]:
    """Run C classes in 10 tasks; the file size of every task's checkpoint and the contents of
    the last one."""
    cfg = resolve_config("synthetic", method, "vit-b16-random", overrides={
        **ZERO, "device": "cpu", "seed": 0, "batch_size": 32, "keep_checkpoints": "last",
        "dataset_options": {"num_classes": num_classes, "num_tasks": NUM_TASKS,
                            "train_per_class": 2, "test_per_class": 1,
                            "image_size": image_size}})
    out = workdir / f"{method}-{num_classes}-{image_size}"
    sizes = []
    start = time.perf_counter()
    for t in range(NUM_TASKS):
        run_experiment(cfg, out, stop_after_task=t if t < NUM_TASKS - 1 else None)
        ckpt = out / "checkpoints" / f"task_{t}.pt"
        sizes.append(ckpt.stat().st_size)
        on_disk = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
        assert on_disk == [ckpt.name], on_disk  # keep_checkpoints="last"
    last = safe_torch_load(out / "checkpoints" / f"task_{NUM_TASKS - 1}.pt", (), what="ckpt")
    parts = {key: tensor_bytes(value) for key, value in last["method"].items()}
    return {
        "method": method, "num_classes": num_classes, "num_tasks": NUM_TASKS,
        "image_size": image_size, "feature_dim": 768,
        "checkpoint_bytes_per_task": sizes,
        "last_checkpoint_bytes": sizes[-1],
        "all_checkpoints_bytes": sum(sizes),
        "method_state_tensor_bytes": parts,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 200])
    p.add_argument("--method", default="norga", choices=["norga", "hide"])
    p.add_argument("--check", action="store_true",
                   help="also measure the smallest C at 64x64 images (same size expected)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ckpt-size-") as tmp:
        for c in args.classes:
            rows.append(measure(c, args.method, 32, Path(tmp)))
            print(f"{c:>4} classes: last checkpoint {_mb(rows[-1]['last_checkpoint_bytes'])}, "
                  f"all {NUM_TASKS} {_mb(rows[-1]['all_checkpoints_bytes'])} "
                  f"({rows[-1]['seconds']} s)", flush=True)
        check = None
        if args.check:
            check = measure(min(args.classes), args.method, 64, Path(tmp))
            same = check["checkpoint_bytes_per_task"] == rows[0]["checkpoint_bytes_per_task"]
            print(f"64x64 images: {'same sizes' if same else 'DIFFERENT sizes'}")
    per_class = [(b["last_checkpoint_bytes"] - a["last_checkpoint_bytes"])
                 / (b["num_classes"] - a["num_classes"])
                 for a, b in zip(rows[:-1], rows[1:], strict=True)]
    result = {"kind": "checkpoint_size", "version": 1, "rows": rows,
              "bytes_per_class": per_class, "image_size_check": check,
              "torch": torch.__version__, "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "checkpoint_size.json", result)
    lines = ["| classes | last checkpoint (keep_checkpoints=last) | all 10 "
             "(keep_checkpoints=all) |", "|---:|---:|---:|"]
    lines += [f"| {r['num_classes']} | {_mb(r['last_checkpoint_bytes'])} | "
              f"{_mb(r['all_checkpoints_bytes'])} |" for r in rows]
    write_text_atomic(args.out / "checkpoint_size.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
