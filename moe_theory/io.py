"""Writing and reading a rates run directory, atomically.

Files: ``config.json`` (the sweep plus its provenance), ``fits.csv`` (one row per fit),
``timing.csv`` (wall-clock seconds per fit), ``summary.json`` (per setting and gate),
``mechanism.json`` (E4) and ``summary.txt`` (the printed report). ``fits.csv`` and
``summary.json`` depend only on the configuration (byte-identical for any ``--jobs`` and block
size); timings and provenance live in the other files. Each file is written to a temporary
sibling and renamed, so a crash or a full disk never leaves a half-written result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from moe_theory.fit_record import FitRecord
from moe_theory.rates.sweep import FIT_COLUMNS, TIMING_COLUMNS, RateResult
from norga.io import (
    WriteFailedError,
    atomic_write_many,
    atomic_write_text,
    dumps_json,
    json_safe,
    record_checksums,
)
from norga.provenance import git_state

#: Packages whose versions config.json records.
PROVENANCE_PACKAGES: tuple[str, ...] = ("numpy", "scipy", "numba", "statsmodels")

__all__ = ["WriteFailedError", "atomic_write_text", "dumps_json", "fits_csv_text", "json_safe",
           "read_config", "write_run"]


def _csv_text(records: list[dict[str, object]], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in records:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def fits_csv_text(records: Sequence[FitRecord]) -> str:
    """``fits.csv`` content: header :data:`FIT_COLUMNS`, floats with full precision."""
    return _csv_text([r.to_row() for r in records], FIT_COLUMNS)


def timing_csv_text(records: Sequence[FitRecord]) -> str:
    """``timing.csv`` content: :data:`TIMING_COLUMNS` (wall-clock seconds per fit)."""
    return _csv_text([r.to_row() for r in records], TIMING_COLUMNS)


def run_provenance(argv: list[str] | None = None) -> dict[str, object]:
    """Where a run came from: git commit and dirty flag, package versions, command line.

    Parameters
    ----------
    argv:
        The command line (``sys.argv``); ``None`` records none.

    Returns
    -------
    dict with ``git_commit`` (``None`` outside a git checkout), ``git_dirty`` (tracked files
    modified; ``None`` when unknown), ``python``, ``packages`` (name -> version or ``None``)
    and ``command`` (shell-quoted).
    """
    git = git_state(untracked=False)  # any tracked file of the checkout
    versions: dict[str, str | None] = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": git["sha"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "packages": versions,
        "command": shlex.join(argv) if argv is not None else None,
    }


def config_json_text(result: RateResult, provenance: dict[str, object] | None = None) -> str:
    """``config.json``: the sweep's :class:`RateConfig` plus a ``provenance`` entry."""
    data = result.config.to_dict()
    if provenance is not None:
        data["provenance"] = provenance
    return dumps_json(data)


def write_run(
    result: RateResult,
    out: str | os.PathLike[str],
    provenance: dict[str, object] | None = None,
) -> list[Path]:
    """Write every result file of ``result`` into ``out`` (created if needed).

    ``provenance`` (:func:`run_provenance`) goes into ``config.json``.

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
    texts = {"config.json": config_json_text(result, provenance)}
    if result.records:
        texts["fits.csv"] = fits_csv_text(result.records)
        texts["timing.csv"] = timing_csv_text(result.records)
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
    """The ``config.json`` of a run directory, without its ``provenance`` entry."""
    data = json.loads(Path(path, "config.json").read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data.pop("provenance", None)
    return data
