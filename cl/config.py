"""Typed run configuration and the preset layers.

Resolution order (later wins): dataclass defaults < dataset preset < method preset (``"*"``,
then per dataset) < method preset per (dataset, backbone) (e.g. NoRGa's gate activation and the
shorter schedules of the self-supervised backbones) < ``--set recipe=original-port`` (the
original L2P/DualPrompt ports' configs, registered by those method modules) < ``--protocol
official`` (cl/protocol.py)
< ``--quick`` < explicit overrides.
Values are the effective ones of cl-pipeline.md section 2.6 for Sup-21K unless noted; learning
rates are the raw script values and are multiplied by ``batch_size / 256`` where the original
code does so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from cl.models.gating import ACTIVATIONS
from cl.precision import PRECISIONS
from cl.preset_registry import (
    METHOD_PRESETS,
    RECIPE_PRESETS,
    PresetTable,
    register_method_presets,
)
from cl.stats import STATS_METHODS

Scheduler = Literal["constant", "step", "cosine"]
AttentionImpl = Literal["fused", "reference"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
PROTOCOLS: tuple[str, ...] = ("default", "official")
# "default": the presets below (MoE_PromptCL's re-run configs); "original-port": the configs of
# the original PyTorch ports of L2P and DualPrompt (JH-LEE-KR), see cl/protocol.py
RECIPES: tuple[str, ...] = ("default", "original-port")
ATTENTION_IMPLS: tuple[str, ...] = get_args(AttentionImpl)


@dataclass
class CLConfig:
    """Everything that defines a run (saved as ``config.json``)."""

    # what
    dataset: str = "synthetic"
    method: str = "norga"
    backbone: str = "vit-tiny-random"
    weights: str | None = None
    seed: int = 42
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # method-specific hyperparameters (baselines keep theirs here, keyed by name)
    method_options: dict[str, Any] = field(default_factory=dict)
    # where / how
    device: str = "auto"
    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 0
    # fp32: exact (default, reproduces the published setup); bf16: autocast of the ViT forward
    # passes only (heads, losses, statistics stay float32/float64), see cl/precision.py
    precision: str = "fp32"
    compile: bool = False  # torch.compile of the models' ViT forward passes
    data_root: str | None = None
    download: bool = False
    quick: bool = False
    # prompted model
    prompt_length: int = 5
    prompt_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    gate_act: str = "tanh"
    attention: str = "fused"
    gate_trainable_after_first_task: bool = False
    legacy_kv_reshape: bool = False
    batchwise_prompt: bool = False
    # "official": switch every listed deviation to the official code's behaviour
    # (cl/protocol.py, README "Deviations from the official code")
    protocol: str = "default"
    # which recipe the method presets follow (RECIPES; "original-port": L2P / DualPrompt as
    # configured by the original PyTorch ports, cl/protocol.py)
    recipe: str = "default"
    # the official code's batch-vote tie order (torch.topk over padded counts), cl/protocol.py
    legacy_vote_ties: bool = False
    # drop the last partial training batch (CODA-Prompt and SMoPE code), cl/protocol.py
    legacy_drop_last: bool = False
    # within-task prompt training (WTP)
    epochs: int = 20
    lr: float = 0.03
    larger_prompt_lr: bool = True
    scheduler: str = "step"
    clip_grad: float = 1.0
    prompt_momentum: float = 0.1
    reg: float = 0.1
    contrastive_temperature: float = 0.8
    # task-identity model (TII)
    tii_epochs: int = 20
    tii_lr: float = 5e-4
    tii_scheduler: str = "constant"
    tii_mlp: list[int] = field(default_factory=lambda: [2])
    tii_ca_epochs: int = 30
    tii_ca_lr: float = 0.005
    # gradient-norm clipping of every TII optimiser step (official: clip_grad = 1.0 in every
    # config; the TII run never receives the 5-Datasets WTP value 2.0); 0 turns it off
    tii_clip_grad: float = 1.0
    # task-adaptive prediction (TAP) head alignment
    tap_epochs: int = 30
    ca_lr: float = 0.005
    tap_samples_mult: int = 5
    stats_method: str = "covariance"
    # k-means clusters per class for stats_method="multi-centroid" (HiDe-Prompt: 10)
    n_centroids: int = 10
    # bookkeeping
    keep_checkpoints: str = "all"

    def validate(self) -> CLConfig:
        """Check ``Literal``-like options and ranges; raise ``ValueError`` naming the field."""
        choices = {
            "gate_act": ACTIVATIONS,
            "attention": ATTENTION_IMPLS,
            "scheduler": SCHEDULERS,
            "tii_scheduler": SCHEDULERS,
            "stats_method": STATS_METHODS,
            "keep_checkpoints": ("all", "last"),
            "precision": PRECISIONS,
            "protocol": PROTOCOLS,
            "recipe": RECIPES,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile: expected true/false, got {self.compile!r}")
        positive = ("batch_size", "eval_batch_size", "prompt_length", "tap_samples_mult",
                    "n_centroids")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("epochs", "tii_epochs", "tii_ca_epochs", "tap_epochs", "num_workers",
                     "clip_grad", "tii_clip_grad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) \
                or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: must be an integer in [0, 2^63), got {self.seed!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name}: must be a finite number, got {value}")
        for name in ("clip_grad", "reg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.tii_mlp or not _int_list(self.tii_mlp, minimum=1):
            raise ValueError(f"tii_mlp: must be a non-empty list of positive integers (hidden "
                             f"layer widths), got {self.tii_mlp!r}")
        if not _int_list(self.prompt_layers, minimum=0) \
                or len(set(self.prompt_layers)) != len(self.prompt_layers):
            raise ValueError(f"prompt_layers: must be distinct block indices >= 0, got "
                             f"{self.prompt_layers!r}")
        for name in ("dataset_options", "method_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}: must be a JSON object, got {getattr(self, name)!r}")
        if not 0.0 <= self.prompt_momentum < 1.0:
            raise ValueError(f"prompt_momentum: must be in [0, 1), got {self.prompt_momentum}")
        for name in ("lr", "tii_lr", "tii_ca_lr", "ca_lr", "contrastive_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        self._validate_method_options()
        return self

    def _validate_method_options(self) -> None:
        """``method_options`` against the registered method's names, defaults and value checks
        (``Method.resolve_options``), so that a bad option is refused before anything is
        written. An unregistered ``method`` is left to the engine."""
        from cl.methods import base  # lazy: every method module imports this one

        if self.method not in base.available_methods():
            return
        try:
            base.get_method(self.method).resolve_options(self.method_options)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if not message.startswith("method_options"):
                message = f"method_options: {message}"
            raise ValueError(message) from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Fields only some methods read (every other field is used by every run). A method names the ones
# it reads in ``Method.config_fields``; an explicit value of another one, different from what
# the presets give, is refused by resolve_config: the method would silently ignore it.
METHOD_SPECIFIC_FIELDS: tuple[str, ...] = (
    "prompt_length", "prompt_layers", "gate_act", "attention", "gate_trainable_after_first_task",
    "legacy_kv_reshape", "batchwise_prompt", "legacy_vote_ties", "scheduler", "larger_prompt_lr",
    "prompt_momentum", "reg", "contrastive_temperature", "tii_epochs", "tii_lr", "tii_scheduler",
    "tii_mlp", "tii_ca_epochs", "tii_ca_lr", "tii_clip_grad", "tap_epochs", "ca_lr",
    "tap_samples_mult", "stats_method", "n_centroids",
)


def method_uses(method: str, name: str) -> bool:
    """Whether ``method`` reads config field ``name`` (``True`` for an unregistered method or a
    field every method uses)."""
    from cl.methods import base

    if name not in METHOD_SPECIFIC_FIELDS or method not in base.available_methods():
        return True
    fields = base.get_method(method).config_fields
    return fields is None or name in fields


def _check_used(method: str, name: str, value: Any, preset: Any) -> None:
    """Refuse an explicit ``value`` of a field ``method`` ignores (its preset value is fine)."""
    if value == preset or method_uses(method, name):
        return
    from cl.methods import available_methods, base

    users = [m for m in available_methods() if method_uses(m, name)]
    own = [f"method_options.{k}" for k in sorted(base.get_method(method).option_defaults)
           if name.startswith("prompt_") and ("layer" in k or "length" in k)]
    where = f" (its prompts are set by {', '.join(own)})" if own else ""
    raise ValueError(f"{name}: {_fmt(value)} is not used by method {method}{where}; allowed: "
                     f"leave it at {_fmt(preset)}, or a method that uses it: {', '.join(users)}")


def _int_list(value: Any, minimum: int) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)


# ---------------------------------------------------------------------------- presets
# Dataset presets: what the NoRGa scripts share between HiDe and NoRGa (section 2.6, Sup-21K).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar100": dict(
        epochs=50, lr=0.03, scheduler="step", prompt_length=5, prompt_momentum=0.01, reg=0.1,
        tii_epochs=20, tii_lr=5e-4, tii_scheduler="constant", tii_mlp=[2], tii_ca_lr=0.005,
    ),
    "imagenet-r": dict(
        epochs=150, lr=0.03, scheduler="cosine", prompt_length=20, prompt_momentum=0.01, reg=0.5,
        tii_epochs=20, tii_lr=5e-4, tii_scheduler="step", tii_mlp=[2], tii_ca_lr=0.005,
    ),
    "cub200": dict(
        epochs=50, lr=0.03, larger_prompt_lr=False, scheduler="step", prompt_length=20,
        prompt_momentum=0.01, reg=0.01, tii_epochs=20, tii_lr=0.01, tii_scheduler="constant",
        tii_mlp=[2],
    ),
    "5datasets": dict(
        epochs=20, lr=0.03, scheduler="constant", clip_grad=2.0, prompt_length=40,
        prompt_momentum=0.01, reg=0.1, tii_epochs=20, tii_lr=1e-3, tii_scheduler="constant",
        tii_mlp=[4, 4], tii_ca_lr=0.005,
    ),
    # Offline benchmarks: small, fast, tuned only to be clearly learnable.
    "synthetic": dict(
        batch_size=64, eval_batch_size=128, epochs=6, lr=0.2, scheduler="constant",
        prompt_length=5, prompt_momentum=0.1, reg=0.1, tii_epochs=6, tii_lr=4e-3,
        tii_ca_epochs=10, tii_ca_lr=0.05, tap_epochs=10, ca_lr=0.05,
    ),
    "digits": dict(
        batch_size=64, eval_batch_size=128, epochs=10, lr=0.2, scheduler="constant",
        prompt_length=5, prompt_momentum=0.1, reg=0.1, tii_epochs=10, tii_lr=4e-3,
        tii_ca_epochs=10, tii_ca_lr=0.05, tap_epochs=10, ca_lr=0.05,
    ),
}

# The backbones of the papers' tables (cl-pipeline.md section 5); the Sup-21K values are the
# dataset/method presets, the others differ only where the scripts differ (below).
PAPER_BACKBONES: tuple[str, ...] = ("sup21k", "ibot21k", "ibot1k", "dino1k", "mocov3-1k")
_SELF_SUPERVISED = ("ibot21k", "ibot1k", "dino1k", "mocov3-1k")

# NoRGa's gate activation per (dataset, pretrained weights) where it differs from Sup-21K
# (section 2.6 table "Run 2: WTP + TAP, NoRGa", column sigma; Sup-21K is in METHOD_PRESETS).
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

# What the HiDe and NoRGa scripts of one (dataset, backbone) share where they differ from the
# Sup-21K script of that dataset (section 2.6, Run 1 and Run 2 tables).
_SCRIPT_BACKBONE: dict[tuple[str, str], dict[str, Any]] = {
    # CIFAR-100 with self-supervised weights: 20 epochs (step schedule then a no-op), momentum
    # 0.1, TII with the (no-op) step schedule.
    **{("cifar100", b): dict(epochs=20, prompt_momentum=0.1, tii_scheduler="step")
       for b in _SELF_SUPERVISED},
    # ImageNet-R with self-supervised weights: 50 epochs at a constant lr (not 150 + cosine).
    **{("imagenet-r", b): dict(epochs=50, scheduler="constant") for b in _SELF_SUPERVISED},
    # CUB with iBOT-21K: the TII model at 5e-4 with the (no-op) step schedule (Sup-21K: 0.01).
    ("cub200", "ibot21k"): dict(tii_lr=5e-4, tii_scheduler="step"),
}

# Method-specific (dataset, backbone) values on top of _SCRIPT_BACKBONE.
_NORGA_BACKBONE: dict[tuple[str, str], dict[str, Any]] = {
    # CIFAR-100, self-supervised: TAP ca_lr 0.005 (Sup-21K: 0.05), TII ca_lr 0.05 (HiDe 0.005)
    **{("cifar100", b): dict(ca_lr=0.005, tii_ca_lr=0.05) for b in _SELF_SUPERVISED},
    ("imagenet-r", "ibot1k"): dict(tap_epochs=80),
}

# Method presets: keys are "*" (every dataset), a dataset name, or a (dataset, backbone) pair;
# later keys of that list win. NoRGa vs HiDe-Prompt differences of section 2.6.
_PAPER_METHOD_PRESETS: dict[str, PresetTable] = {
    "norga": {
        "cifar100": dict(gate_act="sigmoid", tap_epochs=80, ca_lr=0.05),
        "imagenet-r": dict(gate_act="sigmoid", tap_epochs=30, ca_lr=0.005),
        "cub200": dict(gate_act="sigmoid", tap_epochs=80, ca_lr=0.05, tii_ca_lr=0.05),
        "5datasets": dict(gate_act="tanh", tap_epochs=30, ca_lr=0.005),
        **{key: {**_SCRIPT_BACKBONE.get(key, {}), **_NORGA_BACKBONE.get(key, {}),
                 "gate_act": act}
           for key, act in BACKBONE_GATE_ACT.items()},
    },
    "hide": {
        # HiDe-Prompt: TAP 30 epochs and ca_lr 0.005 everywhere, TII ca_lr 0.005
        "cifar100": dict(tap_epochs=30, ca_lr=0.005),
        "imagenet-r": dict(tap_epochs=30, ca_lr=0.005),
        "cub200": dict(tap_epochs=30, ca_lr=0.005, tii_ca_lr=0.005, tii_scheduler="step"),
        "5datasets": dict(tap_epochs=30, ca_lr=0.005),
        **{key: dict(layer) for key, layer in _SCRIPT_BACKBONE.items()},
    },
}


# They join the table that the other methods' modules register theirs into
# (cl.preset_registry; METHOD_PRESETS and register_method_presets are re-exported from here).
for _method, _table in _PAPER_METHOD_PRESETS.items():
    register_method_presets(_method, _table)


# --quick: a smoke-test budget (minutes on a laptop CPU for the offline benchmarks).
QUICK_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": dict(
        epochs=3, tii_epochs=3, tii_ca_epochs=5, tap_epochs=5,
        dataset_options=dict(train_per_class=80, test_per_class=40),
    ),
    "digits": dict(epochs=4, tii_epochs=4, tii_ca_epochs=5, tap_epochs=5),
}
QUICK_DEFAULT: dict[str, Any] = dict(epochs=1, tii_epochs=1, tii_ca_epochs=2, tap_epochs=2)


OFFLINE_DATASETS = ("synthetic", "digits")


def default_backbone(dataset: str) -> str:
    """``vit-tiny-random`` for the offline benchmarks, ``sup21k`` (the paper's) otherwise."""
    return "vit-tiny-random" if dataset in OFFLINE_DATASETS else "sup21k"


@functools.lru_cache(maxsize=1)
def _field_types() -> dict[str, Any]:
    # resolving the annotations is slow; --help resolves a few hundred configs
    return typing.get_type_hints(CLConfig)


def _coerce(name: str, value: Any) -> Any:
    """Convert a CLI string (``--set key=value``) to the type of field ``name``."""
    hints = _field_types()
    if name not in hints:
        allowed = ", ".join(f.name for f in dataclasses.fields(CLConfig))
        raise ValueError(f"unknown config key {name!r}; allowed: {allowed}")
    if not isinstance(value, str):
        return value
    hint = hints[name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError as exc:
            raise ValueError(f"{name}: expected {hint.__name__}, got {value!r}") from exc
    if origin is list:
        parsed = _strict_json(name, value, "a JSON list of integers, e.g. [0,1,2]")
        if not _int_list(parsed, minimum=-(2**63)):
            raise ValueError(f"{name}: expected a JSON list of integers, e.g. [0,1,2], got "
                             f"{value!r}")
        return parsed
    if origin is dict:
        parsed = _strict_json(name, value, 'a JSON object, e.g. {"key": 1}')
        if not isinstance(parsed, dict):
            raise ValueError(f'{name}: expected a JSON object, e.g. {{"key": 1}}, got {value!r}')
        return parsed
    return value


def _strict_json(name: str, text: str, expected: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and says what was expected."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        raise ValueError(f"{name}: expected {expected}, got {value_text(text)}") from None


def value_text(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def _dotted(key: str, value: Any) -> tuple[str, Any]:
    """``method_options.NAME=VALUE`` (and ``dataset_options.NAME``) -> ``(field, {NAME: v})``;
    a string value is read as JSON (``true``, ``0.5``, ``[1,2]``), else kept as text."""
    head, dot, name = key.partition(".")
    if not dot or head not in ("method_options", "dataset_options"):
        return key, value
    if not name:
        raise ValueError(f"{key}: expected {head}.NAME=VALUE")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    return head, {name: value}


def preset_layers(dataset: str, method: str, backbone: str) -> list[dict[str, Any]]:
    """The preset layers of a run, in the order they are applied (before ``--quick``/flags).

    Dataset preset, then the method's ``"*"``, ``dataset`` and ``(dataset, backbone)`` entries.
    """
    table = METHOD_PRESETS.get(method, {})
    return [DATASET_PRESETS.get(dataset, {}), table.get("*", {}), table.get(dataset, {}),
            table.get((dataset, backbone), {})]


def recipe_layers(dataset: str, method: str, recipe: str) -> list[dict[str, Any]]:
    """The layers of an alternative recipe (none for ``"default"``), applied after the presets.

    Raises
    ------
    ValueError
        An unknown recipe, or one that has no configuration for this method or dataset.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    if recipe == "default":
        return []
    tables = RECIPE_PRESETS.get(recipe, {})
    if method not in tables:
        raise ValueError(f"recipe={recipe}: only {', '.join(sorted(tables))} have one; got "
                         f"method {method!r}")
    datasets = [key for key in tables[method] if isinstance(key, str) and key != "*"]
    if dataset not in datasets:
        raise ValueError(f"recipe={recipe}: {method} has configs for {', '.join(datasets)} "
                         f"only; got dataset {dataset!r}")
    return [tables[method].get("*", {}), tables[method][dataset]]


def resolve_config(
    dataset: str,
    method: str,
    backbone: str = "vit-tiny-random",
    *,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
    allow_unused: bool = False,
) -> CLConfig:
    """Build the run config by layering the presets and ``overrides``.

    ``overrides["protocol"] == "official"`` adds :func:`cl.protocol.official_layer` right after
    the presets (before ``--quick`` and the other overrides, which still win).

    ``overrides`` values may be strings (from the CLI); they are converted to the field type.
    ``dataset_options`` are merged key by key rather than replaced.

    An override of a field the method does not read (:func:`method_uses`) that differs from the
    preset value raises ``ValueError`` (the method would silently ignore it), unless
    ``allow_unused`` (e.g. one budget of every phase passed to every method).
    """
    import cl.methods  # noqa: F401 - method modules register their presets on import

    cfg: dict[str, Any] = CLConfig(dataset=dataset, method=method, backbone=backbone).to_dict()

    def apply(layer: dict[str, Any]) -> None:
        for key, value in layer.items():
            key, value = _dotted(key, value)
            value = _coerce(key, value)
            if key in ("dataset_options", "method_options"):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value

    for layer in preset_layers(dataset, method, backbone):
        apply(layer)
    for layer in recipe_layers(dataset, method, (overrides or {}).get("recipe", "default")):
        apply(layer)
    protocol = (overrides or {}).get("protocol", "default")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if protocol == "official":  # every listed deviation switched to the official behaviour
        from cl.protocol import official_layer

        apply(official_layer(dataset, method))
    if quick:
        apply({**QUICK_PRESETS.get(dataset, QUICK_DEFAULT), "quick": True})
    preset = dict(cfg)
    apply(overrides or {})
    config = CLConfig(**cfg).validate()
    for key in overrides or {}:
        if key in METHOD_SPECIFIC_FIELDS and not allow_unused:  # method_options.x: the method's
            _check_used(config.method, key, cfg[key], preset[key])
    return config


def config_from_dict(data: dict[str, Any]) -> CLConfig:
    """Rebuild a config saved with :meth:`CLConfig.to_dict`."""
    return CLConfig(**data).validate()


# ---------------------------------------------------------------------------- --help listing
# Always shown for every preset (the rest: whatever a preset layer sets).
_HEADLINE = ("epochs", "lr", "batch_size", "prompt_length", "reg")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def _flat(cfg: CLConfig, keys: set[str]) -> dict[str, str]:
    """``key -> text`` for the fields in ``keys`` (``method_options.x`` flattened), in field
    order."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(CLConfig):
        if f.name not in keys:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, dict):
            out.update({f"{f.name}.{k}": _fmt(v) for k, v in sorted(value.items())})
        else:
            out[f.name] = _fmt(value)
    return out


def describe_presets(width: int = 100) -> str:
    """Text table of every registered preset, for ``cl.py --help``.

    Generated from the preset dicts, so presets registered by method modules appear
    automatically. Per dataset: the dataset preset (shared by all methods), then per method the
    values its own presets set (Sup-21K), then one line per paper backbone whose values differ.
    """
    import textwrap

    from cl.methods import available_methods  # importing registers every method's presets

    def wrap(text: str, indent: int, label: str) -> list[str]:
        head = " " * indent + label.ljust(15 - indent) + " "
        return textwrap.wrap(text or "(dataset preset only)", width, initial_indent=head,
                             subsequent_indent=" " * 18)

    names = {f.name for f in dataclasses.fields(CLConfig)} - {"backbone"}
    lines = [
        "presets (cl-pipeline.md 2.6; later wins: dataset < method < method x backbone < "
        "--set recipe=original-port (lines +original-port) < --quick < flags; lr is scaled by "
        "batch_size/256; backbones not listed use the sup21k values):",
    ]
    methods = sorted(set(available_methods()) | set(METHOD_PRESETS))
    for dataset, layer in DATASET_PRESETS.items():
        shared = dataclasses.replace(CLConfig(dataset=dataset), **layer)
        lines.extend(wrap(" ".join(f"{k}={v}" for k, v in
                                   _flat(shared, set(_HEADLINE) | set(layer)).items()),
                          2, dataset))
        for method in methods:
            try:
                base = resolve_config(dataset, method, "sup21k")
            except ValueError as exc:  # a broken registered preset must not break --help
                lines.extend(wrap(f"INVALID PRESET: {exc}", 4, method))
                continue
            table = METHOD_PRESETS.get(method, {})
            keys = set(table.get("*", {})) | set(table.get(dataset, {}))
            lines.extend(wrap(" ".join(f"{k}={v}" for k, v in _flat(base, keys).items()),
                              4, method))
            if dataset in OFFLINE_DATASETS:
                continue
            for backbone in PAPER_BACKBONES[1:]:
                a = _flat(base, names)
                try:
                    b = _flat(resolve_config(dataset, method, backbone), names)
                except ValueError as exc:
                    lines.extend(wrap(f"INVALID PRESET: {exc}", 6, "+" + backbone))
                    continue
                diff = " ".join(f"{k}={v}" for k, v in b.items() if a.get(k) != v)
                if diff:
                    lines.extend(wrap(diff, 6, "+" + backbone))
            for recipe in RECIPES[1:]:  # --set recipe=...: what it changes, where it exists
                if dataset not in RECIPE_PRESETS.get(recipe, {}).get(method, {}):
                    continue
                a = _flat(base, names)
                b = _flat(resolve_config(dataset, method, "sup21k",
                                         overrides={"recipe": recipe}), names - {"recipe"})
                diff = " ".join(f"{k}={v}" for k, v in b.items() if a.get(k) != v)
                lines.extend(wrap(diff, 6, "+" + recipe))
    return "\n".join(lines)
