"""Self-healing CL run directories: what derives from the checkpoints and the log is rebuilt
(``SHA256SUMS``, deleted or edited result files); only an edited ``config.json`` with no
checkpoint to check it against is refused, with a message naming the file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cl.config import resolve_config
from cl.run.engine import RunDirError, run_experiment
from norga.io import read_checksums, sha256_hex

OVERRIDES = {
    "epochs": 1, "tii_epochs": 1, "tii_ca_epochs": 1, "tap_epochs": 1, "batch_size": 16,
    "dataset_options": {"num_classes": 4, "num_tasks": 2, "train_per_class": 8,
                        "test_per_class": 6},
    "seed": 3, "device": "cpu",
}
# every file of a finished NoRGa run that SHA256SUMS lists
LISTED = ("config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
          "accuracy_matrix_before_alignment.csv", "metrics.json", "log.jsonl",
          "task_selection.json")

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def _cfg():
    return resolve_config("synthetic", "norga", overrides=dict(OVERRIDES))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_experiment(_cfg(), out).finished
    return out


@pytest.fixture
def run(tmp_path, finished) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _all_verified(out: Path) -> None:
    sums = read_checksums(out)
    for name in LISTED:
        assert sha256_hex((out / name).read_bytes()) == sums[name], name


def _same_results(out: Path, finished: Path) -> None:
    for name in ("accuracy_matrix.csv", "accuracy_matrix_before_alignment.csv"):
        assert (out / name).read_bytes() == (finished / name).read_bytes(), name
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, finished))
    assert got["FA"] == want["FA"] and got["accuracy_matrix"] == want["accuracy_matrix"]


def _write_sums(out: Path, keep: tuple[str, ...], garbage: str = "") -> None:
    sums = read_checksums(out)
    (out / "SHA256SUMS").write_text(garbage + "".join(
        f"{sums[n]}  {n}\n" for n in sorted(sums) if n in keep))


@pytest.mark.parametrize("damage", ["partial", "garbage", "missing"])
def test_lost_or_partial_sha256sums_is_rebuilt_not_refused(run, finished, damage, caplog):
    if damage == "partial":  # rebuilt mid-run with only the files written afterwards
        _write_sums(run, keep=("metrics.json", "log.jsonl"))
    elif damage == "garbage":
        (run / "SHA256SUMS").write_text("not a checksum line\n\x00\x01 garbage\n")
    else:
        (run / "SHA256SUMS").unlink()
    with caplog.at_level("WARNING"):
        again = run_experiment(_cfg(), run)
    assert again.finished and not again.already_finished
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    _same_results(run, finished)
    _all_verified(run)
    assert run_experiment(_cfg(), run).already_finished  # healed: trusted from now on


@pytest.mark.parametrize("name", ["accuracy_matrix.csv", "accuracy_matrix_before_alignment.csv",
                                  "task_selection.json", "env.json", "class_order.json"])
def test_deleted_result_file_is_recomputed_with_a_warning_naming_it(run, finished, name,
                                                                    caplog):
    (run / name).unlink()
    with caplog.at_level("WARNING"):
        again = run_experiment(_cfg(), run)
    assert again.finished and not again.already_finished
    assert any(name in r.getMessage() for r in caplog.records)
    assert (run / name).read_bytes() == (finished / name).read_bytes() or name == "env.json"
    _same_results(run, finished)
    _all_verified(run)


def test_hand_edited_metrics_without_sha256sums_is_not_trusted(run, finished):
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["FA"] = 99.99
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "SHA256SUMS").unlink()
    again = run_experiment(_cfg(), run)
    assert again.metrics["FA"] != 99.99
    _same_results(run, finished)
    _all_verified(run)


def test_edited_config_json_falls_back_to_the_checkpoint(run, finished, caplog):
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 123.0
    (run / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        again = run_experiment(_cfg(), run)
    assert again.finished
    assert any("config.json" in r.getMessage() and "checkpoint" in r.getMessage()
               for r in caplog.records)
    assert (run / "config.json").read_bytes() == (finished / "config.json").read_bytes()
    _all_verified(run)


def test_edited_config_json_without_checkpoints_is_refused_naming_file_and_fix(run):
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 123.0
    (run / "config.json").write_text(json.dumps(config))
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(RunDirError, match=r"config\.json.*--overwrite.*no finished task is lost"):
        run_experiment(_cfg(), run)


def test_a_hand_added_log_line_does_not_block_resume(tmp_path):
    out = tmp_path / "run"
    run_experiment(_cfg(), out, stop_after_task=0)
    with (out / "log.jsonl").open("a") as fh:
        fh.write('{"task": null}\n["not", "a", "record"]\n')
    again = run_experiment(_cfg(), out)
    assert again.finished and again.resumed_after_task == 0
