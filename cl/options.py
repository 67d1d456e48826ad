"""The typed configuration records: :class:`CLConfig` (the run) and :class:`MethodOptions` (the
base of every method's own options).

A run is configured in two parts. :class:`CLConfig` holds what every run has: the dataset, the
backbone, the seed, where and how it runs (device, batch size, precision), the protocol and the
common training schedule (epochs, learning rate, gradient clipping). Everything a method adds is
a field of that method's options class, a dataclass derived from :class:`MethodOptions` that the
method class names as ``Method.options_type``; the run holds one instance of it in
:attr:`CLConfig.method_options` (saved as the ``method_options`` object of ``config.json``).

:mod:`cl.config` layers the presets into these records (and re-exports them); this module
imports nothing that imports the method classes, so that they can take a :class:`CLConfig`
without an import cycle.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from cl.errors import ConfigError
from cl.run.precision import Precision
from norga.choices import ChoiceError, check_choice

# The fields with a fixed set of values. DatasetName and BackboneTag list what the registries
# hold (cl.data.registry, cl.backbones.loading; tests/test_config_errors.py keeps them equal); a
# name outside them is refused with the registry's own message. The method names are the
# method registry's (cl.methods.available_methods), not a list here.
DatasetName = Literal["synthetic", "digits", "cifar100", "imagenet-r", "cub200", "5datasets"]
BackboneTag = Literal["vit-tiny-random", "vit-b16-random", "sup21k", "ibot21k", "ibot1k",
                      "dino1k", "mocov3-1k", "sup1k", "sup21k-augreg", "sup21k-ft1k"]
Scheduler = Literal["constant", "step", "cosine"]
AttentionImpl = Literal["fused", "reference"]
# "default": the presets (MoE_PromptCL's re-run configs); "original-port": the configs of the
# original PyTorch ports of L2P and DualPrompt (JH-LEE-KR); "hide-paper": thu-ml/HiDe-Prompt's
# own scripts and configs (HiDe-Prompt, S-Prompt++), see cl/protocol.py
Recipe = Literal["default", "original-port", "hide-paper"]
Protocol = Literal["default", "official"]
KeepCheckpoints = Literal["all", "last"]
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
RECIPES: tuple[Recipe, ...] = get_args(Recipe)
ATTENTION_IMPLS: tuple[AttentionImpl, ...] = get_args(AttentionImpl)
KEEP_CHECKPOINTS: tuple[KeepCheckpoints, ...] = get_args(KeepCheckpoints)

#: How the fields of a method's options are addressed in errors and listings.
OPTIONS_FIELD = "method_options"


# ---------------------------------------------------------------------------- typed values
def check_value(name: str, value: Any, hint: Any) -> None:
    """Refuse ``value`` if it does not have the type ``hint`` (a field annotation).

    Understood: ``bool``, ``int``, ``float`` (an int is accepted), ``str``, ``Literal[...]``
    (one of its values), ``list[int]``, ``dict[...]`` and ``X | None``; anything else is not
    checked.

    Raises
    ------
    ConfigError
        Naming ``name`` and what is allowed.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        try:
            check_choice(name, value, args)
        except ChoiceError as exc:
            raise ConfigError(name, exc.reason) from None
    elif hint is bool and not isinstance(value, bool):
        raise ConfigError(name, f"expected true/false, got {value!r}")
    elif hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    elif hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(name, f"must be a finite number, got {value}")
    elif hint is str and not isinstance(value, str):
        raise ConfigError(name, f"expected a string, got {value!r}")
    elif origin is list and args == (int,) and not _int_list(value, minimum=-(2**63)):
        raise ConfigError(name, f"expected a list of integers, e.g. [0,1,2], got {value!r}")
    elif origin is dict and not isinstance(value, dict):
        raise ConfigError(name, f"expected a JSON object, got {value!r}")


def coerce_value(name: str, value: Any, hint: Any) -> Any:
    """Convert a command-line string (``--set key=value``) to the type ``hint``; a value that is
    not a string is returned as it is (:func:`check_value` checks it later).

    Raises
    ------
    ConfigError
        Naming ``name``, for a string that cannot be read as ``hint``.
    """
    if not isinstance(value, str):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
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
        parsed = strict_json(name, value, "a JSON list of integers, e.g. [0,1,2]")
        if not _int_list(parsed, minimum=-(2**63)):
            raise ConfigError(name, f"expected a JSON list of integers, e.g. [0,1,2], got "
                              f"{value!r}")
        return parsed
    if origin is dict:
        parsed = strict_json(name, value, 'a JSON object, e.g. {"key": 1}')
        if not isinstance(parsed, dict):
            raise ConfigError(name, f'expected a JSON object, e.g. {{"key": 1}}, got {value!r}')
        return parsed
    return value


