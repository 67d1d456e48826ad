"""Extension points end to end on the synthetic path: a dataset registered from Python (or by an
installed package's entry point) and a backbone named the timm way (timm model name, hf_hub id).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cl_engine_helpers import OPTIONS, ZERO
from cl_helpers import run_cl_cli

from cl.backbones import timm_names
from cl.backbones.loading import BackboneWeightsError, build_backbone
from cl.config import resolve_config
from cl.data import registry
from cl.data.registry import available_datasets, build_benchmark, register_dataset
from cl.run.engine import run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parent.parent
TINY = {**ZERO, "batch_size": 8, "eval_batch_size": 64, "device": "cpu"}


@pytest.fixture
def mydata(monkeypatch):
    """``mydata`` registered from Python for this test only: the synthetic images, 3 tasks."""
    monkeypatch.setitem(registry._BUILDERS, "mydata", None)  # removed again after the test

    @register_dataset("mydata")
    def build_mydata(*, data_root=None, seed=0, download=False, **options):
        bench = build_benchmark("synthetic", seed=seed, **{**OPTIONS, **options})
        bench.name = "mydata"
        return bench

    return build_mydata


@pytest.mark.slow
def test_registered_dataset_runs_from_run_experiment_and_the_cli(mydata, tmp_path, capsys):
    assert "mydata" in available_datasets()
    cfg = resolve_config("mydata", "hide", "vit-tiny-random", overrides=TINY)
    result = run_experiment(cfg, tmp_path / "api")
    assert result.finished and result.accuracy.shape == (3, 3)
    assert json.loads((tmp_path / "api/config.json").read_text())["dataset"] == "mydata"
    assert json.loads((tmp_path / "api/env.json").read_text())["dataset"]["name"] == "mydata"
    code, err = run_cl_cli(capsys, "--dataset", "mydata", "--method", "hide", "--backbone",
                           "vit-tiny-random", "--epochs", "0", "--set", "tap_epochs=0",
                           "--set", "tii_ca_epochs=0", "--device", "cpu", "--out",
                           str(tmp_path / "cli"))
    assert code == 0, err
    cli = json.loads((tmp_path / "cli/metrics.json").read_text())
    assert cli["dataset"] == "mydata" and cli["num_tasks"] == 3


def test_unregistered_dataset_is_refused_naming_the_allowed(capsys, tmp_path):
    code, err = run_cl_cli(capsys, "--dataset", "nodata", "--out", str(tmp_path / "x"))
    assert code == 2 and "nodata" in err and "synthetic" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="letters, digits"):
        register_dataset("my data")


def test_the_built_in_table_names_each_builder_and_loads_it_on_first_use(monkeypatch):
    """One registry: each built-in dataset is a "module:function" entry, its module is imported
    on first use (not by importing the registry), and the builder it names is the one used."""
    import importlib

    assert registry.builtin_datasets() == list(registry._BUILTIN)
    for name, target in registry._BUILTIN.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    monkeypatch.delitem(registry._BUILDERS, "synthetic", raising=False)
    assert registry.registered_builder("synthetic") is None
    bench = build_benchmark("synthetic", seed=0, **OPTIONS)
    from cl.data.synthetic import build_synthetic

    assert registry.registered_builder("synthetic") is build_synthetic
    assert bench.name == "synthetic"
    # a table entry naming no function is refused in one line, naming the entry
    monkeypatch.setitem(registry._BUILTIN, "synthetic", "cl.data.synthetic:build_nothing")
    monkeypatch.delitem(registry._BUILDERS, "synthetic")
    with pytest.raises(registry.DatasetError, match="build_nothing"):
        build_benchmark("synthetic", seed=0, **OPTIONS)


def test_a_name_registered_from_python_wins_over_a_built_in_one(monkeypatch):
    monkeypatch.setitem(registry._BUILDERS, "digits", None)  # restored after the test

    @register_dataset("digits")
    def my_digits(*, data_root=None, seed=0, download=False, **options):
        return build_benchmark("synthetic", seed=seed, **{**OPTIONS, **options})

    assert build_benchmark("digits", seed=0).name == "synthetic"


@pytest.mark.slow
def test_dataset_from_an_entry_point_reaches_the_installed_command(tmp_path):
    """An installed package declaring ``norga.datasets``: ``--dataset`` accepts its name."""
    site = tmp_path / "site"
    (site / "myplugin-0.1.dist-info").mkdir(parents=True)
    (site / "myplugin-0.1.dist-info/METADATA").write_text(
        "Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (site / "myplugin-0.1.dist-info/entry_points.txt").write_text(
        "[norga.datasets]\nplugdata = myplugin:build\n")
    (site / "myplugin.py").write_text(
        "from cl.data.registry import build_benchmark\n"
        "def build(*, data_root=None, seed=0, download=False, **options):\n"
        f"    bench = build_benchmark('synthetic', seed=seed, **{OPTIONS!r})\n"
        "    bench.name = 'plugdata'\n"
        "    return bench\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments/cl.py"), "--dataset", "plugdata", "--method",
         "hide", "--backbone", "vit-tiny-random", "--epochs", "0", "--set", "tap_epochs=0",
         "--set", "tii_ca_epochs=0", "--device", "cpu", "--no-progress", "--out",
         str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600,
        check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run/metrics.json").read_text())["dataset"] == "plugdata"


# ----------------------------------------------------------------------------- timm backbones
def _tiny_vit_file(path: Path, drop: str | None = None) -> tuple[Path, dict]:
    """A seeded ``vit_tiny_patch16_224`` state dict (timm layout, with its head) as safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != drop}
    save_file(state, str(path))
    return path, state


