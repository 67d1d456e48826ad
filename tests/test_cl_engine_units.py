"""The engine's bookkeeping, on tiny synthetic runs (seconds): what it writes, against direct
computations.

Most runs use epochs 0 (class statistics and evaluation only): the accuracy, TII, TIL and oracle
matrices are recomputed here from each ``checkpoints/task_<t>.pt`` with the method's own
``predict*`` calls, ``metrics.json`` from :mod:`cl.metrics`, ``SHA256SUMS`` with hashlib. The
run-directory lifecycle (resume guards, ``stop_after_task``, ``--overwrite`` staging, refused
configurations) is checked through :func:`cl.run.engine.run_experiment`'s observable effects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_engine_helpers import T, checksums, log_records, run_files, tiny_bench, tiny_cfg

from cl import metrics as M
from cl.backbones.loading import build_backbone
from cl.config import CLConfig
from cl.methods.base import get_method
from cl.run.engine import (
    ConfigError,
    load_config,
    run_experiment,
)
from cl.run.files import (
    load_checkpoint,
    sidecar_path,
    torch_save_atomic,
    write_result_file,
)
from cl.run.seeding import derive_seed, torch_generator
from norga.matrix import read_accuracy_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fresh_method(cfg: CLConfig, bench, checkpoint: Path):
    """The method rebuilt from scratch and restored from ``checkpoint``."""
    backbone = build_backbone(cfg.backbone, weights=cfg.weights, img_size=bench.image_size,
                              seed=cfg.seed)
    method = get_method(cfg.method)(cfg, backbone.model, bench.num_classes, bench.task_classes,
                                    device=torch.device("cpu"))
    method.load_state_dict(load_checkpoint(checkpoint)["method"])
    return method


def _test_set(bench, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = bench.test.indices_of(bench.task_classes[i])
    items = [bench.test.dataset[int(j)] for j in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _direct(cfg: CLConfig, bench, out: Path) -> dict[str, np.ndarray]:
    """Accuracy / TII / TIL / oracle matrices and prompt counts, recomputed from the checkpoints
    (one batch per task: ``eval_batch_size`` exceeds every task's test set)."""
    mats = {k: np.full((T, T), np.nan) for k in ("acc", "tii", "til", "til_oracle")}
    prompts: dict[int, list[list[int]]] = {}
    for t in range(T):
        method = _fresh_method(cfg, bench, out / f"checkpoints/task_{t}.pt")
        prompts[t] = []
        for i in range(t + 1):
            x, y = _test_set(bench, i)
            with torch.no_grad():
                logits, tasks = method.predict_with_tasks(x)
                oracle = method.predict_oracle(x, torch.full_like(y, i))
            mats["acc"][t, i] = 100.0 * float((logits.argmax(1) == y).double().mean())
            allowed = torch.tensor(bench.task_classes[i])
            own = allowed[logits[:, allowed].argmax(1)]
            mats["til"][t, i] = 100.0 * float((own == y).double().mean())
            if tasks is not None:
                mats["tii"][t, i] = 100.0 * float((tasks == i).double().mean())
                prompts[t].append(np.bincount(tasks.numpy(), minlength=T).tolist())
            if oracle is not None:
                mats["til_oracle"][t, i] = 100.0 * float((oracle.argmax(1) == y).double().mean())
    return {**mats, "prompts": prompts}


@pytest.fixture
def hide_run(tmp_path):
    """A finished 3-task HiDe-Prompt run (TII, oracle pass, alignment, task_selection.json).

    Function-scoped on purpose: mutmut runs, for a mutant, only the tests during which the
    mutated function ran, and a module-scoped run would count for the first test alone.
    """
    cfg = tiny_cfg("hide")
    out = tmp_path / "hide"
    return cfg, out, run_experiment(cfg, out)


def _close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12,
                               atol=1e-12)