def strict_json(name: str, text: str, expected: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and says what was expected."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        raise ConfigError(name, f"expected {expected}, got {value_text(text)}") from None


def value_text(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of the dataclass ``cls``'s fields (cached: resolving them is
    slow, and ``--help`` resolves a few hundred configs)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------- method options
@dataclass
class MethodOptions:
    """Base of every method's typed options (a method without options uses it as it is).

    A method declares its options as a dataclass derived from this one, with a type and a
    default for every field, and names it as its ``options_type``. :meth:`validate` checks each
    value against its annotation (``Literal`` fields against their values) and then runs
    :meth:`check`, where a subclass adds its range checks. Errors name the field as
    ``method_options.NAME``.
    """

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], method: str = "") -> MethodOptions:
        """Options from ``values`` (defaults for the fields not given), validated.

        Raises
        ------
        ConfigError
            (``field`` ``"method_options"``) a name that is not a field, naming the allowed
            ones; or a bad value, naming its field.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(OPTIONS_FIELD, f"must be a JSON object, got {values!r}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            owner = f" for {method}" if method else ""
            allowed = ", ".join(cls.field_names()) or f"none ({method or cls.__name__} has no " \
                "options)"
            raise ConfigError(OPTIONS_FIELD, f"unknown key(s) {', '.join(unknown)}{owner}; "
                              f"allowed: {allowed}")
        return cls(**dict(values)).validate()

    def validate(self) -> MethodOptions:
        """Check every field against its annotation, then :meth:`check`; returns ``self``."""
        for name, hint in field_types(type(self)).items():
            check_value(f"{OPTIONS_FIELD}.{name}", getattr(self, name), hint)
        self.check()
        return self

    def check(self) -> None:
        """Range checks of a subclass (raise ``ConfigError("method_options.NAME", reason)``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _refuse(self, name: str, reason: str) -> None:
        raise ConfigError(f"{OPTIONS_FIELD}.{name}", f"{reason}, got {getattr(self, name)!r}")

    def _positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                self._refuse(name, "must be positive")

    def _non_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                self._refuse(name, "must be >= 0")


# ---------------------------------------------------------------------------- the run
@dataclass
class CLConfig:
    """Everything that defines a run (saved as ``config.json``); the method's own settings are
    :attr:`method_options`."""

    # what
    dataset: DatasetName = "synthetic"
    method: str = "norga"  # a registered method (cl.methods.available_methods)
    backbone: BackboneTag = "vit-tiny-random"
    weights: str | None = None
    seed: int = 42
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # the method's typed options (its ``options_type``); a plain mapping is resolved by the
    # method class when the run is built
    method_options: MethodOptions = field(default_factory=MethodOptions)
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
    # "official": switch every listed deviation to the official code's behaviour
    # (cl/protocol.py, docs/deviations.md)
    protocol: Protocol = "default"
    # which recipe the method presets follow (RECIPES; "original-port": L2P / DualPrompt as
    # configured by the original PyTorch ports, cl/protocol.py)
    recipe: Recipe = "default"
    # drop the last partial training batch (CODA-Prompt and SMoPE code), cl/protocol.py
    legacy_drop_last: bool = False
    # the common training schedule (a method with more phases has its own budgets as options)
    epochs: int = 20
    lr: float = 0.03
    clip_grad: float = 1.0
    # bookkeeping: "last" keeps only the checkpoint a resume needs (each holds the class
    # statistics, two float64 d x d matrices per class: about 0.9 GB for ViT-B/16 at 100 classes);
    # "all" keeps one per task
    keep_checkpoints: KeepCheckpoints = "last"

    def validate(self) -> CLConfig:
        """Check the fields with a fixed set of values, the ranges, and the method's options.

        Raises
        ------
        ConfigError
            Naming the field at fault (``field``) and what is allowed.
        """
        for name in ("precision", "protocol", "recipe", "keep_checkpoints", "compile",
                     "download", "quick", "legacy_drop_last"):
            check_value(name, getattr(self, name), field_types(CLConfig)[name])
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("epochs", "num_workers", "clip_grad"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) \
                or not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number, got {value}")
        if not isinstance(self.dataset_options, dict):
            raise ConfigError("dataset_options",
                              f"must be a JSON object, got {self.dataset_options!r}")
        if isinstance(self.method_options, MethodOptions):
            self.method_options.validate()
        elif not isinstance(self.method_options, Mapping):
            raise ConfigError(OPTIONS_FIELD, f"must be a JSON object, got "
                              f"{self.method_options!r}")
        if self.lr <= 0:
            raise ConfigError("lr", f"must be positive, got {self.lr}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CLConfig))


def _check_field_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """:func:`norga.choices.check_choice` of config field ``name``, as a :class:`ConfigError`."""
    try:
        check_choice(name, value, allowed)
    except ChoiceError as exc:
        raise ConfigError(name, exc.reason) from None


def _int_list(value: Any, minimum: int) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
