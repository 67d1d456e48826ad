"""Benchmark lookup: ``name -> builder`` with one uniform signature.

A builder is registered with :func:`register_dataset` (defined in :mod:`cl.data.catalog`) and
called as ``builder(data_root=..., seed=..., download=..., **options)``; it returns a
:class:`cl.data.base.Benchmark`. Modules that define builders are imported lazily by
:func:`build_benchmark`, so importing ``cl.data`` never imports torchvision datasets.

Registration and lookup live apart: the dataset modules import :mod:`cl.data.catalog` and
:mod:`cl.data.errors` (leaves), only this module imports the dataset modules, so there is no
import cycle. ``register_dataset`` and the errors stay importable from here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cl.data.base import Benchmark
from cl.data.catalog import BenchmarkBuilder, register_dataset, registered_builder
from cl.data.errors import ChecksumError, DatasetError, DatasetNotFoundError
from norga.choices import check_choice

__all__ = [
    "BenchmarkBuilder",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "available_datasets",
    "build_benchmark",
    "register_dataset",
]

# name -> module that registers it (imported on first use)
_DATASET_MODULES: dict[str, str] = {
    "synthetic": "cl.data.synthetic",
    "digits": "cl.data.digits",
    "cifar100": "cl.data.cifar100",
    "imagenet-r": "cl.data.imagenet_r",
    "cub200": "cl.data.cub200",
    "5datasets": "cl.data.five_datasets",
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_benchmark`, in a stable order."""
    return list(_DATASET_MODULES)


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
    norga.choices.ChoiceError
        If ``name`` is unknown (a ``ValueError``; the message lists the allowed names).
    DatasetNotFoundError, ChecksumError
        From the builder, when data are missing or corrupt.
    """
    check_choice("dataset", name, available_datasets())
    builder = registered_builder(name)
    if builder is None:
        importlib.import_module(_DATASET_MODULES[name])
        builder = registered_builder(name)
    if builder is None:
        raise RuntimeError(f"{_DATASET_MODULES[name]} did not register the dataset {name!r}")
    return builder(data_root=data_root, seed=seed, download=download, **options)
