"""Unit tests of the key-matched prompt baselines (``cl/methods/{prompt_pool,l2p,dualprompt,
sprompt}.py``) on a tiny ViT: each training step against a hand-made Adam step on a twin model
(CE over the task's classes minus the key pull, lr x batch/256, clipping), prompt selection and
task identity against hand-built keys, the batch votes, the epoch schedule of the first task,
option checks and checkpoint round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from cl_helpers import PoisonedLoader

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, get_method
from cl.models.prompt_pools import GEPrefixViT, PromptTuningViT, majority_vote, official_vote
from cl.run.seeding import torch_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 6 classes in 3 tasks, shuffled ids: a mask built from the wrong list shows
SCHEDULE = [[3, 0], [5, 1], [2, 4]]
NUM_CLASSES = 6
IMAGE = 16
BATCH = 4
L2P_OPTIONS = {"pool_size": 5, "length": 2, "top_k": 2, "pull_coeff": 0.3}
PREFIX_OPTIONS = {"g_length": 2, "e_length": 3, "pull_coeff": 0.7}


def _config(name: str, options: dict | None = None, **overrides):
    return resolve_config("synthetic", name, overrides={
        "seed": 3, "batch_size": BATCH, "epochs": 1, "lr": 2.0, "clip_grad": 0.05,
        "method_options": options or {}, **overrides})


def _method(name: str, options: dict | None = None, *, log=None, progress=None, **overrides):
    cfg = _config(name, options, **overrides)
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=3).model
    return get_method(name)(cfg, vit, NUM_CLASSES, SCHEDULE, log=log, progress=progress)


def _options(name: str) -> dict:
    return L2P_OPTIONS if name == "l2p" else PREFIX_OPTIONS


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _labels(task: int, n: int) -> torch.Tensor:
    classes = SCHEDULE[task]
    return torch.tensor([classes[i % len(classes)] for i in range(n)])


def _top_k_by_cosine(query: torch.Tensor, keys: torch.Tensor, k: int,
                     allowed: list[int] | None = None) -> torch.Tensor:
    sim = F.normalize(query, dim=1) @ F.normalize(keys, dim=1).T
    if allowed is not None:
        blocked = torch.ones(keys.shape[0], dtype=torch.bool)
        blocked[allowed] = False
        sim = sim.masked_fill(blocked, -math.inf)
    return sim.topk(k, dim=1).indices


def _begin(method, upto: int) -> None:
    for t in range(upto + 1):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))


# ---------------------------------------------------------------------------- construction


def test_l2p_model_is_the_seeded_prompt_pool_in_eval_mode() -> None:
    method = _method("l2p", L2P_OPTIONS)
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=3).model
    twin = PromptTuningViT(vit, NUM_CLASSES, pool_size=5, length=2,
                           generator=torch_generator(3, "prompt-init"))
    model = method.model
    assert isinstance(model, PromptTuningViT) and not model.training
    assert model.prompt.shape == (5, 2, 128) and model.num_classes == NUM_CLASSES
    for name in ("prompt", "key", "head.weight", "head.bias"):
        torch.testing.assert_close(model.get_parameter(name), twin.get_parameter(name),
                                   rtol=0, atol=0)
    assert method.optimizer is None and method.scheduler is None
    assert method.scale == BATCH / 256.0 and method.top_k == 2
    assert method.task_index == -1 and method.task is None
    # the learned parameters are exactly prompts, keys and head
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == [
        "head.bias", "head.weight", "key", "prompt"]


@pytest.mark.parametrize("attention", ["fused", "reference"])
def test_dualprompt_model_follows_the_options(attention: str) -> None:
    options = {"g_layers": [1], "g_length": 2, "e_layers": [0, 3], "e_length": 3}
    method = _method("dualprompt", options, attention=attention, legacy_kv_reshape=True)
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=3).model
    twin = GEPrefixViT(vit, NUM_CLASSES, pool_size=3, g_layers=[1], g_length=2,
                       e_layers=[0, 3], e_length=3, generator=torch_generator(3, "prompt-init"))
    model = method.model
    assert not model.training and model.legacy_kv_reshape is True
    assert (model.g_layers, model.e_layers, model.pool_size) == ([1], [0, 3], 3)
    assert model.g_prompt.shape == (1, 2, 2, 4, 32) and model.e_prompt.shape == (2, 2, 3, 3, 4, 32)
    for name in ("g_prompt", "e_prompt", "key", "head.weight"):
        torch.testing.assert_close(model.get_parameter(name), twin.get_parameter(name),
                                   rtol=0, atol=0)
    fused = {model.vit.blocks[i].attn.fused for i in (0, 1, 3)}
    assert fused == {attention == "fused"}
    assert method.top_k == 1


def test_sprompt_has_no_g_prompt_and_e_prompts_in_blocks_0_to_4() -> None:
    method = _method("sprompt")
    assert method.model.g_prompt is None and method.model.e_layers == [0, 1, 2, 3, 4]
    assert method.options.pull_coeff == 1.0 and method.model.e_length == 5


# ---------------------------------------------------------------------------- options


def test_l2p_option_bounds() -> None:
    good = get_method("l2p").resolve_options({"pool_size": 4, "top_k": 4, "length": 1,
                                              "pull_coeff": 0})
    assert good.top_k == 4 and good.length == 1 and good.pull_coeff == 0
    assert get_method("l2p").resolve_options({"pool_size": 4, "top_k": 1}).top_k == 1
    for bad in ({"pool_size": 4, "top_k": 5}, {"pool_size": 4, "top_k": 0}):
        with pytest.raises(ValueError) as info:
            get_method("l2p").resolve_options(bad)
        assert str(info.value) == ("method_options.top_k: must be in [1, pool_size=4], got "
                                   f"{bad['top_k']}")
    with pytest.raises(ValueError) as info:
        get_method("l2p").resolve_options({"length": 0})
    assert str(info.value) == "method_options.length: must be positive, got 0"
    with pytest.raises(ValueError) as info:
        get_method("l2p").resolve_options({"pull_coeff": -0.5})
    assert str(info.value) == "method_options.pull_coeff: must be >= 0, got -0.5"


@pytest.mark.parametrize("name", ["dualprompt", "sprompt"])
def test_prefix_lengths_must_be_positive(name: str) -> None:
    cls = get_method(name)
    assert cls.resolve_options({"g_length": 1, "e_length": 1}).e_length == 1
    for field in ("g_length", "e_length"):
        with pytest.raises(ValueError) as info:
            cls.resolve_options({field: 0})
        assert str(info.value) == f"method_options.{field}: must be positive, got 0"
    with pytest.raises(ValueError, match="pull_coeff: must be >= 0"):
        cls.resolve_options({"pull_coeff": -1})


# ---------------------------------------------------------------------------- training


def _hand_made_training(twin, name: str, task: int, batches, *, lr: float, clip: float,
                        pull_coeff: float, k: int, prompt_mask: bool = True) -> list[float]:
    """Train ``twin`` (a copy of the method's model) as docs/cl-background.md describes, step by
    step; returns the batch losses."""
    params = [p for p in twin.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr * BATCH / 256.0, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0)
    outside = [c for c in range(NUM_CLASSES) if c not in SCHEDULE[task]]
    losses = []
    for x, y in batches:
        with torch.no_grad():
            query = twin.query(x)
        if name == "l2p":
            ids = _top_k_by_cosine(query, twin.key.detach(), k)
            feats = twin.features(x, ids)
        elif prompt_mask:
            ids = torch.full((x.shape[0], 1), task)
            feats = twin.features(x, ids[:, 0])
        else:
            ids = _top_k_by_cosine(query, twin.key.detach(), 1, list(range(task + 1)))
            feats = twin.features(x, ids[:, 0])
        logits = twin.classify(feats)
        logits[:, outside] = -math.inf
        ce = F.cross_entropy(logits, y)
        qn, kn = F.normalize(query, dim=1), F.normalize(twin.key, dim=1)
        pull = sum(qn[b] @ kn[j] for b in range(x.shape[0]) for j in ids[b].tolist()) / len(x)
        loss = ce - pull_coeff * pull
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        correct = int((logits.argmax(1) == y).sum())
        losses.append((float(loss.detach()), float(pull.detach()), correct))
    return losses


@pytest.mark.parametrize(("name", "task", "prompt_mask"), [
    ("l2p", 1, True), ("dualprompt", 1, True), ("dualprompt", 2, False), ("sprompt", 1, True)])
def test_training_equals_a_hand_made_adam_run(name: str, task: int, prompt_mask: bool) -> None:
    options = dict(_options(name))
    if name != "l2p":
        options["prompt_mask"] = prompt_mask
    records: list[dict] = []
    descs: list[str] = []

    def progress(iterable, desc):
        descs.append(desc)
        return iterable

    method = _method(name, options, log=records.append, progress=progress)
    _begin(method, task)
    if name != "l2p":  # E-prompt t starts from E-prompt t - 1
        torch.testing.assert_close(method.model.e_prompt[:, :, task],
                                   method.model.e_prompt[:, :, task - 1], rtol=0, atol=0)
    twin = copy.deepcopy(method.model)
    batches = [(_images(BATCH, 1), _labels(task, BATCH)), (_images(BATCH, 2), _labels(task, BATCH))]
    want = _hand_made_training(twin, name, task, batches, lr=2.0, clip=0.05,
                               pull_coeff=options["pull_coeff"], k=method.top_k,
                               prompt_mask=prompt_mask)
    method.train_task(batches)
    for (key, got), (_, ref) in zip(method.model.named_parameters(), twin.named_parameters(),
                                    strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=key)
    (record,) = records
    assert record["phase"] == "train" and record["task"] == task and record["epoch"] == 0
    assert record["loss"] == pytest.approx(sum(w[0] for w in want) / 2, abs=1e-5)
    assert record["key_similarity"] == pytest.approx(sum(w[1] for w in want) / 2, abs=1e-5)
    assert record["train_acc"] == pytest.approx(100 * sum(w[2] for w in want) / (2 * BATCH))
    assert record["lr"] == pytest.approx(2.0 * BATCH / 256)
    assert descs == [f"task {task} epoch 0"]
    adam = method.optimizer
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.defaults["betas"], adam.defaults["eps"], adam.defaults["weight_decay"]) == (
        (0.9, 0.999), 1e-8, 0.0)


def test_only_the_task_prompt_trains_under_the_prompt_mask() -> None:
    method = _method("dualprompt", PREFIX_OPTIONS)
    _begin(method, 1)
    before = method.model.e_prompt.detach().clone()
    key_before = method.model.key.detach().clone()
    method.train_task([(_images(BATCH, 1), _labels(1, BATCH))])
    after = method.model.e_prompt.detach()
    assert not torch.equal(after[:, :, 1], before[:, :, 1])
    for t in (0, 2):
        assert torch.equal(after[:, :, t], before[:, :, t])
        assert torch.equal(method.model.key[t].detach(), key_before[t])


@pytest.mark.parametrize("shared", [True, False])
def test_e_prompt_copy_happens_only_at_later_tasks_of_a_shared_pool(shared: bool) -> None:
    method = _method("dualprompt", {**PREFIX_OPTIONS, "shared_prompt_pool": shared})
    start = method.model.e_prompt.detach().clone()
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert torch.equal(method.model.e_prompt.detach(), start)  # task 0: nothing copied
    with torch.no_grad():
        method.model.e_prompt[:, :, 0] += 1.0  # as if task 0 had trained it
    trained = method.model.e_prompt.detach().clone()
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    got = method.model.e_prompt.detach()
    assert torch.equal(got[:, :, 0], trained[:, :, 0])
    assert torch.equal(got[:, :, 2], trained[:, :, 2])
    assert torch.equal(got[:, :, 1], trained[:, :, 0] if shared else trained[:, :, 1])


def test_first_task_schedule_with_the_lag_and_later_tasks_at_the_base_rate() -> None:
    records: list[dict] = []
    method = _method("l2p", L2P_OPTIONS, log=records.append, scheduler="cosine", epochs=3)
    batch = [(_images(2, 1), _labels(0, 2))]
    base = 2.0 * BATCH / 256
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert method.scheduler is not None
    method.train_task(batch)

    # docs/cl-background.md#training-conventions with the lag: epoch k runs at f(k - 1)
    def cosine(k: int) -> float:
        return 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * (k - 1) / 3))

    # the record of epoch e gives the rate the next epoch runs at
    assert [r["lr"] for r in records] == pytest.approx([cosine(1), cosine(2), cosine(3)])
    assert [r["epoch"] for r in records] == [0, 1, 2]
    records.clear()
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    assert method.scheduler is None  # the original builds the schedule once
    method.train_task([(_images(2, 1), _labels(1, 2))])
    assert [r["lr"] for r in records] == pytest.approx([base] * 3)

    rebuilt = _method("l2p", {**L2P_OPTIONS, "schedule_first_task_only": False},
                      scheduler="cosine", epochs=3)
    _begin(rebuilt, 1)
    assert rebuilt.scheduler is not None
    assert rebuilt.optimizer.param_groups[0]["lr"] == pytest.approx(base)


# ---------------------------------------------------------------------------- selection


def test_l2p_selects_the_top_k_keys_per_sample_in_training_and_test() -> None:
    method = _method("l2p", L2P_OPTIONS)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    x = _images(6, 4)
    model = method.model
    with torch.no_grad():
        query = model.query(x)
        model.key.copy_(query[[0, 1, 2, 3, 4]] + 0.1 * model.key)  # keys near the images
    want = _top_k_by_cosine(query, model.key.detach(), 2)
    assert len({tuple(r) for r in want.tolist()}) >= 4
    assert torch.equal(method.select(x), want)
    assert torch.equal(method._train_ids(query, 0), want)
    logits, tasks = method.predict_with_tasks(x)
    assert tasks is None  # L2P has no task identity
    with torch.no_grad():
        expected = model.classify(model.features(x, want))
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(method.predict(x), expected, rtol=0, atol=0)
    task_ids = torch.tensor([0, 2, 1, 0, 1, 2])
    oracle = method.predict_oracle(x, task_ids)
    for b, t in enumerate(task_ids.tolist()):
        for c in range(NUM_CLASSES):
            if c in SCHEDULE[t]:
                assert oracle[b, c] == expected[b, c]
            else:
                assert oracle[b, c] == -math.inf


def test_prediction_needs_a_task() -> None:
    method = _method("l2p", L2P_OPTIONS)
    with pytest.raises(AssertionError, match="no task"):
        method.predict(_images(1))


def test_dualprompt_task_identity_is_the_nearest_seen_key() -> None:
    method = _method("dualprompt", PREFIX_OPTIONS)
    model = method.model
    x = _images(3, 5)
    with torch.no_grad():
        query = model.query(x)
        model.key.copy_(query[[2, 0, 1]])  # key t is image (t + 2) % 3's feature
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    assert method._allowed_keys().tolist() == [True, False, False]
    method.begin_task(Task(1, SCHEDULE[1], SCHEDULE))
    assert method._allowed_keys().tolist() == [True, True, False]
    # task 2 not seen yet: image 1 (whose feature is key 2) takes the better of keys 0 and 1
    want = _top_k_by_cosine(query, model.key.detach(), 1, [0, 1])[:, 0]
    assert want.tolist()[0] == 1 and want.tolist()[2] == 0
    logits, tasks = method.predict_with_tasks(x)
    assert torch.equal(tasks, want)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x, want), rtol=0, atol=0)
    method.begin_task(Task(2, SCHEDULE[2], SCHEDULE))
    assert method.predict_with_tasks(x)[1].tolist() == [1, 2, 0]
    # oracle: each sample uses its true task's prompt and keeps only that task's classes
    task_ids = torch.tensor([2, 2, 0])
    oracle = method.predict_oracle(x, task_ids)
    with torch.no_grad():
        full = model(x, task_ids)
    for b, t in enumerate(task_ids.tolist()):
        for c in range(NUM_CLASSES):
            assert oracle[b, c] == (full[b, c] if c in SCHEDULE[t] else -math.inf)


def test_match_all_keys_allows_untrained_keys() -> None:
    method = _method("dualprompt", {**PREFIX_OPTIONS, "match_all_keys": True})
    _begin(method, 0)
    assert method._allowed_keys() is None
    x = _images(3, 5)
    with torch.no_grad():
        method.model.key.copy_(method.model.query(x)[[2, 0, 1]])
    assert method.predict_with_tasks(x)[1].tolist() == [1, 2, 0]


def test_training_without_the_prompt_mask_selects_like_testing() -> None:
    method = _method("dualprompt", {**PREFIX_OPTIONS, "prompt_mask": False})
    _begin(method, 1)
    x = _images(3, 5)
    with torch.no_grad():
        query = method.model.query(x)
        method.model.key.copy_(query[[2, 0, 1]])
    want = _top_k_by_cosine(query, method.model.key.detach(), 1, [0, 1])
    assert torch.equal(method._train_ids(query, 1), want)
    masked = _method("dualprompt", PREFIX_OPTIONS)
    _begin(masked, 1)
    ids = masked._train_ids(query, 1)
    assert ids.dtype == torch.long and ids.tolist() == [[1], [1], [1]]


# hand-picked ids where the two votes differ: majority [2, 0] (tie 0/5 -> smaller), official [2, 5]
VOTE_IDS = torch.tensor([[0, 0], [2, 3], [2, 5], [5, 2]])


@pytest.mark.parametrize("legacy", [False, True])
def test_batchwise_prompt_uses_the_requested_vote(legacy: bool, monkeypatch) -> None:
    assert majority_vote(VOTE_IDS, 2)[0].tolist() == [2, 0]
    assert official_vote(VOTE_IDS, 2, 6)[0].tolist() == [2, 5]
    method = _method("l2p", {**L2P_OPTIONS, "pool_size": 6}, batchwise_prompt=True,
                     legacy_vote_ties=legacy)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    monkeypatch.setattr(method.model, "match", lambda query, k, allowed=None: (VOTE_IDS, None))
    query = torch.zeros(4, 128)
    want = [2, 5] if legacy else [2, 0]
    assert method.select_from_query(query).tolist() == [want] * 4
    assert method._train_ids(query, 0).tolist() == [want] * 4
    per_sample = _method("l2p", {**L2P_OPTIONS, "pool_size": 6})
    monkeypatch.setattr(per_sample.model, "match", lambda query, k, allowed=None: (VOTE_IDS, None))
    assert torch.equal(per_sample.select_from_query(query), VOTE_IDS)


# ---------------------------------------------------------------------------- state


@pytest.mark.parametrize("name", ["l2p", "dualprompt"])
def test_checkpoint_round_trip_continues_identically(name: str) -> None:
    options = _options(name)
    method = _method(name, options, scheduler="cosine", epochs=2)
    method.begin_task(Task(0, SCHEDULE[0], SCHEDULE))
    method.train_task([(_images(BATCH, 1), _labels(0, BATCH))])
    raw = method.state_dict()
    # as if through torch.save / torch.load: the optimizer's state dict holds live tensors
    state = copy.deepcopy(raw)
    assert state["method"] == name and state["task_index"] == 0
    assert state["options"] == method.options.to_dict()
    assert raw["options"] is not method.options
    assert not any(k.startswith("vit.") for k in state["model"])
    assert "key" in state["model"] and "head.weight" in state["model"]
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2
    # stored copies: later training does not change the checkpoint
    key = raw["model"]["key"].clone()
    fresh = _method(name, options, scheduler="cosine", epochs=2)
    fresh.load_state_dict(state)
    assert fresh.task_index == 0 and fresh.task.index == 0 and fresh.task.classes == SCHEDULE[0]
    assert fresh.scheduler.state_dict() == method.scheduler.state_dict()
    x = _images(5, 6)
    torch.testing.assert_close(fresh.predict(x), method.predict(x), rtol=0, atol=0)
    batch = [(_images(BATCH, 7), _labels(0, BATCH))]
    method.train_task(batch)
    fresh.train_task(batch)
    assert torch.equal(raw["model"]["key"], key)
    for (n, a), (_, b) in zip(method.model.named_parameters(), fresh.model.named_parameters(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, n=n: f"{n}: {m}")


def test_checkpoint_before_any_task_restores_no_optimizer() -> None:
    method = _method("l2p", L2P_OPTIONS)
    state = method.state_dict()
    assert state["optimizer"] is None and state["scheduler"] is None and state["task_index"] == -1
    other = _method("l2p", L2P_OPTIONS)
    other.load_state_dict(state)
    assert other.optimizer is None and other.task_index == -1 and other.task is None


def test_checkpoint_of_a_later_task_without_a_schedule() -> None:
    method = _method("l2p", L2P_OPTIONS, scheduler="cosine")
    _begin(method, 1)
    method.train_task([(_images(BATCH, 1), _labels(1, BATCH))])
    state = method.state_dict()
    assert state["scheduler"] is None
    fresh = _method("l2p", L2P_OPTIONS, scheduler="cosine")
    fresh.load_state_dict(state)
    assert fresh.scheduler is None and fresh.task.classes == SCHEDULE[1]
    assert fresh.optimizer.state_dict()["state"].keys() == method.optimizer.state_dict()[
        "state"].keys()


def test_checkpoints_that_do_not_fit_are_refused() -> None:
    method = _method("l2p", L2P_OPTIONS)
    state = method.state_dict()
    with pytest.raises(ValueError, match="checkpoint is for method 'dualprompt', not 'l2p'"):
        method.load_state_dict({**state, "method": "dualprompt"})
    extra = {**state, "model": {**state["model"], "bogus": torch.zeros(1)}}
    with pytest.raises(ValueError) as info:
        method.load_state_dict(extra)
    assert str(info.value) == "checkpoint does not fit the model: missing [], unexpected ['bogus']"
    missing = {**state, "model": {k: v for k, v in state["model"].items() if k != "key"}}
    with pytest.raises(ValueError) as info:
        method.load_state_dict(missing)
    assert str(info.value) == "checkpoint does not fit the model: missing ['key'], unexpected []"


# ---------------------------------------------------------------------------- guards + devices


def _poisoned(task: int, epoch: int, step: int) -> PoisonedLoader:
    """Clean batches of ``task``, except a NaN image at ``step`` of epoch ``epoch``."""
    return PoisonedLoader(lambda i: (_images(2, 10 + i), _labels(task, 2)), epoch, step)


def test_a_non_finite_loss_names_phase_task_epoch_and_step() -> None:
    method = _method("l2p", L2P_OPTIONS, epochs=2)
    _begin(method, 1)
    with pytest.raises(FloatingPointError) as info:
        method.train_task(_poisoned(1, 1, 1))
    assert str(info.value) == "non-finite loss (nan) in train training at task 1, epoch 1, step 1"


def test_training_needs_begin_task() -> None:
    method = _method("l2p", L2P_OPTIONS)
    with pytest.raises(AssertionError, match="^begin_task must be called first$"):
        method.train_task([(_images(2), _labels(0, 2))])


def test_meta_device_places_the_model_keys_and_masks_there() -> None:
    """The device argument reaches the model, the allowed-key mask and the prompt ids (on
    CPU-only machines ``meta`` is the only other device)."""
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=3).model
    l2p = get_method("l2p")(_config("l2p", L2P_OPTIONS), vit, NUM_CLASSES, SCHEDULE,
                            device="meta")
    assert {p.device.type for p in l2p.model.parameters()} == {"meta"}
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=3).model
    dual = get_method("dualprompt")(_config("dualprompt", PREFIX_OPTIONS), vit, NUM_CLASSES,
                                    SCHEDULE, device="meta")
    _begin(dual, 1)
    assert dual._allowed_keys().device.type == "meta"
    ids = dual._train_ids(torch.zeros(3, 128, device="meta"), 1)
    assert ids.device.type == "meta" and ids.dtype == torch.long and ids.shape == (3, 1)


def test_a_checkpoint_without_a_schedule_state_keeps_the_fresh_schedule() -> None:
    plain = _method("l2p", L2P_OPTIONS)  # constant schedule: no scheduler state stored
    _begin(plain, 0)
    state = plain.state_dict()
    assert state["scheduler"] is None
    cosine = _method("l2p", L2P_OPTIONS, scheduler="cosine")
    cosine.load_state_dict(state)
    assert cosine.scheduler is not None and cosine.scheduler.last_epoch == 0
