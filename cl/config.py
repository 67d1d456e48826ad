"""The one resolver of a run's configuration: presets, config files and flags, layered.

Resolution order (later wins): the dataclass defaults (:class:`CLConfig` and the method's
options class) < the dataset preset (here) < the method's presets (``Method.presets``, declared
by each method class: ``"*"``, then per dataset, then per (dataset, backbone), e.g. NoRGa's gate
activation and the shorter schedules of the self-supervised backbones) < ``--set
recipe=original-port`` (``Method.recipe_presets``: the original L2P/DualPrompt ports' configs) <
``--protocol official`` (cl/protocol.py) < ``--quick`` < a config file < flags.
:func:`resolve_layers` is the only place that layers them, and it records where each value came
from; importing a method module changes no table.

One key of a layer can address:

* a run field of :class:`CLConfig` (``epochs``, ``lr``, ``seed``, ...);
* a field of the method's options, as ``method.NAME``, ``method_options.NAME`` or plain ``NAME``
  (the spelling from before options were typed), or several as a ``method_options`` object;
* one key of ``dataset_options`` as ``dataset_options.KEY``, or several as an object.

The dataset and quick presets are shared by every method: a field of another method's options
there is skipped. An explicit value (file, flag, ``overrides``) of a field the method does not
have is refused, naming the methods that have it.

Every error of a configuration is a :class:`cl.errors.ConfigError` naming the field at fault in
its ``field`` attribute (``method_options.NAME`` for an option).

Values are the effective ones of the published scripts for Sup-21K unless noted; learning rates
are the raw script values and are multiplied by ``batch_size / 256`` where the original code
does so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cl.errors import ConfigError
from cl.methods import available_methods, get_method
from cl.options import (  # noqa: F401 - re-exported: the public names of cl.config
    ATTENTION_IMPLS,
    KEEP_CHECKPOINTS,
    OPTIONS_FIELD,
    PROTOCOLS,
    RECIPES,
    RUN_FIELDS,
    SCHEDULERS,
    AttentionImpl,
    BackboneTag,
    CLConfig,
    DatasetName,
    KeepCheckpoints,
    MethodOptions,
    Protocol,
    Recipe,
    Scheduler,
    _check_field_choice,
    coerce_value,
    field_types,
    strict_json,
)
from cl.presets import PAPER_BACKBONES, PresetTable

#: Where a value came from (``--print-config`` shows it next to the value).
SOURCES = ("default", "preset", "recipe", "protocol", "quick", "file", "flag")
# chosen by resolve_layers' arguments, never by a layer
_CHOSEN = ("dataset", "method", "backbone")


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



# ---------------------------------------------------------------------------- the method
def _method_class(method: str) -> type | None:
    """The registered class of ``method`` (``None`` for a name no class is registered under)."""
    return get_method(method) if method in available_methods() else None


def options_type(method: str) -> type[MethodOptions]:
    """The options class of ``method`` (:class:`MethodOptions`, none, for an unregistered name:
    the engine refuses the name)."""
    cls = _method_class(method)
    return cls.options_type if cls is not None else MethodOptions


def method_uses(method: str, name: str) -> bool:
    """Whether a run of ``method`` has field ``name``: a run field, or a field of the method's
    options (``True`` for an unregistered method, whose options are unknown here)."""
    return name in RUN_FIELDS or method not in available_methods() \
        or name in options_type(method).field_names()


def methods_with_option(name: str) -> list[str]:
    """The registered methods whose options have a field ``name``."""
    return [m for m in available_methods() if name in options_type(m).field_names()]


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


# ---------------------------------------------------------------------------- layering
@dataclass
class Resolved:
    """A resolved configuration and where each value came from.

    Attributes
    ----------
    config:
        The validated configuration.
    sources:
        ``key -> source`` (:data:`SOURCES`) for every run field, every option
        (``method_options.NAME``) and every key of ``dataset_options`` (``dataset_options.KEY``).
    """

    config: CLConfig
    sources: dict[str, str]


class _Draft:
    """The values of a run being layered, with the source of each."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.options_type = options_type(method)
        self.option_names = set(self.options_type.field_names())
        self.run = {f.name: getattr(CLConfig(), f.name) for f in dataclasses.fields(CLConfig)}
        del self.run[OPTIONS_FIELD]
        self.options = self.options_type().to_dict()
        self.sources = {**dict.fromkeys(self.run, "default"),
                        **{f"{OPTIONS_FIELD}.{k}": "default" for k in self.options}}

    def apply(self, layer: Mapping[str, Any], source: str, *, shared: bool,
              allow_unused: bool = False) -> None:
        """Apply one layer. ``shared``: a preset every method gets (a field of another
        method's options is skipped); otherwise such a field is refused unless
        ``allow_unused``."""
        for key, value in layer.items():
            for kind, name, item in _route(key, value, self.option_names):
                if kind == "run":
                    if name in _CHOSEN:
                        raise ConfigError(name, f"is chosen by the {name} argument (--{name}), "
                                          "not by a config layer")
                    self.run[name] = coerce_value(name, item, field_types(CLConfig)[name])
                    self.sources[name] = source
                elif kind == "dataset":
                    self.run["dataset_options"] = {**self.run["dataset_options"], name: item}
                    self.sources[f"dataset_options.{name}"] = source
                elif kind == "option":
                    if name not in self.option_names:
                        if (shared or allow_unused) and methods_with_option(name):
                            continue  # another method's option, in a layer shared by all
                        self._refuse_option(key, name)
                    field = f"{OPTIONS_FIELD}.{name}"
                    self.options[name] = coerce_value(field, item,
                                                      field_types(self.options_type)[name])
                    self.sources[field] = source
                elif shared or allow_unused:  # a field of other methods (or a typo, below)
                    if not methods_with_option(name):
                        self._refuse_unknown(key)
                else:
                    self._refuse_unknown(key, value)

    def _refuse_option(self, key: str, name: str) -> None:
        allowed = ", ".join(sorted(self.option_names)) or "none"
        raise ConfigError(OPTIONS_FIELD, f"unknown key(s) {name} for {self.method} (given as "
                          f"{key!r}); allowed: {allowed}")

    def _refuse_unknown(self, key: str, value: Any = None) -> None:
        users = methods_with_option(key)
        mine = ", ".join(sorted(self.option_names)) or "none"
        if users:
            raise ConfigError(key, f"{_fmt(value)} is not used by method {self.method} (not one "
                              f"of its options: {mine}); allowed: a method that uses it: "
                              f"{', '.join(users)}")
        raise ConfigError(key, f"unknown config key {key!r}; allowed: a run field "
                          f"({', '.join(n for n in RUN_FIELDS if n not in _CHOSEN)}) or an "
                          f"option of {self.method} ({mine})")

    def config(self) -> CLConfig:
        options = self.options_type(**self.options)
        return CLConfig(**self.run, method_options=options).validate()


