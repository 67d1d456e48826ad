"""Writing and reading a rates run directory, atomically.

Files: ``config.json``, ``fits.csv`` (one row per fit), ``summary.json`` (per setting and gate),
``mechanism.json`` (E4) and ``summary.txt`` (the printed report). Each file is written to a
temporary sibling and renamed, so a crash or a full disk never leaves a half-written result.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

from moe_theory.rates import FIT_COLUMNS, RateResult


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_safe(value: object) -> object:
    """Replace non-finite floats by ``None`` (JSON has no NaN/inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def dumps_json(data: object) -> str:
    """Pretty, strict JSON."""
    return json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"


def fits_csv_text(records: list[dict[str, object]]) -> str:
    """``fits.csv`` content: header :data:`FIT_COLUMNS`, floats with full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(FIT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in records:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_run(result: RateResult, out: str | os.PathLike[str]) -> list[Path]:
    """Write every result file of ``result`` into ``out`` (created if needed).

    Returns
    -------
    The paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out / "config.json", dumps_json(result.config.to_dict()))]
    if result.records:
        written.append(atomic_write_text(out / "fits.csv", fits_csv_text(result.records)))
        written.append(atomic_write_text(out / "summary.json", dumps_json(result.summary_dict())))
    if result.mechanism is not None:
        written.append(atomic_write_text(out / "mechanism.json", dumps_json(result.mechanism)))
    written.append(atomic_write_text(out / "summary.txt", result.summary() + "\n"))
    return written


def read_config(path: str | os.PathLike[str]) -> dict[str, object]:
    """The ``config.json`` of a run directory."""
    return json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
