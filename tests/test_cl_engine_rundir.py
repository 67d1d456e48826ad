"""The engine's run-directory lifecycle and its refusals, on tiny synthetic runs (seconds).

Refused configurations and run directories must be refused before anything is written (and a
refused run must not even create the lock file); ``--overwrite`` stages the new run and keeps
the old one until the new one has its first checkpoint; a NaN loss names the checkpoint kept.
The helpers that need no run (``evaluate_task``, ``task_selection``, ``final_metrics``, the
rank-0 broadcast) are checked on hand-made inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cl_engine_helpers import T, checksums, log_records, run_files, tiny_bench, tiny_cfg
from torch.utils.data import DataLoader, Dataset, TensorDataset

from cl import metrics as M
from cl.data.base import SplitDataset
from cl.methods import base as methods_base
from cl.methods.base import Method
from cl.numerics import NonFiniteLossError
from cl.run.engine import (
    ConfigError,
    RunBusyError,
    RunDirError,
    _check_memory,
    _JsonlLog,
    _on_main,
    evaluate_task,
    final_metrics,
    resolve_device,
    run_experiment,
    task_selection,
)
from cl.run.files import record_checksum, write_result_file
from norga.choices import ChoiceError
from norga.cli import gib
from norga.runlock import run_lock

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished HiDe-Prompt run, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_experiment(tiny_cfg("hide"), out)
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ---------------------------------------------------------------------------- refusals
def _refused(out: Path, cfg, match: str, **kwargs) -> None:
    """``cfg`` is refused in ``out`` with a message containing ``match``; nothing changes and no
    lock file is created."""
    (out / ".lock").unlink(missing_ok=True)
    before = run_files(out)
    with pytest.raises(RunDirError) as info:
        run_experiment(cfg, out, **kwargs)
    assert match in str(info.value), str(info.value)
    assert run_files(out) == before
    assert not (out / ".lock").exists()


def test_a_different_configuration_is_refused_naming_the_fields(tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    other = tiny_cfg("hide", reg=0.5, lr=0.5)
    _refused(out, other, f"{out} holds a run with a different configuration (differs in: lr, "
             "method_options.reg); use another --out or pass --overwrite")
    # the same refusal while the run is unfinished (no metrics.json yet)
    (out / "metrics.json").unlink()
    _refused(out, other, "(differs in: lr, method_options.reg)")


def test_runtime_keys_may_change_and_new_keys_count_with_their_defaults(tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    same = dataclasses.replace(tiny_cfg("hide"), device="auto", data_root=str(tmp_path))
    assert run_experiment(same, out).already_finished
    saved = json.loads((out / "config.json").read_text())
    del saved["precision"]  # a run started before the field existed: its default, fp32
    write_result_file(out, "config.json", json.dumps(saved))
    assert run_experiment(tiny_cfg("hide"), out).already_finished
    _refused(out, tiny_cfg("hide", precision="bf16"), "(differs in: precision)")


def test_a_damaged_or_foreign_config_json_is_refused(tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    cfg = tiny_cfg("hide")
    shutil.rmtree(out / "checkpoints")  # no checkpoint to check config.json against
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text.replace('"seed": 11', '"seed": 12'))
    _refused(out, cfg, f"--out {out}: config.json does not match its SHA-256 in SHA256SUMS")
    _refused(out, cfg, "; restore config.json from a backup, or pass --overwrite (no "
             "checkpoint holds a configuration")
    write_result_file(out, "config.json", "{not json")
    _refused(out, cfg, f"--out {out}: config.json is not readable JSON; "
             "restore config.json")
    write_result_file(out, "config.json", json.dumps({"kind": "rates", "seed": 1}))
    _refused(out, cfg, f"--out {out} holds a rates run, not a CL run; use another --out")
    write_result_file(out, "config.json", json.dumps({"method": "hide"}))
    _refused(out, cfg, "holds a non-CL run, not a CL run")
    write_result_file(out, "config.json", "[1, 2]")
    _refused(out, cfg, "holds a non-CL run, not a CL run")


def test_an_unusable_out_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"^--out .*file"):
        run_experiment(tiny_cfg("l2p"), tmp_path / "file")
    with pytest.raises(RunDirError, match=r"^--out "):
        run_experiment(tiny_cfg("l2p"), tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "x"


def test_a_run_directory_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out), pytest.raises(RunBusyError):
        run_experiment(tiny_cfg("l2p"), out)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "nothing"
    cfg = tiny_cfg("hide")
    cases = [
        (dataclasses.replace(cfg, device="nonsense"),
         "device: 'nonsense' is not a device; allowed: auto, cpu"),
        (dataclasses.replace(cfg, dataset_options={"bogus": 1}),
         "dataset_options: {'bogus': 1} does not fit the synthetic benchmark ("),
        (dataclasses.replace(cfg, dataset_options={"num_classes": 6, "num_tasks": 7}),
         "dataset_options: num_tasks must be in [1, 6], got 7"),
        (dataclasses.replace(cfg, method_options=dataclasses.replace(cfg.method_options,
                                                                     prompt_layers=[0, 9])),
         "method_options.prompt_layers: [0, 9] must be distinct block indices in [0, 6)"),
    ]
    for bad, start in cases:
        with pytest.raises(ConfigError) as info:
            run_experiment(bad, out)
        assert str(info.value).startswith(start), str(info.value)
    with pytest.raises(ConfigError) as info:
        run_experiment(dataclasses.replace(cfg, dataset_options={"bogus": 1}), out)
    assert str(info.value).endswith(
        "); allowed keys: num_classes, num_tasks, image_size, train_per_class, "
        "test_per_class, grid, distractor, noise, data_seed")
    with pytest.raises(ValueError, match="batch_size"):  # validated first
        run_experiment(dataclasses.replace(cfg, batch_size=0), out)
    assert not out.exists()


# ---------------------------------------------------------------------------- devices
def test_resolve_device_on_this_machine_and_with_two_gpus(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu:0") == torch.device("cpu:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError) as info:
        resolve_device("cuda")
    assert str(info.value) == ("device: 'cuda' is not available here; allowed: auto, cpu "
                               "(no CUDA device on this machine)")
    with pytest.raises(ValueError, match=r"^device: 'gpu' is not a device; allowed: auto, cpu "
                                         r"\(no CUDA"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="'mps' is not available here"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="'meta' is not available here"):
        resolve_device("meta")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError) as info:
        resolve_device("cuda:2")
    assert str(info.value) == ("device: 'cuda:2' is not available here; allowed: auto, cpu, "
                               "cuda, cuda:0..cuda:1")
    # available CUDA but no devices: treated as none
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"cpu \(no CUDA device"):
        resolve_device("cuda")


# ---------------------------------------------------------------------------- memory
def _parts(cfg, num_tasks: int, num_classes: int) -> dict[str, int]:
    """The documented lower bound for the tiny ViT (dim 128, depth 6, 16 patches + CLS), by
    the option that scales each part."""
    opts = cfg.method_options
    dim, depth, tokens = 128, 6, opts.prompt_length + 16 + 1
    prompts = num_tasks * max(len(opts.prompt_layers), 1) * 2 * opts.prompt_length * dim * 4 * 4
    activations = cfg.batch_size * tokens * dim * depth * 4 * 2
    widths = [dim, *(dim * m for m in opts.tii_mlp), dim]
    tii = sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1)) * 16 \
        + cfg.batch_size * max(widths) * 8
    return {"prompt_length": prompts + activations + 4 * tokens * (opts.prompt_length + 8),
            "tii_mlp": tii,
            "tap_samples_mult": opts.tap_samples_mult * cfg.batch_size * num_classes * dim * 4}


def _need(cfg, num_tasks: int, num_classes: int = 0) -> int:
    return sum(_parts(cfg, num_tasks, num_classes).values())


def test_memory_bound_refuses_exactly_above_the_machine(tmp_path, monkeypatch):
    cfg = tiny_cfg("hide")
    classes = tiny_bench(cfg).num_classes
    parts = _parts(cfg, T, classes)
    need = sum(parts.values())
    engine = sys.modules[_check_memory.__module__]
    monkeypatch.setattr(engine, "total_memory", lambda: need - 1)
    with pytest.raises(ConfigError) as info:
        run_experiment(cfg, tmp_path / "x")
    culprit = max(parts, key=parts.__getitem__)
    assert str(info.value).startswith(f"method_options.{culprit}: ")
    assert str(info.value).endswith(
        f" needs at least {gib(parts[culprit])} of memory ({gib(need)} in all); this CPU has "
        f"{gib(need - 1)}")
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr(engine, "total_memory", lambda: need)
    assert run_experiment(cfg, tmp_path / "y", stop_after_task=0).accuracy.shape == (1, T)
    monkeypatch.setattr(engine, "total_memory", lambda: None)  # unknown: not checked
    assert run_experiment(cfg, tmp_path / "z", stop_after_task=0).accuracy.shape == (1, T)


@pytest.mark.parametrize("field, value, words", [
    ("prompt_length", 10**6, "prompt layers"),
    ("tii_mlp", [200000], "hidden widths"),
    ("tap_samples_mult", 10**9, "replayed features"),
])
def test_memory_bound_blames_the_size_that_needs_it(field, value, words, monkeypatch):
    from cl.backbones.loading import build_backbone

    cfg = tiny_cfg("hide")
    cfg = dataclasses.replace(cfg, method_options=dataclasses.replace(cfg.method_options,
                                                                      **{field: value}))
    vit = build_backbone(cfg.backbone, img_size=32, seed=0).model
    engine = sys.modules[_check_memory.__module__]
    monkeypatch.setattr(engine, "total_memory", lambda: 2**33)  # 8 GiB
    with pytest.raises(ConfigError) as info:
        _check_memory(cfg, 4, vit, torch.device("cpu"), 10)
    assert info.value.field == f"method_options.{field}" and words in str(info.value)


def test_memory_bound_of_a_cuda_device_and_of_a_model_without_prompt_layers(monkeypatch):
    from cl.backbones.loading import build_backbone

    cfg = tiny_cfg("hide")
    vit = build_backbone(cfg.backbone, img_size=32, seed=0).model
    need = _need(cfg, 4)
    props = SimpleNamespace(total_memory=need - 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    with pytest.raises(ConfigError, match=r"memory \(.* in all\); this CUDA has"):
        _check_memory(cfg, 4, vit, torch.device("cuda"))
    props.total_memory = need
    _check_memory(cfg, 4, vit, torch.device("cuda"))
    # no prompt layers still counts one layer of prompts
    opts = cfg.method_options
    none = dataclasses.replace(cfg, method_options=dataclasses.replace(opts, prompt_layers=[]))
    props.total_memory = _need(none, 4) - 1
    assert _need(none, 4) == need - (len(opts.prompt_layers) - 1) * 4 * 2 * opts.prompt_length \
        * 128 * 16
    with pytest.raises(ConfigError, match="memory"):
        _check_memory(none, 4, vit, torch.device("cuda"))
    props.total_memory += 1
    _check_memory(none, 4, vit, torch.device("cuda"))


# ---------------------------------------------------------------------------- method errors
class _Refuses(Method):
    """A method whose models cannot be built: raises ``error`` from its constructor."""

    error: BaseException = ValueError("x")

    def __init__(self, *args, **kwargs) -> None:
        raise self.error

    begin_task = train_task = end_task = predict = state_dict = load_state_dict = None


_CANNOT = "method: the refuses-test model cannot be built with this configuration: "


@pytest.mark.parametrize("error, expected", [
    # by type, never by text: a ConfigError keeps its field, a ChoiceError names its field
    # when it is one, anything else is the method's (first line of its message)
    (ConfigError("reg", "too large"), "reg: too large"),
    (ChoiceError("precision", "fp8", ("fp32", "bf16")),
     "precision: must be one of fp32, bf16; got 'fp8'"),
    (ChoiceError("head_kind", "x", ("a",)), _CANNOT + "head_kind must be one of a; got 'x'"),
    (ValueError("reg: too large\nsecond line"), _CANNOT + "reg: too large"),
    (IndexError("prompt_layers out of range"), _CANNOT + "prompt_layers out of range"),
    (RuntimeError("shapes do not fit"), _CANNOT + "shapes do not fit"),
    (TypeError(), _CANNOT + "TypeError"),
])
def test_a_method_that_cannot_be_built_is_a_config_error(tmp_path, monkeypatch, error, expected):
    monkeypatch.setitem(methods_base._METHODS, "refuses-test", _Refuses)
    monkeypatch.setattr(_Refuses, "error", error)
    cfg = dataclasses.replace(tiny_cfg("l2p"), method="refuses-test", method_options={})
    with pytest.raises(ConfigError) as info:
        run_experiment(cfg, tmp_path / "x")
    assert str(info.value) == expected
    if isinstance(error, ConfigError):
        assert info.value is error  # passed through untouched
    else:
        assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                   KeyError("other")])
def test_other_errors_of_a_method_pass_through(tmp_path, monkeypatch, error):
    monkeypatch.setitem(methods_base._METHODS, "refuses-test", _Refuses)
    monkeypatch.setattr(_Refuses, "error", error)
    cfg = dataclasses.replace(tiny_cfg("l2p"), method="refuses-test", method_options={})
    with pytest.raises(type(error)) as info:
        run_experiment(cfg, tmp_path / "x")
    assert info.value is error


# ---------------------------------------------------------------------------- overwrite
def test_overwrite_replaces_every_file_of_the_old_run(tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / "metrics.json.corrupt").write_text("old")
    (out / ".replaced").mkdir()
    (out / ".replaced/junk").write_text("j")
    new = tiny_cfg("coda-prompt")
    result = run_experiment(new, out, overwrite=True)
    assert result.finished and not result.already_finished and result.resumed_after_task is None
    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "SHA256SUMS", "accuracy_matrix.csv", "checkpoints",
                     "class_order.json", "config.json", "env.json", "epochs.csv", "log.jsonl",
                     "metrics.json", "notes.txt", "tasks.csv"]
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["method"] == "coda-prompt"
    assert set(checksums(out)) == {"config.json", "env.json", "class_order.json",
                                   "accuracy_matrix.csv", "metrics.json", "log.jsonl"}
    records = log_records(out)
    assert [r["task"] for r in records if r.get("phase") == "eval"] == [0, 1, 2]
    assert not any(r.get("phase") == "eval_before_alignment" for r in records)  # hide's
    assert run_experiment(new, out).already_finished


def test_overwrite_keeps_the_old_run_until_the_first_checkpoint(tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    old = run_files(out)
    new = tiny_cfg("l2p")
    result = run_experiment(new, out, overwrite=True, stop_after_task=0)
    assert not result.finished
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "task_0.pt", "task_0.pt.sha256"]
    assert not (out / "metrics.json").exists() and not (out / ".overwrite").exists()
    assert not (out / "task_selection.json").exists()
    assert json.loads((out / "config.json").read_text())["method"] == "l2p"
    assert run_files(out) != old


def _poisoned(cfg, task: int):
    """The benchmark with one NaN training image in ``task``."""
    bench = tiny_bench(cfg)
    first = int(bench.train.indices_of(bench.task_classes[task])[0])
    bench.train.dataset.images[first] = float("nan")
    return bench


def test_an_overwrite_that_fails_in_its_first_task_keeps_the_old_run(tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    old = run_files(out)
    new = tiny_cfg("l2p", epochs=1)
    with pytest.raises(NonFiniteLossError):
        run_experiment(new, out, overwrite=True, benchmark=_poisoned(new, 0))
    assert (out / ".overwrite/config.json").exists()
    staged = {k: v for k, v in run_files(out).items() if not k.startswith(".overwrite/")}
    assert staged == old
    # a plain re-run finds the old, finished run and drops the abandoned staging folder
    assert run_experiment(tiny_cfg("hide"), out).already_finished
    assert not (out / ".overwrite").exists()


def test_overwrite_of_a_folder_without_a_run_writes_in_place(tmp_path):
    new = tiny_cfg("l2p", epochs=1)
    out = tmp_path / "empty"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(NonFiniteLossError):
        run_experiment(new, out, overwrite=True, benchmark=_poisoned(new, 0))
    assert (out / "config.json").exists() and not (out / ".overwrite").exists()
    # a folder holding only checkpoints holds a run: staged
    out = tmp_path / "ckpts"
    (out / "checkpoints").mkdir(parents=True)
    with pytest.raises(NonFiniteLossError):
        run_experiment(new, out, overwrite=True, benchmark=_poisoned(new, 0))
    assert (out / ".overwrite/config.json").exists() and not (out / "config.json").exists()


# ---------------------------------------------------------------------------- NaN loss
def test_nan_loss_names_the_checkpoint_that_is_kept(tmp_path):
    cfg = tiny_cfg("l2p", epochs=1)
    out = tmp_path / "first"
    with pytest.raises(NonFiniteLossError) as info:
        run_experiment(cfg, out, benchmark=_poisoned(cfg, 0))
    assert str(info.value).endswith("; training stopped, no task had finished, so there is no "
                                    "checkpoint")
    record = log_records(out)[-1]
    err = info.value
    assert record["event"] == "nonfinite_loss"
    assert {k: record[k] for k in ("task", "phase", "epoch", "step")} == {
        "task": 0, "phase": err.phase, "epoch": 0, "step": err.step}
    assert "value" in record
    out = tmp_path / "second"
    with pytest.raises(NonFiniteLossError) as info:
        run_experiment(cfg, out, benchmark=_poisoned(cfg, 1))
    assert str(info.value).endswith(f"; training stopped, the last good checkpoint "
                                    f"{out / 'checkpoints/task_0.pt'} is kept")
    out = tmp_path / "resumed"
    run_experiment(cfg, out, stop_after_task=0)
    with pytest.raises(NonFiniteLossError) as info:
        run_experiment(cfg, out, benchmark=_poisoned(cfg, 1))
    assert str(info.value).endswith(f"the last good checkpoint {out / 'checkpoints/task_0.pt'} "
                                    "is kept")
    assert log_records(out)[-1]["task"] == 1


# ---------------------------------------------------------------------------- data feeding
class _Recorder(Dataset):
    """A dataset that records which items were read, in order."""

    def __init__(self, base) -> None:
        self.base, self.seen = base, []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.base[i]


def _recording(bench):
    for name in ("train", "train_eval", "test"):
        split = getattr(bench, name)
        setattr(bench, name, SplitDataset(_Recorder(split.dataset), split.targets))
    return bench


@pytest.mark.slow
@pytest.mark.parametrize("drop_last", [False, True])
def test_training_reads_each_task_shuffled_and_evaluation_in_order(tmp_path, drop_last):
    cfg = tiny_cfg("l2p", epochs=2, batch_size=3, legacy_drop_last=drop_last)
    bench = _recording(tiny_bench(cfg))
    run_experiment(cfg, tmp_path / "run", benchmark=bench)
    seen = bench.train.dataset.seen
    per_epoch = 6 if drop_last else 8  # 8 training images per task, batches of 3
    assert len(seen) == T * 2 * per_epoch
    shuffled = False
    for t in range(T):
        task_idx = bench.train.indices_of(bench.task_classes[t]).tolist()
        for e in range(2):
            chunk = seen[(2 * t + e) * per_epoch:(2 * t + e + 1) * per_epoch]
            assert set(chunk) <= set(task_idx) and len(set(chunk)) == per_epoch
            shuffled |= chunk != sorted(chunk)
    assert shuffled
    expected = [i for t in range(T) for k in range(t + 1)
                for i in bench.test.indices_of(bench.task_classes[k]).tolist()]
    assert bench.test.dataset.seen == expected


def test_statistics_read_the_task_in_order(tmp_path):
    cfg = tiny_cfg("hide")
    bench = _recording(tiny_bench(cfg))
    run_experiment(cfg, tmp_path / "run", benchmark=bench)
    assert bench.train.dataset.seen == []
    seen = bench.train_eval.dataset.seen
    per_task = [bench.train_eval.indices_of(c).tolist() for c in bench.task_classes]
    assert seen and len(seen) % sum(map(len, per_task)) == 0
    passes = len(seen) // sum(map(len, per_task))
    assert seen == [i for t in range(T) for _ in range(passes) for i in per_task[t]]


# ---------------------------------------------------------------------------- evaluate_task
class _Fake:
    """Logits, task choices, oracle logits and expert counts looked up by sample id (x[:, 0])."""

    logits = torch.tensor([[0.0, 5, 1, 0], [0, 1, 0, 2], [3, 0, 2, 0], [0, 0, 1, 4],
                           [0, 2, 0, 3]])
    tasks = torch.tensor([1, 0, 1, 2, -1])
    oracle = torch.tensor([[0.0, 1, 2, 0], [0, 3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                           [1, 0, 0, 0]])

    def __init__(self, with_tasks=True, with_oracle=True, with_experts=True) -> None:
        self.with_tasks, self.with_oracle, self.with_experts = with_tasks, with_oracle, \
            with_experts
        self.last = None
        self.oracle_ids = []

    def predict(self, x):
        return self.logits[x[:, 0].long()]

    def predict_with_tasks(self, x):
        ids = x[:, 0].long()
        self.last = ids
        return self.logits[ids], self.tasks[ids] if self.with_tasks else None

    def expert_selection(self):
        if not self.with_experts:
            return None
        counts = torch.zeros(1, 2, 3, dtype=torch.long)
        for i in self.last.tolist():
            counts[0, i % 2, i % 3] += 1
        return counts

    def predict_oracle(self, x, task_ids):
        self.oracle_ids.append(task_ids)
        return self.oracle[x[:, 0].long()] if self.with_oracle else None


def _loader() -> DataLoader:
    ids = torch.arange(5.0)[:, None]
    return DataLoader(TensorDataset(ids, torch.tensor([1, 3, 2, 3, 1])), batch_size=2)


def test_evaluate_task_against_hand_counts():
    method = _Fake()
    res = evaluate_task(method, _loader(), 1, torch.device("cpu"), task_classes=[1, 2],
                        num_tasks=3)
    # labels 1, 3, 2, 3, 1; argmax 1, 3, 0, 3, 3 -> 3 of 5; within classes {1, 2}:
    # 1, 1, 2, 2, 1 -> 3 of 5; task 1 chosen by samples 0 and 2 -> 2 of 5;
    # oracle argmax 2, 1, 2, 3, 0 -> samples 2 and 3 -> 2 of 5
    assert res["acc"] == pytest.approx(60.0) and res["til"] == pytest.approx(60.0)
    assert res["tii"] == pytest.approx(40.0)
    assert res["til_oracle"] == pytest.approx(40.0)  # ids 2 and 3
    assert res["n"] == 5
    assert res["prompt_counts"] == [2, 2, 1]  # task -1 counted as 0
    experts = [[[0, 0, 0], [0, 0, 0]]]
    for i in range(5):
        experts[0][i % 2][i % 3] += 1
    assert res["expert_counts"] == experts
    assert all(torch.equal(ids, torch.full_like(ids, 1)) for ids in method.oracle_ids)


def test_evaluate_task_without_task_choice_oracle_experts_or_classes():
    res = evaluate_task(_Fake(False, False, False), _loader(), 0, torch.device("cpu"))
    assert res["acc"] == pytest.approx(60.0)
    assert math.isnan(res["tii"]) and math.isnan(res["til"]) and math.isnan(res["til_oracle"])
    assert res["prompt_counts"] is None and res["expert_counts"] is None
    res = evaluate_task(_Fake(), _loader(), 1, torch.device("cpu"))  # no num_tasks
    assert res["prompt_counts"] is None and res["tii"] == pytest.approx(40.0)


def test_evaluate_task_accuracy_only():
    class AccOnly(_Fake):
        def predict_with_tasks(self, x):
            raise AssertionError("full=False must not ask for tasks")

    res = evaluate_task(AccOnly(), _loader(), 1, torch.device("cpu"), task_classes=[1, 2],
                        full=False, num_tasks=3)
    assert res["acc"] == pytest.approx(60.0) and res["n"] == 5
    assert all(math.isnan(res[k]) for k in ("tii", "til", "til_oracle"))
    assert res["prompt_counts"] is None and res["expert_counts"] is None


def test_evaluate_task_sums_counts_over_ranks():
    class TwoRanks:
        """Rank 0 of two whose partner saw the same samples: every count doubles."""

        enabled, is_main = True, True

        def all_sum(self, values):
            return [2.0 * v for v in values]

    res = evaluate_task(_Fake(), _loader(), 1, torch.device("cpu"), TwoRanks(),
                        task_classes=[1, 2], num_tasks=3)
    assert res["n"] == 10 and res["acc"] == pytest.approx(60.0)
    assert res["tii"] == pytest.approx(40.0) and res["til_oracle"] == pytest.approx(40.0)
    assert res["til"] == pytest.approx(60.0)
    assert res["prompt_counts"] == [4, 4, 2]
    assert np.asarray(res["expert_counts"]).shape == (1, 2, 3)
    assert np.asarray(res["expert_counts"]).sum() == 10
    res = evaluate_task(_Fake(False, False, False), _loader(), 1, torch.device("cpu"),
                        TwoRanks(), num_tasks=3)
    assert res["prompt_counts"] is None and res["expert_counts"] is None
    assert math.isnan(res["tii"]) and math.isnan(res["til_oracle"])


# ---------------------------------------------------------------------------- task_selection
def test_task_selection_content():
    method = SimpleNamespace(name="m", model=SimpleNamespace(prompt_layers=(2, 4)))
    results = [{"n": 3, "prompt_counts": [3, 0], "expert_counts": None},
               {"n": 2, "prompt_counts": [1, 1], "expert_counts": None}]
    assert task_selection(method, 1, 2, results) == {
        "kind": "task_selection", "version": 1, "method": "m", "after_task": 1,
        "num_tasks": 2, "test_samples": [3, 2], "prompts": [[3, 0], [1, 1]], "experts": None,
        "layer_ids": [2, 4]}
    experts = [{"n": 1, "prompt_counts": None, "expert_counts": [[[1]]]},
               {"n": 1, "prompt_counts": [0, 1], "expert_counts": [[[2]]]}]
    data = task_selection(SimpleNamespace(name="e"), 1, 2, experts)
    assert data["prompts"] is None and data["experts"] == [[[[1]]], [[[2]]]]
    assert data["layer_ids"] == []
    none = [{"n": 1, "prompt_counts": None, "expert_counts": None}]
    assert task_selection(method, 0, 2, none) is None


# ---------------------------------------------------------------------------- final_metrics
def test_final_metrics_by_hand():
    cfg = tiny_cfg("hide")
    nan = np.nan
    acc = np.array([[80.0, nan], [60.0, 90.0]])
    tii = np.array([[100.0, nan], [50.0, 70.0]])
    til = np.array([[90.0, nan], [nan, 95.0]])
    before = np.array([[80.0, nan], [70.0, 40.0]])
    m = final_metrics(cfg, acc, tii, til, {"weights_sha256": "abc"}, None, before)
    for key, value in M.summarize(acc).items():
        assert m[key] == (value if not isinstance(value, float) else pytest.approx(value))
    assert m["FA_before_alignment"] == pytest.approx(55.0)
    assert m["FM_before_alignment"] == pytest.approx(M.summarize(before)["FM"])
    assert m["CA_before_alignment"] == pytest.approx(M.summarize(before)["CA"])
    assert "accuracy_before_alignment" not in m
    assert m["accuracy_matrix_before_alignment"] == [[80.0, None], [70.0, 40.0]]
    assert m["TII_accuracy"] == pytest.approx(60.0)
    assert m["TIL_accuracy"] is None and m["til_per_task"] == [None, 95.0]
    assert m["TIL_oracle_prompt_accuracy"] is None
    assert m["til_oracle_prompt_per_task"] == [None, None]
    assert m["per_task"] == [60.0, 90.0] and m["tii_per_task"] == [50.0, 70.0]
    assert m["accuracy_matrix"] == [[80.0, None], [60.0, 90.0]]
    assert {k: m[k] for k in ("method", "dataset", "backbone", "backbone_weights_sha256",
                              "seed", "num_tasks", "test_batch_size",
                              "per_sample_prompts")} == {
        "method": "hide", "dataset": "synthetic", "backbone": cfg.backbone,
        "backbone_weights_sha256": "abc", "seed": 11, "num_tasks": 2, "test_batch_size": 64,
        "per_sample_prompts": True}
    oracle = np.array([[70.0, nan], [65.0, 85.0]])
    m = final_metrics(dataclasses.replace(cfg, method_options=dataclasses.replace(
        cfg.method_options, batchwise_prompt=True)), acc, tii, til,
                      {"weights_sha256": "abc"}, oracle, before[:1])
    assert m["TIL_oracle_prompt_accuracy"] == pytest.approx(75.0)
    assert m["til_oracle_prompt_per_task"] == [65.0, 85.0]
    assert "FA_before_alignment" not in m and "accuracy_matrix_before_alignment" not in m
    assert m["per_sample_prompts"] is False
    m = final_metrics(cfg, acc, tii, til, {"weights_sha256": "abc"}, oracle[:1])
    assert m["TIL_oracle_prompt_accuracy"] is None  # a matrix of the wrong shape is ignored


# ---------------------------------------------------------------------------- rank 0 only
class _Ctx:
    """A fake two-process context: ``broadcast_object`` returns ``reply`` (the other rank's
    view) or echoes rank 0's payload."""

    def __init__(self, is_main: bool, reply=None, enabled: bool = True) -> None:
        self.enabled, self.is_main, self.reply, self.sent = enabled, is_main, reply, []

    def broadcast_object(self, obj=None):
        self.sent.append(obj)
        return obj if self.is_main else self.reply


