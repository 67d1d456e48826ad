"""Registration of benchmark builders: the :func:`register_dataset` decorator and its table.

This is the half of the registry that the dataset modules need, kept apart from the lookup
(:mod:`cl.data.registry`, which imports the dataset modules on demand) so that no import cycle
runs through the two: dataset modules -> ``catalog`` <- ``registry`` -> dataset modules.
"""

from __future__ import annotations

from collections.abc import Callable

from cl.data.base import Benchmark

BenchmarkBuilder = Callable[..., Benchmark]

_BUILDERS: dict[str, BenchmarkBuilder] = {}


def register_dataset(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Decorator registering ``builder`` under ``name``.

    A builder is called as ``builder(data_root=..., seed=..., download=..., **options)`` and
    returns a :class:`cl.data.base.Benchmark`. A name registered from Python (before the run is
    configured) is accepted by :func:`cl.data.registry.build_benchmark`, ``run_experiment`` and
    ``norga-cl --dataset``; for the installed command, see the ``norga.datasets`` entry-point
    group (:mod:`cl.data.registry`).

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


def registered_names() -> list[str]:
    """Names registered so far, in registration order."""
    return list(_BUILDERS)


def registered_builder(name: str) -> BenchmarkBuilder | None:
    """The builder registered under ``name``, or ``None`` if its module was not imported yet."""
    return _BUILDERS.get(name)
