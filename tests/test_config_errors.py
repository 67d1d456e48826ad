"""Configuration errors carry the field at fault (``ConfigError.field``), the CLI maps that
field to its flag without reading the message, config fields with a fixed set of values are
``Literal``-typed and checked at run time against the same values, and one choice checker
(:func:`norga.choices.check_choice`) words every such error."""

from __future__ import annotations

import dataclasses
import pickle
import types
import typing
from pathlib import Path

import pytest

from cl import cli
from cl.backbones.loading import BACKBONES
from cl.config import CLConfig, resolve_config
from cl.data.registry import builtin_datasets
from cl.errors import ConfigError
from cl.methods import available_methods, get_method
from cl.run.engine import resolve_device, run_experiment
from norga.choices import ChoiceError, check_choice

# (method, overrides) -> the field the error names; one case per kind of check
RESOLVE_CASES = [
    ("norga", {"no_such_key": "1"}, "no_such_key"),  # unknown key
    ("norga", {"lr": "fast"}, "lr"),  # not a number
    ("norga", {"larger_prompt_lr": "maybe"}, "method_options.larger_prompt_lr"),  # not a bool
    ("norga", {"tii_mlp": "[2,"}, "method_options.tii_mlp"),  # bad JSON list
    ("norga", {"dataset_options": "[1]"}, "dataset_options"),  # not a JSON object
    ("norga", {"method_options.": "1"}, "method_options."),  # dotted key without a name
    ("norga", {"scheduler": "linear"}, "method_options.scheduler"),  # choice
    ("norga", {"keep_checkpoints": "none"}, "keep_checkpoints"),
    ("norga", {"protocol": "paper"}, "protocol"),
    ("norga", {"recipe": "paper"}, "recipe"),
    ("norga", {"recipe": "original-port"}, "recipe"),  # no such recipe for this method
    ("dualprompt", {"recipe": "original-port"}, "recipe"),  # ... or for this dataset
    ("norga", {"batch_size": "0"}, "batch_size"),  # ranges
    ("norga", {"clip_grad": "-1"}, "clip_grad"),
    ("norga", {"seed": -1}, "seed"),
    ("norga", {"reg": "nan"}, "method_options.reg"),
    ("norga", {"prompt_momentum": "1"}, "method_options.prompt_momentum"),
    ("norga", {"method.prompt_layers": "[0,0]"}, "method_options.prompt_layers"),
    ("norga", {"method.tii_epochs": "-1"}, "method_options.tii_epochs"),
    ("norga", {"method.no_such": "1"}, "method_options"),  # not an option of the method
    ("norga", {"compile": "maybe"}, "compile"),
    ("norga", {"method_options": '{"top_k": 3}'}, "method_options"),  # unknown option
    ("smope", {"method_options.schedule": "step"}, "method_options.schedule"),  # option choice
    ("l2p", {"method_options.top_k": "99"}, "method_options.top_k"),  # range (class check)
    ("l2p", {"method_options.head_type": "gap"}, "method_options.head_type"),  # Literal option
    ("l2p", {"method_options.length": "0"}, "method_options.length"),
    ("dualprompt", {"method_options.e_length": "0"}, "method_options.e_length"),
    ("sprompt", {"method_options.pull_coeff": "-1"}, "method_options.pull_coeff"),
    ("l2p", {"prompt_layers": "[1]"}, "prompt_layers"),  # a field the method does not use
    ("hide", {"gate_act": "gelu"}, "gate_act"),
    ("coda-prompt", {"tii_epochs": "3"}, "tii_epochs"),
]


@pytest.mark.parametrize("method, overrides, field", RESOLVE_CASES,
                         ids=[f"{m}-{next(iter(o))}" for m, o, _ in RESOLVE_CASES])
