"""Atomic file writing and the run-directory file formats."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    _atomic(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def torch_save_atomic(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def accuracy_matrix_csv(acc: np.ndarray) -> str:
    """``after_task,task_0,...`` rows; cells for tasks not yet seen are empty."""
    T = acc.shape[1]
    lines = ["after_task," + ",".join(f"task_{i}" for i in range(T))]
    for t, row in enumerate(acc):
        cells = ["" if math.isnan(v) else f"{v:.4f}" for v in row]
        lines.append(f"{t}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def read_accuracy_matrix_csv(path: str | Path) -> np.ndarray:
    """Inverse of :func:`accuracy_matrix_csv` (rows = finished tasks, nan for empty cells)."""
    rows = Path(path).read_text().strip().splitlines()[1:]
    return np.array(
        [[float(c) if c else math.nan for c in row.split(",")[1:]] for row in rows], dtype=float
    )
