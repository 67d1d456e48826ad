"""Backbone tags -> frozen timm ``VisionTransformer``, with strict checkpoint converters.

Random-init tags (``vit-tiny-random``, ``vit-b16-random``) build the architecture with a seeded
initialisation and need no files; they are for offline tests and smoke runs only.

Pretrained tags (cl-pipeline.md section 5) are ViT-B/16 backbones loaded from a local file:

============  ==========================  ====================================================
tag           paper name                  accepted checkpoint formats
============  ==========================  ====================================================
sup21k        Sup-21K                     timm ``vit_base_patch16_224.orig_in21k`` state dict
                                          (``model.safetensors`` of the HF repo, or a ``.pth``)
                                          or the original Google ``ViT-B_16.npz``
ibot21k       iBOT-21K                    iBOT full training checkpoint: ``ckpt['teacher']``,
                                          ``backbone.*`` keys, projection head ``head.*``
ibot1k        iBOT-1K                     iBOT ``checkpoint_teacher.pth``: ``ckpt['state_dict']``
dino1k        DINO-1K                     plain timm-style state dict
mocov3-1k     MoCo-1K (MoCo v3)           DeiT-converted ``ckpt['model']`` or the raw training
                                          checkpoint (``ckpt['state_dict']``,
                                          ``module.base_encoder.*``)
sup1k         Sup-1K (SMoPE's default)    timm ``vit_base_patch16_224.augreg2_in21k_ft_in1k``
                                          state dict with head (SMoPE's ``.bin``)
sup21k-augreg Sup-21K (AugReg; SMoPE CUB) AugReg ``B_16-i21k-300ep-...npz`` or timm
                                          ``vit_base_patch16_224.augreg_in21k`` state dict
sup21k-ft1k   CODA-Prompt's backbone      AugReg ``...--imagenet2012-steps_20k-...npz`` or
                                          timm ``vit_base_patch16_224.augreg_in21k_ft_in1k``
============  ==========================  ====================================================

Where the weights file comes from, in order: ``--weights PATH``; a file of the expected name in
the weights folder (``$NORGA_WEIGHTS``, default ``~/.cache/norga/weights``); for ``sup21k`` a
copy of ``timm/vit_base_patch16_224.orig_in21k`` in the local Hugging Face cache. Nothing is
downloaded unless asked (:func:`fetch_weights`, the CLI's ``--download``); the error for a
missing file names the URL and both ways to provide it.

Loading is strict: after a tag's converter has unwrapped the checkpoint and set aside the keys
that are known not to belong to the backbone (classification / projection heads, MoCo v3's
momentum encoder and predictor, MoCo v3's final norm), every remaining key must be a backbone
tensor of the right shape and every backbone tensor must be present; otherwise
:class:`BackboneWeightsError` lists the offending keys. The original code instead dropped
non-matching keys silently (cl-pipeline.md 9.2 item 14).

MoCo v3 (cl-pipeline.md 1.1): the backbone is built with timm's ``fc_norm=True``, so its final
``norm`` is an ``Identity`` and the checkpoint's ``norm.*`` is not used. The backbone's own
``fc_norm`` stays unused; the prompted model and the TII model each create a fresh, trainable
``fc_norm`` LayerNorm (:func:`cl.models.vit.uses_fc_norm`).

Normalisation: the data transforms are the same for every backbone, as in the original code
(cl-pipeline.md 3.2 and 9.2 item 13); timm's pretrained data config (e.g. mean/std 0.5 for
``orig_in21k``) is deliberately not applied, because the published numbers were produced without
it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from cl.seeding import derive_seed, seeded_global_rng

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
WEIGHTS_ENV = "NORGA_WEIGHTS"

_VIT_B16: dict[str, Any] = dict(
    patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True
)

# Key prefixes of classification heads: the pretrained head never fits the benchmark's classes
# (the prompted and TII models have their own), so these keys are always set aside.
HEAD_PREFIXES: tuple[str, ...] = ("head.", "head_dist.", "pre_logits.")


class BackboneWeightsError(RuntimeError):
    """Pretrained weights are missing or do not fit; a CLI reports it with exit code 2."""


# ----------------------------------------------------------------------------- converters


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
    (cl-pipeline.md section 5). Every array must be consumed; leftovers are reported as
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


# ----------------------------------------------------------------------------- tags


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone tag.

    Attributes
    ----------
    arch:
        Keyword arguments of timm's ``VisionTransformer`` (without ``img_size``).
    default_img_size:
        Input size the weights were trained for (random-init backbones follow the data).
    pretrained:
        Whether the tag needs weights.
    paper_name:
        Name in the papers' tables.
    url:
        Where the weights are published (downloaded only with :func:`fetch_weights`).
    filename:
        Local file name in the weights folder.
    hf_hub_id:
        Hugging Face repository of an equivalent timm checkpoint, used if already cached.
    note:
        Extra advice for the "weights missing" message.
    convert:
        Turns a loaded checkpoint object into :class:`ConvertedWeights`.
    """

    arch: dict[str, Any]
    default_img_size: int = 224
    pretrained: bool = False
    paper_name: str = ""
    url: str | None = None
    filename: str | None = None
    hf_hub_id: str | None = None
    note: str = ""
    convert: Callable[[Any], ConvertedWeights] | None = None

    @property
    def fc_norm(self) -> bool:
        """MoCo v3 style: final norm replaced by a fresh ``fc_norm`` after pooling."""
        return bool(self.arch.get("fc_norm", False))

    def how_to_get(self) -> str:
        """One line telling a user how to provide the weights."""
        hub = f" (timm tag {self.hf_hub_id.removeprefix('timm/')})" if self.hf_hub_id else ""
        note = f"; {self.note}" if self.note else ""
        return (f"download {self.url}{hub} and pass --weights PATH (or put it at "
                f"{weights_dir() / str(self.filename)}), or re-run with --download on a machine "
                f"with internet access{note}")