def test_timm_name_loads_the_file_through_timm(tmp_path):
    path, state = _tiny_vit_file(tmp_path / "w.safetensors")
    backbone = build_backbone("timm:vit_tiny_patch16_224", weights=path, img_size=224)
    got = backbone.model.state_dict()
    assert set(got) == {k for k in state if not k.startswith("head.")}
    for key in ("blocks.7.mlp.fc1.weight", "cls_token", "pos_embed", "norm.bias"):
        assert torch.equal(got[key], state[key]), key
    assert backbone.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not any(p.requires_grad for p in backbone.model.parameters())
    # another image size: timm resamples the position embedding (14x14 -> 2x2 patches)
    small = build_backbone("vit_tiny_patch16_224", weights=path, img_size=32)
    assert small.model.pos_embed.shape == (1, 1 + 4, 192) and small.img_size == 32


def test_timm_name_is_loaded_strictly(tmp_path):
    path, _ = _tiny_vit_file(tmp_path / "w.safetensors", drop="blocks.3.norm1.weight")
    with pytest.raises(BackboneWeightsError, match=r"missing keys: .*blocks\.3\.norm1\.weight"):
        build_backbone("timm:vit_tiny_patch16_224", weights=path, img_size=32)
    with pytest.raises(BackboneWeightsError, match="timm has no model 'no_such_vit'"):
        build_backbone("timm:no_such_vit", weights=path)
    with pytest.raises(BackboneWeightsError, match="not one of timm's VisionTransformer models"):
        build_backbone("timm:resnet10t", weights=path, img_size=32)


@pytest.mark.slow
def test_timm_name_backbone_runs_end_to_end_on_synthetic(tmp_path):
    path, _ = _tiny_vit_file(tmp_path / "w.safetensors")
    cfg = resolve_config("synthetic", "hide", "timm:vit_tiny_patch16_224",
                         overrides={**TINY, "weights": str(path), "seed": 3,
                                    "dataset_options": dict(OPTIONS)})
    result = run_experiment(cfg, tmp_path / "run")
    assert result.finished and result.accuracy.shape == (3, 3)
    env = json.loads((tmp_path / "run/env.json").read_text())
    assert env["backbone"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert env["backbone"]["name"] == "timm:vit_tiny_patch16_224"


def test_offline_without_a_cached_copy_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(timm_names, "_cached", lambda repo, filename: None)
    for name in ("hf_hub:timm/vit_tiny_patch16_224.augreg_in21k", "vit_tiny_patch16_224"):
        code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--backbone", name,
                               "--out", str(tmp_path / "run"))
        assert code == 2 and err.count("\n") == 1, err
        assert "not cached" in err and "--download" in err and "--weights" in err
    assert not (tmp_path / "run").exists()
    code, err = run_cl_cli(capsys, "--dataset", "synthetic", "--backbone", "no-such-tag")
    assert code == 2 and "neither a tag nor a timm model name" in err


@pytest.mark.slow
def test_hf_hub_id_reads_the_hugging_face_cache(tmp_path):
    """A repository laid out in a Hugging Face cache folder, offline: timm builds the model
    from its config.json and the weights come from its model.safetensors."""
    path, _ = _tiny_vit_file(tmp_path / "w.safetensors")
    repo = tmp_path / "hub" / "models--someone--tiny-vit"
    revision = "a" * 40
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(revision)
    (snap / "model.safetensors").write_bytes(path.read_bytes())
    (snap / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 1000, "num_features": 192,
        "pretrained_cfg": {"tag": "test", "input_size": [3, 224, 224], "num_classes": 1000,
                           "classifier": "head"}}))
    script = ("from cl.backbones.loading import build_backbone\n"
              "b = build_backbone('hf_hub:someone/tiny-vit', img_size=32)\n"
              "print(b.weights_sha256, b.weights_path)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    sha, where = done.stdout.split()
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert Path(where).resolve() == (snap / "model.safetensors").resolve()
