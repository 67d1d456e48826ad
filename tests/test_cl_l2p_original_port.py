"""L2P as the original PyTorch port runs it: prompt-mean head, prompt position embedding, the
5-Datasets prompt mask and shared prompt pool (``recipe=original-port`` and single switches).

Official values are read from JH-LEE-KR/l2p-pytorch @ f7bc994; the project's default follows
MoE_PromptCL @ e418337 (configs/cifar100_l2p.py l.133 and five_datasets_l2p.py l.131:
``--head_type token``; l.119 / l.118: ``--use_prompt_mask False``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from prompt_baseline_checks import check_resume, small_config

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, get_method
from cl.models.prompt_pools import PromptTuningViT
from cl.run.engine import run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PORT = {"recipe": "original-port"}

# JH-LEE-KR/l2p-pytorch @ f7bc994: configs/cifar100_l2p.py and configs/five_datasets_l2p.py
# l.96 --head_type default 'prompt' (both); l.85 --use_prompt_mask: False (CIFAR-100), True
# (5-Datasets); l.86 --shared_prompt_pool: False / True. The prompt slots' position embedding is
# the [CLS] entry: vision_transformer.py l.386-387 (pos_embed has k*L extra slots) and
# resize_pos_embed l.668-671 (those slots get the [CLS] entry of the pretrained table).
OFFICIAL = {
    "cifar100": dict(head_type="prompt", prompt_pos_embed=True, prompt_mask=False,
                     shared_prompt_pool=False),
    "5datasets": dict(head_type="prompt", prompt_pos_embed=True, prompt_mask=True,
                      shared_prompt_pool=True),
}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
def test_original_port_switches_equal_the_official_configs(dataset: str) -> None:
    want = OFFICIAL[dataset]
    resolve = get_method("l2p").resolve_options  # option defaults + the config's options
    cfg = resolve_config(dataset, "l2p", "sup21k", overrides=PORT)
    assert {k: getattr(resolve(cfg.method_options), k) for k in want} == want
    default = resolve_config(dataset, "l2p", "sup21k")  # MoE_PromptCL: token head, no mask
    assert {k: getattr(resolve(default.method_options), k) for k in want} == dict(
        head_type="token", prompt_pos_embed=False, prompt_mask=False, shared_prompt_pool=False)


def test_offline_benchmarks_get_the_5datasets_prompts_at_their_own_budget() -> None:
    for dataset in ("synthetic", "digits"):
        default = resolve_config(dataset, "l2p")
        cfg = resolve_config(dataset, "l2p", overrides=PORT)
        assert {k: getattr(cfg.method_options, k) for k in OFFICIAL["5datasets"]} == \
            OFFICIAL["5datasets"]
        assert (cfg.method_options.pool_size, cfg.method_options.top_k) == (20, 4)
        assert cfg.method_options.batchwise_prompt is True
        assert (cfg.epochs, cfg.lr, cfg.batch_size) == (default.epochs, default.lr,
                                                        default.batch_size)


def test_single_switches_and_bad_values() -> None:
    cfg = resolve_config("synthetic", "l2p", overrides={
        "method_options.head_type": "prompt", "method_options.prompt_mask": "true"})
    assert cfg.method_options.head_type == "prompt" and cfg.method_options.prompt_mask
    with pytest.raises(ValueError, match="method_options.head_type: must be one of "
                                         "token, prompt; got 'gap'"):
        resolve_config("synthetic", "l2p", overrides={"method_options.head_type": "gap"})
    with pytest.raises(ValueError, match="method_options.prompt_mask: expected true/false, "
                                         "got 'maybe'"):
        resolve_config("synthetic", "l2p", overrides={"method_options.prompt_mask": "maybe"})
    with pytest.raises(ValueError, match="method_options.prompt_mask: expected true/false, "
                                         "got 1"):
        resolve_config("synthetic", "l2p", overrides={"method_options": {"prompt_mask": 1}})


# ------------------------------------------------------------------ the head's input
def _port_tokens(vit, prompts: torch.Tensor, ids: torch.Tensor, x: torch.Tensor,
                 pos_on_prompts: bool) -> torch.Tensor:
    """The port's layout written out: [CLS, chosen prompts, patches] + its position table
    ([CLS] entry repeated over the prompt slots), blocks, final norm."""
    B = x.shape[0]
    chosen = torch.stack([torch.cat([prompts[j] for j in row.tolist()]) for row in ids])
    n_prompt = chosen.shape[1]
    pos_cls, pos_patches = vit.pos_embed[:, :1], vit.pos_embed[:, 1:]
    prompt_pos = pos_cls.expand(-1, n_prompt, -1) if pos_on_prompts else torch.zeros_like(
        chosen[:1])
    h = torch.cat([vit.cls_token.expand(B, -1, -1) + pos_cls, chosen + prompt_pos,
                   vit.patch_embed(x) + pos_patches], dim=1)
    for block in vit.blocks:
        h = block(h)
    return vit.norm(h)


@pytest.mark.parametrize("pos_on_prompts", [False, True])
def test_prompt_head_reads_the_mean_of_the_prompt_outputs(pos_on_prompts: bool) -> None:
    vit = build_backbone("vit-tiny-random", img_size=32, seed=4).model
    reference = build_backbone("vit-tiny-random", img_size=32, seed=4).model
    g = torch.Generator().manual_seed(4)
    model = PromptTuningViT(vit, 5, pool_size=6, length=3, generator=g, head_type="prompt",
                            prompt_pos_embed=pos_on_prompts)
    x = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.tensor([[0, 4], [5, 1], [2, 2]])
    with torch.no_grad():
        tokens = _port_tokens(reference, model.prompt, ids, x, pos_on_prompts)
        want = tokens[:, 1:1 + 2 * 3].mean(dim=1)  # prompt slots 1 .. k*L; [CLS] at 0 excluded
        got = model.features(x, ids)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        torch.testing.assert_close(model(x, ids), model.head(want), rtol=0, atol=2e-5)
        # the [CLS] output is something else: the mean does not include it
        assert not torch.allclose(got, tokens[:, :1 + 6].mean(dim=1), atol=1e-3)
        # the token head of the same model reads the [CLS] output
        model.head_type = "token"
        torch.testing.assert_close(model.features(x, ids), tokens[:, 0], rtol=0, atol=2e-5)


def test_prompt_head_needs_prompts_and_a_known_type() -> None:
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model
    with pytest.raises(ValueError, match="head_type must be one of token, prompt; got 'gap'"):
        PromptTuningViT(vit, 3, pool_size=2, length=1, head_type="gap")
    model = PromptTuningViT(vit, 3, pool_size=2, length=1, head_type="prompt")
    with pytest.raises(ValueError, match="prompt_ids needed"):
        model.features(torch.zeros(1, 3, 32, 32), None)


# ------------------------------------------------------------------ prompt mask
def _method(pool_size: int = 6, top_k: int = 2, **options):
    """L2P on 4 tasks of 2 classes with a hand-built pool: key j = the query of image j."""
    overrides = {"seed": 3, "epochs": 1, "method_options": {
        "pool_size": pool_size, "length": 2, "top_k": top_k, "pull_coeff": 0.5, **options}}
    cfg = resolve_config("synthetic", "l2p", overrides=overrides)
    vit = build_backbone("vit-tiny-random", img_size=32, seed=3).model
    classes = [[0, 1], [2, 3], [4, 5], [6, 7]]
    method = get_method("l2p")(cfg, vit, 8, classes)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(pool_size, 3, 32, 32, generator=g)
    with torch.no_grad():
        method.model.key.copy_(method.model.query(x))
    return method, classes, x


def _numpy_top_k(query: torch.Tensor, keys: torch.Tensor, k: int) -> list[list[int]]:
    q = query.double().numpy()
    kk = keys.detach().double().numpy()
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        kk / np.linalg.norm(kk, axis=1, keepdims=True)).T
    return np.argsort(-sim, axis=1, kind="stable")[:, :k].tolist()


def test_prompt_mask_trains_each_task_on_its_own_slice_and_tests_on_the_whole_pool() -> None:
    method, classes, x = _method(prompt_mask=True)
    query = method.model.query(x)
    by_key = _numpy_top_k(query, method.model.key, 2)
    assert by_key[0][0] == 0 and by_key[5][0] == 5  # image j's best key is key j
    # training: task t uses prompts 2t, 2t+1 for every image, whatever the keys say
    for t, want in ((0, [0, 1]), (1, [2, 3]), (2, [4, 5])):
        assert method._train_ids(query, t).tolist() == [want] * 6
    # task 3's slice (6, 7) is past the pool of 6: the port falls back to key matching
    assert method._train_ids(query, 3).tolist() == by_key
    method.task_index = 3
    assert method.select(x).tolist() == by_key  # test time: no mask, the whole pool
    # without the mask, training selects like testing
    plain, _, _ = _method(prompt_mask=False)
    assert plain._train_ids(plain.model.query(x), 1).tolist() == by_key


def test_masked_training_moves_only_the_task_prompts_and_keys() -> None:
    method, classes, x = _method(prompt_mask=True)
    method.begin_task(Task(1, classes[1], classes))
    before_p, before_k = method.model.prompt.detach().clone(), method.model.key.detach().clone()
    method.train_task([(x, torch.tensor([2, 3, 2, 3, 2, 3]))])  # one Adam step
    moved_p = (method.model.prompt.detach() != before_p).flatten(1).any(1)
    moved_k = (method.model.key.detach() != before_k).any(1)
    assert moved_p.tolist() == [False, False, True, True, False, False]
    assert moved_k.tolist() == [False, False, True, True, False, False]


def test_shared_prompt_pool_starts_each_slice_from_the_previous_one() -> None:
    method, classes, _ = _method(prompt_mask=True, shared_prompt_pool=True)
    prompts = method.model.prompt
    method.begin_task(Task(0, classes[0], classes))
    start = prompts.detach().clone()
    method.begin_task(Task(1, classes[1], classes))
    torch.testing.assert_close(prompts[2:4], start[0:2], rtol=0, atol=0)
    torch.testing.assert_close(prompts[[0, 1, 4, 5]], start[[0, 1, 4, 5]], rtol=0, atol=0)
    with torch.no_grad():  # as if task 1 had trained its slice
        prompts[2:4] += 1.0
    trained = prompts.detach().clone()
    method.begin_task(Task(2, classes[2], classes))
    torch.testing.assert_close(prompts[4:6], trained[2:4], rtol=0, atol=0)  # task 1's, not 0's
    torch.testing.assert_close(prompts[:4], trained[:4], rtol=0, atol=0)
    copied = prompts.detach().clone()
    method.begin_task(Task(3, classes[3], classes))  # slice 6, 7 does not exist: no copy
    torch.testing.assert_close(prompts.detach(), copied, rtol=0, atol=0)
    off, _, _ = _method(prompt_mask=True, shared_prompt_pool=False)
    untouched = off.model.prompt.detach().clone()
    off.begin_task(Task(0, classes[0], classes))
    off.begin_task(Task(1, classes[1], classes))
    torch.testing.assert_close(off.model.prompt.detach(), untouched, rtol=0, atol=0)


def test_oracle_prompts_are_the_true_task_slice_under_the_mask() -> None:
    method, _, x = _method(prompt_mask=True)
    method.task_index = 3
    task_ids = torch.tensor([0, 1, 2, 3, 2, 0])
    by_key = _numpy_top_k(method.model.query(x), method.model.key, 2)
    want = [[0, 1], [2, 3], [4, 5], by_key[3], [4, 5], [0, 1]]
    assert method._oracle_ids(x, task_ids).tolist() == want
    plain, _, _ = _method()
    plain.task_index = 3
    assert plain._oracle_ids(x, task_ids).tolist() == by_key


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_original_port_runs_end_to_end_on_the_offline_data(tmp_path: Path) -> None:
    cfg = small_config("l2p", epochs=1, recipe="original-port", protocol="official")
    assert (cfg.method_options.head_type, cfg.method_options.prompt_mask) == ("prompt", True)
    result = run_experiment(cfg, tmp_path / "run")
    assert result.finished and 0.0 <= result.metrics["FA"] <= 100.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["recipe"] == "original-port" and saved["method_options"]["shared_prompt_pool"]


@pytest.mark.slow
def test_original_port_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Stopped after task 1 and resumed: the shared-pool copy happens once per task."""
    check_resume("l2p", tmp_path, epochs=1, recipe="original-port")


def test_pull_under_the_mask_is_towards_the_task_keys() -> None:
    """The logged key similarity of a masked batch is the mean cosine to the task's keys."""
    method, classes, x = _method(prompt_mask=True)
    records: list[dict] = []
    method.log = records.append
    method.begin_task(Task(2, classes[2], classes))
    query = method.model.query(x)
    keys = method.model.key.detach().clone()
    want = float((F.normalize(query, dim=1) @ F.normalize(keys[4:6], dim=1).T).sum() / 6)
    method.train_task([(x, torch.tensor([4, 5, 4, 5, 4, 5]))])
    (record,) = [r for r in records if r.get("phase") == "train"]
    assert record["key_similarity"] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(("head_type", "pos"), [("prompt", True), ("token", False),
                                                ("prompt", False)])
def test_method_options_reach_the_built_model(head_type: str, pos: bool) -> None:
    """The L2P method hands ``head_type`` and ``prompt_pos_embed`` to the model it builds."""
    method, _, _ = _method(head_type=head_type, prompt_pos_embed=pos)
    assert (method.model.head_type, method.model.prompt_pos_embed) == (head_type, pos)
