"""Checks shared by the tests of the key-matched prompt baselines (L2P, DualPrompt, S-Prompt++).

Each test module calls these for its own method: an end-to-end ``--quick`` run through the CLI
with a complete run directory, an interrupted-and-resumed run equal to an uninterrupted one,
and predictions that do not depend on the test batch size or composition.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from cl_helpers import (
    check_stop_and_resume,
    check_strict_run_dir,
    learnable_on_vit_b16,
    load_cl_cli,
)

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data import build_benchmark
from cl.methods import Task, get_method
from cl.run.engine import run_experiment

__all__ = ["learnable_on_vit_b16"]  # re-exported: the baseline tests import it from here

SMALL_DATA = {"num_classes": 6, "num_tasks": 3, "train_per_class": 10, "test_per_class": 6}


def small_config(method: str, **extra):
    """``--dataset synthetic --quick`` shrunk to 3 tasks of 2 classes and 2 epochs."""
    overrides = {"epochs": 2, "batch_size": 16, "dataset_options": SMALL_DATA, "seed": 7,
                 **extra}
    return resolve_config("synthetic", method, quick=True, overrides=overrides)


def check_cli_quick_run(method: str, tmp_path: Path, *extra_args: str) -> dict:
    """Run the CLI with ``--quick`` (small data) and check the run directory; return metrics."""
    out = tmp_path / "cli"
    code = load_cl_cli().main([
        "--dataset", "synthetic", "--method", method, "--quick", "--epochs", "1",
        "--set", "dataset_options=" + json.dumps(SMALL_DATA), "--out", str(out),
        "--no-progress", "--threads", "1", *extra_args,
    ])
    assert code == 0
    for name in ("config.json", "env.json", "accuracy_matrix.csv", "metrics.json", "log.jsonl"):
        assert (out / name).is_file(), name
    T = SMALL_DATA["num_tasks"]
    # keep_checkpoints="last" (the default): only the checkpoint a resume needs stays
    assert sorted(p.name for p in (out / "checkpoints").glob("task_*.pt")) == [f"task_{T - 1}.pt"]
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["quick"] is True
    metrics = check_strict_run_dir(out)  # strict JSON, SHA256SUMS incl. log.jsonl
    assert metrics["method"] == method and metrics["per_sample_prompts"] is True
    for key in ("FA", "CA", "FM"):
        assert 0.0 <= metrics[key] <= 100.0
    rows = (out / "accuracy_matrix.csv").read_text().splitlines()
    assert len(rows) == T + 1
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("phase") == "train"]
    assert len(train) == T and all("key_similarity" in r for r in train)
    torch.set_num_threads(1)  # the CLI changed it; the module fixture restores it at the end
    return metrics


def check_resume(method: str, tmp_path: Path, **extra) -> None:
    """Stop after task 1, resume: same accuracy matrix and parameters as uninterrupted."""
    cfg = small_config(method, **extra)
    check_stop_and_resume(cfg, tmp_path, run_experiment(cfg, tmp_path / "full"))
    last = f"checkpoints/task_{SMALL_DATA['num_tasks'] - 1}.pt"
    a = torch.load(tmp_path / "full" / last, weights_only=False)["method"]["model"]
    b = torch.load(tmp_path / "split" / last, weights_only=False)["method"]["model"]
    assert a.keys() == b.keys() and "key" in a and "head.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def learned_method(name: str, num_tasks: int = 4, seed: int = 3, **overrides):
    """A method that has "learned" every task (no training), with keys spread over the data.

    Keys are set to the frozen features of test images of different classes, so that samples
    really choose different prompts; prompts and head are random.
    """
    cfg = resolve_config("synthetic", name, overrides={"seed": seed, **overrides})
    bench = build_benchmark("synthetic", seed=seed, num_classes=2 * num_tasks,
                            num_tasks=num_tasks, test_per_class=6, train_per_class=4)
    vit = build_backbone("vit-tiny-random", img_size=bench.image_size, seed=seed).model
    method = get_method(name)(cfg, vit, bench.num_classes, bench.task_classes)
    for t in range(bench.num_tasks):
        method.begin_task(Task(t, bench.task_classes[t], bench.task_classes))
    images = bench.test.dataset.images
    g = torch.Generator().manual_seed(0)
    model = method.model
    with torch.no_grad():
        pick = torch.randperm(len(images), generator=g)[: model.pool_size]
        model.key.copy_(model.query(images[pick]))
        for name_, p in model.named_parameters():
            if p.requires_grad and name_ != "key":
                p.normal_(0, 0.5, generator=g)
    return method, images


def _predict(method, images: torch.Tensor, batch_size: int):
    logits, ids = [], []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        logits.append(method.predict(batch))
        ids.append(method.select(batch))
    return torch.cat(logits), torch.cat(ids)


def check_batch_invariance(name: str, **overrides) -> None:
    """Eval batch 1, 7, 128 and a shuffled order give the same logits (1e-5)."""
    method, images = learned_method(name, **overrides)
    ref_logits, ref_ids = _predict(method, images, 128)
    distinct = {tuple(sorted(r)) for r in ref_ids.tolist()}
    assert len(distinct) >= 3, "samples must use different prompts"
    for bs in (1, 7):
        logits, ids = _predict(method, images, bs)
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    logits, _ = _predict(method, images[perm], 16)
    torch.testing.assert_close(logits[torch.argsort(perm)], ref_logits, rtol=0, atol=1e-5)


def check_batchwise_vote_leaks(name: str, **overrides) -> None:
    """The original batch-majority vote makes a prediction depend on the batch (hence off)."""
    method, images = learned_method(name, batchwise_prompt=True, **overrides)
    whole, _ = _predict(method, images, len(images))
    single, _ = _predict(method, images, 1)
    assert not torch.allclose(whole, single, atol=1e-3)