BACKBONES: dict[str, BackboneSpec] = {
    "vit-tiny-random": BackboneSpec(
        # jax (xavier) init keeps a random ViT's CLS feature informative about the input
        arch=dict(patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                  qkv_bias=True, weight_init="jax"),
        default_img_size=32,
    ),
    "vit-b16-random": BackboneSpec(arch={**_VIT_B16, "weight_init": "jax"}),
    "sup21k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="Sup-21K",
        url="https://huggingface.co/timm/vit_base_patch16_224.orig_in21k/resolve/main/"
        "model.safetensors",
        filename="vit_base_patch16_224.orig_in21k.safetensors",
        hf_hub_id="timm/vit_base_patch16_224.orig_in21k",
        note="the original https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz "
        "works too (not augreg_in21k, a different checkpoint)",
        convert=convert_sup21k,
    ),
    "ibot21k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="iBOT-21K",
        url="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/"
        "vitb_16_pt22k/checkpoint.pth",
        filename="ibot_vitb16_pt22k_checkpoint.pth",
        note="the full training checkpoint, whose 'teacher' entry is used",
        convert=convert_ibot21k,
    ),
    "ibot1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="iBOT-1K",
        url="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/"
        "vitb_16/checkpoint_teacher.pth",
        filename="ibot_vitbase16_pretrain.pth",
        convert=convert_ibot1k,
    ),
    "dino1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="DINO-1K",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/"
        "dino_vitbase16_pretrain.pth",
        filename="dino_vitbase16_pretrain.pth",
        convert=convert_dino1k,
    ),
    "mocov3-1k": BackboneSpec(
        arch={**_VIT_B16, "fc_norm": True},
        pretrained=True,
        paper_name="MoCo-1K",
        url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
        filename="vit-b-300ep.pth.tar",
        note="the DeiT-converted mocov3-vit-base-300ep.pth of the NoRGa README is accepted too",
        convert=convert_mocov3,
    ),
    # Supervised timm weights of the SMoPE and CODA-Prompt protocols (cl-pipeline.md section 5).
    # SMoPE models/zoo.py: "sup1k" (its default) loads
    # pretrained/vit_base_patch16_224_augreg2_in21k_ft_in1k.bin, "sup21k" (its CUB script)
    # pretrained/vit_base_patch16_224_augreg_in21k.bin: the HF pytorch_model.bin files.
    "sup1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="Sup-1K",
        url="https://huggingface.co/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k/resolve/"
        "main/pytorch_model.bin",
        filename="vit_base_patch16_224_augreg2_in21k_ft_in1k.bin",
        hf_hub_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        note="SMoPE's default backbone (ImageNet-21k pretraining, ImageNet-1k fine-tuning by "
        "timm); its model.safetensors works too",
        convert=convert_timm_supervised("sup1k"),
    ),
    "sup21k-augreg": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="Sup-21K (AugReg)",
        url="https://storage.googleapis.com/vit_models/augreg/"
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
        filename="B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
        hf_hub_id="timm/vit_base_patch16_224.augreg_in21k",
        note="SMoPE's CUB backbone; the HF pytorch_model.bin (SMoPE's "
        "vit_base_patch16_224_augreg_in21k.bin) or model.safetensors works too (not "
        "orig_in21k, which is sup21k)",
        convert=convert_timm_supervised("sup21k-augreg"),
    ),
    # CODA-Prompt models/zoo.py: timm==0.4.12 vit_base_patch16_224(pretrained=True), whose
    # default weights there are the AugReg in21k -> in1k npz below (timm >= 0.9:
    # vit_base_patch16_224.augreg_in21k_ft_in1k).
    "sup21k-ft1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        paper_name="Sup-21K-ft-1K (AugReg)",
        url="https://storage.googleapis.com/vit_models/augreg/"
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-"
        "lr_0.01-res_224.npz",
        filename="B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-"
        "steps_20k-lr_0.01-res_224.npz",
        hf_hub_id="timm/vit_base_patch16_224.augreg_in21k_ft_in1k",
        note="the official CODA-Prompt backbone; the HF model.safetensors works too",
        convert=convert_timm_supervised("sup21k-ft1k"),
    ),
}


