"""The method-preset table: method modules add to it, :mod:`cl.config` layers it into configs.

A module of its own that imports nothing from ``cl``: :mod:`cl.config` imports every method
module (to see their presets and options), so a method module that registered its presets
through ``cl.config`` would close an import cycle. ``cl.config`` re-exports both names.
"""

from __future__ import annotations

from typing import Any

# Keys of one method's table: "*" (every dataset), a dataset name, or a (dataset, backbone) pair.
PresetTable = dict[str | tuple[str, str], dict[str, Any]]

# method -> its presets (filled by cl.config for the paper methods, by method modules for the
# others when they are imported)
METHOD_PRESETS: dict[str, PresetTable] = {}


def register_method_presets(method: str, presets: PresetTable) -> None:
    """Add or extend the presets of ``method`` (called by method modules).

    ``presets`` maps ``"*"`` (every dataset), a dataset name, or a ``(dataset, backbone)`` pair
    to config overrides, applied in that order; a ``method_options`` entry is merged key by key
    like ``dataset_options``. Registered presets appear in ``experiments/cl.py --help``.
    """
    table = METHOD_PRESETS.setdefault(method, {})
    for key, layer in presets.items():
        table[key] = {**table.get(key, {}), **layer}


# Alternative recipes (``CLConfig.recipe``): recipe -> method -> presets, applied after the
# method presets of the default recipe (and before ``--protocol official``). A dataset missing
# from a method's table has no such recipe (``"*"`` only adds to the datasets listed).
RECIPE_PRESETS: dict[str, dict[str, PresetTable]] = {}


def register_recipe_presets(recipe: str, method: str, presets: PresetTable) -> None:
    """Add the presets of ``method`` under the alternative recipe ``recipe`` (e.g. the original
    PyTorch ports' configs of L2P and DualPrompt, ``recipe="original-port"``)."""
    table = RECIPE_PRESETS.setdefault(recipe, {}).setdefault(method, {})
    for key, layer in presets.items():
        table[key] = {**table.get(key, {}), **layer}
