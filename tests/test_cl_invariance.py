"""Per-sample prompts: predictions do not depend on the test batch size or composition."""

from __future__ import annotations

import pytest
import torch

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.data import build_benchmark
from cl.methods import Task, get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _method(name: str, legacy: bool = False):
    cfg = resolve_config("synthetic", name, overrides={"legacy_kv_reshape": legacy, "seed": 3})
    bench = build_benchmark("synthetic", seed=3, num_classes=8, num_tasks=4, test_per_class=10,
                            train_per_class=4)
    vit = build_backbone("vit-tiny-random", img_size=bench.image_size, seed=3).model
    method = get_method(name)(cfg, vit, bench.num_classes, bench.task_classes)
    for t in range(bench.num_tasks):  # "learned" all tasks without training
        method.begin_task(Task(t, bench.task_classes[t], bench.task_classes))
    # make every task's prompt and the TII head distinct so that samples really pick
    # different prompts
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        method.model.prompt.prompt.uniform_(-1, 1, generator=g)
        method.tii.head.weight.normal_(0, 1, generator=g)
    return method, bench.test.dataset.images


def _predict(method, images, batch_size):
    logits, tasks = [], []
    for i in range(0, len(images), batch_size):
        out, t = method.predict_with_tasks(images[i:i + batch_size])
        logits.append(out)
        tasks.append(t)
    return torch.cat(logits), torch.cat(tasks)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["norga", "hide"])
def test_batch_size_and_composition_invariance(name: str) -> None:
    method, images = _method(name)
    ref_logits, ref_tasks = _predict(method, images, 128)
    assert len(set(ref_tasks.tolist())) >= 3, "samples must use different prompts"
    for bs in (1, 7):
        logits, tasks = _predict(method, images, bs)
        assert torch.equal(tasks, ref_tasks)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
        assert torch.equal(logits.argmax(1), ref_logits.argmax(1))
    # shuffle: every batch now mixes tasks differently
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    logits, _ = _predict(method, images[perm], 16)
    torch.testing.assert_close(logits[torch.argsort(perm)], ref_logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_legacy_reshape_is_batch_dependent() -> None:
    """The published reshape bug makes predictions depend on the batch (why we fixed it)."""
    method, images = _method("norga", legacy=True)
    a, _ = _predict(method, images[:32], 32)
    b, _ = _predict(method, images[:32], 1)
    assert not torch.allclose(a, b, atol=1e-3)
