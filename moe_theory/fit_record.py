"""One fit of a rate sweep as a typed, frozen record (a row of ``fits.csv`` plus its timing).

:func:`moe_theory.rates.sweep.fit_task` makes one :class:`FitRecord` per replicate; ``fits.csv``,
``timing.csv`` and the fit cache store its :meth:`~FitRecord.to_row` and the cache reads it
back with :meth:`~FitRecord.from_row`. The fields are exactly
:data:`~moe_theory.rates.config.RECORD_KEYS` (the ``fits.csv`` columns and ``seconds``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from moe_theory.estimate import FIT_STATUSES
from moe_theory.gates import GateKind
from moe_theory.rates.config import RECORD_KEYS

__all__ = ["FitRecord", "check_row"]


@dataclass(frozen=True)
class FitRecord:
    """The outcome of one replicate's fit at one ``n``.

    A data row (the input of the rate fits), not a statistical fit: the estimates with
    intervals that follow :class:`moe_theory.stat_fit.StatFit` are made from many records by
    :func:`moe_theory.inference.fit_rate` and :func:`moe_theory.inference.bootstrap_slope`.

    Attributes
    ----------
    setting, gate, activation, expert:
        What was fitted (``activation`` is the gate's, e.g. ``"tanh"``; ``expert`` the truth's).
    n, replicate:
        Sample size and replicate id (the seed stream).
    voronoi_loss, voronoi_loss_r:
        The Voronoi loss ``L_1`` and ``L_r`` of the best restart.
    loss_mass, loss_beta1, loss_eta:
        The three parts of ``L_1``.
    l2_error:
        ``||g_fitted - g_true||`` in ``L2(U[-1, 1]^d)``.
    rss:
        Residual sum of squares of the fit.
    converged, status, at_bound, n_iter:
        Levenberg-Marquardt outcome (``status`` one of ``converged``, ``capped``, ``stalled``).
    cell_sizes:
        Fitted atoms per true atom, ``;``-separated.
    seconds:
        Wall time per fit of its block (``timing.csv``; not in ``fits.csv``).
    restarts:
        Starts per replicate.
    """

    setting: str
    gate: GateKind
    activation: str
    expert: str
    n: int
    replicate: int
    voronoi_loss: float
    voronoi_loss_r: float
    loss_mass: float
    loss_beta1: float
    loss_eta: float
    l2_error: float
    rss: float
    converged: bool
    status: str
    at_bound: bool
    n_iter: int
    cell_sizes: str
    seconds: float
    restarts: int

    def to_row(self) -> dict[str, object]:
        """The record as ``{column: value}`` (for ``fits.csv``, ``timing.csv`` and the cache)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> FitRecord:
        """Inverse of :meth:`to_row`.

        Raises
        ------
        ValueError
            ``row`` has other keys than :data:`~moe_theory.rates.config.RECORD_KEYS` (e.g. a
            row of an older ``fits.csv`` schema; the message lists both), or a value of the
            wrong type or out of range (:func:`check_row`).
        """
        if set(row) != RECORD_KEYS:
            raise ValueError(f"a fit record has columns {sorted(row)}, expected "
                             f"{sorted(RECORD_KEYS)}")
        check_row(row)
        return cls(**row)  # type: ignore[arg-type]


# Column kinds of a fit record, checked when one is read back (a cache entry is plain JSON
# that anyone can edit): the type, and the range of every value.
_TEXT = ("setting", "gate", "activation", "expert", "status", "cell_sizes")
_COUNTS = {"n": 1, "replicate": 0, "n_iter": 0, "restarts": 1}  # int columns: minimum
_FLAGS = ("converged", "at_bound")
# non-negative, or nan / inf for a diverged fit (kept, flagged, excluded from the slopes)
_LOSSES = ("voronoi_loss", "voronoi_loss_r", "loss_mass", "loss_beta1", "loss_eta",
           "l2_error", "rss")
_CELL_SIZES = re.compile(r"\d+(;\d+)*")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_row(row: Mapping[str, object]) -> None:
    """Refuse a record whose values have the wrong type or lie out of range.

    Raises
    ------
    ValueError
        One line naming the column, the value and what is allowed.
    """
    for key in _TEXT:
        value = row[key]
        if not isinstance(value, str) or not value.isprintable() or len(value) > 200:
            raise ValueError(f"{key} is {value!r}; expected a short printable text")
    if row["status"] not in FIT_STATUSES:
        raise ValueError(f"status is {row['status']!r}; allowed: {', '.join(FIT_STATUSES)}")
    if row["cell_sizes"] and not _CELL_SIZES.fullmatch(str(row["cell_sizes"])):
        raise ValueError(f"cell_sizes is {row['cell_sizes']!r}; expected counts like '1;2'")
    for key, low in _COUNTS.items():
        value = row[key]
        if not _is_int(value) or value < low:  # type: ignore[operator]
            raise ValueError(f"{key} is {value!r}; expected an integer >= {low}")
    for key in _FLAGS:
        if not isinstance(row[key], bool):
            raise ValueError(f"{key} is {row[key]!r}; expected true or false")
    for key in _LOSSES:
        value = row[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} is {value!r}; expected a number >= 0 (or nan/inf)")
    seconds = row["seconds"]
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) \
            or not 0 <= seconds < math.inf:
        raise ValueError(f"seconds is {seconds!r}; expected a finite number >= 0")


if {f.name for f in fields(FitRecord)} != RECORD_KEYS:  # pragma: no cover - a schema edit
    raise ImportError("FitRecord's fields differ from moe_theory.rates.config.RECORD_KEYS")
