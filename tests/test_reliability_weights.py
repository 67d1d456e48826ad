"""Weights files are data, never code: torch files load with ``weights_only=True`` plus an
explicit allow-list (``argparse.Namespace``); a pickle naming anything else is refused with one
line and exit 2 before it can run, and the run's own checkpoints are loaded the same way."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from cl import cli as cl_cli
from cl.backbones import loading as bb
from cl.backbones.loading import BACKBONES, BackboneWeightsError, build_backbone
from cl.run.files import CheckpointError, load_checkpoint, sha256_hex, torch_save_atomic

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True)


class _Payload:
    """Unpickling this runs ``os.system(touch MARKER)``: what a hostile weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bb.WEIGHTS_ENV, str(tmp_path / "weights-cache"))
    monkeypatch.setattr(bb, "_hf_cached", lambda repo_id: None)


def _tiny(monkeypatch: pytest.MonkeyPatch, tag: str) -> dict[str, torch.Tensor]:
    monkeypatch.setitem(BACKBONES, tag, dataclasses.replace(BACKBONES[tag], arch=TINY,
                                                            default_img_size=32))
    gen = torch.Generator().manual_seed(0)
    keys = VisionTransformer(img_size=32, num_classes=0, **TINY).state_dict()
    return {k: torch.randn(v.shape, generator=gen) for k, v in keys.items()}


def _cl_main(argv: list[str]) -> tuple[int, str]:
    try:
        return cl_cli.main(argv), ""
    except SystemExit as exc:
        return int(exc.code), ""


@pytest.mark.slow
@pytest.mark.parametrize("pickler", ["torch", "plain"])
def test_malicious_weights_file_never_runs_and_exits_2(tmp_path, monkeypatch, capsys, pickler):
    marker = tmp_path / "PWNED"
    weights = tmp_path / "dino_vitbase16_pretrain.pth"
    if pickler == "torch":
        torch.save({"cls_token": torch.zeros(1), "evil": _Payload(marker)}, weights)
    else:  # a bare pickle (not torch's zip format)
        weights.write_bytes(pickle.dumps({"evil": _Payload(marker)}, protocol=2))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _ = _cl_main(["--dataset", "synthetic", "--quick", "--no-progress", "--backbone",
                        "dino1k", "--weights", str(weights), "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, err
    assert not marker.exists(), "the pickle's payload ran"
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(weights) in err[0]
    if pickler == "torch":
        assert "'posix.system'" in err[0] and "argparse.Namespace" in err[0], err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder was created


def test_garbage_weights_file_is_named_as_not_a_checkpoint(tmp_path, monkeypatch):
    _tiny(monkeypatch, "dino1k")
    weights = tmp_path / "garbage.pth"
    weights.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("dino1k", weights=weights)
    message = str(err.value)
    assert "not a readable PyTorch checkpoint" in message and "\n" not in message
    assert "besides tensors" not in message  # the old, wrong explanation


def test_training_checkpoint_with_argparse_namespace_loads(tmp_path, monkeypatch):
    """iBOT / DINO / MoCo v3 training files pickle their arguments: the one allowed class."""
    state = _tiny(monkeypatch, "ibot21k")
    weights = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()},
                "args": argparse.Namespace(arch="vit_base", patch_size=16, lr=5e-4,
                                           out_dim=[8192], data_path=None),
                "epoch": 3}, weights)
    backbone = build_backbone("ibot21k", weights=weights)
    assert torch.equal(backbone.model.state_dict()["cls_token"], state["cls_token"])
    assert backbone.weights_sha256 == sha256_hex(weights.read_bytes())


def test_pinned_sha256_is_checked(tmp_path, monkeypatch):
    state = _tiny(monkeypatch, "dino1k")
    monkeypatch.setitem(BACKBONES, "dino1k",
                        dataclasses.replace(BACKBONES["dino1k"], sha256="0" * 64))
    folder = tmp_path / "weights-cache"
    folder.mkdir()
    torch.save(state, folder / BACKBONES["dino1k"].filename)
    with pytest.raises(BackboneWeightsError, match="not the published 0000"):
        build_backbone("dino1k")
    monkeypatch.setitem(BACKBONES, "dino1k", dataclasses.replace(
        BACKBONES["dino1k"], sha256=sha256_hex((folder / BACKBONES["dino1k"].filename)
                                               .read_bytes())))
    build_backbone("dino1k")  # the matching file loads


def test_run_checkpoint_with_code_is_refused_even_with_a_matching_sidecar(tmp_path):
    """The SHA-256 sidecar proves integrity, not origin: the loader itself must refuse code."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "task_0.pt"
    buffer = io.BytesIO()
    torch.save({"task": 0, "method": _Payload(marker)}, buffer)
    path.write_bytes(buffer.getvalue())
    path.with_name("task_0.pt.sha256").write_text(f"{sha256_hex(buffer.getvalue())}  task_0.pt\n")
    with pytest.raises(CheckpointError, match="posix.system"):
        load_checkpoint(path)
    assert not marker.exists()
    # what the engine writes (tensors, numbers, dicts) loads
    torch_save_atomic(path, {"task": 1, "acc": torch.zeros(2, 2, dtype=torch.float64)})
    assert load_checkpoint(path)["task"] == 1
