"""The dataset registry: ``name -> builder`` with one uniform signature.

A builder is called as ``builder(data_root=..., seed=..., download=..., **options)`` and
returns a :class:`cl.data.base.Benchmark`. Three kinds of names are accepted:

* the **built-in** datasets, a table of ``"module:function"`` strings (:data:`_BUILTIN`): the
  module is imported the first time the dataset is built, so importing ``cl.data`` never imports
  torchvision datasets. The dataset modules only define their builder functions and never
  import this module, so there is no import cycle;
* names **registered from Python** with :func:`register_dataset` (any module that ran
  ``@register_dataset("name")`` before the run is configured);
* names declared by an installed package in the ``norga.datasets`` entry-point group, e.g. in
  its ``pyproject.toml``::

      [project.entry-points."norga.datasets"]
      mydata = "mypackage.data:build_mydata"

  (the object is loaded on first use; a callable is registered under the entry point's name, a
  module is expected to register it itself).

All of them appear in ``norga-cl --dataset``. A name registered from Python takes precedence
over a built-in one of the same name. The errors (:mod:`cl.data.errors`) are re-exported here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cl.data.base import Benchmark
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
    "registered_builder",
]

BenchmarkBuilder = Callable[..., Benchmark]

# The datasets this package ships: name -> "module:builder function" (imported on first use).
_BUILTIN: dict[str, str] = {
    "synthetic": "cl.data.synthetic:build_synthetic",
    "digits": "cl.data.digits:build_digits",
    "cifar100": "cl.data.cifar100:build_cifar100",
    "imagenet-r": "cl.data.imagenet_r:build_imagenet_r",
    "cub200": "cl.data.cub200:build_cub200",
    "5datasets": "cl.data.five_datasets:build_five_datasets",
}

# Builders known so far: registered from Python, loaded from an entry point, or a built-in one
# after its first use.
_BUILDERS: dict[str, BenchmarkBuilder] = {}

ENTRY_POINT_GROUP = "norga.datasets"


def register_dataset(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator registering ``builder`` under ``name``.

    A builder is called as ``builder(data_root=..., seed=..., download=..., **options)`` and
    returns a :class:`cl.data.base.Benchmark`. A name registered from Python (before the run is
    configured) is accepted by :func:`build_benchmark`, ``run_experiment`` and
    ``norga-cl --dataset``; for the installed command, see the ``norga.datasets`` entry-point
    group (module docstring).

    Raises
    ------
    ValueError
        ``name`` is empty or not a plain name (letters, digits, ``-``, ``_``, ``.``), which a
        run directory name could not hold.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-', '_' or '.'")

    def decorate(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorate


def registered_builder(name: str) -> BenchmarkBuilder | None:
    """The builder known under ``name`` so far, or ``None`` (a built-in dataset before its
    first use, an entry point not loaded yet, or an unknown name)."""
    return _BUILDERS.get(name)


def builtin_datasets() -> list[str]:
    """The datasets this package ships, in a stable order."""
    return list(_BUILTIN)


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
    for name in [*_BUILDERS, *_entry_points()]:
        if name not in names:
            names.append(name)
    return names


def _load_builtin(name: str) -> None:
    """Import the built-in builder of ``name`` and register it."""
    module, function = _BUILTIN[name].split(":")
    builder = getattr(importlib.import_module(module), function, None)
    if not callable(builder):
        raise DatasetError(f"{module} has no builder function {function!r} for the dataset "
                           f"{name!r}")
    register_dataset(name)(builder)


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
    if registered_builder(name) is None:
        if name in _BUILTIN:
            _load_builtin(name)
        else:
            _load_entry_point(name)
    builder = registered_builder(name)
    if builder is None:
        raise DatasetError(f"the {ENTRY_POINT_GROUP} entry point {name!r} did not register "
                           f"the dataset {name!r}")
    return builder(data_root=data_root, seed=seed, download=download, **options)
