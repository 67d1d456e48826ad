"""Backbone tags: the architecture, the weights file and the converter of each tag.

Random-init tags (``vit-tiny-random``, ``vit-b16-random``) build the architecture with a seeded
initialisation and need no files; they are for offline tests and smoke runs only.

Pretrained tags (docs/cl-background.md#backbones) are ViT-B/16 backbones loaded from a local file:

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

A weights file is looked for under its ``filename`` in :func:`weights_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl.backbones.converters import (
    ConvertedWeights,
    convert_dino1k,
    convert_ibot1k,
    convert_ibot21k,
    convert_mocov3,
    convert_sup21k,
    convert_timm_supervised,
)

WEIGHTS_ENV = "NORGA_WEIGHTS"

_VIT_B16: dict[str, Any] = dict(
    patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True
)


def weights_dir() -> Path:
    """Folder searched for weights files: ``$NORGA_WEIGHTS`` or ``~/.cache/norga/weights``."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "norga" / "weights")


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
    sha256:
        SHA-256 the publisher gives for the file, checked before loading (``None``: the
        publisher gives none; the SHA-256 of the file used is recorded in ``env.json``).
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
    sha256: str | None = None
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


# None of the publishers (Google / timm on Hugging Face, ByteDance for iBOT, Meta for DINO and
# MoCo v3) states a SHA-256 for these files next to the link, so no ``sha256`` is pinned; the
# SHA-256 of the file actually used is recorded in every run's env.json and metrics.json.
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
    # Supervised timm weights of the SMoPE and CODA-Prompt protocols
    # (docs/cl-background.md#backbones). SMoPE models/zoo.py: "sup1k" (its default) loads
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