# ---------------------------------------------------------------------------- results
@pytest.mark.slow
def test_matrices_equal_a_direct_evaluation_of_each_checkpoint(hide_run):
    cfg, out, result = hide_run
    direct = _direct(cfg, tiny_bench(cfg), out)
    assert result.finished and not result.already_finished and result.resumed_after_task is None
    _close(result.accuracy, direct["acc"])
    _close(result.tii, direct["tii"])
    _close(result.til, direct["til"])
    _close(result.til_oracle, direct["til_oracle"])
    assert np.isnan(result.accuracy[np.triu_indices(T, 1)]).all()
    assert not np.isnan(result.tii[np.tril_indices(T)]).any()
    # the numbers are not all alike, so a swapped row or column shows
    assert len(set(np.round(result.tii[np.tril_indices(T)], 6))) > 1
    assert len(set(np.round(result.til[np.tril_indices(T)], 6))) > 1
    _close(read_accuracy_matrix(out / "accuracy_matrix.csv"), np.round(direct["acc"], 4))
    # the checkpoint after task t holds rows 0..t of every matrix (float64 tensors)
    for t in range(T):
        ckpt = load_checkpoint(out / f"checkpoints/task_{t}.pt")
        assert ckpt["task"] == t and ckpt["has_alignment"] is True
        assert ckpt["config"] == cfg.to_dict()
        for key, name in (("acc", "acc"), ("tii", "tii"), ("til", "til"),
                          ("til_oracle", "til_oracle"), ("acc_before", None)):
            assert ckpt[key].dtype == torch.float64 and ckpt[key].shape == (t + 1, T)
            if name:
                _close(ckpt[key].numpy(), direct[name][: t + 1])
        assert isinstance(ckpt["torch_rng"], torch.Tensor)


