"""NoRGa: HiDe-Prompt with the non-linear residual gate ``s + alpha * sigma(tau * s)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cl.methods.base import register_method
from cl.methods.hide import SCRIPT_BACKBONE, HiDeOptions, HiDePrompt
from cl.models.gating import Activation, Gate
from cl.presets import SELF_SUPERVISED, PresetTable

# NoRGa's gate activation per (dataset, pretrained weights) where it differs from Sup-21K
# (docs/cl-background.md#hyperparameters; Sup-21K: NoRGa.presets).
BACKBONE_GATE_ACT: dict[tuple[str, str], str] = {
    ("cifar100", "ibot21k"): "tanh",
    ("cifar100", "ibot1k"): "tanh",
    ("cifar100", "dino1k"): "tanh",
    ("cifar100", "mocov3-1k"): "gelu",
    ("imagenet-r", "ibot21k"): "tanh",
    ("imagenet-r", "ibot1k"): "sigmoid",
    ("imagenet-r", "dino1k"): "tanh",
    ("imagenet-r", "mocov3-1k"): "gelu",
    ("cub200", "ibot21k"): "tanh",
    ("5datasets", "ibot21k"): "sigmoid",
}

# NoRGa's own (dataset, backbone) values on top of hide.SCRIPT_BACKBONE.
_NORGA_BACKBONE: dict[tuple[str, str], dict[str, Any]] = {
    # CIFAR-100, self-supervised: TAP ca_lr 0.005 (Sup-21K: 0.05), TII ca_lr 0.05 (HiDe 0.005)
    **{("cifar100", b): dict(ca_lr=0.005, tii_ca_lr=0.05) for b in SELF_SUPERVISED},
    ("imagenet-r", "ibot1k"): dict(tap_epochs=80),
}


@dataclass
class NoRGaOptions(HiDeOptions):
    """HiDe-Prompt's options and the gate's: its activation sigma, and whether ``alpha`` and
    ``tau`` keep training after the first task."""

    gate_act: Activation = "tanh"
    gate_trainable_after_first_task: bool = False


@register_method("norga")
class NoRGa(HiDePrompt):
    """NoRGa (docs/cl-background.md#norga-attention): only the prefix gate differs from HiDe-Prompt.

    ``alpha`` and ``tau`` (one pair per prompted layer, initialised to 1) are trained with the
    first task's prompt and frozen afterwards unless ``gate_trainable_after_first_task``.
    """

    gate: Gate = "norga"
    # NoRGa's engines draw n // n_centroids per cluster (cl/stats/centroids.py)
    centroid_split_budget: ClassVar[bool] = True
    options_type = NoRGaOptions
    options: NoRGaOptions
    # NoRGa vs HiDe-Prompt differences of section 2.6 (gate activation, TAP budget), and the
    # scripts' (dataset, backbone) values with the gate activation of that backbone
    presets: ClassVar[PresetTable] = {
        "cifar100": dict(gate_act="sigmoid", tap_epochs=80, ca_lr=0.05),
        "imagenet-r": dict(gate_act="sigmoid", tap_epochs=30, ca_lr=0.005),
        "cub200": dict(gate_act="sigmoid", tap_epochs=80, ca_lr=0.05, tii_ca_lr=0.05),
        "5datasets": dict(gate_act="tanh", tap_epochs=30, ca_lr=0.005),
        **{key: {**SCRIPT_BACKBONE.get(key, {}), **_NORGA_BACKBONE.get(key, {}),
                 "gate_act": act}
           for key, act in BACKBONE_GATE_ACT.items()},
    }

    def _gate_activation(self) -> Activation:
        return self.options.gate_act

    def _gate_trainable(self, t: int) -> bool:
        return t == 0 or self.options.gate_trainable_after_first_task
