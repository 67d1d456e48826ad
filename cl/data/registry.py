"""Benchmark registry: ``name -> builder`` with one uniform signature.

A builder is registered with :func:`register_dataset` and called as
``builder(data_root=..., seed=..., download=..., **options)``; it returns a
:class:`cl.data.base.Benchmark`. Modules that define builders are imported lazily by
:func:`build_benchmark`, so importing ``cl.data`` never imports torchvision datasets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cl.data.base import Benchmark

BenchmarkBuilder = Callable[..., Benchmark]

# name -> module that registers it (imported on first use)
_DATASET_MODULES: dict[str, str] = {
    "synthetic": "cl.data.synthetic",
    "digits": "cl.data.digits",
    "cifar100": "cl.data.cifar100",
    "imagenet-r": "cl.data.imagenet_r",
    "cub200": "cl.data.cub200",
    "5datasets": "cl.data.five_datasets",
}
_BUILDERS: dict[str, BenchmarkBuilder] = {}


class DatasetError(RuntimeError):
    """Base class of data errors that a CLI reports as one line with exit code 2."""


class DatasetNotFoundError(DatasetError):
    """The dataset is not on disk (and ``download`` was not requested or is impossible)."""


class ChecksumError(DatasetError):
    """A file on disk does not match its expected checksum."""


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_benchmark`, in a stable order."""
    return list(_DATASET_MODULES)


def register_dataset(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator registering ``builder`` under ``name``."""

    def decorate(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorate


def build_benchmark(
    name: str,
    *,
    data_root: str | Path | None = None,
    seed: int = 0,
    download: bool = False,
    **options: Any,
) -> Benchmark:
    """Build the benchmark ``name``.

    Parameters
    ----------
    name:
        One of :func:`available_datasets`.
    data_root:
        Where real datasets live (ignored by offline generators).
    seed:
        Seed of the class order (and of generated data for offline benchmarks).
    download:
        Whether a missing real dataset may be downloaded.
    **options:
        Builder-specific options (image size, number of tasks, ...).

    Raises
    ------
    ValueError
        If ``name`` is unknown; the message lists the allowed names.
    DatasetNotFoundError, ChecksumError
        From the builder, when data are missing or corrupt.
    """
    if name not in _DATASET_MODULES:
        raise ValueError(
            f"unknown dataset {name!r}; allowed: {', '.join(available_datasets())}"
        )
    if name not in _BUILDERS:
        importlib.import_module(_DATASET_MODULES[name])
    return _BUILDERS[name](data_root=data_root, seed=seed, download=download, **options)