def test_metrics_json_follows_cl_metrics_on_the_direct_matrices(hide_run):
    cfg, out, result = hide_run
    direct = _direct(cfg, tiny_bench(cfg), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    for key, value in M.summarize(direct["acc"]).items():
        _close(metrics[key], value)
    before = result.accuracy_before_alignment
    for key in ("FA", "CA", "FM"):
        _close(metrics[f"{key}_before_alignment"], M.summarize(before)[key])
    _close(metrics["TII_accuracy"], direct["tii"][-1].mean())
    _close(metrics["TIL_accuracy"], direct["til"][-1].mean())
    _close(metrics["TIL_oracle_prompt_accuracy"], direct["til_oracle"][-1].mean())
    _close(metrics["per_task"], direct["acc"][-1])
    _close(metrics["tii_per_task"], direct["tii"][-1])
    _close(metrics["til_per_task"], direct["til"][-1])
    _close(metrics["til_oracle_prompt_per_task"], direct["til_oracle"][-1])
    matrix = [[math.nan if v is None else v for v in row] for row in metrics["accuracy_matrix"]]
    _close(matrix, direct["acc"])
    assert metrics["accuracy_matrix"][0][1] is None
    before_json = [[math.nan if v is None else v for v in row]
                   for row in metrics["accuracy_matrix_before_alignment"]]
    _close(before_json, before)
    backbone = build_backbone(cfg.backbone, img_size=32, seed=cfg.seed)
    assert {k: metrics[k] for k in ("method", "dataset", "backbone", "seed", "num_tasks",
                                    "test_batch_size", "per_sample_prompts",
                                    "backbone_weights_sha256")} == {
        "method": "hide", "dataset": "synthetic", "backbone": cfg.backbone, "seed": 11,
        "num_tasks": T, "test_batch_size": 64, "per_sample_prompts": True,
        "backbone_weights_sha256": backbone.info()["weights_sha256"]}


@pytest.mark.slow
def test_task_selection_json_counts_the_chosen_prompts(hide_run):
    cfg, out, result = hide_run
    direct = _direct(cfg, tiny_bench(cfg), out)
    data = json.loads((out / "task_selection.json").read_text())
    layers = list(cfg.method_options.prompt_layers)
    assert data == {"kind": "task_selection", "version": 1, "method": "hide",
                    "after_task": T - 1, "num_tasks": T, "test_samples": [10] * T,
                    "prompts": direct["prompts"][T - 1], "experts": None, "layer_ids": layers}
    for t in range(T):
        assert load_checkpoint(out / f"checkpoints/task_{t}.pt")["task_selection"]["prompts"] \
            == direct["prompts"][t]


def test_log_records_hold_every_evaluation(hide_run):
    cfg, out, result = hide_run
    records = log_records(out)
    evals = [r for r in records if r.get("phase") == "eval"]
    assert [r["task"] for r in evals] == list(range(T))
    for t, r in enumerate(evals):
        for key, mat in (("acc", result.accuracy), ("tii", result.tii), ("til", result.til),
                         ("til_oracle", result.til_oracle)):
            _close(r[key], mat[t, : t + 1])
        _close(r["avg_acc"], result.accuracy[t, : t + 1].mean())
        assert 0 <= r["seconds"] < 600 and r["seconds"] == round(r["seconds"], 2)
        assert r["time"] > 1e9 and r["time"] == round(r["time"], 3)
    before = [r for r in records if r.get("phase") == "eval_before_alignment"]
    assert [r["task"] for r in before] == list(range(1, T))  # no alignment at task 0
    for t, r in enumerate(before, start=1):
        _close(r["acc"], result.accuracy_before_alignment[t, : t + 1])


def test_before_alignment_equals_after_without_alignment_epochs(hide_run):
    """tap_epochs 0: the alignment changes nothing, so the two matrices agree."""
    cfg, out, result = hide_run
    _close(result.accuracy_before_alignment, result.accuracy)
    _close(read_accuracy_matrix(out / "accuracy_matrix_before_alignment.csv"),
           np.round(result.accuracy, 4))


def test_run_files_config_env_class_order_and_checksums(hide_run):
    cfg, out, result = hide_run
    bench = tiny_bench(cfg)
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    assert load_config(out) == cfg
    assert json.loads((out / "class_order.json").read_text()) == {
        "seed": 11, "class_order": [c for t in bench.task_classes for c in t],
        "task_classes": bench.task_classes}
    env = json.loads((out / "env.json").read_text())
    assert env == json.loads(json.dumps(result.env))
    assert env["dataset"] == json.loads(json.dumps({
        "name": "synthetic", "num_classes": 6, "num_tasks": T, "image_size": 32,
        **bench.info}))
    assert env["world_size"] == 1
    backbone = build_backbone(cfg.backbone, img_size=32, seed=cfg.seed)
    assert env["backbone"] == json.loads(json.dumps(backbone.info()))
    assert "torch" in env["packages"]
    sums = checksums(out)
    assert set(sums) == {"config.json", "env.json", "class_order.json", "accuracy_matrix.csv",
                         "accuracy_matrix_before_alignment.csv", "metrics.json", "log.jsonl",
                         "task_selection.json"}
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    for t in range(T):
        path = out / f"checkpoints/task_{t}.pt"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert sidecar_path(path).read_text().split()[0] == digest
    assert not (out / ".overwrite").exists() and not list(out.rglob("*.tmp"))


def test_seeds_of_the_global_and_loader_generators():
    """The global torch seed and the training loader's generator come from the run's seed
    (epochs 0: the loader is never drawn from, so the checkpoint holds its initial state)."""
    import tempfile

    cfg = tiny_cfg("l2p", seed=23)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run_experiment(cfg, out, stop_after_task=0)
        assert torch.initial_seed() == derive_seed(23, "global")
        ckpt = load_checkpoint(out / "checkpoints/task_0.pt")
    assert torch.equal(ckpt["loader_gen"], torch_generator(23, "train-loader").get_state())


def test_method_without_alignment_or_task_choice():
    """CODA-Prompt: no TII (null metrics), no before-alignment matrix, no task_selection."""
    import tempfile

    cfg = tiny_cfg("coda-prompt")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = run_experiment(cfg, out)
        metrics = json.loads((out / "metrics.json").read_text())
        assert not (out / "accuracy_matrix_before_alignment.csv").exists()
        assert not (out / "task_selection.json").exists()
        ckpt = load_checkpoint(out / "checkpoints/task_2.pt")
    assert np.isnan(result.tii).all() and np.isnan(result.accuracy_before_alignment).all()
    assert result.accuracy_before_alignment.shape == (T, T)
    assert not np.isnan(result.til[np.tril_indices(T)]).any()
    assert metrics["TII_accuracy"] is None and metrics["tii_per_task"] == [None] * T
    assert "FA_before_alignment" not in metrics
    assert "accuracy_matrix_before_alignment" not in metrics
    assert ckpt["has_alignment"] is False and ckpt["task_selection"] is None
    assert torch.isnan(ckpt["acc_before"]).all()


def test_smope_expert_counts_and_its_run_file():
    import tempfile

    cfg = tiny_cfg("smope")
    bench = tiny_bench(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run_experiment(cfg, out, benchmark=bench)
        data = json.loads((out / "task_selection.json").read_text())
        method = _fresh_method(cfg, bench, out / "checkpoints/task_2.pt")
        freq = json.loads((out / "expert_frequency.json").read_text())
        assert "expert_frequency.json" in checksums(out)
    assert freq == json.loads(json.dumps(method.run_files()["expert_frequency.json"]))
    assert data["prompts"] is None and data["after_task"] == T - 1
    experts = []
    for i in range(T):
        x, _ = _test_set(bench, i)
        with torch.no_grad():
            method.predict_with_tasks(x)
        experts.append(method.expert_selection().tolist())
    assert data["experts"] == experts
    assert data["layer_ids"] == list(method.model.prompt_layers)


def test_keep_last_checkpoint_only(tmp_path):
    out = tmp_path / "run"
    run_experiment(tiny_cfg("l2p", keep_checkpoints="last"), out)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["task_2.pt", "task_2.pt.sha256"]
    run_experiment(tiny_cfg("l2p"), tmp_path / "all", stop_after_task=1)
    names = sorted(p.name for p in (tmp_path / "all/checkpoints").iterdir())
    assert names == ["task_0.pt", "task_0.pt.sha256", "task_1.pt", "task_1.pt.sha256"]
    # the default keeps only what a resume needs
    assert CLConfig().keep_checkpoints == "last"


# ---------------------------------------------------------------------------- stop and resume
def test_stop_after_task_bounds_are_refused_before_anything_is_written(tmp_path):
    for bad in (-1, T):
        with pytest.raises(ConfigError) as info:
            run_experiment(tiny_cfg("l2p"), tmp_path / "x", stop_after_task=bad)
        assert str(info.value) == (f"stop_after_task: {bad} is not a task of this benchmark; "
                                   f"allowed: 0 to {T - 1}")
    assert not (tmp_path / "x").exists()
    last = run_experiment(tiny_cfg("l2p"), tmp_path / "last", stop_after_task=T - 1)
    assert last.finished and last.metrics is not None
    assert (tmp_path / "last/metrics.json").exists()


@pytest.mark.slow
def test_stop_then_resume_task_by_task_equals_one_run(tmp_path, hide_run):
    cfg, _, full = hide_run
    out = tmp_path / "run"
    first = run_experiment(cfg, out, stop_after_task=0)
    assert not first.finished and first.metrics is None and first.resumed_after_task is None
    assert first.accuracy.shape == first.tii.shape == first.til.shape == (1, T)
    assert first.til_oracle.shape == first.accuracy_before_alignment.shape == (1, T)
    assert not (out / "metrics.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["task_0.pt"]
    assert read_accuracy_matrix(out / "accuracy_matrix.csv").shape == (1, T)
    second = run_experiment(cfg, out, stop_after_task=1)
    assert second.resumed_after_task == 0 and not second.finished
    assert second.accuracy.shape == (2, T)
    third = run_experiment(cfg, out)
    assert third.resumed_after_task == 1 and third.finished and not third.already_finished
    for a, b in ((third.accuracy, full.accuracy), (third.tii, full.tii), (third.til, full.til),
                 (third.til_oracle, full.til_oracle),
                 (third.accuracy_before_alignment, full.accuracy_before_alignment)):
        np.testing.assert_array_equal(a, b)
    assert third.metrics == full.metrics
    assert third.env == first.env and third.skipped_checkpoints == []
    records = log_records(out)
    assert [r["task"] for r in records if r.get("phase") == "eval"] == [0, 1, 2]
    resumes = [r for r in records if r.get("event") == "resume"]
    assert [(r["task"], Path(r["checkpoint"]).name) for r in resumes] == [
        (0, "task_0.pt"), (1, "task_1.pt")]
    digest = hashlib.sha256((out / "log.jsonl").read_bytes()).hexdigest()
    assert checksums(out)["log.jsonl"] == digest


def test_resume_drops_log_records_of_unfinished_tasks_and_torn_lines(tmp_path):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=0)
    kept = (out / "log.jsonl").read_text()
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"task": 1, "phase": "train"}) + "\n")
        fh.write(json.dumps({"event": "no task"}) + "\n")
        fh.write(json.dumps({"task": 0, "phase": "late"}) + "\n")
        fh.write("5\n[1]\n")  # valid JSON, not records
    with open(out / "log.jsonl", "ab") as fh:
        fh.write(b'\xff{"task": 0}\n{"task": 1, "pha')  # a torn line, bytes that are not UTF-8
    run_experiment(cfg, out, stop_after_task=1)
    lines = (out / "log.jsonl").read_text().splitlines()
    n = len(kept.splitlines())
    assert "\n".join(lines[:n]) + "\n" == kept
    assert [json.loads(x) for x in lines[n:n + 2]] == [{"event": "no task"},
                                                        {"task": 0, "phase": "late"}]
    assert json.loads(lines[n + 2])["event"] == "resume"
    assert not any(json.loads(x).get("task") == 1 and json.loads(x).get("phase") == "train"
                   for x in lines)


