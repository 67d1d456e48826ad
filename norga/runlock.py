"""One writer per run directory: an advisory lock (``filelock``) with the holder's identity.

The lock file ``<run>/.lock`` is held with ``flock`` for as long as a run writes into the folder;
the operating system drops it when the holder exits, even on ``SIGKILL``, so there are no stale
locks to clean up. After taking the lock the holder writes ``<run>/.lock.info`` (pid, host, start
time, command line), which a second run quotes when it is refused.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from norga.io import atomic_write_text

LOCK_NAME = ".lock"
INFO_NAME = ".lock.info"


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


def _holder(folder: Path) -> str:
    try:
        info = (folder / INFO_NAME).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        info = ""
    return info or "another process (no holder information yet)"


@contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the lock of run directory ``folder`` (created if needed) for the ``with`` block.

    Raises
    ------
    RunLockedError
        At once (no waiting) when another process holds it; the message names the holder.

    Folders this call created are removed again on exit if nothing but the lock files was
    written into them (a run that failed before writing leaves nothing behind).
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        _remove_if_empty(folder, created)
        raise RunLockedError(f"{folder} is in use by {_holder(folder)}; wait for that run to "
                             "finish or choose another --out") from None
    try:
        command = " ".join(sys.argv) if sys.argv and sys.argv[0] else "python"
        atomic_write_text(folder / INFO_NAME,
                          f"pid {os.getpid()} on host {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} ({command})\n")
        yield folder
    finally:
        (folder / INFO_NAME).unlink(missing_ok=True)
        lock.release()
        _remove_if_empty(folder, created)


def _remove_if_empty(folder: Path, created: list[Path]) -> None:
    """Remove ``folder`` and its parents in ``created`` (folders this lock made) while they
    hold nothing but the lock files."""
    if folder not in created:
        return
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return
    if not names <= {LOCK_NAME, INFO_NAME}:
        return
    for name in names:
        (folder / name).unlink(missing_ok=True)
    for path in created:  # deepest first
        try:
            path.rmdir()
        except OSError:
            return
