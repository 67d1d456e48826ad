"""norga.provenance.git_state: the one git-provenance helper of the CL and theory result files,
checked on a throw-away repository against git's own answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from norga.provenance import git_state


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "cl").mkdir(parents=True)
    (root / "cl" / "a.py").write_text("a = 1\n")
    (root / "docs.md").write_text("text\n")
    _git(root.parent, "init", "-q", str(root))
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return root


def test_clean_checkout_gives_its_commit(repo: Path) -> None:
    assert git_state(repo=repo) == {"sha": _git(repo, "rev-parse", "HEAD"), "dirty": False}


def test_dirty_only_counts_the_given_paths_and_untracked_files_when_asked(repo: Path) -> None:
    (repo / "docs.md").write_text("edited\n")  # a tracked change outside cl/
    assert git_state(repo=repo)["dirty"] is True
    assert git_state(("cl",), repo=repo)["dirty"] is False
    (repo / "cl" / "new.py").write_text("b = 2\n")  # untracked, inside cl/
    assert git_state(("cl",), repo=repo)["dirty"] is True
    assert git_state(("cl",), untracked=False, repo=repo)["dirty"] is False
    (repo / "cl" / "a.py").write_text("a = 3\n")
    assert git_state(("cl",), untracked=False, repo=repo)["dirty"] is True


def test_outside_a_checkout_both_are_unknown(tmp_path: Path) -> None:
    assert git_state(repo=tmp_path) == {"sha": None, "dirty": None}
