"""Backbone tags -> frozen timm ``VisionTransformer``.

Random-init tags (``vit-tiny-random``, ``vit-b16-random``) build the architecture with a seeded
initialisation and need no files; they are for offline tests and smoke runs only. Pretrained
tags (cl-pipeline.md section 5) need a local weights file (``--weights PATH``) or, for
``sup21k``, a copy in the local Hugging Face cache; nothing is downloaded here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from cl.seeding import derive_seed, seeded_global_rng

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"

_VIT_B16: dict[str, Any] = dict(
    patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True
)


class BackboneWeightsError(RuntimeError):
    """Pretrained weights are missing or do not fit; a CLI reports it with exit code 2."""


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
    hf_hub_id:
        Hugging Face repository of an equivalent timm checkpoint, used only if already cached.
    how_to_get:
        One line telling a user where the weights come from.
    convert:
        Turns a loaded checkpoint object into a timm-style backbone state dict.
    """

    arch: dict[str, Any]
    default_img_size: int = 224
    pretrained: bool = False
    hf_hub_id: str | None = None
    how_to_get: str = ""
    convert: Callable[[Any], dict[str, torch.Tensor]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _generic_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap common checkpoint containers and strip wrapper prefixes; drop heads."""
    for key in ("teacher", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    out: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        for prefix in ("module.base_encoder.", "module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith(("head.", "head_dist.", "pre_logits.", "fc_norm.")):
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value
    return out


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
        hf_hub_id="timm/vit_base_patch16_224.orig_in21k",
        how_to_get="download model.safetensors of timm/vit_base_patch16_224.orig_in21k from "
        "huggingface.co (or the original ViT-B_16.npz) and pass --weights PATH",
        convert=_generic_state_dict,
    ),
    "ibot21k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        how_to_get="download the iBOT ViT-B/16 ImageNet-22k checkpoint.pth (see cl-pipeline.md "
        "section 5) and pass --weights PATH",
        convert=_generic_state_dict,
    ),
    "ibot1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        how_to_get="download the iBOT ViT-B/16 checkpoint_teacher.pth and pass --weights PATH",
        convert=_generic_state_dict,
    ),
    "dino1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        how_to_get="download dino_vitbase16_pretrain.pth from dl.fbaipublicfiles.com and pass "
        "--weights PATH",
        convert=_generic_state_dict,
    ),
    "mocov3-1k": BackboneSpec(
        arch=_VIT_B16,
        pretrained=True,
        how_to_get="download MoCo v3 vit-b-300ep.pth.tar and pass --weights PATH",
        convert=_generic_state_dict,
        extra={"fc_norm": True},
    ),
}


@dataclass
class Backbone:
    """A built backbone and its provenance (goes into ``env.json``)."""

    model: VisionTransformer
    name: str
    img_size: int
    weights_path: str | None
    weights_sha256: str

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "img_size": self.img_size,
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "random_init": self.weights_sha256 == RANDOM_INIT,
        }


def available_backbones() -> list[str]:
    """Tags accepted by :func:`build_backbone`."""
    return list(BACKBONES)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_weights(name: str, spec: BackboneSpec, weights: str | Path | None) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"backbone {name!r}: weights file {str(path)!r} not found; {spec.how_to_get}"
            )
        return path
    if spec.hf_hub_id is not None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.hf_hub_id, "model.safetensors")
        except Exception:  # noqa: BLE001 - any cache problem means "not available offline"
            cached = None
        if isinstance(cached, str):
            return Path(cached)
    raise BackboneWeightsError(
        f"backbone {name!r} needs pretrained weights that are not available locally; "
        f"{spec.how_to_get}"
    )


def _load_checkpoint(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=False)


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
        Local weights file for pretrained tags (ignored warnings-free for random tags).
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
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    size = int(img_size or spec.default_img_size)
    path = _resolve_weights(name, spec, weights) if spec.pretrained else None
    kwargs = dict(spec.arch)
    # spec.extra["fc_norm"] (MoCo v3: fresh trainable fc_norm, final norm dropped) is wired by
    # the pretrained-backbone issue; the random tags never set it.
    with seeded_global_rng(derive_seed(seed, f"backbone/{name}")):
        model = VisionTransformer(img_size=size, num_classes=0, **kwargs)
    if path is None:
        sha = RANDOM_INIT
    else:
        sha = file_sha256(path)
        _load_weights(model, name, spec, path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("backbone %s (%s), img_size %d", name, sha, size)
    return Backbone(model, name, size, str(path) if path else None, sha)


def _load_weights(model: VisionTransformer, name: str, spec: BackboneSpec, path: Path) -> None:
    try:
        if path.suffix == ".npz":
            from timm.models.vision_transformer import _load_weights as load_npz

            load_npz(model, str(path))
            return
        raw = _load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - report any reader failure as one clear line
        raise BackboneWeightsError(f"backbone {name!r}: cannot read {str(path)!r}: {exc}") from exc
    state = spec.convert(raw) if spec.convert else raw
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise BackboneWeightsError(
            f"backbone {name!r}: {len(missing)} of {len(expected)} tensors missing in "
            f"{str(path)!r} (first: {missing[0]})"
        )
    try:
        model.load_state_dict({k: state[k] for k in expected}, strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(f"backbone {name!r}: {exc}".splitlines()[0]) from exc
