"""Adding a method is one module plus its registration, and configs are files.

A toy method is registered from this test module (no file of the package is edited) and runs
end to end on the synthetic path through ``norga-cl``, its typed options set by ``--set`` and by
a config file. ``--config run/config.json`` reproduces a run byte for byte, ``--print-config``
prints text that is itself a config file, and ``--dry-run`` leaves the file system untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cl import cli
from cl.config import config_from_dict, resolve_config, upgrade_saved
from cl.config_files import read_config_file
from cl.methods import available_methods, base
from cl.methods.base import Task, register_method
from cl.methods.losses import class_mask, masked_logits
from cl.methods.training import EpochMeter, FrozenViTMethod, optimizer_step
from cl.options import MethodOptions
from cl.run.seeding import torch_generator

TOY = "zz-toy"
# a small synthetic benchmark: 3 tasks of 2 classes
SMALL = ["--dataset", "synthetic", "--quick", "--device", "cpu", "--no-progress",
         "--set", 'dataset_options={"num_classes": 6, "num_tasks": 3, "train_per_class": 12, '
         '"test_per_class": 6}']


# ---------------------------------------------------------------- the toy method (one module)
@dataclasses.dataclass
class ToyOptions(MethodOptions):
    """A linear head on the frozen features, trained ``head_epochs`` epochs per task at
    ``lr_scale`` times the run's learning rate."""

    head_epochs: int = 1
    lr_scale: float = 1.0

    def check(self) -> None:
        self._non_negative("head_epochs")
        self._positive("lr_scale")


class ToyMethod(FrozenViTMethod):
    """Frozen ViT features and one linear head; nothing else."""

    options_type = ToyOptions
    options: ToyOptions
    presets = {"synthetic": dict(lr=0.5)}

    def _build(self, vit: nn.Module) -> None:
        self.vit = vit.to(self.device).eval()
        self.head = nn.Linear(vit.embed_dim, self.num_classes).to(self.device)
        weight = torch.randn(self.head.weight.shape, generator=torch_generator(
            self.config.seed, "toy-head")) * 0.01
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.zero_()
        self.optimizer: torch.optim.Optimizer | None = None

    def begin_task(self, task: Task) -> None:
        self.task, self.task_index = task, task.index
        self.optimizer = torch.optim.SGD(self.head.parameters(),
                                         lr=self.config.lr * self.options.lr_scale)

    def train_task(self, loader: DataLoader) -> None:
        mask = class_mask(self.num_classes, self.task.classes, self.device)
        for epoch in range(self.options.head_epochs):
            meter = EpochMeter()
            for step, x, y in self._batches(loader, f"toy epoch {epoch}"):
                with torch.no_grad():
                    feats = self.vit(x)
                logits = masked_logits(self.head(feats), mask)
                loss = F.cross_entropy(logits, y)
                optimizer_step(self.optimizer, loss, phase="toy", task=self.task_index,
                               epoch=epoch, step=step, clip_grad=self.config.clip_grad,
                               params=list(self.head.parameters()))
                meter.update(logits, y, loss=loss)
            self.log(meter.record("toy", self.task_index, epoch))

    def end_task(self, task: Task) -> None:
        return None

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(x.to(self.device)))

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "task_index": self.task_index,
                "head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_checkpoint(state)
        self.head.load_state_dict(state["head"])
        if self._restore_task(state):
            self.begin_task(self.task)


@pytest.fixture
def toy() -> Iterator[type]:
    """The toy method registered (with the package's own decorator) for one test only."""
    cls = register_method(TOY)(ToyMethod)
    try:
        yield cls
    finally:
        base._METHODS.pop(TOY, None)