def test_a_killed_first_task_leaves_no_log_records(tmp_path):
    """No checkpoint at all: the run starts afresh and drops the records of the lost task 0."""
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=0)
    shutil.rmtree(out / "checkpoints")
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "kept"}) + "\n")
    again = run_experiment(cfg, out, stop_after_task=0)
    assert again.resumed_after_task is None
    records = log_records(out)
    assert [r.get("task") for r in records if r.get("phase") == "eval"] == [0]
    assert {"event": "kept"} in records


def test_checkpoint_of_another_task_is_rejected_and_set_aside(tmp_path, caplog):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=1)
    ck = out / "checkpoints"
    shutil.copy(ck / "task_0.pt", ck / "task_1.pt")
    shutil.copy(sidecar_path(ck / "task_0.pt"), sidecar_path(ck / "task_1.pt"))
    wrong = (ck / "task_1.pt").read_bytes()
    with caplog.at_level(logging.WARNING):
        resumed = run_experiment(cfg, out, stop_after_task=1)
    assert any(r.getMessage() == f"checkpoint {ck / 'task_1.pt'} is unusable: task_1.pt: does "
               "not hold the state after task 1; falling back to the previous one"
               for r in caplog.records)
    assert resumed.resumed_after_task == 0
    assert resumed.skipped_checkpoints == ["task_1.pt: does not hold the state after task 1"]
    assert (ck / "task_1.pt.corrupt").read_bytes() == wrong
    assert (ck / "task_1.pt.sha256.corrupt").exists()
    assert load_checkpoint(ck / "task_1.pt")["task"] == 1  # re-written
    rejected = [r for r in log_records(out) if r.get("event") == "checkpoint_rejected"]
    assert [r["reason"] for r in rejected] == resumed.skipped_checkpoints


