"""Cache of finished fit blocks: one strict-JSON file per block, each with its own checksum.

A block is keyed by everything its fits depend on (the fit-relevant fields of the
:class:`~moe_theory.rates.sweep.RateConfig` or :class:`~moe_theory.near.config.NearConfig`, setting,
gate, n, the replicate ids and a fingerprint of the package's source), so a re-run with a
larger grid or more replicates computes only the new blocks. Entries are plain JSON (nothing is
unpickled) and carry the SHA-256 of their records: an entry that is truncated, edited or garbage
is reported with one warning line and recomputed.
Only the main process reads and writes the cache, atomically (:mod:`norga.io`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe_theory.gates import GateKind
from norga.io import atomic_write_text, loads_json

log = logging.getLogger(__name__)

# 2: the checksum covers the entry's key as well as its records. Entries of format 1 (whose
# checksum covered the records only) are recomputed without a warning and replaced in place.
FORMAT = 2
SUBDIR = "fits-v1"
# RateConfig fields that change what a fit block computes (the rest only select blocks or
# analyse them).
FIT_FIELDS: tuple[str, ...] = ("activation", "expert", "seed", "restarts", "max_iter", "tol",
                               "noise_sd", "init_scale", "r", "solver", "global_starts")


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _encode_value(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged fit may produce them, so keep them exactly
    if isinstance(value, float) and not math.isfinite(value):
        return {"nonfinite": repr(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"nonfinite"} or value["nonfinite"] not in ("nan", "inf", "-inf"):
            raise ValueError("malformed value")
        return float(value["nonfinite"])
    return value


def entry_digest(inputs: Any, encoded: Any) -> str:
    """SHA-256 of an entry's key (``inputs``) and its encoded records together: an entry copied
    to another block's file, or records moved between entries, fail it."""
    return hashlib.sha256(_canonical({"inputs": inputs, "records": encoded}).encode("utf-8")
                          ).hexdigest()


def _check_scalar(name: str, value: Any) -> None:
    # a record holds numbers, flags and short printable texts only (no lists, no line breaks)
    if isinstance(value, str):
        if not value.isprintable() or len(value) > 200:
            raise ValueError(f"{name} is not a short printable text")
    elif not isinstance(value, bool | int | float):
        raise ValueError(f"{name} is a {type(value).__name__}, not a number or text")


def _older_format(data: bytes) -> bool:
    try:
        entry = loads_json(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(entry, dict) and entry.get("format") == 1


def _plain(value: Any) -> Any:
    # tuples of a frozen config key the entry as JSON lists
    return list(value) if isinstance(value, tuple) else value


class FitCache:
    """The fit-block cache in ``folder`` (created on the first write).

    Parameters
    ----------
    folder:
        The ``--cache-dir``; entries go to its ``fits-v1`` folder.
    columns:
        The exact keys of every stored record (an entry with other keys is damaged).
    fields:
        The config attributes a block's fits depend on (default: those of ``RateConfig``).
    check:
        Called on every decoded record; a ``ValueError`` or ``TypeError`` (a value of the
        wrong type or out of range) marks the entry damaged.
    """

    def __init__(self, folder: str | os.PathLike[str], columns: tuple[str, ...],
                 fields: tuple[str, ...] = FIT_FIELDS,
                 check: Callable[[dict[str, Any]], object] | None = None) -> None:
        self.folder = Path(folder) / SUBDIR
        self.columns = columns
        self.fields = fields
        self.check = check

    def key_inputs(self, config: Any, setting: str, gate: GateKind, n: int,
                   replicates: tuple[int, ...], fingerprint: str,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a block's result depends on (``extra``: more JSON values that key it)."""
        fields = {name: _plain(getattr(config, name)) for name in self.fields}
        inputs = {"config": fields, "setting": setting, "gate": gate, "n": int(n),
                  "replicates": [int(r) for r in replicates], "fingerprint": fingerprint}
        if extra:
            inputs["extra"] = extra
        return inputs

    def path(self, inputs: dict[str, Any]) -> Path:
        digest = hashlib.sha256(_canonical(inputs).encode("utf-8")).hexdigest()
        return self.folder / f"{digest[:32]}.json"

    def load(self, inputs: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The cached records of a block, or ``None`` (missing, or damaged: warned about)."""
        path = self.path(inputs)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("rates cache: cannot read %s (%s); recomputing it", path, exc.strerror)
            return None
        try:
            if _older_format(data):
                return None
            return self._parse(data, inputs)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            log.warning("rates cache: entry %s is damaged (%s); recomputing it", path,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    def _parse(self, data: bytes, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        entry = loads_json(data.decode("utf-8"))
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise ValueError("not a cache entry of this format")
        encoded = entry["records"]
        if entry["inputs"] != json.loads(_canonical(inputs)):
            raise ValueError("entry belongs to another block")
        if entry_digest(entry["inputs"], encoded) != entry["sha256"]:
            raise ValueError("records do not match their SHA-256")
        if not isinstance(encoded, list) or len(encoded) != len(inputs["replicates"]):
            raise ValueError("wrong number of records")
        records = []
        for row, rep in zip(encoded, inputs["replicates"], strict=True):
            if not isinstance(row, dict) or set(row) != set(self.columns):
                raise ValueError("record columns differ")
            record = {k: _decode_value(v) for k, v in row.items()}
            for name, value in record.items():
                _check_scalar(name, value)
            if any(type(record[k]) is not int for k in ("n", "replicate")) \
                    or record["replicate"] != rep or record["n"] != inputs["n"]:
                raise ValueError("record does not belong to this block")
            if self.check is not None:
                self.check(record)
            records.append(record)
        return records

    def save(self, inputs: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Store a block's records (atomically; a failed write only costs a recomputation)."""
        encoded = [{k: _encode_value(v) for k, v in row.items()} for row in records]
        plain_inputs = json.loads(_canonical(inputs))
        entry = {"format": FORMAT, "inputs": plain_inputs, "records": encoded,
                 "sha256": entry_digest(plain_inputs, encoded)}
        try:
            atomic_write_text(self.path(inputs), _canonical(entry) + "\n")
        except OSError as exc:
            log.warning("rates cache: could not store a block (%s); it will be recomputed "
                        "next time", exc.strerror or exc)
