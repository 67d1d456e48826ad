"""The per-task accuracy matrices of a run, kept together as one record.

After every task the engine evaluates each task seen so far and appends one row to each
matrix; the checkpoint stores them (so a resume continues them) and the result files
(``accuracy_matrix.csv``, ``accuracy_matrix_before_alignment.csv``, ``metrics.json``) are
written from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: the matrices' names, which are also their checkpoint keys, in checkpoint order
MATRIX_KEYS = ("acc", "tii", "til", "til_oracle", "acc_before")
#: keys a checkpoint may lack (written before these matrices existed): restored as ``nan``
LATER_KEYS = ("til_oracle", "acc_before")


def as_float_matrix(value: Any) -> np.ndarray:
    """A float64 matrix from a checkpoint (a tensor; a numpy array in older checkpoints)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy().copy()
    return np.asarray(value, dtype=float)


@dataclass
class AccuracyLog:
    """Percent accuracy matrices of shape ``(finished tasks, num_tasks)``; ``nan`` marks a task
    not yet seen or a metric that does not apply. Attribute names are the checkpoint keys.

    Attributes
    ----------
    acc:
        Class-incremental accuracy (task unknown).
    tii:
        Task-identity accuracy (share of samples that chose their own task).
    til:
        Task-incremental accuracy (the method's own prompt choice, logits of the true task's
        classes only).
    til_oracle:
        As ``til``, with the true task's prompt as well.
    acc_before:
        Class-incremental accuracy just before the head alignment (methods with one).
    """

    acc: np.ndarray
    tii: np.ndarray
    til: np.ndarray
    til_oracle: np.ndarray
    acc_before: np.ndarray

    @classmethod
    def empty(cls, num_tasks: int) -> AccuracyLog:
        """The log of a run before its first task: five ``(0, num_tasks)`` matrices."""
        return cls(*(np.full((0, num_tasks), np.nan) for _ in MATRIX_KEYS))

    @property
    def finished_tasks(self) -> int:
        return int(self.acc.shape[0])

    def record_task(self, rows: Mapping[str, np.ndarray], before: np.ndarray) -> None:
        """Append the rows of the evaluation after one task: ``rows`` holds ``acc``, ``tii``,
        ``til`` and ``til_oracle`` (length ``num_tasks``), ``before`` the before-alignment row.

        The matrices are replaced by new arrays, never changed in place, so a matrix handed
        out earlier (e.g. in a :class:`~cl.run.directory.RunResult`) keeps its rows.
        """
        new = {**{k: rows[k] for k in MATRIX_KEYS[:4]}, "acc_before": before}
        for key, row in new.items():
            setattr(self, key, np.vstack([getattr(self, key), row]))

    def matrices(self) -> dict[str, np.ndarray]:
        """The matrices by checkpoint key (``acc``, ``tii``, ``til``, ``til_oracle``,
        ``acc_before``), in that order."""
        return {key: getattr(self, key) for key in MATRIX_KEYS}

    def to_state(self) -> dict[str, torch.Tensor]:
        """The checkpoint entries: float64 tensors, not numpy arrays, since a checkpoint holds
        plain data only (it is loaded with ``weights_only``)."""
        return {key: torch.tensor(value, dtype=torch.float64)
                for key, value in self.matrices().items()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AccuracyLog:
        """The log stored in a checkpoint (:meth:`to_state`; numpy arrays in older ones). A
        matrix of :data:`LATER_KEYS` missing from an older checkpoint is ``nan``
        (not applicable) with the shape of ``acc``."""
        acc = as_float_matrix(state["acc"])
        return cls(acc, *(as_float_matrix(state[k]) for k in ("tii", "til")),
                   *(as_float_matrix(state[k]) if k in state else np.full_like(acc, np.nan)
                     for k in LATER_KEYS))