def test_checkpoint_without_a_checksum_is_rejected(tmp_path):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=1)
    sidecar_path(out / "checkpoints/task_1.pt").unlink()
    resumed = run_experiment(cfg, out, stop_after_task=1)
    assert resumed.resumed_after_task == 0 and len(resumed.skipped_checkpoints) == 1
    assert resumed.skipped_checkpoints[0].startswith("task_1.pt: no readable checksum file")
    assert (out / "checkpoints/task_1.pt.corrupt").exists()
    assert not (out / "checkpoints/task_1.pt.sha256.corrupt").exists()


def test_files_that_are_not_checkpoints_of_this_run_are_ignored(tmp_path):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=0)
    ck = out / "checkpoints"
    for name in (f"task_{T}.pt", "task_x.pt", "task_.pt", "task.pt", "task_-1.pt"):
        shutil.copy(ck / "task_0.pt", ck / name)
        shutil.copy(sidecar_path(ck / "task_0.pt"), sidecar_path(ck / name))
    resumed = run_experiment(cfg, out, stop_after_task=1)
    assert resumed.resumed_after_task == 0 and resumed.skipped_checkpoints == []
    assert not list(ck.glob("*.corrupt"))


def test_stale_temporaries_are_removed_on_resume(tmp_path):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=0)
    for path in (out / ".metrics.json.abc.tmp", out / "checkpoints/.task_1.pt.xyz.tmp"):
        path.write_text("half")
    (out / "notes.tmp").write_text("mine")
    run_experiment(cfg, out, stop_after_task=1)
    assert not (out / ".metrics.json.abc.tmp").exists()
    assert not (out / "checkpoints/.task_1.pt.xyz.tmp").exists()
    assert (out / "notes.tmp").read_text() == "mine"


