"""Writing and reading a rates run directory, atomically.

Files: ``config.json``, ``fits.csv`` (one row per fit), ``summary.json`` (per setting and gate),
``mechanism.json`` (E4) and ``summary.txt`` (the printed report). Each file is written to a
temporary sibling and renamed, so a crash or a full disk never leaves a half-written result.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from moe_theory.rates import FIT_COLUMNS, RateResult
from norga.io import (
    WriteFailedError,
    atomic_write_many,
    atomic_write_text,
    dumps_json,
    json_safe,
    record_checksums,
)

__all__ = ["WriteFailedError", "atomic_write_text", "dumps_json", "fits_csv_text", "json_safe",
           "read_config", "write_run"]


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
    data = {name: text.encode("utf-8") for name, text in texts.items()}
    written = atomic_write_many(out, data)
    # checksums last: figures.py and a re-run verify the files against them
    record_checksums(out, data)
    return written


def read_config(path: str | os.PathLike[str]) -> dict[str, object]:
    """The ``config.json`` of a run directory."""
    return json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