def _route(key: str, value: Any, option_names: set[str]) -> list[tuple[str, str, Any]]:
    """``(kind, name, value)`` items one layer key stands for; kind is ``"run"``, ``"option"``,
    ``"dataset"`` or ``"other"`` (not a run field, not this method's option)."""
    head, dot, name = key.partition(".")
    if head in ("method", OPTIONS_FIELD) and dot:
        if not name:
            raise ConfigError(key, f"expected {head}.NAME=VALUE")
        return [("option", name, value)]
    if head == "dataset_options" and dot:
        if not name:
            raise ConfigError(key, "expected dataset_options.NAME=VALUE")
        if isinstance(value, str):  # a CLI string is read as JSON where it is JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        return [("dataset", name, value)]
    if key in (OPTIONS_FIELD, "dataset_options"):
        if isinstance(value, str):
            value = strict_json(key, value, 'a JSON object, e.g. {"key": 1}')
        if isinstance(value, MethodOptions):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ConfigError(key, f'expected a JSON object, e.g. {{"key": 1}}, got {value!r}')
        kind = "option" if key == OPTIONS_FIELD else "dataset"
        return [(kind, k, v) for k, v in value.items()]
    if key in RUN_FIELDS:
        return [("run", key, value)]
    if key in option_names:
        return [("option", key, value)]
    return [("other", key, value)]


def resolve_layers(
    dataset: str,
    method: str,
    backbone: str = "vit-tiny-random",
    *,
    quick: bool = False,
    explicit: Sequence[tuple[str, Mapping[str, Any]]] = (),
    allow_unused: bool = False,
) -> Resolved:
    """Layer the presets and the ``explicit`` layers (``(source, values)``, e.g. a config file
    then the flags) into a validated config, recording the source of every value.

    ``recipe``, ``protocol`` and ``quick`` given in an explicit layer choose the preset layers
    (the last one given wins; ``quick`` also from the argument). ``dataset_options`` are merged
    key by key, so are the options given as a ``method_options`` object. Values may be strings
    (from the CLI); they are converted to the field's type.

    Raises
    ------
    ConfigError
        Any bad value, with the field at fault in ``field``.
    """
    chosen: dict[str, Any] = {"recipe": "default", "protocol": "default", "quick": quick}
    for _, layer in explicit:
        chosen.update({k: layer[k] for k in chosen if k in layer})
    quick = coerce_value("quick", chosen["quick"], bool)
    draft = _Draft(method)
    draft.run.update(dataset=dataset, method=method, backbone=backbone)
    for layer in preset_layers(dataset, method, backbone):
        draft.apply(layer, "preset", shared=True)
    for layer in recipe_layers(dataset, method, chosen["recipe"]):
        draft.apply(layer, "recipe", shared=True)
    _check_field_choice("protocol", chosen["protocol"], PROTOCOLS)
    if chosen["protocol"] == "official":  # every listed deviation switched to the official one
        from cl.protocol import official_layer

        draft.apply(official_layer(dataset, method), "protocol", shared=True)
    if quick:
        draft.apply({**QUICK_PRESETS.get(dataset, QUICK_DEFAULT), "quick": True}, "quick",
                    shared=True)
    for source, layer in explicit:
        draft.apply(layer, source, shared=False, allow_unused=allow_unused)
    return Resolved(draft.config(), draft.sources)


def resolve_config(
    dataset: str,
    method: str,
    backbone: str = "vit-tiny-random",
    *,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
    allow_unused: bool = False,
) -> CLConfig:
    """Build the run config by layering the presets and ``overrides`` (:func:`resolve_layers`
    with ``overrides`` as the one explicit layer).

    ``overrides["protocol"] == "official"`` adds :func:`cl.protocol.official_layer` right after
    the presets (before ``--quick`` and the other overrides, which still win).

    An override of a field the method does not have raises ``ConfigError`` (the method would
    silently ignore it), unless ``allow_unused`` (e.g. one budget of every phase passed to every
    method), which drops it.

    Raises
    ------
    ConfigError
        Any bad value (a ``ValueError``), with the field at fault in ``field``.
    """
    return resolve_layers(dataset, method, backbone, quick=quick,
                          explicit=[("flag", overrides or {})],
                          allow_unused=allow_unused).config


# ---------------------------------------------------------------------------- saved configs
# The option fields a config.json written before options were typed holds at its top level
# (every method's run wrote all of them); reading such a file keeps the method's own ones.
LEGACY_FLAT_FIELDS: tuple[str, ...] = (
    "prompt_length", "prompt_layers", "gate_act", "attention", "gate_trainable_after_first_task",
    "legacy_kv_reshape", "batchwise_prompt", "legacy_vote_ties", "scheduler", "larger_prompt_lr",
    "prompt_momentum", "reg", "contrastive_temperature", "tii_epochs", "tii_lr", "tii_scheduler",
    "tii_mlp", "tii_ca_epochs", "tii_ca_lr", "tii_clip_grad", "tap_epochs", "ca_lr",
    "tap_samples_mult", "stats_method", "n_centroids",
)
# flat option fields that only some of those files hold (added while options were still flat)
LEGACY_FLAT_OPTIONAL: tuple[str, ...] = ("kmeans_n_init", "legacy_before_alignment_row0")


def upgrade_saved(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved ``config.json`` in the current shape: one written before options were typed
    (every field of :data:`LEGACY_FLAT_FIELDS` at the top level) has its method's fields moved
    into ``method_options`` and the other methods' dropped; any other mapping is returned as
    it is (a copy)."""
    data = dict(data)
    if not set(LEGACY_FLAT_FIELDS) <= set(data):
        return data
    names = set(options_type(str(data.get("method", CLConfig.method))).field_names())
    options = dict(data.get(OPTIONS_FIELD) or {})
    for name in (*LEGACY_FLAT_FIELDS, *(f for f in LEGACY_FLAT_OPTIONAL if f in data)):
        value = data.pop(name)
        if name in names:
            options.setdefault(name, value)
    data[OPTIONS_FIELD] = options
    return data


def config_from_dict(data: Mapping[str, Any]) -> CLConfig:
    """Rebuild a config saved with :meth:`CLConfig.to_dict` (either shape, see
    :func:`upgrade_saved`).

    Raises
    ------
    ConfigError
        A key that is not a run field (``field``: the key), or a bad value.
    """
    data = upgrade_saved(data)
    unknown = sorted(set(data) - set(RUN_FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown config key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(RUN_FIELDS)}")
    method = str(data.get("method", CLConfig.method))
    given = data.get(OPTIONS_FIELD, {})
    cls = _method_class(method)
    options: Any = cls.resolve_options(given) if cls is not None else given
    return CLConfig(**{**data, OPTIONS_FIELD: options}).validate()


def flat_dict(cfg: CLConfig) -> dict[str, Any]:
    """``cfg`` as one flat mapping: run fields, ``method_options.NAME`` and
    ``dataset_options.KEY`` (for comparisons and listings)."""
    data = cfg.to_dict()
    out = {k: v for k, v in data.items() if k not in (OPTIONS_FIELD, "dataset_options")}
    out.update({f"dataset_options.{k}": v for k, v in data["dataset_options"].items()})
    out.update({f"{OPTIONS_FIELD}.{k}": v for k, v in data[OPTIONS_FIELD].items()})
    return out


# ---------------------------------------------------------------------------- --help listing
# Always shown for every preset (the rest: whatever a preset layer sets).
_HEADLINE = ("epochs", "lr", "batch_size", "prompt_length", "reg")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def _listing_keys(layer: Mapping[str, Any]) -> set[str]:
    """The names a preset layer sets, as the listing shows them (an option by its plain name,
    a dataset option as ``dataset_options.KEY``)."""
    keys: set[str] = set()
    for key, value in layer.items():
        head, dot, name = key.partition(".")
        if key in (OPTIONS_FIELD, "dataset_options") and isinstance(value, Mapping):
            keys |= {n if key == OPTIONS_FIELD else f"{key}.{n}" for n in value}
        elif dot and head in ("method", OPTIONS_FIELD):
            keys.add(name)
        else:
            keys.add(key)
    return keys


def _listing_values(cfg: CLConfig) -> dict[str, Any]:
    """Run fields, options by plain name and ``dataset_options.KEY``, in that order."""
    prefix = f"{OPTIONS_FIELD}."
    return {k.removeprefix(prefix): v for k, v in flat_dict(cfg).items()}


def _flat(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """``key -> text`` for the ``keys`` of ``values``, in the order of ``values``."""
    wanted = set(keys)
    return {k: _fmt(v) for k, v in values.items() if k in wanted}


def describe_presets(width: int = 100) -> str:
    """Text table of every method's presets, for ``cl.py --help``.

    Generated from the dataset presets and the presets each registered method class declares,
    so a new method's presets appear automatically. Per dataset: the dataset preset (shared by
    all methods), then per method the values its own presets set (Sup-21K), then one line per
    paper backbone whose values differ. Options are shown by their plain names.
    """
    import textwrap

    def wrap(text: str, indent: int, label: str) -> list[str]:
        head = " " * indent + label.ljust(15 - indent) + " "
        return textwrap.wrap(text or "(dataset preset only)", width, initial_indent=head,
                             subsequent_indent=" " * 18)

    def diff(a: dict[str, str], b: dict[str, str]) -> str:
        return " ".join(f"{k}={v}" for k, v in b.items() if a.get(k) != v)

    lines = [
        "presets (later wins: dataset < method < method x backbone < --set recipe=R "
        "(lines +R: original-port, hide-paper) < --quick < --config FILE < flags; lr is scaled by "
        "batch_size/256; backbones not listed use the sup21k values; --print-config shows a "
        "run's values and where each comes from):",
    ]
    run_defaults = {k: v for k, v in dataclasses.asdict(CLConfig()).items()
                    if k != OPTIONS_FIELD}
    for dataset, layer in DATASET_PRESETS.items():
        shared = {**run_defaults, **layer}
        lines.extend(wrap(" ".join(f"{k}={v}" for k, v in
                                   _flat(shared, set(_HEADLINE) | set(layer)).items()),
                          2, dataset))
        for method in available_methods():
            try:
                base = _listing_values(resolve_config(dataset, method, "sup21k"))
            except ValueError as exc:  # a broken registered preset must not break --help
                lines.extend(wrap(f"INVALID PRESET: {exc}", 4, method))
                continue
            table = method_presets(method)
            keys = _listing_keys(table.get("*", {})) | _listing_keys(table.get(dataset, {}))
            lines.extend(wrap(" ".join(f"{k}={v}" for k, v in _flat(base, keys).items()),
                              4, method))
            if dataset in OFFLINE_DATASETS:
                continue
            for backbone in PAPER_BACKBONES[1:]:
                try:
                    other = _listing_values(resolve_config(dataset, method, backbone))
                except ValueError as exc:
                    lines.extend(wrap(f"INVALID PRESET: {exc}", 6, "+" + backbone))
                    continue
                text = diff(_flat(base, base), _flat(other, set(other) - {"backbone"}))
                if text:
                    lines.extend(wrap(text, 6, "+" + backbone))
            for recipe in RECIPES[1:]:  # --set recipe=...: what it changes, where it exists
                if dataset not in method_recipes(method).get(recipe, {}):
                    continue
                other = _listing_values(resolve_config(dataset, method, "sup21k",
                                                       overrides={"recipe": recipe}))
                lines.extend(wrap(diff(_flat(base, base), _flat(other, set(other) - {"recipe"})),
                                  6, "+" + recipe))
    return "\n".join(lines)
