"""S-Prompt++: nearest-key task choice, E-prefixes in blocks 0-4 without G-prompt, end to end,
resume, batch invariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from prompt_baseline_checks import (
    check_batch_invariance,
    check_batchwise_vote_leaks,
    check_cli_quick_run,
    check_resume,
    learnable_on_vit_b16,
)

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _method(seen_tasks: int, seed: int = 6):
    cfg = resolve_config("synthetic", "sprompt", overrides={"seed": seed})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=seed).model
    task_classes = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    method = get_method("sprompt")(cfg, vit, 10, task_classes)
    for t in range(seen_tasks):
        method.begin_task(Task(t, task_classes[t], task_classes))
    return method


def test_task_is_the_nearest_key_of_the_frozen_feature() -> None:
    method = _method(seen_tasks=4)
    reference = build_backbone("vit-tiny-random", img_size=32, seed=6).model  # untouched copy
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 32, 32, generator=g)
    with torch.no_grad():
        query = reference.forward_features(x)[:, 0].double().numpy()
        # keys near the features of four images, scaled: cosine, not distance, must decide
        anchors = reference.forward_features(x[[0, 3, 6, 9]])[:, 0]
        keys = anchors * torch.tensor([[0.1], [10.0], [1.0], [3.0]]) + 0.2 * torch.randn(
            4, 128, generator=g)
        method.model.key[:4] = keys
        method.model.key[4] = torch.from_numpy(query[0]).float()  # task 4 is not seen yet
    k = method.model.key.detach().double().numpy()[:4]
    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        k / np.linalg.norm(k, axis=1, keepdims=True)).T
    want = np.argmax(cos, axis=1)
    assert len(set(want.tolist())) >= 3
    logits, tasks = method.predict_with_tasks(x)
    np.testing.assert_array_equal(tasks.numpy(), want)
    # each sample is classified with its chosen task's prompt
    torch.testing.assert_close(logits, method.model(x, torch.from_numpy(want)), rtol=0, atol=1e-5)
    # once task 4 is seen, image 0 (whose feature is key 4) goes to task 4
    method.begin_task(Task(4, [8, 9], method.task_classes))
    assert int(method.predict_with_tasks(x[:1])[1]) == 4


def test_e_prefix_in_blocks_0_to_4_and_no_g_prompt() -> None:
    method = _method(seen_tasks=1)
    model = method.model
    assert model.g_prompt is None and model.e_layers == [0, 1, 2, 3, 4]
    assert model.e_prompt.shape == (5, 2, 5, 5, 4, 32)  # synthetic preset: e_length 5
    prefixes = model.layer_prefixes(torch.tensor([3, 1]))
    assert sorted(prefixes) == [0, 1, 2, 3, 4]
    for j in range(5):
        torch.testing.assert_close(prefixes[j][0], model.e_prompt[j, :, 3])
        torch.testing.assert_close(prefixes[j][1], model.e_prompt[j, :, 1])


def test_cli_quick_run_writes_the_run_directory(tmp_path: Path) -> None:
    metrics = check_cli_quick_run("sprompt", tmp_path)
    assert 0.0 <= metrics["TII_accuracy"] <= 100.0


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    check_resume("sprompt", tmp_path)


@pytest.mark.slow
def test_batch_size_and_composition_invariance() -> None:
    check_batch_invariance("sprompt")


def test_batchwise_vote_is_batch_dependent() -> None:
    check_batchwise_vote_leaks("sprompt")


def test_presets() -> None:
    cfg = resolve_config("cifar100", "sprompt", "sup21k")
    o = cfg.method_options
    assert (cfg.epochs, cfg.lr, o.scheduler, o.batchwise_prompt) == (20, 0.005, "constant", False)
    assert cfg.method_options.to_dict().items() >= {
        "g_layers": [], "e_layers": [0, 1, 2, 3, 4], "e_length": 20,
                                  "pull_coeff": 1.0}.items()
    cfg = resolve_config("cub200", "sprompt", "sup21k")
    assert (cfg.epochs, cfg.method_options.scheduler) == (50, "step")


def test_parameter_count_on_vit_b16() -> None:
    """CIFAR-100: E (5, 2, 10, 20, 12, 64) = 1.536M (HiDe's prompt size), keys, head."""
    counts = learnable_on_vit_b16("sprompt", "cifar100", 100, 10)
    assert counts == {"e_prompt": 5 * 2 * 10 * 20 * 12 * 64, "key": 10 * 768,
                      "head.weight": 768 * 100, "head.bias": 100}