@pytest.mark.slow
def test_resume_from_a_checkpoint_without_the_newer_matrices(tmp_path, hide_run):
    """A checkpoint written before the oracle and before-alignment matrices existed (numpy
    arrays, no such keys): those rows are not applicable (nan), the others are restored."""
    cfg, _, full = hide_run
    out = tmp_path / "run"
    run_experiment(cfg, out, stop_after_task=0)
    path = out / "checkpoints/task_0.pt"
    ckpt = load_checkpoint(path)
    for key in ("til_oracle", "acc_before"):
        del ckpt[key]
    for key in ("acc", "tii", "til"):
        ckpt[key] = ckpt[key].numpy()
    torch_save_atomic(path, ckpt)
    resumed = run_experiment(cfg, out)
    assert resumed.resumed_after_task == 0
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    np.testing.assert_array_equal(resumed.tii, full.tii)
    assert np.isnan(resumed.til_oracle[0]).all() and np.isnan(
        resumed.accuracy_before_alignment[0]).all()
    np.testing.assert_array_equal(resumed.til_oracle[1:], full.til_oracle[1:])
    np.testing.assert_array_equal(resumed.accuracy_before_alignment[1:],
                                  full.accuracy_before_alignment[1:])


# ---------------------------------------------------------------------------- finished runs
def test_finished_run_is_loaded_not_recomputed(tmp_path):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    first = run_experiment(cfg, out)
    before = run_files(out)
    again = run_experiment(cfg, out)
    assert again.already_finished and again.finished and again.resumed_after_task is None
    np.testing.assert_array_equal(again.accuracy, first.accuracy)
    assert np.isnan(again.tii).all() and np.isnan(again.til).all()
    assert again.tii.shape == again.til.shape == (T, T)
    assert again.metrics == first.metrics
    assert again.env == json.loads((out / "env.json").read_text())
    assert again.out_dir == out
    assert run_files(out) == before
    (out / "env.json").unlink()  # a missing file is derived again, not refused
    healed = run_experiment(cfg, out)  # results re-derived from the last checkpoint
    assert healed.finished and healed.env
    np.testing.assert_array_equal(healed.accuracy, first.accuracy)
    assert healed.env == json.loads((out / "env.json").read_text())


