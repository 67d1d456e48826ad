"""End to end: the synthetic run learns, the run directory is complete, resume is exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cl_helpers import check_stop_and_resume, run_cl_cli

from cl.backbones.loading import BackboneWeightsError
from cl.config import resolve_config
from cl.run.engine import RunDirError, run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


def _small_config(method: str = "norga", **extra):
    overrides = {
        "epochs": 2, "tii_epochs": 2, "tii_ca_epochs": 2, "tap_epochs": 2, "batch_size": 16,
        "dataset_options": {"num_classes": 6, "num_tasks": 3, "train_per_class": 12,
                            "test_per_class": 8},
        "seed": 7, **extra,
    }
    return resolve_config("synthetic", method, overrides=overrides)


@pytest.mark.slow
def test_synthetic_quick_run_learns(tmp_path: Path) -> None:
    # every checkpoint kept: the test compares task 0's with task 4's
    cfg = resolve_config("synthetic", "norga", quick=True, overrides={"keep_checkpoints": "all"})
    result = run_experiment(cfg, tmp_path / "run")
    m = result.metrics
    T = 5
    # chance: 10 % for the class-incremental accuracy, 20 % for the task identity
    assert m["FA"] > 60 and m["TII_accuracy"] > 60 and m["TIL_accuracy"] > 80, m
    out = tmp_path / "run"
    header = (out / "accuracy_matrix.csv").read_text().splitlines()[0]
    assert header == "after_task," + ",".join(f"task_{i}" for i in range(T))
    for key in ("FA", "CA", "FM", "TII_accuracy", "TIL_accuracy", "per_task", "method",
                "dataset", "backbone", "seed"):
        assert key in json.loads((out / "metrics.json").read_text())
    env = json.loads((out / "env.json").read_text())
    assert env["backbone"]["weights_sha256"] == "random-init"
    assert env["dataset"]["params"]["num_classes"] == 10 and "sha256" in env["dataset"]
    assert "torch" in env["packages"] and "git" in env
    order = json.loads((out / "class_order.json").read_text())
    assert sorted(order["class_order"]) == list(range(10))
    assert len(list((out / "checkpoints").glob("task_*.pt"))) == T
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"tii", "wtp", "tap", "tii_ca", "eval"} <= {r.get("phase") for r in records}
    # NoRGa's alpha/tau: trained on task 0, frozen afterwards
    c0 = torch.load(out / "checkpoints/task_0.pt", weights_only=False)
    c4 = torch.load(out / "checkpoints/task_4.pt", weights_only=False)
    scale0 = c0["method"]["prompt"]["act_scale"]
    assert not torch.allclose(scale0, torch.ones_like(scale0))
    assert torch.equal(scale0, c4["method"]["prompt"]["act_scale"])


def _params(out: Path, t: int) -> dict[str, torch.Tensor]:
    state = torch.load(out / f"checkpoints/task_{t}.pt", weights_only=False)["method"]
    flat = {}
    for group in ("prompt", "head", "tii"):
        flat.update({f"{group}.{k}": v for k, v in state[group].items()})
    flat["stats.sum"] = torch.stack(state["prompt_stats"]["sum"])
    return flat


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = _small_config()
    check_stop_and_resume(cfg, tmp_path, run_experiment(cfg, tmp_path / "full"))
    a, b = _params(tmp_path / "full", 2), _params(tmp_path / "split", 2)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_finished_run_is_kept_and_mismatch_refused(tmp_path: Path) -> None:
    cfg = _small_config("hide", dataset_options={"num_classes": 4, "num_tasks": 2,
                                                 "train_per_class": 6, "test_per_class": 4})
    run_experiment(cfg, tmp_path / "r")
    before = (tmp_path / "r/metrics.json").stat().st_mtime_ns
    again = run_experiment(cfg, tmp_path / "r")
    assert again.already_finished
    assert (tmp_path / "r/metrics.json").stat().st_mtime_ns == before
    other = _small_config("hide", reg=0.5, dataset_options=cfg.dataset_options)
    with pytest.raises(RunDirError, match="reg"):
        run_experiment(other, tmp_path / "r")
    redone = run_experiment(other, tmp_path / "r", overwrite=True)
    assert redone.finished and not redone.already_finished


def test_missing_weights_writes_nothing(tmp_path: Path) -> None:
    cfg = resolve_config("synthetic", "norga", "sup21k")
    with pytest.raises(BackboneWeightsError, match="--weights"):
        run_experiment(cfg, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_cli_errors_exit_2_with_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--gate-act", "relu")
    assert code == 2 and "--gate-act" in err and len(err.strip().splitlines()) == 1
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--set", "prompt_momentum=2")
    assert code == 2 and "prompt_momentum" in err
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--epochs", "-1")
    assert code == 2 and "--epochs" in err
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--backbone", "dino1k", "--out", "x")
    assert code == 2 and "--weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_help_mentions_the_essentials(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "experiments/cl.py"), "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    for word in ("--dataset", "--quick", "--backbone", "random", "resume", "--overwrite"):
        assert word in out.stdout