def test_resolve_errors_name_their_field(method: str, overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("synthetic", method, overrides=overrides)
    assert info.value.field == field
    assert str(info.value) == f"{field}: {info.value.reason}" and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def tiny_run_config() -> CLConfig:
    return resolve_config("synthetic", "hide", quick=True)


@pytest.mark.parametrize("changes, options, stop, field", [
    ({"device": "tpu"}, {}, None, "device"),
    ({"dataset_options": {"bogus": 1}}, {}, None, "dataset_options"),
    ({"dataset_options": {"num_tasks": 0}}, {}, None, "dataset_options"),
    ({}, {}, 99, "stop_after_task"),
    ({}, {"prompt_layers": [99]}, None, "method_options.prompt_layers"),  # the model refuses it
    # more memory than the machine has
    ({}, {"prompt_length": 100_000}, None, "method_options.prompt_length"),
    ({"method": "zz-unknown"}, {}, None, "method"),
])
def test_engine_errors_name_their_field(tiny_run_config: CLConfig, tmp_path: Path, changes,
                                        options, stop, field) -> None:
    cfg = dataclasses.replace(tiny_run_config, **changes, method_options=dataclasses.replace(
        tiny_run_config.method_options, **options))
    with pytest.raises(ConfigError) as info:
        run_experiment(cfg, tmp_path / "run", stop_after_task=stop)
    assert info.value.field == field, str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("raised, field, reason", [
    # a model's ConfigError keeps its field; a ChoiceError names a field only if it is one
    (ConfigError("method_options.e_layers", "[9] is bad"), "method_options.e_layers",
     "[9] is bad"),
    (ChoiceError("precision", "fp8", ("fp32", "bf16")), "precision",
     "must be one of fp32, bf16; got 'fp8'"),
    (ChoiceError("head_kind", "x", ("a",)), "method",
     "the hide model cannot be built with this configuration: head_kind must be one of a; "
     "got 'x'"),
    # plain errors go to "method" whatever their text says: no message is parsed
    (ValueError("prompt_layers: looks like a field"), "method",
     "the hide model cannot be built with this configuration: prompt_layers: looks like a "
     "field"),
    (IndexError(), "method", "the hide model cannot be built with this configuration: "
                             "IndexError"),
])
def test_model_errors_map_to_fields_by_type_not_text(tiny_run_config: CLConfig, monkeypatch,
                                                     raised, field, reason) -> None:
    from cl.run import engine

    def refuse(*args, **kwargs):
        raise raised

    monkeypatch.setattr(engine, "get_method", lambda name: refuse)
    bench = types.SimpleNamespace(num_classes=4, task_classes=[[0, 1], [2, 3]])
    with pytest.raises(ConfigError) as info:
        engine._build_method(tiny_run_config, None, bench, None, None, None)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_resolve_device_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device("tpu")
    assert info.value.field == "device" and "allowed: auto, cpu" in info.value.reason


@pytest.mark.parametrize("error, line", [
    # the field picks the flag; nothing in the message text is read
    (ConfigError("batch_size", "epochs: must be positive"),
     "argument --batch-size: epochs: must be positive"),
    (ConfigError("no_such_key", "unknown config key 'no_such_key'; allowed: a, b"),
     "argument --set no_such_key: unknown config key 'no_such_key'; allowed: a, b"),
    (ConfigError("gate_act", "x"), "argument --gate-act: x"),
    (ConfigError("stop_after_task", "7 is not a task"),
     "argument --stop-after-task: 7 is not a task"),
    # an option of the method: --set method.NAME, or the flag of its own
    (ConfigError("method_options.schedule", "must be one of a, b; got 'c'"),
     "argument --set method.schedule: must be one of a, b; got 'c'"),
    (ConfigError("method_options.gate_act", "x"), "argument --gate-act: x"),
    # a key of dataset_options: the flag sets the whole field, the text keeps the key
    (ConfigError("dataset_options.split", "x"),
     "argument --set dataset_options: dataset_options.split: x"),
    (ConfigError("method_options", "top_k=9 must be in [1, 3]"),
     "argument --set method_options: top_k=9 must be in [1, 3]"),
])
def test_cli_maps_the_field_to_its_flag(error: ConfigError, line: str) -> None:
    assert cli._config_error(error) == line


def test_cli_reads_the_attribute_not_the_message() -> None:
    error = ConfigError("batch_size", "must be positive, got 0")
    error.args = ("epochs: the text names another field",)  # what str(error) shows
    assert str(error).startswith("epochs:")
    assert cli._config_error(error) == "argument --batch-size: must be positive, got 0"


def test_cli_line_for_a_bad_choice(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--dataset", "synthetic", "--quick", "--set", "scheduler=linear"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err == ("cl.py: error: argument --set scheduler: must be one of constant, step, "
                   "cosine; got 'linear'\n")  # named as it was given
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "synthetic", "--quick", "--set", "method.scheduler=linear"])
    assert capsys.readouterr().err.startswith("cl.py: error: argument --set method.scheduler: ")


def test_errors_survive_pickling() -> None:
    for error in (ConfigError("method_options.top_k", "must be >= 1"),
                  ChoiceError("gate", "cubic", ("linear", "norga"))):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert vars(copy) == vars(error)


# ---------------------------------------------------------------- the one choice checker
def test_check_choice_returns_the_value_or_names_what_is_allowed() -> None:
    assert check_choice("gate", "norga", ("linear", "norga")) == "norga"
    assert check_choice("size", 3, (2, 3)) == 3
    with pytest.raises(ChoiceError) as info:
        check_choice("gate", "cubic", ("linear", "norga"))
    assert str(info.value) == "gate must be one of linear, norga; got 'cubic'"
    assert (info.value.name, info.value.value, info.value.allowed) == (
        "gate", "cubic", ("linear", "norga"))
    assert isinstance(info.value, ValueError)
    with pytest.raises(ChoiceError, match=r"^flag must be one of False, True; got 1$"):
        check_choice("flag", 1, (False, True))  # 1 == True, but a number is not a boolean
    with pytest.raises(ChoiceError, match=r"^size must be one of 2, 3; got True$"):
        check_choice("size", True, (2, 3))
    assert check_choice("x", "a", iter(["a", "b"])) == "a"  # any iterable of allowed values


