"""Protocol parity with the official HiDe-Prompt / NoRGa code (issue 16, point 1).

Each test compares against a hand-computed value or the official formula: gradient clipping of
the TII optimiser step, the ``--task_inc`` TIL accuracy, the before-alignment matrix, strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_helpers import check_stop_and_resume, check_strict_run_dir, strict_json_loads
from torch.utils.data import DataLoader, TensorDataset

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data.registry import build_benchmark
from cl.methods import get_method
from cl.methods.base import Method, Task
from cl.run.engine import evaluate_task, final_metrics, run_experiment
from cl.run.files import json_line, json_text
from norga.matrix import read_accuracy_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hide(seed: int = 5, **overrides):
    cfg = resolve_config("synthetic", "hide", overrides={"seed": seed, "batch_size": 8,
                                                          "tii_epochs": 2, **overrides})
    bench = build_benchmark("synthetic", seed=seed, num_classes=4, num_tasks=2,
                            train_per_class=6, test_per_class=4)
    vit = build_backbone("vit-tiny-random", img_size=bench.image_size, seed=seed).model
    method = get_method("hide")(cfg, vit, bench.num_classes, bench.task_classes)
    return method, bench


def _tii_grad_norms(clip: float) -> list[float]:
    """Gradient norms of the TII parameters at every optimiser step of task 0 (after any
    clipping), with the head scaled up so that the raw norms are far above 1."""
    method, bench = _hide(tii_clip_grad=clip)
    with torch.no_grad():
        method.tii.head.weight.mul_(200.0)
    classes = bench.task_classes[0]
    idx = bench.train.indices_of(classes)
    x = torch.stack([bench.train.dataset[int(i)][0] for i in idx])
    y = torch.tensor([bench.train.dataset[int(i)][1] for i in idx])
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    method.begin_task(Task(0, classes, bench.task_classes))
    norms: list[float] = []
    step = method.tii_optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in method.tii.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    method.tii_optimizer.step = recording_step
    method._train_tii(loader)
    return norms


def test_tii_optimiser_step_is_clipped_at_clip_grad() -> None:
    raw = _tii_grad_norms(clip=0.0)
    assert len(raw) == 2 * 2 and max(raw) > 5.0, raw  # 2 epochs x 2 batches, big gradients
    clipped = _tii_grad_norms(clip=1.0)
    assert len(clipped) == len(raw)
    # clip_grad_norm_ rescales by max_norm / (norm + 1e-6): a norm above 1 becomes 1 up to that
    # epsilon; smaller ones (a saturated softmax late in training) are left as they are
    assert raw[0] > 5.0 and clipped[0] == pytest.approx(1.0, abs=1e-5), (raw, clipped)
    assert all(n <= 1.0 + 1e-5 for n in clipped), clipped
    assert sum(n == pytest.approx(1.0, abs=1e-5) for n in clipped) >= 2, clipped
    official = 1.0
    assert resolve_config("synthetic", "hide").method_options.tii_clip_grad == official


# ---------------------------------------------------------------- TIL accuracy (--task_inc)
class _TableMethod(Method):
    """A "model" given by tables: sample ``i`` gets the logits ``chosen[i]`` with the prompt its
    own task choice ``tasks[i]`` selects, and ``oracle[i]`` with the true task's prompt."""

    def __init__(self, chosen, tasks, oracle) -> None:
        super().__init__()
        self.chosen, self.tasks, self.oracle = (torch.tensor(v) for v in (chosen, tasks, oracle))

    def predict_with_tasks(self, x):
        i = x[:, 0].long()
        return self.chosen[i].float(), self.tasks[i]

    def predict(self, x):
        return self.predict_with_tasks(x)[0]

    def predict_oracle(self, x, task_ids):
        logits = self.oracle[x[:, 0].long()].float()
        allowed = torch.tensor([[False, False, True, True]]).expand_as(logits)  # task 1 = {2, 3}
        return logits.masked_fill(~allowed, float("-inf"))

    begin_task = train_task = end_task = load_state_dict = lambda self, *a: None  # noqa: E731
    state_dict = lambda self: {}  # noqa: E731