@pytest.mark.parametrize("damage, reason", [
    ("edit", "metrics.json does not match its SHA-256"),
    ("not json", "metrics.json cannot be parsed (JSONDecodeError)"),
    ("no matrix", "metrics.json cannot be parsed (KeyError)"),
    ("bad matrix", "metrics.json cannot be parsed (TypeError)"),
])
def test_damaged_metrics_are_recomputed(tmp_path, damage, reason, caplog):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    first = run_experiment(cfg, out)
    good = (out / "metrics.json").read_bytes()
    text = {"edit": '{"FA": 99}', "not json": "{oops", "no matrix": '{"FA": 1}',
            "bad matrix": '{"accuracy_matrix": 5}'}[damage]
    if damage == "edit":
        (out / "metrics.json").write_text(text)
    else:
        write_result_file(out, "metrics.json", text)
    with caplog.at_level(logging.WARNING):
        again = run_experiment(cfg, out)
    assert not again.already_finished and again.finished and again.resumed_after_task == T - 1
    np.testing.assert_array_equal(again.accuracy, first.accuracy)
    assert (out / "metrics.json").read_bytes() == good
    assert (out / "metrics.json.corrupt").read_text() == text
    for file, digest in checksums(out).items():
        assert hashlib.sha256((out / file).read_bytes()).hexdigest() == digest, file
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(reason in m and str(out) in m and "recomputing" in m for m in messages), messages
    assert run_experiment(cfg, out).already_finished


@pytest.mark.slow
@pytest.mark.parametrize("method, name", [
    ("hide", "accuracy_matrix.csv"),
    ("hide", "accuracy_matrix_before_alignment.csv"),
    ("hide", "task_selection.json"),
    ("smope", "expert_frequency.json"),
])
def test_a_damaged_result_file_is_rewritten_from_the_last_checkpoint(tmp_path, method, name):
    cfg = tiny_cfg(method)
    out = tmp_path / "run"
    run_experiment(cfg, out)
    good = (out / name).read_bytes()
    (out / name).write_text("damaged\n")
    again = run_experiment(cfg, out)
    assert again.resumed_after_task == T - 1 and again.finished
    assert (out / name).read_bytes() == good
    for file, digest in checksums(out).items():  # log.jsonl too: it got a resume record
        assert hashlib.sha256((out / file).read_bytes()).hexdigest() == digest, file
    assert run_experiment(cfg, out).already_finished


@pytest.mark.slow
def test_trained_resume_restores_the_method_and_the_generators(tmp_path, caplog):
    """With training, a resumed run continues from the restored method, loader generator and
    global generator: its last checkpoint equals the uninterrupted run's, tensor by tensor."""
    cfg = tiny_cfg("l2p", epochs=1, batch_size=3)
    full = run_experiment(cfg, tmp_path / "full")
    run_experiment(cfg, tmp_path / "split", stop_after_task=0)
    with caplog.at_level(logging.INFO):
        resumed = run_experiment(cfg, tmp_path / "split")
    messages = [r.getMessage() for r in caplog.records]
    assert f"resuming after task 0 from {tmp_path / 'split/checkpoints/task_0.pt'}" in messages
    for t in (1, 2):
        assert f"task {t}: avg acc {resumed.accuracy[t, : t + 1].mean():.2f}" in messages
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    a = load_checkpoint(tmp_path / "full/checkpoints/task_2.pt")
    b = load_checkpoint(tmp_path / "split/checkpoints/task_2.pt")
    assert torch.equal(a["loader_gen"], b["loader_gen"]) and torch.equal(a["torch_rng"],
                                                                        b["torch_rng"])
    # the loader drew its shuffles from the seeded generator
    assert not torch.equal(a["loader_gen"], torch_generator(cfg.seed, "train-loader").get_state())

    def flat(state, prefix=""):
        for k, v in state.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            elif isinstance(v, torch.Tensor):
                yield f"{prefix}{k}", v

    ta, tb = dict(flat(a["method"])), dict(flat(b["method"]))
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    c0 = dict(flat(load_checkpoint(tmp_path / "full/checkpoints/task_0.pt")["method"]))
    assert any(not torch.equal(c0[k], ta[k]) for k in ta if k in c0)  # training changed it
