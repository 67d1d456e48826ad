"""Group CL runs by setting (dataset, backbone) and method variant, shared by plots and tables.

A *variant* is the method name, except for NoRGa runs of one setting that use more than one
gate activation: those become ``norga-tanh``, ``norga-sigmoid``, ``norga-gelu`` so that seeds of
different activations are never averaged together.
"""

from __future__ import annotations

from collections.abc import Sequence

from figures.runs import CLRun
from figures.style import ACTIVATION_COLORS, method_color, method_label

#: Row order of the papers' tables (baselines first, the proposed methods last).
METHOD_ORDER = ("l2p", "dualprompt", "sprompt", "coda-prompt", "ovor", "hide", "vq-prompt",
                "norga", "smope")
ACTIVATION_ORDER = ("tanh", "sigmoid", "gelu")


def variant_of(run: CLRun, split_activations: bool) -> str:
    """Variant key of ``run`` (``norga-<act>`` when activations are split)."""
    if run.method == "norga" and split_activations and run.gate_act:
        return f"norga-{run.gate_act}"
    return run.method


def variant_sort_key(variant: str) -> tuple[int, int, str]:
    """Paper order of methods, then activation order."""
    method, _, act = variant.partition("-") if variant.startswith("norga-") else (variant, "", "")
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    a = ACTIVATION_ORDER.index(act) if act in ACTIVATION_ORDER else -1
    return (m, a, variant)


def variant_label(variant: str) -> str:
    """Display name, e.g. ``"NoRGa (sigmoid)"``."""
    if variant.startswith("norga-"):
        return f"NoRGa ({variant.split('-', 1)[1]})"
    return method_label(variant)


def variant_color(variant: str) -> str:
    """Colour of a variant (activation shades for NoRGa variants)."""
    if variant.startswith("norga-"):
        return ACTIVATION_COLORS.get(variant.split("-", 1)[1], method_color("norga"))
    return method_color(variant)


def group_by_setting(runs: Sequence[CLRun]) -> dict[tuple[str, str], list[CLRun]]:
    """Runs keyed by (dataset, backbone), sorted by key."""
    groups: dict[tuple[str, str], list[CLRun]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.backbone), []).append(run)
    return dict(sorted(groups.items()))


def group_by_variant(runs: Sequence[CLRun]) -> dict[str, list[CLRun]]:
    """Runs of one setting keyed by variant, in paper order."""
    acts = {r.gate_act for r in runs if r.method == "norga"}
    split = len(acts) > 1
    groups: dict[str, list[CLRun]] = {}
    for run in runs:
        groups.setdefault(variant_of(run, split), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: variant_sort_key(kv[0])))
