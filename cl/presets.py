"""The vocabulary of presets, shared by the method classes that declare them and by the one
resolver that layers them (:func:`cl.config.resolve_config`).

Constants and a type only: no state, and nothing from :mod:`cl` is imported (a method module
imports this one, and :mod:`cl.config` imports every method module).
"""

from __future__ import annotations

from typing import Any

#: One method's presets (``Method.presets``): keys are ``"*"`` (every dataset), a dataset name,
#: or a ``(dataset, backbone)`` pair, applied in that order (later wins); values are config
#: overrides, a ``method_options`` / ``dataset_options`` entry merged key by key.
PresetTable = dict[str | tuple[str, str], dict[str, Any]]

#: The backbones of the papers' tables (docs/cl-background.md#backbones); Sup-21K's values are the
#: dataset/method presets, the others differ only where the original scripts differ.
PAPER_BACKBONES: tuple[str, ...] = ("sup21k", "ibot21k", "ibot1k", "dino1k", "mocov3-1k")
#: The self-supervised ones among them.
SELF_SUPERVISED: tuple[str, ...] = PAPER_BACKBONES[1:]
