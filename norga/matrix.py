"""The accuracy-matrix CSV of a CL run directory: one writer and one reader for every command.

``accuracy_matrix.csv`` (and ``accuracy_matrix_before_alignment.csv``) hold ``A[t, i]``, the
accuracy (%) on task ``i`` after training task ``t``: a header ``after_task,task_0,...``, one row
per finished task, four decimals, and an empty cell for a task not seen yet.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

HEADER = "after_task"


class MatrixFormatError(ValueError):
    """The text is not an accuracy matrix; ``str(error)`` is one line saying why."""


def accuracy_matrix_csv(acc: np.ndarray) -> str:
    """The CSV text of ``acc`` (rows: after task ``t``; ``nan`` cells written empty)."""
    tasks = acc.shape[1]
    lines = [f"{HEADER}," + ",".join(f"task_{i}" for i in range(tasks))]
    for t, row in enumerate(acc):
        cells = ["" if math.isnan(v) else f"{v:.4f}" for v in row]
        lines.append(f"{t}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def parse_accuracy_matrix(text: str) -> np.ndarray:
    """Inverse of :func:`accuracy_matrix_csv`: one row per finished task, ``nan`` for empty cells.

    Raises
    ------
    MatrixFormatError
        A wrong header, no task, a ragged row or a non-numeric cell.
    """
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise MatrixFormatError(str(err)) from None
    if not rows or not rows[0] or rows[0][0] != HEADER:
        raise MatrixFormatError(f"must start with the header '{HEADER},task_0,...'")
    n_tasks = len(rows[0]) - 1
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if n_tasks < 1 or not body:
        raise MatrixFormatError("has no tasks")
    matrix = np.full((len(body), n_tasks), np.nan)
    for t, row in enumerate(body):
        if len(row) != n_tasks + 1:
            raise MatrixFormatError(f"row {t + 1} has {len(row)} cells, expected {n_tasks + 1}")
        for i, cell in enumerate(row[1:]):
            if cell.strip():
                try:
                    matrix[t, i] = float(cell)
                except ValueError as err:
                    raise MatrixFormatError(f"row {t + 1}: {err}") from None
    return matrix


def read_accuracy_matrix(path: str | Path) -> np.ndarray:
    """:func:`parse_accuracy_matrix` of the file at ``path`` (``OSError`` if unreadable)."""
    return parse_accuracy_matrix(Path(path).read_text(encoding="utf-8"))
