"""One fit of a rate sweep as a typed, frozen record (a row of ``fits.csv`` plus its timing).

:func:`moe_theory.rates.sweep.fit_task` makes one :class:`FitRecord` per replicate; ``fits.csv``,
``timing.csv`` and the fit cache store its :meth:`~FitRecord.to_row` and the cache reads it
back with :meth:`~FitRecord.from_row`. The fields are exactly
:data:`~moe_theory.rates.config.RECORD_KEYS` (the ``fits.csv`` columns and ``seconds``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from moe_theory.rates.config import RECORD_KEYS

__all__ = ["FitRecord"]


@dataclass(frozen=True)
class FitRecord:
    """The outcome of one replicate's fit at one ``n``.

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
    gate: str
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
            row of an older ``fits.csv`` schema); the message lists both.
        """
        if set(row) != RECORD_KEYS:
            raise ValueError(f"a fit record has columns {sorted(row)}, expected "
                             f"{sorted(RECORD_KEYS)}")
        return cls(**row)  # type: ignore[arg-type]


if {f.name for f in fields(FitRecord)} != RECORD_KEYS:  # pragma: no cover - a schema edit
    raise ImportError("FitRecord's fields differ from moe_theory.rates.config.RECORD_KEYS")
