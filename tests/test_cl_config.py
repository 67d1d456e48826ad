"""Preset layering and validation of the run configuration."""

from __future__ import annotations

import pytest

from cl.config import resolve_config


def test_presets_layer_in_order() -> None:
    norga = resolve_config("cifar100", "norga", "sup21k")
    hide = resolve_config("cifar100", "hide", "sup21k")
    n, h = norga.method_options, hide.method_options
    assert (norga.epochs, n.prompt_length, n.reg) == (50, 5, 0.1)  # dataset preset
    assert (n.gate_act, n.tap_epochs, n.ca_lr) == ("sigmoid", 80, 0.05)  # method
    assert (h.tap_epochs, h.ca_lr) == (30, 0.005)
    assert resolve_config("cifar100", "norga", "mocov3-1k").method_options.gate_act == "gelu"
    imr = resolve_config("imagenet-r", "norga", "sup21k")
    o = imr.method_options
    assert (imr.epochs, o.scheduler, o.prompt_length, o.reg) == (150, "cosine", 20, 0.5)
    five = resolve_config("5datasets", "norga", "sup21k")
    o = five.method_options
    assert (o.tii_mlp, five.clip_grad, o.prompt_length) == ([4, 4], 2.0, 40)
    assert not o.batchwise_prompt  # per-sample prompts by default (no test-time leakage)
    cli = resolve_config("cifar100", "norga", "sup21k", overrides={"gate_act": "tanh",
                                                                  "tap_epochs": "12"})
    assert (cli.method_options.gate_act, cli.method_options.tap_epochs) == ("tanh", 12)


@pytest.mark.parametrize("spelling", ["tap_epochs", "method.tap_epochs",
                                      "method_options.tap_epochs"])
def test_the_three_spellings_of_an_option_set_the_same_field(spelling: str) -> None:
    cfg = resolve_config("cifar100", "norga", "sup21k", overrides={spelling: "12"})
    assert cfg.method_options.tap_epochs == 12  # a CLI string, converted to the field's type
    whole = resolve_config("cifar100", "norga", "sup21k",
                           overrides={"method_options": {"tap_epochs": 12}})
    assert cfg == whole


def test_sources_name_the_layer_each_value_comes_from() -> None:
    from cl.config import resolve_layers

    resolved = resolve_layers("cifar100", "norga", "mocov3-1k", explicit=[
        ("file", {"lr": 0.01, "method.reg": 0.2}), ("flag", {"lr": "0.02"})])
    where = resolved.sources
    assert resolved.config.lr == 0.02 and where["lr"] == "flag"  # the flag wins over the file
    assert resolved.config.method_options.reg == 0.2 and where["method_options.reg"] == "file"
    assert where["method_options.gate_act"] == "preset"  # (cifar100, mocov3-1k): gelu
    assert where["method_options.tii_clip_grad"] == "default" and where["seed"] == "default"
    assert where["epochs"] == "preset"  # the backbone's 20 epochs over the dataset's 50
    quick = resolve_layers("synthetic", "hide", explicit=[("flag", {"quick": True})]).sources
    assert quick["epochs"] == quick["dataset_options.train_per_class"] == "quick"
    official = resolve_layers("synthetic", "hide", explicit=[("file", {"protocol": "official"})])
    assert official.sources["method_options.legacy_kv_reshape"] == "protocol"
    assert official.config.method_options.legacy_kv_reshape is True
    keys = {f"method_options.{n}" for n in official.config.method_options.to_dict()}
    assert keys <= set(official.sources)  # every option has a source


def test_run_fields_and_options_are_apart() -> None:
    """CLConfig holds the run; what only some methods read is in their options classes."""
    from cl.config import RUN_FIELDS, CLConfig
    from cl.methods import available_methods, get_method

    assert "tii_epochs" not in RUN_FIELDS and "prompt_length" not in RUN_FIELDS
    assert len(RUN_FIELDS) < 30
    for method in available_methods():
        names = set(get_method(method).options_type.field_names())
        assert not names & set(RUN_FIELDS), method
    assert CLConfig().method_options.to_dict() == {}  # the base options: none


def test_quick_and_dataset_options_merge() -> None:
    cfg = resolve_config("synthetic", "norga", quick=True,
                         overrides={"dataset_options": '{"num_tasks": 2}'})
    assert cfg.quick and cfg.dataset_options["num_tasks"] == 2
    assert "train_per_class" in cfg.dataset_options  # quick preset kept


@pytest.mark.parametrize("key,value,match", [
    ("gate_act", "relu", "method_options.gate_act"),
    ("scheduler", "linear", "method_options.scheduler"),
    ("batch_size", "0", "batch_size"),
    ("prompt_momentum", "1.5", "method_options.prompt_momentum"),
    ("no_such_key", "1", "unknown config key"),
    ("epochs", "three", "epochs"),
])
def test_bad_values_name_the_field(key: str, value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_config("synthetic", "norga", overrides={key: value})


def test_every_method_exposes_its_options_and_refuses_unknown_ones() -> None:
    """method_options are checked when the config is resolved (before a run directory exists),
    against the option names and defaults the method class exposes."""
    import dataclasses

    from cl.config import config_from_dict
    from cl.methods import available_methods, get_method

    for method in available_methods():
        cls = get_method(method)
        cfg = resolve_config("synthetic", method)
        assert type(cfg.method_options) is cls.options_type, method
        assert cls.resolve_options({}) == cls.options_type()
        with pytest.raises(ValueError) as info:
            resolve_config("synthetic", method, overrides={"method_options": '{"no_such": 1}'})
        message = str(info.value)
        assert message.startswith("method_options") and "\n" not in message, message
        assert "no_such" in message and "allowed: " in message, message
        for name in cls.options_type.field_names():
            assert name in message, (method, name)
        with pytest.raises(ValueError, match="no_such"):  # a saved config is checked too
            config_from_dict(dataclasses.replace(cfg, method_options={"no_such": 1}).to_dict())


@pytest.mark.parametrize("method,options,match", [
    ("l2p", {"top_k": 40}, "top_k"),
    ("l2p", {"pull_coeff": -1}, "pull_coeff"),
    ("dualprompt", {"e_length": 0}, "e_length"),
    ("coda-prompt", {"schedule": "linear"}, "schedule"),
    ("smope", {"top_k": 99}, "top_k"),
    ("smope", {"schedule": "step"}, "schedule"),
])
def test_bad_option_values_are_refused_at_resolution(method, options, match) -> None:
    with pytest.raises(ValueError, match=f"method_options.*{match}"):
        resolve_config("synthetic", method, overrides={"method_options": options})


@pytest.mark.parametrize("method, allowed", [("coda-prompt", ("cosine", "constant")),
                                             ("smope", ("coswm", "cosine", "constant"))])
def test_schedule_option_is_checked_against_its_choices(method, allowed):
    from cl.methods import get_method

    cls = get_method(method)
    with pytest.raises(ValueError, match=r"method_options\.schedule: must be one of .*'step'$"):
        cls.resolve_options({"schedule": "step"})
    for value in allowed:
        assert cls.resolve_options({"schedule": value}).schedule == value
