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

    Raises
    ------
    OSError
        A file could not be written (disk full, permissions). All files are first written to
        temporary siblings and only renamed once every one of them is complete, so a failure
        while writing leaves every previous result file of ``out`` unchanged (the message says
        so).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"config.json": dumps_json(result.config.to_dict())}
    if result.records:
        texts["fits.csv"] = fits_csv_text(result.records)
        texts["summary.json"] = dumps_json(result.summary_dict())
    if result.mechanism is not None:
        texts["mechanism.json"] = dumps_json(result.mechanism)
    texts["summary.txt"] = result.summary() + "\n"
    staged: list[tuple[str, Path]] = []
    try:
        for name, text in texts.items():  # phase 1: where a full disk shows up
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            staged.append((tmp, out / name))
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as err:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"could not write the results to {out} ({err.strerror or err}); "
                      "the previous result files there are intact") from err
    for tmp, path in staged:  # phase 2: renames only
        os.replace(tmp, path)
    return [path for _, path in staged]


def read_config(path: str | os.PathLike[str]) -> dict[str, object]:
    """The ``config.json`` of a run directory."""
    return json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
