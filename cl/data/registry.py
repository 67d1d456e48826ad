"""Benchmark lookup: ``name -> builder`` with one uniform signature.

A builder is registered with :func:`register_dataset` (defined in :mod:`cl.data.catalog`) and
called as ``builder(data_root=..., seed=..., download=..., **options)``; it returns a
:class:`cl.data.base.Benchmark`. Modules that define builders are imported lazily by
:func:`build_benchmark`, so importing ``cl.data`` never imports torchvision datasets.

Besides the built-in names, a name is available when it was registered from Python (any
module that ran ``@register_dataset("name")`` before the run is configured) or when an installed
package declares it in the ``norga.datasets`` entry-point group, e.g. in its ``pyproject.toml``::

    [project.entry-points."norga.datasets"]
    mydata = "mypackage.data:build_mydata"

(the object is loaded on first use; a callable is registered under the entry point's name, a
module is expected to register it itself). Such names appear in ``norga-cl --dataset``.

Registration and lookup live apart: the dataset modules import :mod:`cl.data.catalog` and
:mod:`cl.data.errors` (leaves), only this module imports the dataset modules, so there is no
import cycle. ``register_dataset`` and the errors stay importable from here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cl.data.base import Benchmark
from cl.data.catalog import (
    BenchmarkBuilder,
    register_dataset,
    registered_builder,
    registered_names,
)
from cl.data.errors import ChecksumError, DatasetError, DatasetNotFoundError
from norga.choices import check_choice

__all__ = [
    "BenchmarkBuilder",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "available_datasets",
    "build_benchmark",
    "builtin_datasets",
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


ENTRY_POINT_GROUP = "norga.datasets"


def builtin_datasets() -> list[str]:
    """The datasets this package ships, in a stable order."""
    return list(_DATASET_MODULES)


def _entry_points() -> dict[str, Any]:
    """``name -> entry point`` of the ``norga.datasets`` group (nothing is loaded)."""
    from importlib.metadata import entry_points

    try:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # noqa: BLE001 - broken package metadata must not break the built-ins
        return {}


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_benchmark`: the built-in ones, then those registered from
    Python, then those declared by installed packages (``norga.datasets`` entry points)."""
    names = builtin_datasets()
    for name in [*registered_names(), *_entry_points()]:
        if name not in names:
            names.append(name)
    return names


def _load_entry_point(name: str) -> None:
    """Load the entry point of ``name``; a callable it names is registered under ``name``."""
    ep = _entry_points().get(name)
    if ep is None:
        return
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in: say which one, in one line
        raise DatasetError(f"dataset {name!r}: its entry point {ep.value!r} cannot be loaded "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                           ) from exc
    if registered_builder(name) is None and callable(obj):
        register_dataset(name)(obj)


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
    if builder is None and name in _DATASET_MODULES:
        importlib.import_module(_DATASET_MODULES[name])
        builder = registered_builder(name)
    elif builder is None:
        _load_entry_point(name)
        builder = registered_builder(name)
    if builder is None:
        where = _DATASET_MODULES.get(name, f"the {ENTRY_POINT_GROUP} entry point {name!r}")
        raise DatasetError(f"{where} did not register the dataset {name!r}")
    return builder(data_root=data_root, seed=seed, download=download, **options)
