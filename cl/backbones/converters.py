"""Checkpoint converters: an original checkpoint layout -> a timm-style ViT state dict.

Each pretrained backbone tag (:mod:`cl.backbones.tags`) names one converter. A converter unwraps
the checkpoint container (``ckpt['teacher']``, ``ckpt['state_dict']``, ``ckpt['model']``), renames
the keys to timm's and sets aside, by reason, the keys that are known not to belong to the
backbone (classification / projection heads, MoCo v3's momentum encoder, predictor and final
norm, iBOT's mask token). Keys it does not know are left in the state dict under their own
names, so that the strict loader (:func:`cl.backbones.loading.load_backbone_weights`) reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# Key prefixes of classification heads: the pretrained head never fits the benchmark's classes
# (the prompted and TII models have their own), so these keys are always set aside.
HEAD_PREFIXES: tuple[str, ...] = ("head.", "head_dist.", "pre_logits.")


class BackboneWeightsError(RuntimeError):
    """Pretrained weights are missing or do not fit; a CLI reports it with exit code 2."""


@dataclass
class ConvertedWeights:
    """A checkpoint turned into a timm-style backbone state dict.

    Attributes
    ----------
    state:
        Backbone tensors under timm's names (``cls_token``, ``blocks.0.attn.qkv.weight``, ...).
    ignored:
        Keys set aside on purpose, grouped by reason (recorded in ``env.json``).
    source:
        Which checkpoint layout was recognised.
    """

    state: dict[str, torch.Tensor]
    ignored: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def set_aside(self, reason: str, predicate: Callable[[str], bool]) -> None:
        """Move the keys matching ``predicate`` from ``state`` to ``ignored[reason]``."""
        keys = [k for k in self.state if predicate(k)]
        if keys:
            self.ignored.setdefault(reason, []).extend(keys)
            for k in keys:
                del self.state[k]


def _format_keys(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _tensor_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """Check that ``obj`` is a flat ``{name: tensor}`` mapping; convert numpy arrays."""
    if not isinstance(obj, Mapping):
        raise BackboneWeightsError(f"{what}: expected a state dict, got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[str(name)] = value
        elif isinstance(value, np.ndarray):
            out[str(name)] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            bad.append(f"{name} ({type(value).__name__})")
    if bad:
        raise BackboneWeightsError(
            f"{what}: not a state dict of tensors; non-tensor entries: {_format_keys(bad)}"
        )
    return out


def _unwrap(obj: Any, key: str, what: str) -> Any:
    """``obj[key]`` of a checkpoint container, with an error naming the keys found."""
    if not isinstance(obj, Mapping) or key not in obj:
        found = _format_keys(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise BackboneWeightsError(f"{what}: expected a checkpoint with key {key!r}; found {found}")
    return obj[key]


def _drop_heads(weights: ConvertedWeights) -> ConvertedWeights:
    weights.set_aside("classification head", lambda k: k.startswith(HEAD_PREFIXES))
    return weights


def convert_google_vit_npz(arrays: Mapping[str, np.ndarray]) -> ConvertedWeights:
    """Original Google ViT ``.npz`` (e.g. ``ViT-B_16.npz``) -> timm state dict.

    Layout of the original checkpoint (Flax names, HWIO / (in, out) kernels):
    ``embedding/{kernel,bias}``, ``cls``, ``Transformer/posembed_input/pos_embedding``,
    ``Transformer/encoderblock_<i>/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,
    out}, LayerNorm_2, MlpBlock_3/Dense_{0,1}}/...``, ``Transformer/encoder_norm/...`` and the
    ImageNet-21k ``pre_logits`` representation layer and ``head``, which are set aside
    (docs/cl-background.md#backbones). Every array must be consumed; leftovers are reported as
    unexpected keys by the strict loader.
    """
    rest = {k: np.asarray(v) for k, v in arrays.items()}
    state: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}  # timm name -> original name, for error messages

    def take(name: str) -> np.ndarray:
        if name not in rest:
            raise BackboneWeightsError(f"Google ViT npz: missing array {name!r}")
        return rest.pop(name)

    def put(timm_name: str, value: np.ndarray, original: str) -> None:
        state[timm_name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        renamed[timm_name] = original

    def dense(prefix: str, timm_prefix: str) -> None:
        # Flax Dense kernel is (in, out); torch Linear weight is (out, in)
        put(f"{timm_prefix}.weight", take(f"{prefix}/kernel").T, f"{prefix}/kernel")
        put(f"{timm_prefix}.bias", take(f"{prefix}/bias"), f"{prefix}/bias")

    def layer_norm(prefix: str, timm_prefix: str) -> None:
        put(f"{timm_prefix}.weight", take(f"{prefix}/scale"), f"{prefix}/scale")
        put(f"{timm_prefix}.bias", take(f"{prefix}/bias"), f"{prefix}/bias")

    # patch embedding: conv kernel HWIO -> OIHW
    put("patch_embed.proj.weight", take("embedding/kernel").transpose(3, 2, 0, 1),
        "embedding/kernel")
    put("patch_embed.proj.bias", take("embedding/bias"), "embedding/bias")
    put("cls_token", take("cls"), "cls")
    put("pos_embed", take("Transformer/posembed_input/pos_embedding"),
        "Transformer/posembed_input/pos_embedding")
    depth = 0
    while f"Transformer/encoderblock_{depth}/LayerNorm_0/scale" in rest:
        depth += 1
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        layer_norm(f"{src}/LayerNorm_0", f"{dst}.norm1")
        attn = f"{src}/MultiHeadDotProductAttention_1"
        # query/key/value kernels are (C, heads, head_dim); timm's fused qkv Linear is (3C, C)
        qkv_w = [take(f"{attn}/{n}/kernel") for n in ("query", "key", "value")]
        qkv_b = [take(f"{attn}/{n}/bias") for n in ("query", "key", "value")]
        put(f"{dst}.attn.qkv.weight",
            np.concatenate([w.reshape(w.shape[0], -1).T for w in qkv_w], axis=0),
            f"{attn}/{{query,key,value}}/kernel")
        put(f"{dst}.attn.qkv.bias", np.concatenate([b.reshape(-1) for b in qkv_b]),
            f"{attn}/{{query,key,value}}/bias")
        # out kernel is (heads, head_dim, C); torch weight is (C, heads * head_dim)
        out_w = take(f"{attn}/out/kernel")
        put(f"{dst}.attn.proj.weight", out_w.reshape(-1, out_w.shape[-1]).T, f"{attn}/out/kernel")
        put(f"{dst}.attn.proj.bias", take(f"{attn}/out/bias"), f"{attn}/out/bias")
        layer_norm(f"{src}/LayerNorm_2", f"{dst}.norm2")
        dense(f"{src}/MlpBlock_3/Dense_0", f"{dst}.mlp.fc1")
        dense(f"{src}/MlpBlock_3/Dense_1", f"{dst}.mlp.fc2")
    layer_norm("Transformer/encoder_norm", "norm")
    weights = ConvertedWeights(state, source="google-vit-npz")
    heads = [k for k in rest if k.startswith(("head/", "pre_logits/"))]
    if heads:
        weights.ignored["classification head"] = sorted(heads)
        for k in heads:
            del rest[k]
    # anything left is unknown to this layout: hand it to the strict check under its own name
    for name, value in rest.items():
        weights.state[name] = torch.from_numpy(np.ascontiguousarray(value))
    return weights


def convert_sup21k(obj: Any) -> ConvertedWeights:
    """timm ``vit_base_patch16_224.orig_in21k`` state dict, or the Google npz (as a mapping of
    numpy arrays whose names contain ``/``)."""
    if isinstance(obj, Mapping) and "embedding/kernel" in obj:
        return convert_google_vit_npz(obj)
    state = _tensor_dict(obj, "sup21k checkpoint (timm orig_in21k state dict)")
    return _drop_heads(ConvertedWeights(state, source="timm-state-dict"))


def _set_aside_masked_embed(weights: ConvertedWeights) -> ConvertedWeights:
    # iBOT's masked-image-modeling token exists only in pre-training (student side)
    weights.set_aside("iBOT mask token (pre-training only)", lambda k: k == "masked_embed")
    return weights


def convert_ibot21k(obj: Any) -> ConvertedWeights:
    """iBOT full training checkpoint: ``ckpt['teacher']``, strip ``backbone.``, set aside the
    projection head ``head.*`` (``head.mlp.*``, ``head.last_layer*``, ...)."""
    teacher = _tensor_dict(_unwrap(obj, "teacher", "ibot21k checkpoint"), "ibot21k ['teacher']")
    weights = ConvertedWeights({}, source="ibot-teacher")
    projection = [k for k in teacher if k.startswith("head.")]
    if projection:
        weights.ignored["iBOT projection head"] = projection
    for name, value in teacher.items():
        if name.startswith("backbone."):
            weights.state[name[len("backbone."):]] = value
        elif not name.startswith("head."):
            weights.state[name] = value  # unknown: the strict check reports it
    return _set_aside_masked_embed(_drop_heads(weights))


def convert_ibot1k(obj: Any) -> ConvertedWeights:
    """iBOT ``checkpoint_teacher.pth``: ``ckpt['state_dict']`` with timm-style keys."""
    state = _tensor_dict(_unwrap(obj, "state_dict", "ibot1k checkpoint"), "ibot1k ['state_dict']")
    return _set_aside_masked_embed(_drop_heads(ConvertedWeights(state, source="ibot-state-dict")))


def convert_dino1k(obj: Any) -> ConvertedWeights:
    """DINO ``dino_vitbase16_pretrain.pth``: a plain timm-style state dict."""
    state = _tensor_dict(obj, "dino1k checkpoint (plain state dict)")
    return _drop_heads(ConvertedWeights(state, source="plain-state-dict"))


def convert_mocov3(obj: Any) -> ConvertedWeights:
    """MoCo v3 ViT-B: DeiT-converted ``ckpt['model']`` or the raw ``ckpt['state_dict']``.

    The raw checkpoint holds ``module.base_encoder.*`` (the backbone plus its projection MLP
    ``head.*``), ``module.momentum_encoder.*`` and ``module.predictor.*``; only the base encoder
    without its head is kept, with the prefix stripped (MoCo v3's convert-to-DeiT step). In both
    formats the final ``norm.*`` is set aside: the backbone is built with ``fc_norm=True``.
    """
    prefix = "module.base_encoder."
    if isinstance(obj, Mapping) and "model" in obj:
        weights = ConvertedWeights(_tensor_dict(obj["model"], "mocov3-1k ['model']"),
                                   source="mocov3-deit")
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        raw = _tensor_dict(obj["state_dict"], "mocov3-1k ['state_dict']")
        weights = ConvertedWeights({}, source="mocov3-raw")
        others = [k for k in raw if k.startswith(("module.momentum_encoder.", "module.predictor."))]
        if others:
            weights.ignored["MoCo v3 momentum encoder and predictor"] = others
        for name, value in raw.items():
            if name.startswith(prefix):
                weights.state[name[len(prefix):]] = value
            elif name not in others:
                weights.state[name] = value  # unknown: the strict check reports it
    else:
        found = _format_keys(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise BackboneWeightsError(
            "mocov3-1k checkpoint: expected key 'model' (DeiT-converted) or 'state_dict' (raw "
            f"MoCo v3 with module.base_encoder.*); found {found}"
        )
    _drop_heads(weights)
    weights.set_aside("final norm (MoCo v3 uses a fresh fc_norm)",
                      lambda k: k.startswith("norm."))
    return weights


def convert_timm_supervised(what: str) -> Callable[[Any], ConvertedWeights]:
    """Converter for timm's supervised ViT-B/16 tags (``sup1k``, ``sup21k-augreg``,
    ``sup21k-ft1k``).

    Accepts a timm state dict (the Hugging Face ``pytorch_model.bin`` or ``model.safetensors``,
    e.g. SMoPE's ``vit_base_patch16_224_augreg2_in21k_ft_in1k.bin``; the classification head is
    set aside) or an original Google/AugReg ``.npz`` (``Transformer/encoderblock_<i>/...``,
    optionally under ``opt/target/`` as timm's npz loader allows). ``what`` names the tag in
    error messages.
    """

    def convert(obj: Any) -> ConvertedWeights:
        if isinstance(obj, Mapping) and "opt/target/embedding/kernel" in obj:
            prefix = "opt/target/"
            obj = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in obj.items()}
        if isinstance(obj, Mapping) and "embedding/kernel" in obj:
            return convert_google_vit_npz(obj)
        state = _tensor_dict(obj, f"{what} checkpoint (timm state dict or original .npz)")
        return _drop_heads(ConvertedWeights(state, source="timm-state-dict"))

    return convert