def test_on_main_runs_on_rank_0_and_every_rank_gets_the_result_or_the_error():
    calls = []
    assert _on_main(_Ctx(True, enabled=False), lambda: calls.append(1) or 5) == 5
    ctx = _Ctx(True)
    assert _on_main(ctx, lambda: calls.append(2) or 6) == 6 and ctx.sent == [("ok", 6)]
    other = _Ctx(False, reply=("ok", 7))
    assert _on_main(other, lambda: calls.append(3)) == 7 and other.sent == [None]
    assert calls == [1, 2]
    ctx = _Ctx(True)
    error = ValueError("disk full")
    with pytest.raises(ValueError) as info:
        _on_main(ctx, lambda: (_ for _ in ()).throw(error))
    assert info.value is error and ctx.sent == [("error", error)]
    with pytest.raises(KeyError, match="gone"):
        _on_main(_Ctx(False, reply=("error", KeyError("gone"))), lambda: 1)


def test_on_main_sends_an_error_that_cannot_be_pickled_as_text():
    class Unpicklable(Exception):
        def __reduce__(self):
            raise pickle.PicklingError("no")

    ctx = _Ctx(True)
    with pytest.raises(Unpicklable):
        _on_main(ctx, lambda: (_ for _ in ()).throw(Unpicklable("bad state")))
    (status, sent), = ctx.sent
    assert status == "error" and type(sent) is RuntimeError
    assert str(sent) == "rank 0: bad state"