@pytest.mark.parametrize("call, name", [
    ("moe_theory.gates.Gate('cubic')", "gate"),
    ("moe_theory.rates.config.RateConfig(settings=('huge',))", "setting"),
    ("cl.models.gating.prefix_gate(torch.zeros(1), 'norga', 'relu')", "activation"),
    ("cl.run.precision.autocast('cpu', 'fp16').__enter__()", "precision"),
    ("cl.stats.gaussian.GaussianClassStats(3, 'full')", "stats method"),
    ("cl.data.transforms.build_transforms('weird', image_size=8)", "kind"),
    ("cl.data.registry.build_benchmark('imagenet99')", "dataset"),
    ("cl.methods.get_method('magic')", "method"),
])
def test_each_package_checks_choices_with_the_one_checker(call: str, name: str) -> None:
    import torch  # noqa: F401

    import cl.data.registry  # noqa: F401 - the modules the calls name
    import cl.data.transforms  # noqa: F401
    import cl.models.gating  # noqa: F401
    import cl.run.precision  # noqa: F401
    import cl.stats.gaussian  # noqa: F401
    import moe_theory.gates  # noqa: F401
    import moe_theory.rates.config  # noqa: F401

    with pytest.raises(ChoiceError) as info:
        eval(call)
    assert info.value.name == name and str(info.value).startswith(f"{name} must be one of ")


def test_no_other_choice_helper_is_left() -> None:
    import moe_theory.gates
    from cl.data import transforms
    from cl.models import gating

    assert getattr(moe_theory.gates, "check_choice", check_choice) is check_choice
    assert not hasattr(transforms, "_check_choice")
    assert not hasattr(gating, "check_gate") and not hasattr(gating, "check_activation")


# ---------------------------------------------------------------- Literal field types
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(hint) for name, hint in hints.items()
            if typing.get_origin(hint) is typing.Literal}


def test_literal_types_list_what_the_registries_hold() -> None:
    fields = _literal_fields(CLConfig)
    assert set(fields["dataset"]) == set(builtin_datasets())
    assert set(fields["backbone"]) == set(BACKBONES)
    # the method names are the registry's own: no list in the config to keep up to date
    assert "method" not in fields
    method_flag = next(a for a in cli.build_parser()._actions if a.dest == "method")
    assert list(method_flag.choices) == available_methods()


def _options_classes() -> list[type]:
    return [CLConfig] + [get_method(m).options_type for m in available_methods()]


def test_every_other_literal_field_is_checked_against_its_values() -> None:
    """Each value of a Literal field (of the run or of a method's options) passes validate();
    anything else is refused, naming the field. (dataset and backbone are checked by their
    registries when the run is built.)"""
    seen: set[str] = set()
    for cls in _options_classes():
        fields = {k: v for k, v in _literal_fields(cls).items() if k not in ("dataset", "backbone")}
        seen |= set(fields)
        prefix = "" if cls is CLConfig else "method_options."
        for name, values in fields.items():
            for value in values:
                dataclasses.replace(cls(), **{name: value}).validate()
            with pytest.raises(ConfigError) as info:
                dataclasses.replace(cls(), **{name: "zz-not-a-value"}).validate()
            assert info.value.field == prefix + name
            assert info.value.reason == (f"must be one of {', '.join(values)}; "
                                         "got 'zz-not-a-value'")
    assert {"gate_act", "attention", "precision", "protocol", "recipe", "scheduler",
            "tii_scheduler", "stats_method", "keep_checkpoints", "head_type",
            "schedule"} <= seen


def test_literal_option_types_match_the_models_values() -> None:
    from cl.methods.coda_prompt import SCHEDULES as CODA
    from cl.methods.l2p import L2POptions
    from cl.methods.smope import SCHEDULES as SMOPE
    from cl.models.gating import ACTIVATIONS
    from cl.models.prompt_pools import HEAD_TYPES
    from cl.stats.gaussian import STATS_METHODS

    hints = {**_literal_fields(get_method("norga").options_type), **_literal_fields(L2POptions)}
    assert hints["head_type"] == HEAD_TYPES and hints["gate_act"] == ACTIVATIONS
    assert hints["stats_method"] == STATS_METHODS
    assert _literal_fields(get_method("coda-prompt").options_type)["schedule"] == CODA
    assert _literal_fields(get_method("smope").options_type)["schedule"] == SMOPE
