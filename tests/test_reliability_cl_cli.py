"""cl.py and rates.py as users (and hostile inputs) drive them: --overwrite never loses a
finished run, edited result files are detected, one writer per run directory, shared file
modes (issue 15)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl import cli as cl_cli
from cl.methods.base import get_method
from figures import cli as figures_cli
from figures.runs import RunFormatError, read_cl_run
from moe_theory import cli as rates_cli
from norga.io import CHECKSUMS_FILE, file_mode, read_checksums, verify_checksums
from norga.runlock import run_lock

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "synthetic", "--no-progress", "--epochs", "1", "--set", "tii_ca_epochs=1",
        "--set", "tap_epochs=1", "--batch-size", "16", "--set",
        'dataset_options={"num_classes":4,"num_tasks":2,"train_per_class":8,"test_per_class":4}']
TINY_RATES = ["--n-min", "100", "--n-max", "300", "--num-n", "3", "--replicates", "2",
              "--jobs", "1", "--no-figure", "--no-cache"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clis():
    """The CLI modules by the names of their ``experiments/`` scripts."""
    return {"cl": cl_cli, "rates": rates_cli, "figures": figures_cli}


def _main(module, argv: list[str], capsys) -> tuple[int, list[str], str]:
    try:
        code = module.main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def _tree(root: Path) -> dict[str, bytes]:
    """The run's files (the lock file and a staged overwrite aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")
            and ".overwrite" not in p.relative_to(root).parts}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, clis) -> Path:
    """One finished tiny run (seed 3), copied by each test that changes it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert clis["cl"].main([*TINY, "--seed", "3", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


INVALID = {
    "prompt_layers": ["--set", "prompt_layers=[99]"],
    "tii_mlp": ["--set", "tii_mlp=[0]"],
    "device": ["--device", "meta"],
    "lr": ["--set", "lr=nan"],
    "prompt_length": ["--set", "prompt_length=100000"],
    "dataset_options": ["--set", 'dataset_options={"bogus":1}'],
    "method_options": ["--set", 'method_options={"top_k":3}'],
}


@pytest.mark.slow
@pytest.mark.parametrize("bad", list(INVALID))
def test_overwrite_with_an_invalid_config_keeps_the_old_run_byte_identical(clis, run, capsys,
                                                                          bad):
    before = _tree(run)
    code, err, _ = _main(clis["cl"], [*TINY, "--seed", "3", "--overwrite", "--out", str(run),
                                      *INVALID[bad]], capsys)
    assert code == 2 and len(err) == 1 and bad.split("_")[0] in err[0], err
    assert _tree(run) == before
    assert not (run / ".overwrite").exists()


@pytest.mark.slow
def test_overwrite_replaces_the_old_run_only_after_its_first_result(clis, run, tmp_path,
                                                                    capsys, monkeypatch):
    before = _tree(run)
    method_cls = get_method("norga")
    real_train = method_cls.train_task

    def interrupted(self, loader):  # Ctrl-C during the first task of the new run
        raise KeyboardInterrupt

    monkeypatch.setattr(method_cls, "train_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        clis["cl"].main([*TINY, "--seed", "4", "--overwrite", "--out", str(run)])
    capsys.readouterr()
    assert _tree(run) == before, "the old run must survive an overwrite without a result"
    monkeypatch.setattr(method_cls, "train_task", real_train)

    # the old command still finds its finished run (and clears the abandoned staging)
    code, _, out = _main(clis["cl"], [*TINY, "--seed", "3", "--out", str(run)], capsys)
    assert code == 0 and "already holds this finished run" in out
    assert _tree(run) == before and not (run / ".overwrite").exists()

    # a complete overwrite ends exactly like a fresh run of the new configuration
    assert _main(clis["cl"], [*TINY, "--seed", "4", "--overwrite", "--out", str(run)],
                 capsys)[0] == 0
    fresh = tmp_path / "fresh"
    assert _main(clis["cl"], [*TINY, "--seed", "4", "--out", str(fresh)], capsys)[0] == 0
    for name in ("accuracy_matrix.csv", "class_order.json", "metrics.json"):
        assert (run / name).read_bytes() == (fresh / name).read_bytes(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        sorted(p.name for p in (fresh / "checkpoints").iterdir())
    assert not (run / ".overwrite").exists() and not (run / ".replaced").exists()
    assert verify_checksums(run, read_checksums(run)) is None


def test_edited_accuracy_matrix_is_detected_skipped_by_figures_and_recomputed(
        clis, run, capsys, caplog):
    original = (run / "accuracy_matrix.csv").read_bytes()
    edited = original.replace(b"100.0000", b"99.0000", 1)
    assert edited != original
    (run / "accuracy_matrix.csv").write_bytes(edited)
    with pytest.raises(RunFormatError, match="accuracy_matrix.csv does not match its SHA-256"):
        read_cl_run(run)
    code, err, out = _main(clis["figures"], [str(run.parent), "--out", str(run.parent / "f")],
                           capsys)
    notes = [line for line in out.splitlines() if "accuracy_matrix.csv" in line]
    assert code == 0 and len(notes) == 1 and str(run) in notes[0], out
    code, _, out = _main(clis["cl"], [*TINY, "--seed", "3", "--out", str(run)], capsys)
    assert code == 0 and "already holds" not in out
    assert "accuracy_matrix.csv does not match" in caplog.text
    assert (run / "accuracy_matrix.csv").read_bytes() == original  # recomputed, same numbers
    read_cl_run(run)  # trusted again


def test_edited_config_json_without_checkpoints_is_refused(clis, run, capsys):
    text = (run / "config.json").read_text().replace('"reg": 0.1', '"reg": 0.2')
    (run / "config.json").write_text(text)
    shutil.rmtree(run / "checkpoints")  # with them, config.json is checked against them
    before = _tree(run)
    code, err, _ = _main(clis["cl"], [*TINY, "--seed", "3", "--out", str(run)], capsys)
    assert code == 2 and len(err) == 1 and "config.json does not match its SHA-256" in err[0]
    assert "--overwrite" in err[0] and "no finished task is lost" in err[0]
    assert _tree(run) == before


@pytest.mark.parametrize("cli", ["cl", "rates"])
def test_second_writer_exits_2_at_once_naming_the_holder(clis, run, capsys, cli):
    before = _tree(run)
    argv = [*TINY, "--seed", "3"] if cli == "cl" else [*TINY_RATES]
    with run_lock(run):
        start = time.monotonic()
        code, err, _ = _main(clis[cli], [*argv, "--out", str(run), "--overwrite"], capsys)
        assert time.monotonic() - start < 30
    assert code == 2 and len(err) == 1, err
    assert f"pid {os.getpid()}" in err[0] and "in use by" in err[0], err[0]
    assert _tree(run) == before


@pytest.mark.slow
def test_two_concurrent_rates_runs_on_one_folder(tmp_path):
    """Seeds 1 and 2 into the same --out: the second exits 2 at once, the first completes."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(ROOT / "experiments/rates.py"), "--n-min", "100", "--n-max",
            "30000", "--num-n", "4", "--replicates", "12", "--jobs", "1", "--no-figure",
            "--no-cache", "--out", str(out)]
    first = subprocess.Popen([*argv, "--seed", "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock.info").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        # Freeze the first run while it holds the lock, so the second one meets it however
        # fast the machine is (the lock is held by the stopped process all the same).
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run([*argv, "--seed", "2"], env=env, capture_output=True,
                                    text=True, timeout=120)
        finally:
            first.send_signal(signal.SIGCONT)
    finally:
        first_out, first_err = first.communicate(timeout=600)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"pid {first.pid}" in lines[0]
    assert first.returncode == 0, first_err
    assert '"seed": 1' in (out / "config.json").read_text()
    assert verify_checksums(out, read_checksums(out)) is None and read_checksums(out)


@pytest.mark.slow
def test_result_files_are_shared_as_the_umask_allows(clis, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "rates"
        assert _main(clis["rates"], [*TINY_RATES, "--out", str(out)], capsys)[0] == 0
        assert file_mode() == 0o644
        for path in [*out.iterdir()]:
            if path.is_file() and not path.name.startswith(".lock"):
                assert path.stat().st_mode & 0o777 == 0o644, path
        os.umask(0o077)
        assert file_mode() == 0o600
        private = tmp_path / "private"
        assert _main(clis["rates"], [*TINY_RATES, "--out", str(private)], capsys)[0] == 0
        assert (private / "fits.csv").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_cl_run_files_and_checkpoints_are_group_and_world_readable(finished):
    # the module's finished run was written under the test process's umask
    expected = file_mode()
    files = [*finished.glob("*.json"), finished / "accuracy_matrix.csv",
             finished / CHECKSUMS_FILE, *(finished / "checkpoints").iterdir()]
    assert files and all(p.stat().st_mode & 0o777 == expected for p in files)
