"""Tiny synthetic runs for the engine tests (``test_cl_engine_*.py``): 3 tasks of 2 classes,
4 training and 5 test images per class, epochs 0 unless a test asks for training."""

from __future__ import annotations

import json
from pathlib import Path

from cl.config import CLConfig, resolve_config
from cl.data.registry import build_benchmark

T = 3
OPTIONS = {"num_classes": 6, "num_tasks": T, "train_per_class": 4, "test_per_class": 5}
ZERO = {"epochs": 0, "tii_epochs": 0, "tii_ca_epochs": 0, "tap_epochs": 0}


def tiny_cfg(method: str = "hide", **extra) -> CLConfig:
    """The tiny run's configuration (seed 11, CPU, every checkpoint kept: the tests read and
    damage earlier ones); ``extra`` overrides any field."""
    overrides = {**ZERO, "batch_size": 8, "eval_batch_size": 64, "seed": 11, "device": "cpu",
                 "dataset_options": dict(OPTIONS), "keep_checkpoints": "all", **extra}
    return resolve_config("synthetic", method, overrides=overrides, allow_unused=True)


def tiny_bench(cfg: CLConfig):
    """The benchmark the engine builds for ``cfg``."""
    return build_benchmark("synthetic", seed=cfg.seed, **cfg.dataset_options)


def run_files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative name -> bytes), the lock file left out."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def checksums(out: Path) -> dict[str, str]:
    """``SHA256SUMS`` as ``{name: digest}``."""
    sums = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    return sums


def log_records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
