"""Benchmarks: the data contract, the registry and the offline generators.

Real loaders live in their own modules, each defining one builder function that
:mod:`cl.data.registry` names in its table of built-in datasets and imports on first use. They
raise :mod:`cl.data.errors` and share one builder skeleton (:mod:`cl.data.builder`); none of
them imports the registry, so there is no import cycle.
"""

from cl.data.base import Benchmark, SplitDataset
from cl.data.registry import (
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    available_datasets,
    build_benchmark,
    register_dataset,
)

__all__ = [
    "Benchmark",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "SplitDataset",
    "available_datasets",
    "build_benchmark",
    "register_dataset",
]
