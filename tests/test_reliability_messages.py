"""Messages of faults that re-running cannot fix, and faults that used to reach a traceback:
each is one line naming the thing to change, with exit 1 (fault) or 2 (bad input)."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from cl import cli as cl_cli
from cl.backbones.loading import BackboneWeightsError, resolve_weights
from figures import cli as figures_cli
from norga.signals import run_main

TINY = ["--dataset", "synthetic", "--no-progress", "--epochs", "1", "--set", "tap_epochs=1",
        "--set", "tii_ca_epochs=1", "--batch-size", "16", "--set",
        'dataset_options={"num_classes":4,"num_tasks":2,"train_per_class":8,"test_per_class":4}']


def _main(main, argv, capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("plant", ["checkpoints file", "log.jsonl folder"])
def test_a_run_dir_that_fails_every_resume_the_same_way_is_refused_up_front(tmp_path, capsys,
                                                                          plant):
    out = tmp_path / "run"
    out.mkdir()
    if plant == "checkpoints file":
        (out / "checkpoints").write_text("x")
    else:
        (out / "log.jsonl").mkdir()
    code, err = _main(cl_cli.main, [*TINY, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1, err
    assert plant.split()[0] in err[0] and "move it away" in err[0]
    assert "re-run the same command" not in err[0]
    assert sorted(p.name for p in out.iterdir()) == [plant.split()[0]]


def test_weights_that_are_a_folder_or_a_device_are_named_so(tmp_path):
    with pytest.raises(BackboneWeightsError, match="is a folder, not a weights file"):
        resolve_weights("sup21k", str(tmp_path))
    if Path("/dev/null").exists():
        with pytest.raises(BackboneWeightsError, match="not a regular file"):
            resolve_weights("sup21k", "/dev/null")


def test_figures_errors_name_the_program(tmp_path, capsys):
    code, err = _main(lambda argv: figures_cli.main(argv, prog="norga-figures"),
                      [str(tmp_path / "missing")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("norga-figures: error: "), err


def test_an_oserror_reaching_the_entry_point_is_one_line_exit_1(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/results/fits.csv")

    assert run_main(main, "norga-rates") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"norga-rates: error: {os.strerror(errno.ENOSPC)} (/results/fits.csv)"]


def test_a_writer_failing_on_a_full_disk_becomes_write_failed(tmp_path, monkeypatch):
    import norga.io as norga_io

    def render(tmp):
        raise RuntimeError("libpng write error")  # what a PNG encoder says on a full disk

    monkeypatch.setattr(norga_io, "_disk_full", lambda path: True)
    with pytest.raises(norga_io.WriteFailedError, match="could not write .*fig.png"):
        norga_io.atomic_write_with(tmp_path / "fig.png", render)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(norga_io, "_disk_full", lambda path: False)
    with pytest.raises(RuntimeError, match="libpng"):  # a real bug stays visible
        norga_io.atomic_write_with(tmp_path / "fig.png", render)


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("Linux file-system behaviour")


def test_a_closed_output_pipe_is_quiet(capsys):
    def main(argv):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    assert run_main(main, "norga-cl") == 1
    assert capsys.readouterr().err == ""
