"""Unit tests of ``cl/methods/coda_prompt.py`` on a tiny ViT: the CODA epoch cosine in closed form
(docs/cl-background.md#coda-prompt), the seeded model and component draws, which components each
task re-draws, the training step against a hand-made Adam run on a twin model (CE over the task's
classes plus the orthogonality penalty, per-epoch schedule), inference over the seen classes and a
checkpoint round trip that draws the same components afterwards."""

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
from cl.methods.coda_prompt import coda_cosine
from cl.models.coda import CodaPromptPool, CodaViT
from cl.run.seeding import torch_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = [[3, 0], [5, 1], [2, 4]]
NUM_CLASSES = 6
IMAGE = 16
OPTIONS = {"pool_per_task": 2, "length": 4, "layers": [1, 3], "ortho_mu": 0.3}


def _method(options: dict | None = None, *, log=None, progress=None, **overrides):
    cfg = resolve_config("synthetic", "coda-prompt", overrides={
        "seed": 4, "batch_size": 4, "epochs": 2, "lr": 0.05, "clip_grad": 0.5,
        "method_options": {**OPTIONS, **(options or {})}, **overrides})
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=4).model
    return get_method("coda-prompt")(cfg, vit, NUM_CLASSES, SCHEDULE, log=log, progress=progress)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _labels(task: int, n: int) -> torch.Tensor:
    return torch.tensor([SCHEDULE[task][i % 2] for i in range(n)])


def _begin(method, upto: int) -> None:
    for t in range(upto + 1):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))


@pytest.mark.parametrize("epochs", [1, 2, 5, 20])
def test_coda_cosine_closed_form(epochs: int) -> None:
    f = coda_cosine(epochs)
    span = max(epochs - 1, 1)
    for e in range(epochs + 1):
        assert f(e) == pytest.approx(math.cos(99 * math.pi * e / (200 * span)), rel=1e-12)
    assert f(0) == 1.0
    if epochs > 1:  # the last epoch runs at cos(99 pi / 200) of the base rate, just above 0
        assert f(epochs - 1) == pytest.approx(math.cos(0.495 * math.pi), rel=1e-12)


def test_model_and_components_come_from_their_own_seeded_streams() -> None:
    method = _method()
    model = method.model
    assert not model.training and method.optimizer is None and method.per_task == 2
    assert model.prompt_layers == [1, 3]
    assert model.pool.prompts.shape == (2, 6, 4, 128)  # (layers, 2 x 3 tasks, length, C)
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=4).model
    twin = CodaViT(vit, NUM_CLASSES, pool_size=6, length=4, prompt_layers=[1, 3],
                   generator=torch_generator(4, "coda-head-init"))
    torch.testing.assert_close(model.head.weight, twin.head.weight, rtol=0, atol=0)
    assert {model.vit.blocks[i].attn.fused for i in (1, 3)} == {True}
    reference = _method(attention="reference")
    assert {reference.model.vit.blocks[i].attn.fused for i in (1, 3)} == {False}

    pool = CodaPromptPool(2, 6, 4, 128)
    gen = torch_generator(4, "coda-components")
    for t in range(3):
        before = {n: p.detach().clone() for n, p in model.pool.named_parameters()}
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
        assert method._components(t) == (2 * t, 2 * t + 2)
        pool.init_components(2 * t, 2 * t + 2, gen)
        for n, p in model.pool.named_parameters():
            torch.testing.assert_close(p, pool.get_parameter(n), rtol=0, atol=0)
            assert torch.equal(p[:, : 2 * t], before[n][:, : 2 * t])  # old ones untouched
            assert not torch.equal(p[:, 2 * t: 2 * t + 2], before[n][:, 2 * t: 2 * t + 2])
            assert torch.count_nonzero(p[:, 2 * t + 2:]) == 0  # later tasks' not drawn yet
        with torch.no_grad():  # as if trained: the next draw must not depend on it
            for p in model.pool.parameters():
                p[:, 2 * t: 2 * t + 2] += 0.5
            for p in pool.parameters():
                p[:, 2 * t: 2 * t + 2] += 0.5


def test_optimizer_is_adam_over_the_pool_and_the_head() -> None:
    method = _method()
    _begin(method, 0)
    opt = method.optimizer
    assert isinstance(opt, torch.optim.Adam)
    (group,) = opt.param_groups
    want = {id(p) for p in [*method.model.pool.parameters(), *method.model.head.parameters()]}
    assert {id(p) for p in group["params"]} == want and len(group["params"]) == 5
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.05, (0.9, 0.999), 0.0)


def _hand_made_training(twin, task: int, batches, *, epochs: int, lr: float, mu: float,
                        clip: float, cosine: bool) -> list[list[float]]:
    frozen, stop = 2 * task, 2 * task + 2
    params = [*twin.pool.parameters(), *twin.head.parameters()]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    outside = [c for c in range(NUM_CLASSES) if c not in SCHEDULE[task]]
    losses = []
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (math.cos(99 * math.pi * epoch / (200 * max(epochs - 1, 1)))
                                if cosine else 1.0)
        row = []
        for x, y in batches:
            tokens = twin.forward_features(x, stop, frozen)
            logits = twin.head(tokens[:, 0])
            logits[:, outside] = -math.inf
            loss = F.cross_entropy(logits, y)
            if mu:
                loss = loss + mu * twin.pool.ortho_loss(stop, frozen)
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            row.append(float(loss.detach()))
        losses.append(row)
    return losses


@pytest.mark.parametrize(("schedule", "mu", "clip"), [
    ("cosine", 0.3, 0.5), ("constant", 0.0, 0.0)])
def test_training_equals_a_hand_made_adam_run(schedule: str, mu: float, clip: float) -> None:
    records: list[dict] = []
    descs: list[str] = []

    def progress(iterable, desc):
        descs.append(desc)
        return iterable

    method = _method({"schedule": schedule, "ortho_mu": mu}, log=records.append,
                     progress=progress, clip_grad=clip, epochs=3)
    _begin(method, 1)
    twin = copy.deepcopy(method.model)
    old = method.model.pool.prompts.detach()[:, :2].clone()
    batches = [(_images(4, 1), _labels(1, 4)), (_images(4, 2), _labels(1, 4))]
    want = _hand_made_training(twin, 1, batches, epochs=3, lr=0.05, mu=mu, clip=clip,
                               cosine=schedule == "cosine")
    method.train_task(batches)
    for (n, a), (_, b) in zip(method.model.named_parameters(), twin.named_parameters(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    assert torch.equal(method.model.pool.prompts[:, :2], old)  # task 0's components frozen
    assert [r["phase"] for r in records] == ["coda"] * 3
    assert [(r["task"], r["epoch"]) for r in records] == [(1, 0), (1, 1), (1, 2)]
    for r, row in zip(records, want, strict=True):
        assert r["loss"] == pytest.approx(sum(row) / 2, abs=1e-5)
    factors = [coda_cosine(3)(e) if schedule == "cosine" else 1.0 for e in range(3)]
    assert [r["lr"] for r in records] == pytest.approx([0.05 * f for f in factors])
    assert descs == [f"task 1 CODA epoch {e}" for e in range(3)]


def test_prediction_uses_every_learned_component_and_the_seen_classes() -> None:
    method = _method()
    with pytest.raises(AssertionError, match="no task"):
        method.predict(_images(1))
    x = _images(3, 3)
    for t in range(3):
        method.begin_task(Task(t, SCHEDULE[t], SCHEDULE))
        with torch.no_grad():
            full = method.model(x, 2 * t + 2)
            fewer = method.model(x, 2 * t + 1)
        seen = [c for ts in SCHEDULE[: t + 1] for c in ts]
        got = method.predict(x)
        assert not torch.allclose(full, fewer)  # the last component matters
        for c in range(NUM_CLASSES):
            if c in seen:
                torch.testing.assert_close(got[:, c], full[:, c], rtol=0, atol=0)
            else:
                assert (got[:, c] == -math.inf).all()
    method.end_task(Task(2, SCHEDULE[2], SCHEDULE))  # nothing to consolidate
    torch.testing.assert_close(method.predict(x)[:, 0], full[:, 0], rtol=0, atol=0)


def test_checkpoint_round_trip_continues_identically() -> None:
    method = _method()
    _begin(method, 0)
    method.train_task([(_images(4, 1), _labels(0, 4))])
    raw = method.state_dict()
    state = copy.deepcopy(raw)  # as if through torch.save / torch.load
    assert state["method"] == "coda-prompt" and state["task_index"] == 0
    assert state["optimizer"]["state"]
    fresh = _method()
    fresh.load_state_dict(state)
    assert fresh.task_index == 0 and fresh.task.classes == SCHEDULE[0]
    x = _images(3, 3)
    torch.testing.assert_close(fresh.predict(x), method.predict(x), rtol=0, atol=0)
    batch = [(_images(4, 5), _labels(0, 4))]
    for m in (method, fresh):
        m.train_task(batch)
        m.begin_task(Task(1, SCHEDULE[1], SCHEDULE))  # draws from the restored stream
    for (n, a), (_, b) in zip(method.model.named_parameters(), fresh.model.named_parameters(),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, n=n: f"{n}: {m}")
    with pytest.raises(ValueError, match="checkpoint is for method 'smope', not 'coda-prompt'"):
        fresh.load_state_dict({**state, "method": "smope"})
    untouched = _method()
    untouched.load_state_dict(_method().state_dict())
    assert untouched.optimizer is None and untouched.task_index == -1


def _poisoned(task: int, epoch: int, step: int) -> PoisonedLoader:
    """Clean batches of ``task``, except a NaN image at ``step`` of epoch ``epoch``."""
    return PoisonedLoader(lambda i: (_images(2, 10 + i), _labels(task, 2)), epoch, step)


def test_a_non_finite_loss_names_phase_task_epoch_and_step() -> None:
    method = _method()
    _begin(method, 1)
    with pytest.raises(FloatingPointError) as info:
        method.train_task(_poisoned(1, 1, 1))
    assert str(info.value) == "non-finite loss (nan) in coda training at task 1, epoch 1, step 1"


def test_training_needs_begin_task() -> None:
    with pytest.raises(AssertionError, match="^begin_task must be called first$"):
        _method().train_task([(_images(2), _labels(0, 2))])


def test_meta_device_holds_the_model() -> None:
    cfg = resolve_config("synthetic", "coda-prompt", overrides={"method_options": OPTIONS})
    vit = build_backbone("vit-tiny-random", img_size=IMAGE, seed=4).model
    method = get_method("coda-prompt")(cfg, vit, NUM_CLASSES, SCHEDULE, device="meta")
    assert {p.device.type for p in method.model.parameters()} == {"meta"}