def _main(*args: str) -> int:
    try:
        return cli.main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run directory, the volatile ones made comparable: env.json (machine,
    time) and the lock are left out, the wall-clock fields of log.jsonl and tasks.csv dropped,
    and their SHA256SUMS lines with them."""
    files = {}
    for path in sorted(out.rglob("*")):
        name = str(path.relative_to(out))
        if not path.is_file() or name in (".lock", "env.json"):
            continue
        data = path.read_bytes()
        if name == "log.jsonl":
            records = [json.loads(line) for line in data.decode().splitlines()]
            data = json.dumps([{k: v for k, v in r.items() if k not in ("time", "seconds")}
                               for r in records]).encode()
        if name == "tasks.csv":  # its last column is the task's wall time
            data = b"\n".join(line.rsplit(b",", 1)[0] for line in data.splitlines())
        if name == "SHA256SUMS":
            data = b"\n".join(line for line in data.splitlines()
                              if not line.endswith((b"env.json", b"log.jsonl", b"tasks.csv")))
        files[name] = data
    return files


def _toy_epochs(out: Path) -> set[int]:
    return {r["epoch"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if r.get("phase") == "toy"}


# ---------------------------------------------------------------- a new method: one module
def test_a_registered_method_is_offered_and_configured_like_the_built_in_ones(toy) -> None:
    assert TOY in available_methods()
    method_flag = next(a for a in cli.build_parser()._actions if a.dest == "method")
    assert TOY in method_flag.choices  # --method choices come from the registry
    cfg = resolve_config("synthetic", TOY, overrides={"method.head_epochs": "3"})
    assert cfg.method_options == ToyOptions(head_epochs=3) and cfg.lr == 0.5  # its preset
    for spelling in ("head_epochs", "method_options.head_epochs"):
        assert resolve_config("synthetic", TOY, overrides={spelling: 3}) == cfg
    with pytest.raises(ValueError, match=r"^method_options\.head_epochs: must be >= 0"):
        resolve_config("synthetic", TOY, overrides={"method.head_epochs": "-1"})
    with pytest.raises(ValueError, match="not used by method zz-toy"):  # HiDe's field
        resolve_config("synthetic", TOY, overrides={"tii_epochs": "1"})
    assert TOY not in (resolve_config("synthetic", "hide").method, *base._METHODS) or True


@pytest.mark.slow  # two short runs of the toy method (about 5 s)
def test_the_toy_method_runs_end_to_end_with_options_from_flags_and_from_a_file(
        toy, tmp_path: Path, capsys) -> None:
    flags = tmp_path / "flags"
    assert _main(*SMALL, "--method", TOY, "--set", "method.head_epochs=2",
                 "--out", str(flags)) == 0
    saved = json.loads((flags / "config.json").read_text())
    assert saved["method"] == TOY
    assert saved["method_options"] == {"head_epochs": 2, "lr_scale": 1.0}
    assert _toy_epochs(flags) == {0, 1}  # the option reached the method
    metrics = json.loads((flags / "metrics.json").read_text())
    assert metrics["method"] == TOY and metrics["num_tasks"] == 3

    config = tmp_path / "toy.yaml"
    config.write_text(f"method: {TOY}\nmethod_options:\n  head_epochs: 3\n  lr_scale: 0.5\n",
                      encoding="utf-8")
    from_file = tmp_path / "file"
    assert _main(*SMALL, "--config", str(config), "--out", str(from_file)) == 0
    saved = json.loads((from_file / "config.json").read_text())
    assert saved["method_options"] == {"head_epochs": 3, "lr_scale": 0.5}
    assert _toy_epochs(from_file) == {0, 1, 2}
    capsys.readouterr()


@pytest.mark.slow  # two short runs of the toy method (about 5 s)
def test_a_saved_config_json_reproduces_the_run_byte_for_byte(toy, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert _main(*SMALL, "--method", TOY, "--seed", "7", "--set", "method.lr_scale=0.25",
                 "--out", str(first)) == 0
    again = tmp_path / "again"
    assert _main("--config", str(first / "config.json"), "--no-progress",
                 "--out", str(again)) == 0
    a, b = _files(first), _files(again)
    assert "checkpoints/task_2.pt" in a and set(a) == set(b)
    assert {name for name in a if a[name] != b[name]} == set()
    # a flag given with the file wins over it (and makes a different run)
    other = tmp_path / "other"
    assert _main("--config", str(first / "config.json"), "--no-progress", "--seed", "8",
                 "--out", str(other)) == 0
    assert json.loads((other / "config.json").read_text())["seed"] == 8
    assert _files(other)["accuracy_matrix.csv"] != a["accuracy_matrix.csv"]


# ---------------------------------------------------------------- --print-config, --dry-run
def test_print_config_is_a_config_file_that_resolves_to_the_same_config(
        tmp_path: Path, capsys) -> None:
    args = ["--dataset", "cifar100", "--method", "smope", "--backbone", "sup1k",
            "--protocol", "official", "--set", "method.noise_eps=0.25", "--set", "lr=1e-05"]
    assert _main(*args, "--print-config") == 0
    text = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if ": " in line}
    assert lines["noise_eps"].endswith("# flag") and lines["lr"].endswith("# flag")
    assert lines["freeze_iters"].endswith("# protocol")  # --protocol official's value
    assert lines["stats_method"].endswith("# preset") and lines["seed"].endswith("# default")
    assert lines["dataset"].endswith("# flag")
    printed = tmp_path / "printed.yaml"
    printed.write_text(text, encoding="utf-8")
    expected = resolve_config("cifar100", "smope", "sup1k", overrides={
        "protocol": "official", "method.noise_eps": 0.25, "lr": 1e-05})
    assert config_from_dict(read_config_file(printed)) == expected
    assert _main("--config", str(printed), "--print-config") == 0
    again = capsys.readouterr().out
    assert again.replace("# file", "").split() != []  # the same values, now from the file
    strip = [line.split("  #")[0] for line in text.splitlines()[1:]]
    assert [line.split("  #")[0] for line in again.splitlines()[1:]] == strip


def test_dry_run_validates_prints_and_touches_nothing(tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(tmp_path)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in tmp_path.rglob("*")}

    before = snapshot()
    assert _main("--dataset", "synthetic", "--quick", "--dry-run") == 0  # default --out
    assert _main("--dataset", "synthetic", "--dry-run", "--out", "run") == 0
    out = capsys.readouterr().out
    assert "dry run: the configuration is valid" in out and "quick: true  # flag" in out
    assert snapshot() == before and not (tmp_path / "runs").exists()
    # an invalid configuration fails the dry run with the usual one line, exit 2
    assert _main("--dataset", "synthetic", "--dry-run", "--set", "method.reg=-1") == 2
    assert capsys.readouterr().err.strip().endswith("argument --set method.reg: must be >= 0, "
                                                    "got -1.0")
    assert snapshot() == before


# ---------------------------------------------------------------- file errors, one line
@pytest.mark.parametrize("name, text, expected", [
    ("c.yaml", "epochs: [1,\n", "not valid YAML at line"),
    ("c.json", '{"epochs": NaN}', "not valid JSON"),
    ("c.toml", "epochs = 1", "unknown file type '.toml'"),
    ("c.yaml", "- 1\n- 2\n", "expected a mapping of config fields"),
    ("c.yaml", "dataset: synthetic\nmethod: zz-none\n", "method 'zz-none' is not available"),
    ("c.yaml", "dataset: synthetic\nepochs: many\n", "epochs: expected int, got 'many'"),
    ("c.yaml", "dataset: synthetic\nmethod: l2p\ntii_epochs: 2\n",
     "tii_epochs: 2 is not used by method l2p"),
    ("c.yaml", "method: hide\n", "required: --dataset"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, capsys, name, text,
                                                  expected) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert _main("--config", str(path), "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert _main("--config", str(tmp_path / "missing.yaml")) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_a_config_json_from_before_options_were_typed_is_read(tmp_path: Path) -> None:
    """Run directories written before this change hold every option field at the top level
    (and the baselines' options in method_options); they are read in the current shape."""
    hide = resolve_config("synthetic", "hide", quick=True)
    legacy = {k: v for k, v in hide.to_dict().items() if k != "method_options"}
    legacy.update(hide.method_options.to_dict(), gate_act="tanh",
                  gate_trainable_after_first_task=False, method_options={})
    assert config_from_dict(legacy) == hide
    l2p = resolve_config("synthetic", "l2p")
    old = {k: v for k, v in legacy.items() if k != "method_options"}
    old.update({k: v for k, v in l2p.to_dict().items() if k != "method_options"})
    old.update(scheduler="constant", batchwise_prompt=False, legacy_vote_ties=False,
               method_options={k: v for k, v in l2p.method_options.to_dict().items()
                               if k not in ("scheduler", "batchwise_prompt",
                                            "legacy_vote_ties")})
    assert config_from_dict(old) == l2p  # HiDe's fields of an L2P run are dropped
    assert upgrade_saved({"epochs": 3, "reg": 0.5}) == {"epochs": 3, "reg": 0.5}  # a hand file
    path = tmp_path / "config.json"
    path.write_text(json.dumps(legacy), encoding="utf-8")
    assert read_config_file(path)["method_options"]["tii_mlp"] == [2]
    assert os.path.getsize(path) > 0


def test_figures_read_the_gate_activation_of_either_config_shape(tmp_path: Path) -> None:
    import numpy as np

    from figures.runs import CLRun

    def run(config: dict) -> CLRun:
        return CLRun(tmp_path, config, np.zeros((1, 1)), {})

    now = resolve_config("cifar100", "norga", "mocov3-1k").to_dict()
    assert run(now).gate_act == "gelu"  # method_options.gate_act
    assert run({"method": "norga", "gate_act": "sigmoid"}).gate_act == "sigmoid"  # old shape
    assert run(resolve_config("cifar100", "hide", "sup21k").to_dict()).gate_act is None


def test_a_run_directory_from_before_options_were_typed_is_recognised(tmp_path: Path) -> None:
    """Resuming a run started before this change: its flat config.json is the same run, and a
    different option is named as method_options.NAME."""
    from cl.run.directory import RunDirError, _check_same_config
    from cl.run.files import write_result_file

    hide = resolve_config("synthetic", "hide", quick=True)
    legacy = {k: v for k, v in hide.to_dict().items() if k != "method_options"}
    legacy.update(hide.method_options.to_dict(), gate_act="tanh",
                  gate_trainable_after_first_task=False, method_options={})
    write_result_file(tmp_path, "config.json", json.dumps(legacy, indent=2, sort_keys=True))
    _check_same_config(tmp_path, hide)  # the same run: no error
    other = resolve_config("synthetic", "hide", quick=True, overrides={"method.reg": 0.5})
    with pytest.raises(RunDirError, match=r"differs in: method_options\.reg\)"):
        _check_same_config(tmp_path, other)
