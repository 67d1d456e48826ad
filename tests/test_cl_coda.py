"""CODA-Prompt: weighted component sum and orthogonality loss against explicit formulas written
here; new components orthonormal, old ones frozen; batch invariance; end to end with resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cl_helpers import check_stop_and_resume, learnable_on_vit_b16

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data import build_benchmark
from cl.methods import Task, get_method
from cl.models.coda import CodaPromptPool
from cl.run.engine import run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


LAYERS, M, L, C, H, B = 2, 6, 4, 8, 2, 3
D = C // H


def _pool(seed: int = 0) -> CodaPromptPool:
    pool = CodaPromptPool(LAYERS, M, L, C).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pool.parameters():
            p.normal_(0, 1, generator=g)
    return pool


def test_weighted_component_sum() -> None:
    pool = _pool()
    query = torch.randn(B, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stop = 5  # only the first 5 of the 6 components are in use
    # (layers, B, 2, L/2, H, D)
    got = pool.prefixes(query, stop, frozen=2, num_heads=H).detach()
    att, keys, prompts = (p.detach() for p in (pool.attention, pool.keys, pool.prompts))
    assert got.shape == (LAYERS, B, 2, L // 2, H, D)
    for layer in range(LAYERS):
        for b in range(B):
            mixed = [[0.0] * C for _ in range(L)]
            for m in range(stop):
                a = [float(query[b, c] * att[layer, m, c]) for c in range(C)]
                k = [float(keys[layer, m, c]) for c in range(C)]
                dot = sum(x * y for x, y in zip(a, k, strict=True))
                # cosine similarity of the attended query and the key, no softmax
                alpha = dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in k)))
                for t in range(L):
                    for c in range(C):
                        mixed[t][c] += alpha * float(prompts[layer, m, t, c])
            for t in range(L):
                kv, pos = divmod(t, L // 2)  # first L/2 tokens: keys, the rest: values
                for c in range(C):
                    head, d = divmod(c, D)  # each C-token is split over the heads
                    assert abs(float(got[layer, b, kv, pos, head, d]) - mixed[t][c]) < 1e-10


def test_orthogonality_loss() -> None:
    pool = _pool(2)
    stop = 4
    got = pool.ortho_loss(stop, frozen=2)

    def penalty(rows: list[list[float]]) -> float:
        n = len(rows)
        total = 0.0
        for i in range(n):
            for j in range(n):
                dot = sum(x * y for x, y in zip(rows[i], rows[j], strict=True))
                total += (dot - (1.0 if i == j else 0.0)) ** 2
        return total / (n * n)  # mean over the n x n Gram matrix

    expected = 0.0
    for layer in range(LAYERS):
        expected += penalty(pool.keys[layer, :stop].tolist())
        expected += penalty(pool.attention[layer, :stop].tolist())
        expected += penalty(pool.prompts[layer, :stop].reshape(stop, -1).tolist())
    assert abs(float(got.detach()) - expected) < 1e-8


def test_new_components_orthonormal_and_old_ones_frozen() -> None:
    pool = CodaPromptPool(LAYERS, M, L, C)
    gen = torch.Generator().manual_seed(3)
    pool.init_components(0, 3, gen)  # task 0
    before = {n: p.detach().clone() for n, p in pool.named_parameters()}
    pool.init_components(3, 6, gen)  # task 1
    for name, p in pool.named_parameters():
        assert torch.equal(p[:, :3], before[name][:, :3]), name  # old rows untouched
        for layer in range(LAYERS):
            rows = p[layer].reshape(M, -1).double()
            torch.testing.assert_close(rows @ rows.T, torch.eye(M, dtype=torch.float64),
                                       rtol=0, atol=1e-5)
    # gradient reaches only the current task's components
    query = torch.randn(B, C, generator=gen)
    pool.prefixes(query, stop=6, frozen=3, num_heads=H).square().sum().backward()
    for name, p in pool.named_parameters():
        assert p.grad[:, :3].abs().max() == 0, name
        assert p.grad[:, 3:].abs().max() > 0, name


# ----------------------------------------------------------------------------- invariance
@pytest.mark.slow
def test_batch_size_and_composition_invariance() -> None:
    cfg = resolve_config("synthetic", "coda-prompt", overrides={"seed": 3})
    bench = build_benchmark("synthetic", seed=3, num_classes=8, num_tasks=4, test_per_class=10,
                            train_per_class=4)
    vit = build_backbone("vit-tiny-random", img_size=bench.image_size, seed=3).model
    method = get_method("coda-prompt")(cfg, vit, bench.num_classes, bench.task_classes)
    for t in range(bench.num_tasks):  # "learned" all tasks without training
        method.begin_task(Task(t, bench.task_classes[t], bench.task_classes))
    with torch.no_grad():  # components of unit norm are tiny per entry: make prompts matter
        method.model.pool.prompts.mul_(30.0)
    images = bench.test.dataset.images

    def predict(xs: torch.Tensor, bs: int) -> torch.Tensor:
        return torch.cat([method.predict(xs[i:i + bs]) for i in range(0, len(xs), bs)])

    ref = predict(images, 128)
    with torch.no_grad():
        plain = method.model.head(method.model.query(images))
    assert (ref - plain).abs().max() > 1e-2, "the prompts must change the prediction"
    for bs in (1, 7):
        torch.testing.assert_close(predict(images, bs), ref, rtol=0, atol=1e-5)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(predict(images[perm], 16)[torch.argsort(perm)], ref,
                               rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- end to end
def _state(out: Path, t: int) -> dict[str, torch.Tensor]:
    s = torch.load(out / f"checkpoints/task_{t}.pt", weights_only=False)["method"]
    return {**{f"pool.{k}": v for k, v in s["pool"].items()},
            **{f"head.{k}": v for k, v in s["head"].items()}}


@pytest.mark.slow
def test_end_to_end_run_and_exact_resume(tmp_path: Path) -> None:
    cfg = resolve_config("synthetic", "coda-prompt", overrides={
        "epochs": 2, "batch_size": 16, "seed": 7, "keep_checkpoints": "all",  # compared below
        "dataset_options": {"num_classes": 6, "num_tasks": 3, "train_per_class": 12,
                            "test_per_class": 8}})
    full = run_experiment(cfg, tmp_path / "full")
    out = tmp_path / "full"
    for name in ("config.json", "env.json", "metrics.json", "accuracy_matrix.csv", "log.jsonl",
                 "checkpoints/task_2.pt"):
        assert (out / name).exists(), name
    assert full.metrics["FA"] > 100 / 6  # better than chance over 6 classes
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"coda", "eval"} <= {r.get("phase") for r in records}
    # components of task 0 are frozen while later tasks train
    c0, c2 = _state(out, 0), _state(out, 2)
    assert torch.equal(c0["pool.prompts"][:, :10], c2["pool.prompts"][:, :10])
    assert not torch.equal(c0["pool.prompts"][:, 10:20], c2["pool.prompts"][:, 10:20])

    check_stop_and_resume(cfg, tmp_path, full)
    a, b = _state(out, 2), _state(tmp_path / "split", 2)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_learnable_parameters_on_vit_b16_by_hand() -> None:
    """ImageNet-R preset (200 classes, 10 tasks) on ViT-B/16, built on the meta device."""
    count = sum(learnable_on_vit_b16("coda-prompt", "imagenet-r", 200, 10,
                                     "vit-b16-random").values())
    # docs/cl-background.md#coda-prompt: 5 layers x 100 components x (prompt 8 x 768 + key 768 +
    # attention 768), head 768 -> 200
    expected = 5 * 100 * (8 * 768 + 768 + 768) + (768 * 200 + 200)
    assert expected == 3_993_800  # the poster's "3.99M"
    assert count == expected
