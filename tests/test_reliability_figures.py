"""norga-figures on hostile results folders: names from run files never leave --out, and one
malformed value skips its run with a note while the rest is drawn."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from figures.examples import write_example_results
from figures.report import render_results
from norga.io import CHECKSUMS_FILE, record_checksums

HOSTILE = ["../../../victim/important", "/tmp/absolute/victim", "a/b", "nul\x00byte",
           "z" * 400, "..", "spaced name", "\u00e9t\u00e9"]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    return write_example_results(tmp_path_factory.mktemp("example") / "ex")


def _small_tree(example: Path, dest: Path) -> Path:
    """One CL run and the rates run of the example tree."""
    root = dest / "results"
    shutil.copytree(example / "cl" / "cifar100_sup21k_l2p_s0", root / "cl" / "good")
    shutil.copytree(example / "rates" / "example", root / "rates" / "example")
    return root


def _reseal(run: Path) -> None:
    """Checksums for the edited files too (a hostile writer can recompute them)."""
    record_checksums(run, {p.name: p.read_bytes() for p in run.iterdir()
                           if p.is_file() and p.name != CHECKSUMS_FILE})


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_safe_slug_keeps_safe_names_and_separates_changed_ones():
    from figures.names import safe_slug

    for name in ("cifar100", "imagenet-r", "sup21k-augreg", "5datasets", "exact"):
        assert safe_slug(name) == name
    slugs = [safe_slug(n) for n in HOSTILE]
    assert len(set(slugs)) == len(HOSTILE)  # no collisions
    for slug in slugs:
        assert "/" not in slug and "\x00" not in slug and not slug.startswith(".")
        assert 0 < len(slug) <= 80 and slug.isascii()
    assert safe_slug("a/b") != safe_slug("a-b")


@pytest.mark.slow
def test_names_from_run_files_never_leave_out(tmp_path, example):
    root = _small_tree(example, tmp_path)
    for i, name in enumerate(HOSTILE):
        run = root / "cl" / f"hostile{i}"
        shutil.copytree(root / "cl" / "good", run)
        config = json.loads((run / "config.json").read_text())
        config.update(dataset=name, backbone=name)
        (run / "config.json").write_text(json.dumps(config))
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.update(dataset=name, backbone=name)
        (run / "metrics.json").write_text(json.dumps(metrics))
        _reseal(run)
    fits = root / "rates" / "example" / "fits.csv"
    rows = list(csv.DictReader(fits.open()))
    for row in rows:
        if row["setting"] != "exact":
            row["setting"] = "../../../victim/important"
    with fits.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _reseal(fits.parent)
    before = _files(tmp_path)
    out = root / "figures"
    report = render_results(root, out)
    assert report.written
    created = _files(tmp_path) - before
    outside = [p for p in created if out.resolve() not in p.resolve().parents]
    assert not outside, outside
    assert not (tmp_path / "victim").exists() and not Path("/tmp/absolute").exists()
    assert all(len(p.name) < 200 for p in created)
    # each hostile dataset got its own bar chart (collisions resolved)
    assert len({p for p in created if p.name.startswith("fa_bars_")}) >= 2 * len(HOSTILE)


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _damage_fa(run: Path) -> None:
    _edit_json(run / "metrics.json", FA="abc")


def _damage_seed(run: Path) -> None:
    _edit_json(run / "config.json", seed="abc")
    _edit_json(run / "metrics.json", seed="abc")


def _damage_selection(run: Path) -> None:
    (run / "task_selection.json").write_text(json.dumps(
        {"kind": "task_selection", "version": 1, "method": "l2p", "after_task": 1,
         "prompts": [[1, 2], [3]], "experts": None}))


DAMAGES = {"FA=abc": _damage_fa, "seed=abc": _damage_seed, "ragged selection": _damage_selection}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_one_malformed_cl_value_skips_that_run_only(tmp_path, example, damage):
    root = _small_tree(example, tmp_path)
    bad = root / "cl" / "bad"
    shutil.copytree(root / "cl" / "good", bad)
    DAMAGES[damage](bad)
    _reseal(bad)
    report = render_results(root, root / "figures")
    assert any("bad" in note for note in report.notes), report.notes
    names = {p.name for p in report.written}
    assert "matrix_cl_good.png" in names and "matrix_cl_bad.png" not in names
    assert any(n.startswith("convergence_") for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["n=inf", "summary settings"])
def test_one_malformed_rates_value_skips_that_run_only(tmp_path, example, damage):
    root = _small_tree(example, tmp_path)
    run = root / "rates" / "example"
    if damage == "n=inf":
        text = (run / "fits.csv").read_text().splitlines()
        header = text[0].split(",")
        cells = text[1].split(",")
        cells[header.index("n")] = "inf"
        (run / "fits.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    else:
        _edit_json(run / "summary.json", settings={"exact": "not an object"})
    _reseal(run)
    report = render_results(root, root / "figures")
    assert any("rates" in note and "example" in note for note in report.notes), report.notes
    assert "matrix_cl_good.png" in {p.name for p in report.written}


@pytest.mark.slow
def test_unverified_and_edited_runs_are_named_in_notes(tmp_path, example):
    root = _small_tree(example, tmp_path)
    unsealed = root / "cl" / "unsealed"
    shutil.copytree(root / "cl" / "good", unsealed)
    (unsealed / CHECKSUMS_FILE).unlink()
    edited = root / "cl" / "edited"
    shutil.copytree(root / "cl" / "good", edited)
    _edit_json(edited / "metrics.json", FA=99.99)
    report = render_results(root, root / "figures")
    assert any(n.startswith("unverified cl run") and "unsealed" in n for n in report.notes)
    assert any(n.startswith("skip cl run") and "edited" in n and "SHA-256" in n
               for n in report.notes), report.notes
    assert not any("good" in n for n in report.notes)
