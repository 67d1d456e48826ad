"""Atomic file writing, strict JSON and ``SHA256SUMS`` checksums, for every package.

Every file goes to a uniquely named temporary sibling, is flushed and ``fsync``-ed, gets the mode
a plain ``open`` would give it (``0o666`` less the umask, so collaborators can read results where
the umask allows), and is renamed over its target; the folder is ``fsync``-ed after the rename. A
crash (even ``SIGKILL``) or a full disk leaves either the old or the new file, never a half
written one, and a failed write names the file and says that the previous version is intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

CHECKSUMS_FILE = "SHA256SUMS"

__all__ = [
    "CHECKSUMS_FILE", "WriteFailedError", "atomic_write_bytes", "atomic_write_text",
    "atomic_write_many", "atomic_write_with", "checksum_problems", "dumps_json", "file_mode",
    "json_safe", "loads_json", "read_checksums", "record_checksums", "sha256_hex",
    "verify_checksums",
]


class WriteFailedError(OSError):
    """Writing a file failed (disk full, permissions); the previous file is intact."""


def _current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and not thread-safe)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~_current_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Let ``write(tmp_path)`` fill a temporary sibling of ``path``, then rename it into place.

    For writers that want a file name (e.g. matplotlib's ``savefig``). The temporary file is
    ``fsync``-ed, given :func:`file_mode` and renamed; on any failure it is removed and
    ``path`` is untouched. An ``OSError`` is re-raised as :class:`WriteFailedError` naming
    ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _failed(path, exc) from exc
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailedError):
            raise _failed(path, exc) from exc
        if isinstance(exc, Exception) and not isinstance(exc, OSError) and _disk_full(path):
            # a writer (e.g. matplotlib's PNG encoder) that reports a full disk as its own error
            raise _failed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _disk_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path.parent)
    except (OSError, AttributeError):  # AttributeError: a platform without statvfs
        return False
    return stats.f_bavail == 0


def _failed(path: Path, exc: OSError) -> WriteFailedError:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
    return WriteFailedError(exc.errno, f"could not write {path}: {reason}; the previous "
                            f"version of {path.name} (if any) is intact")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 (no newline translation) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_many(folder: str | os.PathLike[str], files: dict[str, bytes]) -> list[Path]:
    """Write several files of ``folder`` all or nothing (as far as a file system allows).

    Every file is first written in full to a temporary sibling (where a full disk shows up);
    only then are they renamed into place, one after the other. A failure in the first phase
    removes the temporaries and leaves every previous file untouched.
    """
    folder = Path(folder)
    staged: list[tuple[str, Path]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            staged.append((tmp, folder / name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, file_mode())
    except BaseException as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailedError):
            reason = exc.strerror or str(exc)
            raise WriteFailedError(exc.errno, f"could not write the results to {folder} "
                                   f"({reason}); the previous result files there are intact"
                                   ) from exc
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    _fsync_dir(folder)
    return [path for _, path in staged]


# ---------------------------------------------------------------------------- JSON
def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (``nan``, ``inf``) replaced by ``None``.

    Python's ``json`` writes those as the bare words ``NaN`` / ``Infinity``, which are not JSON
    (RFC 8259) and break strict parsers; a number that does not apply is ``null`` instead.
    Tuples become lists and numpy scalars / arrays plain Python values. The one strict-JSON
    helper of the three commands (theory results, CL run files, figures).
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(data: Any, *, sort_keys: bool = False) -> str:
    """Indented, strict JSON (non-finite floats become ``null``) with a final newline."""
    return json.dumps(json_safe(data), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(text: str | bytes) -> Any:
    """Parse strict JSON: ``NaN``/``Infinity`` are refused, as is anything after the value."""
    return json.loads(text, parse_constant=_reject_constant)


# ---------------------------------------------------------------------------- checksums
def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_checksums(folder: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: sha256}`` from ``folder/SHA256SUMS`` (empty if absent or unreadable)."""
    sums: dict[str, str] = {}
    try:
        lines = (Path(folder) / CHECKSUMS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return sums
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            sums[name] = digest
    return sums


def record_checksums(folder: str | os.PathLike[str], files: dict[str, bytes]) -> None:
    """Add or update the SHA-256 of ``files`` (name -> content) in ``folder/SHA256SUMS``."""
    sums = read_checksums(folder)
    sums.update({name: sha256_hex(data) for name, data in files.items()})
    atomic_write_text(Path(folder) / CHECKSUMS_FILE,
                      "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def checksum_problems(folder: str | os.PathLike[str], names: Iterable[str], *,
                      require_sums: bool = False) -> list[str]:
    """Every reason a file of ``names`` in ``folder`` does not match ``SHA256SUMS`` (one line
    each; empty when all match).

    A file that exists but has no entry, or whose SHA-256 differs, is reported; so is a file
    that ``SHA256SUMS`` lists but that no longer exists. Files that neither exist nor are
    listed are skipped (callers check for required files themselves). Without ``SHA256SUMS``
    nothing can be verified: that is reported when ``require_sums``, else the folder is trusted
    (one written before checksums existed).
    """
    folder = Path(folder)
    if not (folder / CHECKSUMS_FILE).exists():
        return [f"{CHECKSUMS_FILE} is missing, so its files cannot be verified"] \
            if require_sums else []
    sums = read_checksums(folder)
    problems: list[str] = []
    for name in names:
        path = folder / name
        if not path.exists():
            if name in sums:
                problems.append(f"{name} is listed in {CHECKSUMS_FILE} but missing")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"{name} is unreadable ({exc.strerror})")
            continue
        if name not in sums:
            problems.append(f"{name} has no entry in {CHECKSUMS_FILE}")
        elif sha256_hex(data) != sums[name]:
            problems.append(f"{name} does not match its SHA-256 in {CHECKSUMS_FILE} (edited, "
                            "corrupted or truncated)")
    return problems


def verify_checksums(folder: str | os.PathLike[str], names: Iterable[str]) -> str | None:
    """``None`` if every existing file of ``names`` matches ``SHA256SUMS``, else why not.

    A folder without ``SHA256SUMS`` (written before checksums existed) is trusted; with one,
    a file that exists but has no entry, or whose SHA-256 differs, is reported (the first one).
    Files that do not exist are skipped (callers check for required files themselves).
    """
    folder = Path(folder)
    problems = checksum_problems(folder, [n for n in names if (folder / n).exists()])
    return problems[0] if problems else None
