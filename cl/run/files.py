"""Atomic, checksummed file writing and the run-directory file formats.

Every file is written to a temporary sibling, flushed and ``fsync``-ed, then renamed over its
target, so a crash (even ``SIGKILL``) or a full disk leaves either the old or the new file, never
a half-written one. Two kinds of checksums guard what a later run reads back:

* checkpoints get a ``sha256sum``-style sidecar (``task_3.pt.sha256``) written *after* the
  checkpoint itself; a checkpoint without a matching sidecar is treated as unusable, so a crash
  between the two writes only costs re-doing that task;
* result files of a run directory are listed in ``SHA256SUMS`` (``sha256sum -c SHA256SUMS``
  checks them by hand).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from norga.io import (
    CHECKSUMS_FILE,
    WriteFailedError,
    atomic_write_bytes,
    atomic_write_text,
    json_safe,
    read_checksums,
    record_checksums,
    sha256_hex,
)

SIDECAR_SUFFIX = ".sha256"

__all__ = ["CHECKSUMS_FILE", "WriteFailedError", "read_checksums", "sha256_hex"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing its checksum, fails it, or cannot be loaded as plain data."""


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` atomically (:func:`norga.io.atomic_write_bytes`)."""
    atomic_write_bytes(path, data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically (:func:`norga.io.atomic_write_text`)."""
    atomic_write_text(path, text)


def json_text(data: Any) -> str:
    """The JSON text the run directory uses: strict JSON (non-finite numbers written as
    ``null``, :func:`norga.io.json_safe`), sorted keys, indented."""
    return json.dumps(json_safe(data), indent=2, sort_keys=True, default=str,
                      allow_nan=False) + "\n"


def json_line(data: Any) -> str:
    """One strict-JSON line (no newline) for ``log.jsonl``."""
    return json.dumps(json_safe(data), default=str, allow_nan=False)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json_text(data))


# ---------------------------------------------------------------------------- result files
def write_result_file(run_dir: str | Path, name: str, text: str) -> None:
    """Write ``run_dir/name`` atomically and record its SHA-256 in ``SHA256SUMS``.

    The file is renamed into place before ``SHA256SUMS`` is updated; a crash in between leaves
    a stale sum, which :func:`verify_result_file` reports, and the next write repairs.
    """
    run_dir = Path(run_dir)
    data = text.encode("utf-8")
    write_bytes_atomic(run_dir / name, data)
    record_checksums(run_dir, {name: data})


def record_checksum(run_dir: str | Path, name: str) -> None:
    """Record the SHA-256 of ``run_dir/name`` as it is now in ``SHA256SUMS`` (for a file that
    grows by appending, like ``log.jsonl``, whose sum is refreshed after every task)."""
    run_dir = Path(run_dir)
    sums = read_checksums(run_dir)
    sums[name] = sha256_hex((run_dir / name).read_bytes())
    write_text_atomic(run_dir / CHECKSUMS_FILE,
                      "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def verify_result_file(run_dir: str | Path, name: str) -> str | None:
    """``None`` if ``run_dir/name`` matches ``SHA256SUMS``, else the reason it does not.

    A run directory written before checksums existed (no ``SHA256SUMS``) is trusted.
    """
    run_dir = Path(run_dir)
    sums = read_checksums(run_dir)
    try:
        data = (run_dir / name).read_bytes()
    except OSError as exc:
        return f"{name} is unreadable ({exc.strerror})"
    if not sums and not (run_dir / CHECKSUMS_FILE).exists():
        return None
    if name not in sums:
        return f"{name} has no entry in {CHECKSUMS_FILE}"
    if sha256_hex(data) != sums[name]:
        return f"{name} does not match its SHA-256 in {CHECKSUMS_FILE} (corrupted or truncated)"
    return None


# ---------------------------------------------------------------------------- checkpoints
# Plain data a torch checkpoint may hold besides tensors: torch's weights-only unpickler allows
# containers, numbers, strings and tensors; these are the only classes added to it. NumPy arrays
# (checkpoints written before they were stored as tensors) are rebuilt from dtype and bytes.
NUMPY_GLOBALS: tuple[Any, ...] = (
    np.ndarray, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.int64)),
    getattr(np, "_core", np.core).multiarray._reconstruct,  # type: ignore[attr-defined]
)


def safe_torch_load(source: str | Path | IO[bytes], allowed: Iterable[Any] = (),
                    what: str = "file") -> Any:
    """``torch.load`` with ``weights_only=True`` plus the classes in ``allowed``; never more.

    Nothing in the file can run code: a pickle that names any other Python object is refused.

    Raises
    ------
    CheckpointError
        One line: the object type the file names and why it is refused, or that the file is
        not a PyTorch checkpoint at all.
    """
    allowed = list(allowed)
    # torch < 2.5 has no safe_globals: its weights-only unpickler then accepts tensors and plain
    # containers only, and a file that needs one of ``allowed`` is refused below (never more).
    extra = getattr(torch.serialization, "safe_globals", None)
    try:
        with warnings.catch_warnings(), (extra(allowed) if extra else contextlib.nullcontext()):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            return torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError,
            AttributeError, KeyError, IndexError) as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        names = {f"{getattr(a, '__module__', '')}.{getattr(a, '__name__', '')}" for a in allowed}
        if found and extra is None and found.group(1) in names:
            raise CheckpointError(
                f"{what} holds a {found.group(1)!r}, which torch {torch.__version__} cannot "
                "allow-list for safe loading (torch.serialization.safe_globals needs torch >= "
                "2.5); upgrade torch to load this file") from None
        if found:
            raise CheckpointError(
                f"{what} holds a Python object {found.group(1)!r}, which a weights file may not "
                "contain (allowed: tensors, numbers, strings, lists, dicts"
                + "".join(f", {getattr(a, '__module__', '')}.{getattr(a, '__name__', a)}"
                          for a in allowed if getattr(a, "__module__", "") != "numpy")
                + "); refusing to load it, since unpickling it could run code") from None
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "WeightsUnpickler error" in str(exc) or "Unsupported operand" in str(exc):
            first = "not a PyTorch checkpoint of tensors (unsupported pickle content)"
        raise CheckpointError(f"{what} is not a readable PyTorch checkpoint: {first}") from None


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def torch_save_atomic(path: str | Path, obj: Any) -> None:
    """``torch.save`` ``obj`` atomically, then write its ``.sha256`` sidecar atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    write_text_atomic(sidecar_path(path), f"{sha256_hex(data)}  {path.name}\n")


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`torch_save_atomic`, verifying its checksum.

    Raises
    ------
    CheckpointError
        The sidecar is missing or unreadable, the SHA-256 differs (truncated or corrupted
        file), or the bytes are not plain data (:func:`safe_torch_load`).
    """
    path = Path(path)
    try:
        expected = sidecar_path(path).read_text(encoding="utf-8").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise CheckpointError(f"{path.name}: no readable checksum file {sidecar_path(path).name} "
                              "(the run was probably killed while saving it)") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path.name}: unreadable ({exc.strerror})") from None
    if sha256_hex(data) != expected:
        raise CheckpointError(f"{path.name}: SHA-256 mismatch ({len(data)} bytes; corrupted or "
                              "truncated)")
    try:  # own checkpoints too are loaded as data only: a SHA-256 sidecar can be rewritten
        return safe_torch_load(io.BytesIO(data), NUMPY_GLOBALS, what=path.name)
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name}: cannot be loaded ({exc})") from None