def test_til_accuracy_is_the_official_task_inc_number() -> None:
    # Task 1 = classes {2, 3}; four test samples, worked out by hand:
    #   sample  y  TII  logits with chosen prompt  CIL  TIL(--task_inc)  oracle logits  oracle
    #   0       2  1    [5, 0, 3, 1]               0 x  2 ok             [0, 0, 1, 4]   3 x
    #   1       3  0    [0, 0, 2, 1]               2 x  2 x              [0, 0, 0, 1]   3 ok
    #   2       2  1    [0, 0, 1, 0]               2 ok 2 ok             [0, 0, 2, 0]   2 ok
    #   3       3  0    [9, 0, 0, 2]               0 x  3 ok             [0, 0, 5, 1]   2 x
    method = _TableMethod(
        chosen=[[5, 0, 3, 1], [0, 0, 2, 1], [0, 0, 1, 0], [9, 0, 0, 2]],
        tasks=[1, 0, 1, 0],
        oracle=[[0, 0, 1, 4], [0, 0, 0, 1], [0, 0, 2, 0], [0, 0, 5, 1]],
    )
    x = torch.arange(4.0).unsqueeze(1)
    y = torch.tensor([2, 3, 2, 3])
    loader = DataLoader(TensorDataset(x, y), batch_size=3)  # two batches: 3 + 1
    res = evaluate_task(method, loader, 1, torch.device("cpu"), task_classes=[2, 3])
    assert res["acc"] == 25.0 and res["tii"] == 50.0
    assert res["til"] == 75.0  # TII-chosen prompt, logits of the true task only
    assert res["til_oracle"] == 50.0  # true task's prompt as well
    no_classes = evaluate_task(method, loader, 1, torch.device("cpu"))
    assert math.isnan(no_classes["til"])


# ---------------------------------------------------------------- metrics.json, strict JSON
def test_metrics_json_is_strict_and_null_for_metrics_that_do_not_apply() -> None:
    acc = np.array([[80.0, np.nan], [70.0, 90.0]])
    nan = np.full_like(acc, np.nan)
    cfg = resolve_config("synthetic", "smope")
    metrics = final_metrics(cfg, acc, nan, acc, {"weights_sha256": "x"}, til_oracle=acc)
    text = json_text(metrics)
    parsed = strict_json_loads(text)  # raises on NaN / Infinity
    assert parsed["TII_accuracy"] is None and parsed["tii_per_task"] == [None, None]
    assert parsed["TIL_accuracy"] == 80.0 and parsed["accuracy_matrix"][0] == [80.0, None]
    assert "NaN" not in text and "Infinity" not in text
    with pytest.raises(ValueError):
        strict_json_loads('{"a": NaN}')
    assert strict_json_loads(json_line({"x": float("inf"), "y": [np.float32("nan")]})) == {
        "x": None, "y": [None]}


# ---------------------------------------------------------------- before-alignment matrix
def _hide_run(tmp_path: Path, name: str, **extra):
    overrides = {"epochs": 1, "tii_epochs": 1, "tii_ca_epochs": 1, "batch_size": 16, "seed": 3,
                 "dataset_options": {"num_classes": 6, "num_tasks": 3, "train_per_class": 10,
                                     "test_per_class": 8}, **extra}
    cfg = resolve_config("synthetic", "hide", overrides=overrides)
    return run_experiment(cfg, tmp_path / name)


@pytest.mark.slow
def test_before_alignment_matrix_is_logged_and_written(tmp_path: Path) -> None:
    run = _hide_run(tmp_path, "tap", tap_epochs=3, ca_lr=0.5)
    out = tmp_path / "tap"
    metrics = check_strict_run_dir(out)
    before = read_accuracy_matrix(out / "accuracy_matrix_before_alignment.csv")
    after = read_accuracy_matrix(out / "accuracy_matrix.csv")
    np.testing.assert_allclose(before, np.round(run.accuracy_before_alignment, 4), atol=1e-9)
    assert before.shape == after.shape == (3, 3)
    np.testing.assert_array_equal(before[0], after[0])  # no alignment at task 0
    assert not np.allclose(before[1:, :2], after[1:, :2])  # TAP changed the head
    logged = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if r.get("phase") == "eval_before_alignment"]
    assert [r["task"] for r in logged] == [1, 2]
    for r in logged:
        np.testing.assert_allclose(r["acc"], run.accuracy_before_alignment[r["task"],
                                                                           : r["task"] + 1])
    assert metrics["FA_before_alignment"] == pytest.approx(np.mean(before[-1]), abs=1e-3)
    assert metrics["TII_accuracy"] is not None and metrics["TIL_accuracy"] is not None
    # without TAP epochs nothing changes between the two evaluations
    flat = _hide_run(tmp_path, "no-tap", tap_epochs=0)
    np.testing.assert_array_equal(flat.accuracy_before_alignment, flat.accuracy)


@pytest.mark.slow
def test_multi_centroid_hide_run_resumes_exactly(tmp_path: Path) -> None:
    overrides = {"epochs": 1, "tii_epochs": 1, "tii_ca_epochs": 1, "tap_epochs": 1,
                 "batch_size": 16, "seed": 3, "stats_method": "multi-centroid", "n_centroids": 2,
                 "dataset_options": {"num_classes": 6, "num_tasks": 3, "train_per_class": 10,
                                     "test_per_class": 8}}
    cfg = resolve_config("synthetic", "hide", overrides=overrides)
    full = run_experiment(cfg, tmp_path / "full")
    state = torch.load(tmp_path / "full/checkpoints/task_2.pt", weights_only=False)["method"]
    assert state["prompt_stats"]["method"] == "multi-centroid"
    assert [tuple(c.shape) for c in state["prompt_stats"]["centroids"]] == [(2, 128)] * 6
    check_stop_and_resume(cfg, tmp_path, full)
