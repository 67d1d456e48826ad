"""Every reference from code, tests, data and docs into the documentation resolves, and nothing
cites the private design notes the project was written from (a user does not have them).

A reference is ``docs/<page>.md`` or ``docs/<page>.md#<anchor>`` (in code, tests and data files,
optionally followed by `` and #<anchor>`` for a second heading of the same page), or a Markdown
link ``[text](<page>.md#<anchor>)`` inside docs/ and README.md. The anchor must be a heading of
that page: its explicit ``{#id}`` or the id MkDocs derives from the title.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FOLDERS = ("cl", "moe_theory", "figures", "norga", "experiments", "benchmarks", "tests", "docs")
ROOT_FILES = ("README.md", "pyproject.toml", "mkdocs.yml", "CITATION.cff", "CHANGELOG.md")
SUFFIXES = {".py", ".md", ".json", ".txt", ".toml", ".yml", ".yaml", ".cff", ".csv"}
# the names of the private notes, spelt so that this file does not contain them
PRIVATE = tuple(name + ".md" for name in ("moe-" + "theory", "cl-" + "pipeline", "de" + "sign"))
SPEC_SECTION = re.compile(r"\b[Ss]pec(?:\s+section|\s+§)?\s+\d|\bthe spec's\b")
CODE_REF = re.compile(r"docs/([\w-]+(?:/[\w-]+)*\.md)(#[\w-]+(?:(?:,\s*|\s+and\s+)#[\w-]+)*)?")
MD_LINK = re.compile(r"\]\(([^)\s]+?\.md)(#[\w-]+)?\)")


def _files() -> list[Path]:
    files = [ROOT / name for name in ROOT_FILES if (ROOT / name).exists()]
    for folder in FOLDERS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and p.is_file()
                  and "__pycache__" not in p.parts]
    return sorted(files)


def slugify(title: str) -> str:
    """The heading id MkDocs (Python-Markdown's toc) derives from a title."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", title)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The heading ids of a Markdown page (code blocks skipped)."""
    ids: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6}\s", line):
            continue
        title = line.lstrip("#").strip()
        explicit = re.search(r"\{#([\w-]+)\}\s*$", title)
        ids.add(explicit.group(1) if explicit else slugify(title))
    return ids


def _problem(target: Path, anchor: str | None) -> str | None:
    if not target.is_file():
        return f"no page {target.relative_to(ROOT)}"
    if anchor and anchor not in anchors(target):
        return f"no heading #{anchor} in {target.relative_to(ROOT)}"
    return None


def test_no_reference_to_the_private_notes() -> None:
    found = []
    for path in _files():
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if any(name in line for name in PRIVATE) or SPEC_SECTION.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:90]}")
    assert not found, "references to files the user does not have:\n" + "\n".join(found)


def test_code_references_resolve() -> None:
    problems, seen = [], 0
    for path in _files():
        for m in CODE_REF.finditer(path.read_text(errors="replace")):
            seen += 1
            for anchor in re.findall(r"#([\w-]+)", m.group(2) or "") or [None]:
                problem = _problem(DOCS / m.group(1), anchor)
                if problem:
                    problems.append(f"{path.relative_to(ROOT)}: {m.group(0)}: {problem}")
    assert seen > 50  # the references exist (the code explains itself through the docs)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_markdown_links_resolve(page: str) -> None:
    source = ROOT / page if page == "README.md" else DOCS / page
    problems = []
    for m in MD_LINK.finditer(source.read_text()):
        link, anchor = m.group(1), (m.group(2) or "")[1:] or None
        if "://" in link:
            continue
        problem = _problem((source.parent / link).resolve(), anchor)
        if problem:
            problems.append(f"{m.group(0)}: {problem}")
    for m in re.finditer(r"\]\(#([\w-]+)\)", source.read_text()):
        if m.group(1) not in anchors(source):
            problems.append(f"{m.group(0)}: no heading #{m.group(1)} in {page}")
    assert not problems, "\n".join(problems)


def test_slugs_and_anchors_by_hand() -> None:
    """The id rules against ids worked out by hand (what MkDocs writes for these titles)."""
    assert slugify("Golden runs and mutation testing") == "golden-runs-and-mutation-testing"
    assert slugify("Continual learning: `experiments/cl.py` (installed: `norga-cl`)") == \
        "continual-learning-experimentsclpy-installed-norga-cl"
    assert slugify("What the quick and paper presets show (seed 1)") == \
        "what-the-quick-and-paper-presets-show-seed-1"
    assert {"splits", "prefix-reshape", "table-1"} <= anchors(DOCS / "cl-background.md")


@pytest.mark.slow
def test_docs_site_builds_without_warnings(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (what .ci/docs runs): a warning of any kind fails the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "cl" / "index.html").exists()
