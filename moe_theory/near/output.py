"""Files of an E5 run: ``near_config.json``, ``near_fits.csv``, ``near.json``,
``near_timing.csv`` and ``summary_near.txt``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from moe_theory.near.config import NEAR_FIT_COLUMNS, NearConfig
from moe_theory.near.result import NearResult


def _dumps(data: object) -> str:
    from moe_theory.io import dumps_json

    return dumps_json(data)


def near_fits_csv(records: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(NEAR_FIT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in records:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def timing_csv(timing: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    cols = ["kind", "value", "gate", "n", "first_replicate", "fits", "seconds"]
    writer = csv.DictWriter(buffer, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in timing:
        writer.writerow(row)
    return buffer.getvalue()


def check_near_out(out: Path, config: NearConfig) -> str | None:
    """Why ``out`` may not receive this E5 run (another E5 configuration there), or None."""
    path = Path(out) / "near_config.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{out} holds an unreadable near_config.json"
    if old != json.loads(_dumps(config.to_dict())):
        return f"{out} holds a different E5 (near) run"
    return None


def write_near(result: NearResult, out: str | Path,
               provenance: dict[str, object] | None = None) -> list[Path]:
    """Write the files of an E5 run and record their SHA-256 in ``out/SHA256SUMS``.

    ``near_config.json`` (the :class:`NearConfig`), ``near_provenance.json`` (that config with
    ``provenance``: git commit, packages, command line, from
    :func:`moe_theory.io.run_provenance`), ``near_fits.csv``, ``near.json``,
    ``near_timing.csv`` and ``summary_near.txt``. Each file is written to a temporary sibling
    and renamed into place (:func:`moe_theory.io.atomic_write_text`), so none is ever
    half-written; the checksums are recorded last (:func:`record_files`).
    """
    from moe_theory.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = result.config.to_dict()
    texts = {
        "near_config.json": _dumps(config),
        "near_provenance.json": _dumps({**config, "provenance": provenance}),
        "near_fits.csv": near_fits_csv(result.records),
        "near.json": _dumps(result.to_json()),
        "near_timing.csv": timing_csv(result.timing),
        "summary_near.txt": result.summary() + "\n",
    }
    written = [atomic_write_text(out / name, text) for name, text in texts.items()]
    record_files(out, written)
    return written


def record_files(out: str | Path, paths: list[Path]) -> None:
    """Add the SHA-256 of ``paths`` (files inside ``out``) to ``out/SHA256SUMS``, in the
    format ``sha256sum -c`` verifies."""
    from norga.io import record_checksums

    out = Path(out)
    record_checksums(out, {Path(p).resolve().relative_to(out.resolve()).as_posix():
                           Path(p).read_bytes() for p in paths})
