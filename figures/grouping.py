"""Group CL runs by setting (dataset, backbone) and configuration, shared by plots and tables.

Runs are averaged together only when they are seeds of one configuration: the same method and
the same :func:`norga.digest.config_digest` (every config field except the seed and the fields
that say where a run executes) and the same backbone weights. Each such group is a *variant*.

A variant's key is the method name when a setting holds one configuration of that method.
When it holds several, each gets the fields on which they differ appended, e.g.
``hide[protocol=official]`` and ``hide[protocol=default]``; NoRGa configurations that differ in
the gate activation start with ``norga-tanh``, ``norga-sigmoid``, ``norga-gelu`` (the activation
ablation's names). Keys are therefore unique per configuration and say what differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from figures.runs import CLRun
from figures.style import ACTIVATION_COLORS, method_color, method_label
from norga.digest import config_digest, differing_fields, flatten

#: Row order of the papers' tables (baselines first, the proposed methods last).
METHOD_ORDER = ("l2p", "dualprompt", "sprompt", "coda-prompt", "ovor", "hide", "vq-prompt",
                "norga", "smope")
ACTIVATION_ORDER = ("tanh", "sigmoid", "gelu")

#: How many differing fields a display label shows before "+N more" (keys keep all of them).
LABEL_FIELDS = 3


def run_config(run: CLRun) -> dict[str, Any]:
    """The configuration that defines ``run``'s experiment: ``config.json`` with the canonical
    method/dataset/backbone, the NoRGa activation (recorded in either file) and the SHA-256 of
    the backbone weights (from ``metrics.json``) standing in for the weights path."""
    config = dict(run.config)
    config.update(method=run.method, dataset=run.dataset, backbone=run.backbone)
    if run.gate_act is not None:
        config["gate_act"] = run.gate_act
    sha = run.metrics.get("backbone_weights_sha256")
    if sha is not None:
        config["backbone_weights_sha256"] = sha
    return config


def run_digest(run: CLRun) -> str:
    """The configuration digest of ``run`` (equal for the seeds of one configuration)."""
    return config_digest(run_config(run))


def method_of(variant: str) -> str:
    """The method of a variant key (``norga-sigmoid[lr=0.1]`` -> ``norga``)."""
    base = variant.split("[", 1)[0]
    return "norga" if base.startswith("norga-") else base


def _activation_of(variant: str) -> str:
    base = variant.split("[", 1)[0]
    return base.split("-", 1)[1] if base.startswith("norga-") else ""


def variant_sort_key(variant: str) -> tuple[int, int, str]:
    """Paper order of methods, then activation order, then the key itself."""
    method, act = method_of(variant), _activation_of(variant)
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    a = ACTIVATION_ORDER.index(act) if act in ACTIVATION_ORDER else -1
    return (m, a, variant)


def variant_label(variant: str) -> str:
    """Display name, e.g. ``"NoRGa (sigmoid)"`` or ``"HiDe-Prompt [protocol=official]"``."""
    base, _, fields = variant.partition("[")
    label = (f"NoRGa ({_activation_of(base)})" if base.startswith("norga-")
             else method_label(base))
    if not fields:
        return label
    parts = fields.rstrip("]").split(", ")
    if len(parts) > LABEL_FIELDS:
        parts = [*parts[:LABEL_FIELDS], f"+{len(parts) - LABEL_FIELDS} more"]
    return f"{label} [{', '.join(parts)}]"


def variant_color(variant: str) -> str:
    """Colour of a variant (activation shades for NoRGa activation variants)."""
    act = _activation_of(variant)
    if act:
        return ACTIVATION_COLORS.get(act, method_color("norga"))
    return method_color(method_of(variant))


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """Colour of each variant; several configurations of one method (keys with the same part
    before ``[``) get shades of its colour, from darker to lighter, so that they stay apart."""
    from matplotlib.colors import to_hex, to_rgb

    by_base: dict[str, list[str]] = {}
    for variant in variants:
        by_base.setdefault(variant.split("[", 1)[0], []).append(variant)
    colors: dict[str, str] = {}
    for same in by_base.values():
        for k, variant in enumerate(same):
            base = to_rgb(variant_color(variant))
            if len(same) == 1:
                colors[variant] = to_hex(base)
                continue
            mix = -0.5 + k / (len(same) - 1)  # -0.5 (darker) .. +0.5 (lighter)
            target = (1.0, 1.0, 1.0) if mix > 0 else (0.0, 0.0, 0.0)
            colors[variant] = to_hex(tuple(c + abs(mix) * (t - c)
                                           for c, t in zip(base, target, strict=True)))
    return colors


def legend_label(variant: str, width: int = 52) -> str:
    """:func:`variant_label` wrapped onto lines of at most ``width`` characters."""
    import textwrap

    return "\n".join(textwrap.wrap(variant_label(variant), width, subsequent_indent="  "))


def group_by_setting(runs: Sequence[CLRun]) -> dict[tuple[str, str], list[CLRun]]:
    """Runs keyed by (dataset, backbone), sorted by key."""
    groups: dict[tuple[str, str], list[CLRun]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.backbone), []).append(run)
    return dict(sorted(groups.items()))


def _value_text(value: Any) -> str:
    if isinstance(value, str):  # a SHA-256 is recognisable by its first twelve digits
        return value if len(value) <= 24 else value[:12] + "..."
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def group_by_variant(runs: Sequence[CLRun]) -> dict[str, list[CLRun]]:
    """Runs of one setting keyed by variant (one per configuration), in paper order.

    Runs of one method with different configuration digests are never in one group; their keys
    name the fields that differ (see the module docstring).
    """
    by_config: dict[tuple[str, str], list[CLRun]] = {}
    for run in runs:
        by_config.setdefault((run.method, run_digest(run)), []).append(run)
    groups: dict[str, list[CLRun]] = {}
    methods = dict.fromkeys(method for method, _ in by_config)
    for method in methods:
        digests = [d for m, d in by_config if m == method]
        if len(digests) == 1:
            groups[method] = by_config[(method, digests[0])]
            continue
        configs = [run_config(by_config[(method, d)][0]) for d in digests]
        fields = differing_fields(configs)
        for digest, config in zip(digests, configs, strict=True):
            groups[_variant_key(method, config, fields)] = by_config[(method, digest)]
    return dict(sorted(groups.items(), key=lambda kv: variant_sort_key(kv[0])))


def _variant_key(method: str, config: dict[str, Any], fields: list[str]) -> str:
    """``method`` (``norga-<act>`` when the activation differs) plus ``[field=value, ...]``."""
    flat = flatten(config)
    base = method
    if method == "norga" and "gate_act" in fields and flat.get("gate_act"):
        base = f"norga-{flat['gate_act']}"
        fields = [f for f in fields if f != "gate_act"]
    if not fields:
        return base
    parts = [f"{f}={_value_text(flat[f]) if f in flat else '(unset)'}" for f in fields]
    return f"{base}[{', '.join(parts)}]"
