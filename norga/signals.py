"""Clean Ctrl-C / SIGTERM for the command-line tools.

:func:`run_main` runs a CLI's ``main`` with SIGTERM turned into an exception like Ctrl-C's. On
either, the worker processes the CLI started are stopped, one line is printed (``interrupted;
re-run the same command to resume``) and the exit status is ``128 + signal`` (130 for SIGINT, 143
for SIGTERM), without a traceback. Every result file is written atomically, so what was finished
is kept and a re-run resumes from it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

MESSAGE = "interrupted; re-run the same command to resume"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (a ``KeyboardInterrupt``, so cleanup code that
    handles Ctrl-C handles it too)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def child_pids(pid: int | None = None) -> list[int]:
    """Direct children of ``pid`` (default: this process), from ``/proc`` (Linux; else [])."""
    pid = os.getpid() if pid is None else pid
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(found))


def descendant_pids(pid: int | None = None) -> list[int]:
    """Every descendant of ``pid`` (default: this process)."""
    out: list[int] = []
    todo = child_pids(pid)
    while todo:
        child = todo.pop()
        if child not in out:
            out.append(child)
            todo += child_pids(child)
    return out


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_workers(grace: float = 3.0) -> None:
    """Stop this process's worker processes: loky's executor, then any descendant left.

    Descendants get SIGTERM, and SIGKILL if still alive after ``grace`` seconds.
    """
    try:  # joblib keeps a reusable loky executor alive between calls; kill its workers
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)
    except Exception:  # noqa: BLE001 - best effort; the sweep below catches what is left
        pass
    # loky's resource tracker is left alone: it cleans up the workers' shared memory and exits
    # by itself when this process does (stopping it first makes the workers complain).
    pids = [pid for pid in descendant_pids() if not _is_resource_tracker(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # not our child (a grandchild) or already reaped
                    done = pid if not Path(f"/proc/{pid}").exists() else 0
                if done:
                    pids.remove(pid)
            time.sleep(0.05)
        if not pids:
            return


def run_main(main: Callable[[Sequence[str] | None], int], prog: str,
             argv: Sequence[str] | None = None) -> int:
    """``main(argv)`` with clean handling of Ctrl-C and SIGTERM (see the module docstring);
    an ``OSError`` that reaches it (a write that failed) is one line on stderr and exit 1."""
    previous = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return main(argv)
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        # a second Ctrl-C during the cleanup must not print a traceback either
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # joblib reports the cancelled tasks when its abandoned generator is collected at exit
        warnings.filterwarnings("ignore", message=r".*tasks which were still being processed")
        stop_workers()
        sys.stdout.flush()
        sys.stderr.write(f"\n{prog}: {MESSAGE}\n")
        sys.stderr.flush()
        return 128 + int(signum)
    except BrokenPipeError:  # the reader of the output went away (e.g. `| head`): quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as exc:  # a fault no command caught itself (full disk, permissions): one line
        sys.stdout.flush()
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in \
            str(exc.strerror) else ""
        sys.stderr.write(f"{prog}: error: {exc.strerror or exc}{where}\n")
        return 1
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
