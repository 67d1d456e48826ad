"""What the command-line tools share: the one-line-error parser, output folders, parallelism
caps, machine memory."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from norga import __version__

# --jobs / --threads above this multiple of the usable cores only add memory and contention
PARALLEL_PER_CORE = 4


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports bad input as one line on stderr and exits with status 2.

    The line is ``PROG: error: MESSAGE`` followed by ``hint`` (default ``" (see --help)"``),
    instead of argparse's usage block. The base of ``norga-rates``, ``norga-cl`` and
    ``norga-figures``; each gets ``--version`` (``PROG VERSION``, exit 0).
    """

    def __init__(self, *args, hint: str = " (see --help)", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hint = hint
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the version of the norga package and exit")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}{self.hint}\n")


def nonempty_path(text: str) -> Path:
    """A folder path; the empty string is refused (``Path("")`` would mean the working folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a folder; give a folder name")
    return Path(text)


def ascii_int(text: str) -> int:
    """An integer written with the ASCII digits 0-9 (``int()`` alone also reads fullwidth and
    other Unicode digits, and ``1_000``)."""
    stripped = text.strip()
    body = stripped[1:] if stripped[:1] in "+-" else stripped
    if not body or not body.isascii() or not body.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer written with the digits 0-9, "
                                         f"got {text!r}")
    return int(stripped)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def max_parallel() -> int:
    """The cap on worker processes and threads: :data:`PARALLEL_PER_CORE` x the cores."""
    return PARALLEL_PER_CORE * usable_cores()


def total_memory() -> int | None:
    """Physical memory of the machine in bytes (``None`` if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    """``nbytes`` as a short GiB figure."""
    return f"{nbytes / 2**30:.3g} GiB"


def output_dir_problem(path: Path, *, what: str = "directory") -> str | None:
    """Why ``path`` cannot be used as an output folder (``None`` if it can).

    Catches an empty path, a file, a dangling symlink or a symlink loop (the path itself or
    any parent), a path below a file, and a folder that is not writable. Nothing is created.
    """
    if str(path) == "" or str(path).strip() == "":
        return f"an empty path is not a {what}; give a folder name"
    if os.path.lexists(path) and not path.exists():
        return f"{path} is a dangling symlink or a symlink loop, not a {what}"
    try:
        if path.exists() and not path.is_dir():
            return f"{path} is a file, not a {what}"
    except OSError as exc:  # e.g. ELOOP while resolving a parent
        return f"{path} cannot be resolved ({exc.strerror}); choose another {what}"
    probe = path
    while not os.path.lexists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path:
        if os.path.lexists(probe) and not probe.exists():
            return f"{path}: {probe} is a dangling symlink or a symlink loop"
        if probe.exists() and not probe.is_dir():
            return f"{path} lies below {probe}, which is a file, not a folder"
    target = probe if str(probe) else Path(".")
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{target} is not writable; choose a writable {what}"
    return None


# ----------------------------------------------------------------------------- verbosity
def add_verbosity_flags(parser: argparse._ActionsContainer) -> None:
    """``-v/--verbose``, ``-q/--quiet`` and ``--no-progress``: the same on every command.

    ``-v`` logs progress messages (INFO), ``-q`` prints only warnings, errors and the result
    files; progress bars are drawn only when stderr is a terminal, and never with
    ``--no-progress``.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log more (INFO messages)")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print only warnings, errors and the essential result lines")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn only when stderr is a terminal)")


def configure_logging(args: argparse.Namespace, *packages: str) -> None:
    """Root logging at WARNING; ``packages`` at INFO under ``--verbose``."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    for name in packages:
        logging.getLogger(name).setLevel(level)


def progress_enabled(args: argparse.Namespace, stream: object = None) -> bool:
    """Whether to draw progress bars: not ``--no-progress``/``--quiet`` and ``stream`` (default
    ``sys.stderr``) is a terminal. A log file or a pipe never gets carriage-return updates."""
    import sys

    if getattr(args, "no_progress", False) or getattr(args, "quiet", False):
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed stream
        return False
