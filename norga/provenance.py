"""Where a result came from: the git state of the checkout that holds the toolkit.

Both result writers record it: ``env.json`` of a CL run (``cl.run.environment``) and the
``provenance`` entry of a theory run (``moe_theory.io.run_provenance``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

#: The repository root when the toolkit runs from a checkout (``norga/`` sits at its top).
ROOT = Path(__file__).resolve().parents[1]


def git_state(paths: Sequence[str] = (), *, untracked: bool = True,
              repo: Path | None = None) -> dict[str, str | bool | None]:
    """Commit SHA and dirty flag of the checkout holding this package.

    Parameters
    ----------
    paths:
        Only changes below these paths (relative to the root) make the checkout dirty; empty:
        every path.
    untracked:
        Whether an untracked file counts as a change.
    repo:
        The checkout (default: the one holding this package).

    Returns
    -------
    ``{"sha": ..., "dirty": ...}``, both ``None`` outside a git checkout or without git.
    """
    root = repo or ROOT
    status = ["status", "--porcelain", f"--untracked-files={'normal' if untracked else 'no'}"]
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        dirty = bool(_git(root, *status, "--", *paths).strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout
