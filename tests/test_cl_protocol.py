"""``--protocol official`` and the ``legacy_*`` switches of cl/protocol.py (issue 19, point 3).

Official behaviours and where they are coded:

* batch vote: MoE_PromptCL @ e418337 ``peft/prompt/dp_prompt.py`` lines 99-110 (and
  ``peft/prompt/norga_prompt.py`` lines 87-96): ``torch.unique(sorted=True)``, pad ids with the
  smallest id and counts with 0 up to the pool size, ``torch.topk(counts, top_k)``;
* ``drop_last=True`` for training: GT-RIPL/CODA-Prompt @ 6417d4f ``trainer.py`` line 185 (the
  SMoPE trainer is a copy of it);
* SMoPE coswm: Minhchuyentoancbn/SMoPE @ 27b982c ``configs/cifar-100_prompt_smope.yaml``
  (``schedule: [80, 0, 20]``, ``iter_step: 40``), ``configs/imnet-r_prompt_smope.yaml``
  (``[40, 0, 20]``, ``iter_step: 40``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cl_helpers import load_cl_cli
from prompt_baseline_checks import SMALL_DATA, small_config

from cl.backbones.loading import build_backbone
from cl.config import resolve_config
from cl.methods import Task, available_methods, get_method
from cl.methods.smope import MIN_LR
from cl.models.prompt_pools import majority_vote, official_vote
from cl.protocol import DEVIATIONS, deviation_table, official_layer
from cl.run import engine
from cl.run.engine import run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parent.parent / "docs" / "deviations.md"


# ------------------------------------------------------------------ the vote
def test_official_vote_follows_unique_pad_topk_not_the_smaller_id() -> None:
    # four prompts chosen once each (pool 6): counts [1, 1, 1, 1] padded to [1, 1, 1, 1, 0, 0]
    ids = torch.tensor([[4], [1], [3], [2]])
    values = torch.tensor([1, 2, 3, 4, 1, 1])  # unique ids, padded with min(ids) = 1
    counts = torch.tensor([1, 1, 1, 1, 0, 0])
    want = values[torch.topk(counts, k=3).indices]  # the official line, written out
    got = official_vote(ids, 3, pool_size=6)
    assert got.shape == (4, 3) and all(torch.equal(row, want) for row in got)
    # the project's rule: ties to the smaller id
    assert majority_vote(ids, 3)[0].tolist() == [1, 2, 3]
    # a clear majority is the same under both rules
    ids = torch.tensor([[2], [2], [0], [2]])
    assert official_vote(ids, 1, 4)[0].tolist() == majority_vote(ids, 1)[0].tolist() == [2]


def test_keyed_selection_uses_the_official_vote_when_asked() -> None:
    cfg = resolve_config("synthetic", "l2p", overrides={
        "batchwise_prompt": True, "legacy_vote_ties": True,
        "method_options": {"pool_size": 6, "top_k": 3}})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model
    method = get_method("l2p")(cfg, vit, 4, [[0, 1], [2, 3]])
    query = torch.randn(5, 128, generator=torch.Generator().manual_seed(0))
    ids, _ = method.model.match(query, 3)
    torch.testing.assert_close(method.select_from_query(query), official_vote(ids, 3, 6))
    method.options.legacy_vote_ties = False
    torch.testing.assert_close(method.select_from_query(query), majority_vote(ids, 3))


def test_hide_task_vote_uses_the_official_vote_when_asked(monkeypatch) -> None:
    cfg = resolve_config("synthetic", "hide", overrides={
        "batchwise_prompt": True, "legacy_vote_ties": True})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model
    classes = [[0, 1], [2, 3], [4, 5], [6, 7]]
    method = get_method("hide")(cfg, vit, 8, classes)
    for t in range(4):
        method.task = Task(t, classes[t], classes)
        method.task_index = t
    calls = []

    def spy(ids, top_k, pool_size):
        calls.append((ids.clone(), top_k, pool_size))
        return official_vote(ids, top_k, pool_size)

    monkeypatch.setattr("cl.methods.hide.official_vote", spy)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tasks = method.predict_tasks(x)
    assert len(calls) == 1 and calls[0][1:] == (1, 4)
    assert torch.equal(tasks, official_vote(calls[0][0], 1, 4)[:, 0])


# ------------------------------------------------------------------ drop_last
@pytest.mark.slow
@pytest.mark.parametrize("legacy", [False, True])
def test_engine_drops_the_last_partial_batch_only_when_asked(legacy: bool, tmp_path: Path,
                                                             monkeypatch) -> None:
    seen = []
    real = engine.DataLoader

    def recording(*args, **kwargs):
        loader = real(*args, **kwargs)
        if kwargs.get("shuffle") or kwargs.get("sampler") is not None:
            seen.append(loader)
        return loader

    monkeypatch.setattr(engine, "DataLoader", recording)
    cfg = small_config("coda-prompt", epochs=1, batch_size=8, legacy_drop_last=legacy)
    run_experiment(cfg, tmp_path / "run")
    n_train = SMALL_DATA["train_per_class"] * 2  # 20 images per task, batch 8
    assert [len(loader) for loader in seen] == [2 if legacy else 3] * SMALL_DATA["num_tasks"]
    assert all(loader.drop_last is legacy for loader in seen) and n_train % 8


# ------------------------------------------------------------------ SMoPE recipe switches
def _smope(**options):
    cfg = resolve_config("synthetic", "smope", overrides={"method_options": options})
    vit = build_backbone("vit-tiny-random", img_size=32, seed=0).model
    classes = [[0, 1], [2, 3]]
    method = get_method("smope")(cfg, vit, 4, classes)
    method.begin_task(Task(0, classes[0], classes))
    return method


def test_smope_coswm_freeze_nominal_length_and_first_step() -> None:
    base = _smope()
    sched, per_iter = base._scheduler(epochs=2, iters_per_epoch=3)
    assert per_iter
    lrs = [g["lr"] for g in base.optimizer.param_groups]
    assert lrs == [pytest.approx(5 * 0.01), pytest.approx(0.01)]  # experts 5x, head 1x
    legacy = _smope(freeze_iters=2, iter_step=5, legacy_scheduler_quirks=True)
    sched, _ = legacy._scheduler(epochs=2, iters_per_epoch=3)
    head_base = 0.01
    factor = sched.lr_lambdas[1]
    assert factor(0) == 1.0  # first iteration at the base lr (constructor quirk)
    assert factor(1) == pytest.approx(MIN_LR / head_base)  # freeze
    # cosine over the nominal 2 x 5 = 10 iterations minus the 2 frozen ones, not 2 x 3
    i = 4
    want = MIN_LR + 0.5 * (head_base - MIN_LR) * (1 + math.cos(math.pi * (i - 2) / 8))
    assert factor(i) * head_base == pytest.approx(want)
    plain = _smope(freeze_iters=2)._scheduler(epochs=2, iters_per_epoch=3)[0].lr_lambdas[1]
    want = MIN_LR + 0.5 * (head_base - MIN_LR) * (1 + math.cos(math.pi * (i - 2) / 4))
    assert plain(0) == pytest.approx(MIN_LR / head_base) and plain(i) * head_base == \
        pytest.approx(want)
    with pytest.raises(ValueError, match="iter_step"):
        resolve_config("synthetic", "smope", overrides={"method_options": {"iter_step": -1}})


def test_smope_first_alignment_step_at_ten_times_ca_lr(monkeypatch) -> None:
    captured = {}

    def fake_align(self, forward, optimizer, scheduler, **kwargs):
        captured["lrs"] = []
        for _ in range(3):
            captured["lrs"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()

    monkeypatch.setattr("cl.methods.smope.SMoPE._align_on_gaussians", fake_align)
    for quirks, first in ((False, 1.0), (True, 10.0)):
        method = _smope(legacy_scheduler_quirks=quirks)
        method._align_head(Task(1, [2, 3], [[0, 1], [2, 3]]))
        ca_lr = method.options.ca_lr
        assert captured["lrs"][0] == pytest.approx(first * ca_lr)
        assert captured["lrs"][1] < ca_lr  # then the cosine from ca_lr down


def test_smope_statistics_on_the_training_images_when_asked() -> None:
    """SMoPE learners/prompt.py lines 405-421: expert counts over ``train_loader`` (shuffled,
    ``drop_last=True``, train augmentation); trainer.py lines 447-469: statistics over every
    training image of a class with the train transform, in order, ``drop_last=False``."""
    from torch.utils.data import DataLoader, TensorDataset

    class Boom:
        def __iter__(self):
            raise AssertionError("the statistics loader must not be used")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, drop_last=True,
                       generator=g)
    method = _smope(legacy_stats_train_transform=True)
    method.config.epochs = 0
    method.train_task(train)
    method.end_task(Task(0, [0, 1], [[0, 1], [2, 3]], stats_loader=Boom()))
    L, H = method.counts.shape[:2]
    assert int(method.counts.sum()) == 4 * L * H * 5  # one dropping batch of 4, top-5
    reference = _smope()  # same init; the default statistics pass over all 6 images in order
    reference.end_task(Task(0, [0, 1], [[0, 1], [2, 3]],
                            stats_loader=DataLoader(TensorDataset(x, y), batch_size=4)))
    for c in (0, 1):
        torch.testing.assert_close(method.stats.mean(c), reference.stats.mean(c))
        torch.testing.assert_close(method.stats.covariance(c), reference.stats.covariance(c))
    assert int(reference.counts.sum()) == 6 * L * H * 5
    with pytest.raises(AssertionError, match="must not be used"):
        _smope().end_task(Task(0, [0, 1], [[0, 1], [2, 3]], stats_loader=Boom()))


# ------------------------------------------------------------------ the protocol layer
def test_official_protocol_layer_per_method_and_dataset() -> None:
    assert official_layer("synthetic", "l2p") == {"batchwise_prompt": True,
                                                  "legacy_vote_ties": True}
    cfg = resolve_config("cifar100", "sprompt", "sup21k", overrides={"protocol": "official"})
    o = cfg.method_options
    assert (o.legacy_kv_reshape, o.batchwise_prompt, o.legacy_vote_ties) == (True, True, True)
    assert cfg.method_options.match_all_keys is True
    assert cfg.method_options.pull_coeff == 1.0  # presets untouched
    assert resolve_config("imagenet-r", "sprompt", "sup21k",
                          overrides={"protocol": "official"}).method_options \
        .batchwise_prompt is False
    cfg = resolve_config("5datasets", "norga", "sup21k", overrides={"protocol": "official"})
    assert cfg.method_options.batchwise_prompt
    assert cfg.dataset_options["legacy_transform_leak"] is True
    cfg = resolve_config("cifar100", "smope", "sup1k", overrides={"protocol": "official"})
    assert cfg.legacy_drop_last and cfg.method_options.freeze_iters == 80
    assert cfg.method_options.iter_step == 40
    cfg = resolve_config("cifar100", "coda-prompt", "sup21k", overrides={"protocol": "official"})
    assert cfg.legacy_drop_last and not hasattr(cfg.method_options, "legacy_kv_reshape")
    # explicit overrides still win over the protocol, with the dotted method_options syntax
    cfg = resolve_config("cifar100", "sprompt", "sup21k", overrides={
        "protocol": "official", "legacy_kv_reshape": "false",
        "method_options.match_all_keys": "false"})
    assert cfg.method_options.legacy_kv_reshape is False
    assert cfg.method_options.match_all_keys is False
    default = resolve_config("cifar100", "sprompt", "sup21k")
    o = default.method_options
    assert (default.protocol, o.legacy_kv_reshape, o.batchwise_prompt) == (
        "default", False, False)
    with pytest.raises(ValueError, match="protocol: must be one of default, official; got 'paper'"):
        resolve_config("synthetic", "norga", overrides={"protocol": "paper"})


def test_every_deviation_has_a_switch_or_says_why_not() -> None:
    methods = set(available_methods())
    for d in DEVIATIONS:
        assert d.settings or d.flag_note, d.what
        assert set(d.settings) <= methods, d.what
        for method, table in d.settings.items():
            for scope, layer in table.items():  # every setting resolves to a valid config
                dataset = "cifar100" if scope == "*" else scope
                cfg = resolve_config(dataset, method, "sup21k", overrides=layer)
                assert cfg is not None


def test_readme_table_is_the_generated_one() -> None:
    assert deviation_table() in README.read_text(encoding="utf-8")


# ------------------------------------------------------------------ every method, end to end
@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(available_methods()))
def test_every_method_runs_under_the_official_protocol(method: str, tmp_path: Path) -> None:
    cfg = small_config(method, epochs=1, protocol="official")
    assert cfg.protocol == "official"
    for key, value in official_layer("synthetic", method).items():
        if key == "method_options":
            assert {k: getattr(cfg.method_options, k) for k in value} == value
        elif isinstance(value, dict):
            assert {k: getattr(cfg, key)[k] for k in value} == value
        else:  # a run field, or an option by its plain name
            got = getattr(cfg, key) if hasattr(cfg, key) else getattr(cfg.method_options, key)
            assert got == value, key
    result = run_experiment(cfg, tmp_path / "run")
    assert result.finished and 0.0 <= result.metrics["FA"] <= 100.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["protocol"] == "official"


@pytest.mark.slow
def test_cli_protocol_flag_and_run_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = load_cl_cli().main([
        "--dataset", "synthetic", "--method", "l2p", "--quick", "--epochs", "1",
        "--protocol", "official", "--set", "dataset_options=" + json.dumps(SMALL_DATA),
        "--no-progress", "--threads", "1"])
    torch.set_num_threads(1)
    assert code == 0
    # runs/<dataset>-<method>-<backbone>-<config digest>-s<seed>-official
    (out,) = (tmp_path / "runs").glob("synthetic-l2p-vit-tiny-random-*-s42-official")
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "official"
    assert config["method_options"]["batchwise_prompt"] is True