def test_log_of_other_ranks_writes_nothing(tmp_path):
    path = tmp_path / "log.jsonl"
    silent = _JsonlLog(path, enabled=False)
    silent({"task": 0})
    silent.truncate_after(0)
    assert not path.exists()
    write = _JsonlLog(path)
    write({"task": 0, "x": math.nan})
    assert json.loads(path.read_text())["x"] is None  # strict JSON
    path.write_text('{"task": 0}\n{"task": 1}\n')
    silent.truncate_after(0)
    assert path.read_text() == '{"task": 0}\n{"task": 1}\n'
    record_checksum(tmp_path, "log.jsonl")
    write.truncate_after(0)
    assert path.read_text() == '{"task": 0}\n'


# ---------------------------------------------------------------------------- precision
@pytest.mark.filterwarnings("ignore:precision bf16 on the CPU")
@pytest.mark.parametrize("precision, compile", [("bf16", False), ("fp32", True)])
def test_precision_and_compile_reach_the_models(tmp_path, monkeypatch, precision, compile):
    import cl.run.precision

    calls = []

    def record(model, *, device, precision="fp32", compile=False):
        calls.append((torch.device(device), precision, compile))
        return ["forward"]

    monkeypatch.setattr(cl.run.precision, "apply_to_model", record)
    cfg = tiny_cfg("l2p", precision=precision, compile=compile)
    run_experiment(cfg, tmp_path / "run", stop_after_task=0)
    assert calls and set(calls) == {(torch.device("cpu"), precision, compile)}