def available_backbones() -> list[str]:
    """Tags accepted by :func:`build_backbone`."""
    return list(BACKBONES)


def pretrained_backbones() -> list[str]:
    """Tags that need a weights file."""
    return [name for name, spec in BACKBONES.items() if spec.pretrained]


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name]


# ----------------------------------------------------------------------------- files


def weights_dir() -> Path:
    """Folder searched for weights files: ``$NORGA_WEIGHTS`` or ``~/.cache/norga/weights``."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "norga" / "weights")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hf_cached(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "model.safetensors")
    except Exception:  # noqa: BLE001 - any cache problem means "not available offline"
        return None
    return Path(cached) if isinstance(cached, str) else None


def resolve_weights(name: str, weights: str | Path | None = None) -> Path | None:
    """The weights file of ``name`` (``None`` for random-init tags).

    Raises
    ------
    BackboneWeightsError
        ``weights`` does not exist, is given for a random-init tag, or no local copy is found;
        the message says where to download the file and how to pass it.
    """
    spec = _spec(name)
    if not spec.pretrained:
        if weights is not None:
            raise BackboneWeightsError(
                f"backbone {name!r} is randomly initialised and takes no --weights; pretrained "
                f"tags: {', '.join(pretrained_backbones())}"
            )
        return None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"backbone {name!r}: weights file {str(path)!r} not found; {spec.how_to_get()}"
            )
        return path
    local = weights_dir() / str(spec.filename)
    if local.is_file():
        return local
    cached = _hf_cached(spec.hf_hub_id) if spec.hf_hub_id else None
    if cached is not None:
        return cached
    raise BackboneWeightsError(
        f"backbone {name!r} ({spec.paper_name}) needs pretrained weights that are not available "
        f"locally; {spec.how_to_get()}"
    )


def fetch_weights(name: str, directory: str | Path | None = None, *,
                  fetch: Any = None, attempts: int = 3) -> Path:
    """Download the weights of ``name`` into ``directory`` (default :func:`weights_dir`).

    An existing file is returned as is; a partial download is resumed. No checksum is published
    for these files, so the SHA-256 of what was downloaded is logged and recorded in ``env.json``
    by the run.

    Raises
    ------
    BackboneWeightsError
        Random-init tag, or the download failed (e.g. no internet).
    """
    from cl.data.download import Resource, download
    from cl.data.registry import DatasetError

    spec = _spec(name)
    if not spec.pretrained or spec.url is None or spec.filename is None:
        raise BackboneWeightsError(f"backbone {name!r} has no weights to download")
    folder = Path(directory) if directory is not None else weights_dir()
    target = folder / spec.filename
    if target.is_file():
        return target
    try:
        return download(Resource(spec.filename, (spec.url,)), folder, fetch=fetch,
                        attempts=attempts)
    except (DatasetError, OSError) as exc:
        raise BackboneWeightsError(
            f"backbone {name!r}: download failed: {str(exc).splitlines()[0]}"
        ) from exc


def read_checkpoint(path: str | Path) -> Any:
    """Load a ``.safetensors``, ``.npz`` or torch checkpoint file on the CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - e.g. pickled argparse.Namespace in training checkpoints
        # Training checkpoints (iBOT, MoCo) pickle their arguments; the user chose this file.
        log.warning("%s holds Python objects besides tensors; loading it with "
                    "weights_only=False (only use checkpoints you trust)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- loading


def load_backbone_weights(model: VisionTransformer, name: str, checkpoint: Any,
                          *, where: str = "checkpoint") -> ConvertedWeights:
    """Convert ``checkpoint`` with the converter of ``name`` and load it strictly into ``model``.

    Parameters
    ----------
    model:
        A timm ``VisionTransformer`` built with ``num_classes=0`` (and ``fc_norm=True`` for
        MoCo v3, whose fresh ``fc_norm`` is the only backbone tensor not taken from the file).
    name:
        Backbone tag (selects the converter).
    checkpoint:
        The loaded file (:func:`read_checkpoint`).
    where:
        File name for error messages.

    Raises
    ------
    BackboneWeightsError
        Missing backbone keys, unexpected keys or shape mismatches, each listed by name.
    """
    spec = _spec(name)
    if spec.convert is None:
        raise BackboneWeightsError(f"backbone {name!r} takes no weights")
    weights = spec.convert(checkpoint)
    target = model.state_dict()
    fresh = {k for k in target if spec.fc_norm and k.startswith("fc_norm.")}
    expected = set(target) - fresh
    missing = sorted(expected - set(weights.state))
    unexpected = sorted(set(weights.state) - expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_format_keys(unexpected)}")
    shapes = [f"{k} {tuple(weights.state[k].shape)} vs model {tuple(target[k].shape)}"
              for k in sorted(expected & set(weights.state))
              if weights.state[k].shape != target[k].shape]
    if shapes:
        problems.append(f"shape mismatches: {_format_keys(shapes, limit=4)}")
    if problems:
        raise BackboneWeightsError(
            f"backbone {name!r}: {where} ({weights.source}) does not fit the "
            f"{spec.paper_name or name} ViT: " + "; ".join(problems)
        )
    full = {**target, **weights.state}
    model.load_state_dict(full, strict=True)
    for reason, keys in weights.ignored.items():
        log.info("backbone %s: set aside %d keys (%s)", name, len(keys), reason)
    return weights


@dataclass
class Backbone:
    """A built backbone and its provenance (goes into ``env.json``)."""

    model: VisionTransformer
    name: str
    img_size: int
    weights_path: str | None
    weights_sha256: str
    source: str = ""
    ignored: dict[str, int] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "img_size": self.img_size,
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "random_init": self.weights_sha256 == RANDOM_INIT,
            "checkpoint_format": self.source or None,
            "ignored_keys": dict(self.ignored),
            "fc_norm": BACKBONES[self.name].fc_norm if self.name in BACKBONES else False,
        }


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    img_size: int | None = None,
    seed: int = 0,
) -> Backbone:
    """Build a frozen ViT for ``name`` with ``num_classes=0`` (no head).

    Parameters
    ----------
    name:
        A tag of :func:`available_backbones`.
    weights:
        Local weights file for pretrained tags (an error for random-init tags).
    img_size:
        Input size; random-init backbones follow the data, pretrained ones default to 224.
    seed:
        Run seed; random-init weights are drawn from a stream derived from it.

    Raises
    ------
    ValueError
        Unknown tag (the message lists the allowed ones).
    BackboneWeightsError
        Pretrained weights missing, unreadable or not matching the architecture.
    """
    spec = _spec(name)
    size = int(img_size or spec.default_img_size)
    path = resolve_weights(name, weights)  # fails before any work when the file is missing
    with seeded_global_rng(derive_seed(seed, f"backbone/{name}")):
        model = VisionTransformer(img_size=size, num_classes=0, **spec.arch)
    source, ignored = "", {}
    if path is None:
        sha = RANDOM_INIT
    else:
        sha = file_sha256(path)
        try:
            checkpoint = read_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - report any reader failure as one clear line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackboneWeightsError(
                f"backbone {name!r}: cannot read {str(path)!r}: {first}"
            ) from exc
        converted = load_backbone_weights(model, name, checkpoint, where=str(path))
        source = converted.source
        ignored = {reason: len(keys) for reason, keys in converted.ignored.items()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("backbone %s (%s), img_size %d", name, sha, size)
    return Backbone(model, name, size, str(path) if path else None, sha, source, ignored)


def ensure_weights(name: str, weights: str | Path | None = None) -> Path | None:
    """:func:`resolve_weights`, downloading the file into :func:`weights_dir` when it is missing.

    An explicit ``weights`` path is never replaced by a download (a wrong path stays an error).
    """
    spec = _spec(name)
    if not spec.pretrained or weights is not None:
        return resolve_weights(name, weights)
    try:
        return resolve_weights(name)
    except BackboneWeightsError:
        return fetch_weights(name)
