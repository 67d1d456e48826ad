"""Backbone converters and strict loading, weights resolution, MoCo v3 fc_norm, env.json SHA-256.

Every converter is checked on a checkpoint in the *original* key layout, made from a tiny timm
ViT of the same family (random values, renamed to the original names): the weights must land in
the right timm parameters, and a missing or an unexpected key must fail with that key named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import _load_weights as timm_load_npz

from cl.backbones import loading as bb
from cl.backbones.loading import (
    BACKBONES,
    BackboneWeightsError,
    build_backbone,
    load_backbone_weights,
)
from cl.config import resolve_config
from cl.models.tii import TIIHead
from cl.models.vit import PromptedViT, uses_fc_norm
from cl.run.engine import run_experiment

TINY: dict[str, Any] = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                            qkv_bias=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _no_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never pick up weights from the user's real cache folder."""
    monkeypatch.setenv(bb.WEIGHTS_ENV, str(tmp_path / "weights-cache"))
    monkeypatch.setattr(bb, "_hf_cached", lambda repo_id: None)


def tiny_vit(fc_norm: bool = False) -> VisionTransformer:
    return VisionTransformer(img_size=32, num_classes=0, fc_norm=fc_norm, **TINY)


def random_timm_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every tensor of the tiny ViT (as the pretrained file would hold)."""
    gen = torch.Generator().manual_seed(seed)
    keys = tiny_vit(fc_norm=False).state_dict()  # the checkpoints do have the final norm
    return {k: torch.randn(v.shape, generator=gen) for k, v in keys.items()}


# ---------------------------------------------------------------- original layouts


def to_google_npz(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """timm names -> the original Google ViT npz layout (test-side inverse of the converter)."""
    a = {k: v.numpy() for k, v in state.items()}
    C = a["cls_token"].shape[-1]
    H = TINY["num_heads"]
    out = {
        "embedding/kernel": a["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": a["patch_embed.proj.bias"],
        "cls": a["cls_token"],
        "Transformer/posembed_input/pos_embedding": a["pos_embed"],
        "Transformer/encoder_norm/scale": a["norm.weight"],
        "Transformer/encoder_norm/bias": a["norm.bias"],
        # ImageNet-21k representation layer and head: must be set aside
        "pre_logits/kernel": np.ones((C, C), np.float32),
        "pre_logits/bias": np.ones(C, np.float32),
        "head/kernel": np.ones((C, 7), np.float32),
        "head/bias": np.ones(7, np.float32),
    }
    for i in range(TINY["depth"]):
        p, b = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        out[f"{p}/LayerNorm_0/scale"] = a[f"{b}.norm1.weight"]
        out[f"{p}/LayerNorm_0/bias"] = a[f"{b}.norm1.bias"]
        out[f"{p}/LayerNorm_2/scale"] = a[f"{b}.norm2.weight"]
        out[f"{p}/LayerNorm_2/bias"] = a[f"{b}.norm2.bias"]
        qkv_w = a[f"{b}.attn.qkv.weight"].reshape(3, C, C)  # (3, out, in)
        qkv_b = a[f"{b}.attn.qkv.bias"].reshape(3, H, C // H)
        for j, n in enumerate(("query", "key", "value")):
            out[f"{p}/MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j].T.reshape(C, H, -1)
            out[f"{p}/MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j]
        out[f"{p}/MultiHeadDotProductAttention_1/out/kernel"] = (
            a[f"{b}.attn.proj.weight"].T.reshape(H, C // H, C))
        out[f"{p}/MultiHeadDotProductAttention_1/out/bias"] = a[f"{b}.attn.proj.bias"]
        for j, fc in enumerate(("fc1", "fc2")):
            out[f"{p}/MlpBlock_3/Dense_{j}/kernel"] = a[f"{b}.mlp.{fc}.weight"].T
            out[f"{p}/MlpBlock_3/Dense_{j}/bias"] = a[f"{b}.mlp.{fc}.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def sup21k_timm(s: dict) -> dict:
    # an older timm in21k file also holds the representation layer and the 21k head
    return {**s, "pre_logits.fc.weight": torch.ones(4, 4), "head.weight": torch.ones(7, 32)}


def ibot21k_full(s: dict) -> dict:
    teacher = {f"backbone.{k}": v for k, v in s.items()}
    teacher.update({"head.mlp.0.weight": torch.ones(8, 32), "head.last_layer.weight_g":
                    torch.ones(9, 1), "head.last_layer2.weight_v": torch.ones(9, 8)})
    return {"teacher": teacher, "student": {"backbone.cls_token": torch.zeros(1)}, "epoch": 3}


def ibot1k_teacher(s: dict) -> dict:
    return {"state_dict": dict(s)}


def dino_plain(s: dict) -> dict:
    return dict(s)


def mocov3_deit(s: dict) -> dict:
    return {"model": dict(s)}


def mocov3_raw(s: dict) -> dict:
    raw = {f"module.base_encoder.{k}": v for k, v in s.items()}
    raw.update({f"module.momentum_encoder.{k}": v + 1 for k, v in s.items()})
    raw.update({"module.base_encoder.head.0.weight": torch.ones(8, 32),
                "module.predictor.0.weight": torch.ones(8, 8)})
    return {"state_dict": raw, "epoch": 300, "arch": "vit_base"}


# (tag, original-layout maker, how a key is named in that layout, fc_norm backbone)
CASES: list[tuple[str, Callable[[dict], dict], Callable[[str], str], bool]] = [
    ("sup21k", sup21k_timm, lambda k: k, False),
    ("ibot21k", ibot21k_full, lambda k: f"backbone.{k}", False),
    ("ibot1k", ibot1k_teacher, lambda k: k, False),
    ("dino1k", dino_plain, lambda k: k, False),
    ("mocov3-1k", mocov3_deit, lambda k: k, True),
    ("mocov3-1k", mocov3_raw, lambda k: f"module.base_encoder.{k}", True),
]
IDS = ["sup21k-timm", "ibot21k-teacher", "ibot1k", "dino1k", "mocov3-deit", "mocov3-raw"]


def _inner(ckpt: dict) -> dict:
    """The dict holding the backbone keys inside a checkpoint container."""
    for key in ("teacher", "state_dict", "model"):
        if key in ckpt:
            return ckpt[key]
    return ckpt


@pytest.mark.parametrize("tag,make,orig,fc_norm", CASES, ids=IDS)
def test_converter_loads_strictly_into_the_right_parameters(tag, make, orig, fc_norm) -> None:
    source = random_timm_state(seed=1)
    model = tiny_vit(fc_norm=fc_norm)
    fresh_fc_norm = {k: v.clone() for k, v in model.state_dict().items() if "fc_norm" in k}
    converted = load_backbone_weights(model, tag, make(source))
    loaded = model.state_dict()
    for key, value in source.items():
        if fc_norm and key.startswith("norm."):
            assert key not in loaded  # MoCo v3: final norm dropped, not loaded anywhere
            continue
        assert torch.equal(loaded[key], value), key
    for key, value in fresh_fc_norm.items():  # MoCo's fc_norm is fresh, not from the file
        assert torch.equal(loaded[key], value), key
    assert isinstance(model.norm, torch.nn.Identity) == fc_norm
    ignored = {k for keys in converted.ignored.values() for k in keys}
    assert not ignored & set(converted.state)
    if fc_norm:
        assert {"norm.weight", "norm.bias"} <= ignored


@pytest.mark.parametrize("tag,make,orig,fc_norm", CASES, ids=IDS)
def test_converter_missing_key_is_named(tag, make, orig, fc_norm) -> None:
    ckpt = make(random_timm_state())
    del _inner(ckpt)[orig("blocks.1.mlp.fc2.bias")]
    with pytest.raises(BackboneWeightsError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias"):
        load_backbone_weights(tiny_vit(fc_norm), tag, ckpt)


@pytest.mark.parametrize("tag,make,orig,fc_norm", CASES, ids=IDS)
def test_converter_unexpected_key_is_named(tag, make, orig, fc_norm) -> None:
    ckpt = make(random_timm_state())
    _inner(ckpt)[orig("blocks.0.attn.extra_scale")] = torch.ones(3)
    with pytest.raises(BackboneWeightsError,
                       match=r"unexpected keys: blocks\.0\.attn\.extra_scale"):
        load_backbone_weights(tiny_vit(fc_norm), tag, ckpt)


def test_shape_mismatch_and_wrong_container_are_reported() -> None:
    state = random_timm_state()
    state["pos_embed"] = torch.zeros(1, 5, 32)
    with pytest.raises(BackboneWeightsError, match=r"shape mismatches: pos_embed \(1, 5, 32\)"):
        load_backbone_weights(tiny_vit(), "dino1k", state)
    with pytest.raises(BackboneWeightsError, match="'teacher'"):
        load_backbone_weights(tiny_vit(), "ibot21k", {"state_dict": random_timm_state()})
    with pytest.raises(BackboneWeightsError, match="'model'.*'state_dict'"):
        load_backbone_weights(tiny_vit(True), "mocov3-1k", {"teacher": {}})


# ---------------------------------------------------------------- Google npz (sup21k)


def test_google_npz_matches_timm_loader_and_is_strict(tmp_path: Path) -> None:
    source = random_timm_state(seed=2)
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **to_google_npz(source))
    ours = tiny_vit()
    converted = load_backbone_weights(ours, "sup21k", bb.read_checkpoint(path))
    assert converted.source == "google-vit-npz"
    assert sorted(converted.ignored["classification head"]) == [
        "head/bias", "head/kernel", "pre_logits/bias", "pre_logits/kernel"]
    for key, value in source.items():
        assert torch.allclose(ours.state_dict()[key], value), key
    # an independent reference: timm's own npz loader gives the same model
    reference = tiny_vit()
    timm_load_npz(reference, str(path))
    for key, value in reference.state_dict().items():
        assert torch.allclose(ours.state_dict()[key], value, atol=1e-6), key
    arrays = to_google_npz(source)
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    with pytest.raises(BackboneWeightsError, match="Dense_1/bias"):
        load_backbone_weights(tiny_vit(), "sup21k", arrays)
    arrays = {**to_google_npz(source), "Transformer/extra/kernel": np.ones(2, np.float32)}
    with pytest.raises(BackboneWeightsError, match="unexpected keys: Transformer/extra/kernel"):
        load_backbone_weights(tiny_vit(), "sup21k", arrays)


# ---------------------------------------------------------------- files and build_backbone


def _tiny_spec(monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    """Make ``tag`` build the tiny architecture (same converter, same flags)."""
    spec = BACKBONES[tag]
    arch = {**TINY, **({"fc_norm": True} if spec.fc_norm else {})}
    monkeypatch.setitem(BACKBONES, tag, dataclasses.replace(spec, arch=arch,
                                                            default_img_size=32))


def test_missing_weights_file_and_random_tag_with_weights(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("dino1k", weights=tmp_path / "nope.pth")
    message = str(err.value)
    assert "nope.pth" in message and "not found" in message and "\n" not in message
    assert "dl.fbaipublicfiles.com/dino" in message and "--weights" in message
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("sup21k")
    assert "orig_in21k" in str(err.value) and "--download" in str(err.value)
    with pytest.raises(BackboneWeightsError, match="randomly initialised"):
        build_backbone("vit-tiny-random", weights=tmp_path / "x.pth")


def test_weights_folder_is_searched_and_fetch_downloads(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_spec(monkeypatch, "dino1k")
    folder = Path(bb.weights_dir())
    folder.mkdir(parents=True)
    torch.save(random_timm_state(seed=3), folder / "dino_vitbase16_pretrain.pth")
    built = build_backbone("dino1k")  # no --weights: found in $NORGA_WEIGHTS
    assert built.weights_path == str(folder / "dino_vitbase16_pretrain.pth")
    assert all(not p.requires_grad for p in built.model.parameters())

    payload = b"not really weights"
    calls = []

    def fake_fetch(url: str, start: int):
        calls.append(url)
        return 0, len(payload), [payload]

    got = bb.fetch_weights("ibot1k", tmp_path / "dl", fetch=fake_fetch)
    assert got.read_bytes() == payload and calls == [BACKBONES["ibot1k"].url]

    def offline(url: str, start: int):
        raise OSError("network unreachable")

    with pytest.raises(BackboneWeightsError, match="download failed"):
        bb.fetch_weights("dino1k", tmp_path / "dl2", fetch=offline, attempts=1)


# ---------------------------------------------------------------- MoCo v3 fc_norm in the models


def test_fc_norm_backbone_gives_fresh_trainable_norms() -> None:
    vit = tiny_vit(fc_norm=True)
    assert uses_fc_norm(vit) and not uses_fc_norm(tiny_vit())
    model = PromptedViT(vit, 6, pool_size=2, prompt_length=2, prompt_layers=[0])
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) and model.fc_norm is not vit.fc_norm
    assert all(p.requires_grad for p in model.fc_norm.parameters())
    x = torch.randn(3, 3, 32, 32)
    feats = model.pre_logits(model.forward_features(x))
    raw = vit.forward_features(x)[:, 0]  # no final norm: the un-normalised CLS token
    assert torch.allclose(feats, raw, atol=1e-5)
    assert not torch.allclose(feats.std(dim=1), torch.ones(3), atol=1e-2)
    tii = TIIHead(32, 6, [2], fc_norm=True)
    assert isinstance(tii.mlp.norm, torch.nn.Identity)
    assert isinstance(tii.fc_norm, torch.nn.LayerNorm) and tii.fc_norm.eps == 1e-6
    plain = TIIHead(32, 6, [2])
    assert isinstance(plain.mlp.norm, torch.nn.LayerNorm)
    assert isinstance(plain.fc_norm, torch.nn.Identity)


def test_env_json_records_weights_sha256_and_fc_norm_trains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_spec(monkeypatch, "mocov3-1k")
    weights = tmp_path / "vit-b-300ep.pth.tar"
    torch.save(mocov3_raw(random_timm_state(seed=4)), weights)
    cfg = resolve_config("synthetic", "norga", "mocov3-1k", overrides={
        "weights": str(weights), "epochs": 1, "tii_epochs": 1, "tii_ca_epochs": 1,
        "tap_epochs": 1, "batch_size": 16, "seed": 3, "prompt_layers": [0, 1],
        "dataset_options": {"num_classes": 4, "num_tasks": 2, "train_per_class": 8,
                            "test_per_class": 4}})
    result = run_experiment(cfg, tmp_path / "run")
    assert result.finished
    env = json.loads((tmp_path / "run/env.json").read_text())
    assert env["backbone"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert env["backbone"]["checkpoint_format"] == "mocov3-raw" and env["backbone"]["fc_norm"]
    state = torch.load(tmp_path / "run/checkpoints/task_1.pt", weights_only=False)["method"]
    assert not torch.equal(state["fc_norm"]["weight"], torch.ones(32))  # trained
    assert "fc_norm.weight" in state["tii"] and "mlp.norm.weight" not in state["tii"]