def test_another_image_size_builds_a_matching_backbone(tmp_path):
    cfg = tiny_cfg("l2p", dataset_options={**tiny_cfg().dataset_options, "image_size": 16})
    result = run_experiment(cfg, tmp_path / "run", stop_after_task=0)
    assert result.accuracy.shape == (1, T)
    assert json.loads((tmp_path / "run/env.json").read_text())["dataset"]["image_size"] == 16


# ---------------------------------------------------------------------------- rank 0 of two
@pytest.fixture
def rank_0_of_two(tmp_path, monkeypatch):
    """``run_experiment`` as rank 0 of a two-process run whose partner contributes nothing: a
    real one-process gloo group (so collectives work) behind a context that says two ranks."""
    import contextlib

    import torch.distributed as dist

    from cl.run.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    ctx = DistContext(rank=0, world_size=2)

    @contextlib.contextmanager
    def group(device):
        yield ctx

    monkeypatch.setattr(sys.modules[run_experiment.__module__], "process_group", group)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_0_trains_and_evaluates_its_share(tmp_path, rank_0_of_two, drop_last):
    from cl.backbones.loading import build_backbone
    from cl.methods.base import get_method
    from cl.run.files import load_checkpoint

    cfg = tiny_cfg("l2p", epochs=2, batch_size=3, legacy_drop_last=drop_last)
    bench = _recording(tiny_bench(cfg))
    result = run_experiment(cfg, tmp_path / "run", benchmark=bench)
    assert result.finished and result.env["world_size"] == 2
    # training: a shared permutation of the task's 8 images, every second one (4 per epoch)
    seen = bench.train.dataset.seen
    per_epoch = 3 if drop_last else 4
    assert len(seen) == T * 2 * per_epoch
    for t in range(T):
        task_idx = set(bench.train.indices_of(bench.task_classes[t]).tolist())
        for e in range(2):
            chunk = seen[(2 * t + e) * per_epoch:(2 * t + e + 1) * per_epoch]
            assert set(chunk) <= task_idx and len(set(chunk)) == per_epoch
    # evaluation: the strided, unpadded share of every seen task's test images
    shares = [bench.test.indices_of(c).tolist()[0::2] for c in bench.task_classes]
    assert bench.test.dataset.seen == [i for t in range(T) for k in range(t + 1)
                                       for i in shares[k]]
    backbone = build_backbone(cfg.backbone, img_size=32, seed=cfg.seed)
    method = get_method("l2p")(cfg, backbone.model, bench.num_classes, bench.task_classes,
                               device=torch.device("cpu"))
    method.load_state_dict(load_checkpoint(tmp_path / "run/checkpoints/task_2.pt")["method"])
    for k in range(T):
        items = [bench.test.dataset.base[i] for i in shares[k]]
        x, y = torch.stack([a for a, _ in items]), torch.tensor([int(b) for _, b in items])
        with torch.no_grad():
            logits = method.predict(x)
        assert result.accuracy[T - 1, k] == pytest.approx(
            100.0 * float((logits.argmax(1) == y).double().mean()), abs=1e-9)
