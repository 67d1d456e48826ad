"""Typed run configuration and the one resolver of its preset layers.

Resolution order (later wins): dataclass defaults < dataset preset (here) < the method's
presets (``Method.presets``, declared by each method class: ``"*"``, then per dataset, then per
(dataset, backbone), e.g. NoRGa's gate activation and the shorter schedules of the
self-supervised backbones) < ``--set recipe=original-port`` (``Method.recipe_presets``: the
original L2P/DualPrompt ports' configs) < ``--protocol official`` (cl/protocol.py) < ``--quick``
< explicit overrides. :func:`resolve_config` is the only place that layers them; importing a
method module changes no table.

Every error of a configuration is a :class:`cl.errors.ConfigError` naming the field at fault in
its ``field`` attribute.

Values are the effective ones of docs/cl-background.md#hyperparameters for Sup-21K unless noted;
learning rates are the raw script values and are multiplied by ``batch_size / 256`` where the
original code does so.
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

from cl.errors import ConfigError
from cl.models.gating import ACTIVATIONS, Activation
from cl.presets import PAPER_BACKBONES, PresetTable
from cl.run.precision import PRECISIONS, Precision
from cl.stats.gaussian import STATS_METHODS, StatsMethod
from norga.choices import ChoiceError, check_choice

# The fields with a fixed set of values. DatasetName, MethodName and BackboneTag list what the
# registries hold (cl.data.registry, cl.methods, cl.backbones.loading;
# tests/test_config_errors.py keeps them equal); a name outside them is refused with the
# registry's own message.
DatasetName = Literal["synthetic", "digits", "cifar100", "imagenet-r", "cub200", "5datasets"]
MethodName = Literal["coda-prompt", "dualprompt", "hide", "l2p", "norga", "smope", "sprompt"]
BackboneTag = Literal["vit-tiny-random", "vit-b16-random", "sup21k", "ibot21k", "ibot1k",
                      "dino1k", "mocov3-1k", "sup1k", "sup21k-augreg", "sup21k-ft1k"]
Scheduler = Literal["constant", "step", "cosine"]
AttentionImpl = Literal["fused", "reference"]
# "default": the presets (MoE_PromptCL's re-run configs); "original-port": the configs of the
# original PyTorch ports of L2P and DualPrompt (JH-LEE-KR), see cl/protocol.py
Recipe = Literal["default", "original-port"]
Protocol = Literal["default", "official"]
KeepCheckpoints = Literal["all", "last"]
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
RECIPES: tuple[Recipe, ...] = get_args(Recipe)
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = get_args(AttentionImpl)
KEEP_CHECKPOINTS: tuple[KeepCheckpoints, ...] = get_args(KeepCheckpoints)


@dataclass
class CLConfig:
    """Everything that defines a run (saved as ``config.json``)."""

    # what
    dataset: DatasetName = "synthetic"
    method: MethodName = "norga"
    backbone: BackboneTag = "vit-tiny-random"
    weights: str | None = None
    seed: int = 42
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # method-specific hyperparameters (baselines keep theirs here, keyed by name)
    method_options: dict[str, Any] = field(default_factory=dict)
    # where / how
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps (checked by cl.run.engine.resolve_device)
    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 0
    # fp32: exact (default, reproduces the published setup); bf16: autocast of the ViT forward
    # passes only (heads, losses, statistics stay float32/float64), see cl/run/precision.py
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile of the models' ViT forward passes
    data_root: str | None = None
    download: bool = False
    quick: bool = False
    # prompted model
    prompt_length: int = 5
    prompt_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    gate_act: Activation = "tanh"
    attention: AttentionImpl = "fused"
    gate_trainable_after_first_task: bool = False
    legacy_kv_reshape: bool = False
    batchwise_prompt: bool = False
    # "official": switch every listed deviation to the official code's behaviour
    # (cl/protocol.py, docs/deviations.md)
    protocol: Protocol = "default"
    # which recipe the method presets follow (RECIPES; "original-port": L2P / DualPrompt as
    # configured by the original PyTorch ports, cl/protocol.py)
    recipe: Recipe = "default"
    # the official code's batch-vote tie order (torch.topk over padded counts), cl/protocol.py
    legacy_vote_ties: bool = False
    # drop the last partial training batch (CODA-Prompt and SMoPE code), cl/protocol.py
    legacy_drop_last: bool = False
    # within-task prompt training (WTP)
    epochs: int = 20
    lr: float = 0.03
    larger_prompt_lr: bool = True
    scheduler: Scheduler = "step"
    clip_grad: float = 1.0
    prompt_momentum: float = 0.1
    reg: float = 0.1
    contrastive_temperature: float = 0.8
    # task-identity model (TII)
    tii_epochs: int = 20
    tii_lr: float = 5e-4
    tii_scheduler: Scheduler = "constant"
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
    stats_method: StatsMethod = "covariance"
    # k-means clusters per class for stats_method="multi-centroid" (HiDe-Prompt: 10)
    n_centroids: int = 10
    # bookkeeping
    keep_checkpoints: KeepCheckpoints = "all"

    def validate(self) -> CLConfig:
        """Check the fields with a fixed set of values and the ranges.

        Raises
        ------
        ConfigError
            Naming the field at fault (``field``) and what is allowed.
        """
        choices: dict[str, tuple[str, ...]] = {
            "gate_act": ACTIVATIONS,
            "attention": ATTENTION_IMPLS,
            "scheduler": SCHEDULERS,
            "tii_scheduler": SCHEDULERS,
            "stats_method": STATS_METHODS,
            "keep_checkpoints": KEEP_CHECKPOINTS,
            "precision": PRECISIONS,
            "protocol": PROTOCOLS,
            "recipe": RECIPES,
        }
        for name, allowed in choices.items():
            _check_field_choice(name, getattr(self, name), allowed)
        if not isinstance(self.compile, bool):
            raise ConfigError("compile", f"expected true/false, got {self.compile!r}")
        positive = ("batch_size", "eval_batch_size", "prompt_length", "tap_samples_mult",
                    "n_centroids")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("epochs", "tii_epochs", "tii_ca_epochs", "tap_epochs", "num_workers",
                     "clip_grad", "tii_clip_grad"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) \
                or not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number, got {value}")
        for name in ("clip_grad", "reg"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not self.tii_mlp or not _int_list(self.tii_mlp, minimum=1):
            raise ConfigError("tii_mlp", f"must be a non-empty list of positive integers (hidden "
                              f"layer widths), got {self.tii_mlp!r}")
        if not _int_list(self.prompt_layers, minimum=0) \
                or len(set(self.prompt_layers)) != len(self.prompt_layers):
            raise ConfigError("prompt_layers", f"must be distinct block indices >= 0, got "
                              f"{self.prompt_layers!r}")
        for name in ("dataset_options", "method_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, f"must be a JSON object, got {getattr(self, name)!r}")
        if not 0.0 <= self.prompt_momentum < 1.0:
            raise ConfigError("prompt_momentum",
                              f"must be in [0, 1), got {self.prompt_momentum}")
        for name in ("lr", "tii_lr", "tii_ca_lr", "ca_lr", "contrastive_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
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
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a method that does not raise ConfigError
            raise ConfigError("method_options", str(exc)) from exc

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
    raise ConfigError(name, f"{_fmt(value)} is not used by method {method}{where}; allowed: "
                      f"leave it at {_fmt(preset)}, or a method that uses it: {', '.join(users)}")


def _check_field_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """:func:`norga.choices.check_choice` of config field ``name``, as a :class:`ConfigError`."""
    try:
        check_choice(name, value, allowed)
    except ChoiceError as exc:
        raise ConfigError(name, exc.reason) from None


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
        raise ConfigError(name, f"unknown config key {name!r}; allowed: {allowed}")
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
        raise ConfigError(name, f"expected true/false, got {value!r}")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError as exc:
            raise ConfigError(name, f"expected {hint.__name__}, got {value!r}") from exc
    if origin is list:
        parsed = _strict_json(name, value, "a JSON list of integers, e.g. [0,1,2]")
        if not _int_list(parsed, minimum=-(2**63)):
            raise ConfigError(name, f"expected a JSON list of integers, e.g. [0,1,2], got "
                              f"{value!r}")
        return parsed
    if origin is dict:
        parsed = _strict_json(name, value, 'a JSON object, e.g. {"key": 1}')
        if not isinstance(parsed, dict):
            raise ConfigError(name, f'expected a JSON object, e.g. {{"key": 1}}, got {value!r}')
        return parsed
    return value


def _strict_json(name: str, text: str, expected: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and says what was expected."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        raise ConfigError(name, f"expected {expected}, got {value_text(text)}") from None


def value_text(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def _dotted(key: str, value: Any) -> tuple[str, Any]:
    """``method_options.NAME=VALUE`` (and ``dataset_options.NAME``) -> ``(field, {NAME: v})``;
    a string value is read as JSON (``true``, ``0.5``, ``[1,2]``), else kept as text."""
    head, dot, name = key.partition(".")
    if not dot or head not in ("method_options", "dataset_options"):
        return key, value
    if not name:
        raise ConfigError(key, f"expected {head}.NAME=VALUE")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    return head, {name: value}


def _method_class(method: str) -> type | None:
    """The registered class of ``method`` (``None`` for a name no class is registered under)."""
    from cl.methods import base  # lazy: importing cl.methods imports every method module

    return base.get_method(method) if method in base.available_methods() else None


def method_presets(method: str) -> PresetTable:
    """The presets the class of ``method`` declares (``Method.presets``; its own declaration,
    not a parent's), empty for an unregistered method."""
    cls = _method_class(method)
    return vars(cls).get("presets", {}) if cls is not None else {}


def method_recipes(method: str) -> dict[str, PresetTable]:
    """The alternative recipes the class of ``method`` declares (``Method.recipe_presets``)."""
    cls = _method_class(method)
    return vars(cls).get("recipe_presets", {}) if cls is not None else {}


def preset_layers(dataset: str, method: str, backbone: str) -> list[dict[str, Any]]:
    """The preset layers of a run, in the order they are applied (before ``--quick``/flags).

    Dataset preset, then the method's ``"*"``, ``dataset`` and ``(dataset, backbone)`` entries.
    """
    table = method_presets(method)
    return [DATASET_PRESETS.get(dataset, {}), table.get("*", {}), table.get(dataset, {}),
            table.get((dataset, backbone), {})]


def recipe_layers(dataset: str, method: str, recipe: str) -> list[dict[str, Any]]:
    """The layers of an alternative recipe (none for ``"default"``), applied after the presets.

    Raises
    ------
    ConfigError
        (``field`` ``"recipe"``) An unknown recipe, or one that has no configuration for this
        method or dataset.
    """
    _check_field_choice("recipe", recipe, RECIPES)
    if recipe == "default":
        return []
    from cl.methods import available_methods

    table = method_recipes(method).get(recipe)
    if table is None:
        having = [m for m in available_methods() if recipe in method_recipes(m)]
        raise ConfigError("recipe", f"{recipe}: only {', '.join(having)} have one; got "
                          f"method {method!r}")
    datasets = [key for key in table if isinstance(key, str) and key != "*"]
    if dataset not in datasets:
        raise ConfigError("recipe", f"{recipe}: {method} has configs for "
                          f"{', '.join(datasets)} only; got dataset {dataset!r}")
    return [table.get("*", {}), table[dataset]]


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
    preset value raises ``ConfigError`` (the method would silently ignore it), unless
    ``allow_unused`` (e.g. one budget of every phase passed to every method).

    Raises
    ------
    ConfigError
        Any bad value (a ``ValueError``), with the field at fault in ``field``.
    """
    # the names are checked by their registries when the run is built (an unregistered method
    # has no presets here and is refused by the engine)
    cfg: dict[str, Any] = {**CLConfig().to_dict(), "dataset": dataset, "method": method,
                           "backbone": backbone}

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
    _check_field_choice("protocol", protocol, PROTOCOLS)
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
    """Text table of every method's presets, for ``cl.py --help``.

    Generated from the dataset presets and the presets each registered method class declares,
    so a new method's presets appear automatically. Per dataset: the dataset preset (shared by
    all methods), then per method the values its own presets set (Sup-21K), then one line per
    paper backbone whose values differ.
    """
    import textwrap

    from cl.methods import available_methods

    def wrap(text: str, indent: int, label: str) -> list[str]:
        head = " " * indent + label.ljust(15 - indent) + " "
        return textwrap.wrap(text or "(dataset preset only)", width, initial_indent=head,
                             subsequent_indent=" " * 18)

    names = {f.name for f in dataclasses.fields(CLConfig)} - {"backbone"}
    lines = [
        "presets (docs/cl-background.md#hyperparameters; later wins: dataset < method < method x "
        "backbone < "
        "--set recipe=original-port (lines +original-port) < --quick < flags; lr is scaled by "
        "batch_size/256; backbones not listed use the sup21k values):",
    ]
    methods = available_methods()
    for dataset, layer in DATASET_PRESETS.items():
        shared = dataclasses.replace(CLConfig(), **{"dataset": dataset, **layer})
        lines.extend(wrap(" ".join(f"{k}={v}" for k, v in
                                   _flat(shared, set(_HEADLINE) | set(layer)).items()),
                          2, dataset))
        for method in methods:
            try:
                base = resolve_config(dataset, method, "sup21k")
            except ValueError as exc:  # a broken registered preset must not break --help
                lines.extend(wrap(f"INVALID PRESET: {exc}", 4, method))
                continue
            table = method_presets(method)
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
                if dataset not in method_recipes(method).get(recipe, {}):
                    continue
                a = _flat(base, names)
                b = _flat(resolve_config(dataset, method, "sup21k",
                                         overrides={"recipe": recipe}), names - {"recipe"})
                diff = " ".join(f"{k}={v}" for k, v in b.items() if a.get(k) != v)
                lines.extend(wrap(diff, 6, "+" + recipe))
    return "\n".join(lines)
