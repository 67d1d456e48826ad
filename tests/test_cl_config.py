"""Preset layering and validation of the run configuration."""

from __future__ import annotations

import pytest

from cl.config import resolve_config


def test_presets_layer_in_order() -> None:
    norga = resolve_config("cifar100", "norga", "sup21k")
    hide = resolve_config("cifar100", "hide", "sup21k")
    assert (norga.epochs, norga.prompt_length, norga.reg) == (50, 5, 0.1)  # dataset preset
    assert (norga.gate_act, norga.tap_epochs, norga.ca_lr) == ("sigmoid", 80, 0.05)  # method
    assert (hide.tap_epochs, hide.ca_lr) == (30, 0.005)
    assert resolve_config("cifar100", "norga", "mocov3-1k").gate_act == "gelu"  # backbone
    imr = resolve_config("imagenet-r", "norga", "sup21k")
    assert (imr.epochs, imr.scheduler, imr.prompt_length, imr.reg) == (150, "cosine", 20, 0.5)
    five = resolve_config("5datasets", "norga", "sup21k")
    assert (five.tii_mlp, five.clip_grad, five.prompt_length) == ([4, 4], 2.0, 40)
    assert not five.batchwise_prompt  # per-sample prompts by default (no test-time leakage)
    cli = resolve_config("cifar100", "norga", "sup21k", overrides={"gate_act": "tanh",
                                                                  "tap_epochs": "12"})
    assert (cli.gate_act, cli.tap_epochs) == ("tanh", 12)  # CLI wins, strings coerced


def test_quick_and_dataset_options_merge() -> None:
    cfg = resolve_config("synthetic", "norga", quick=True,
                         overrides={"dataset_options": '{"num_tasks": 2}'})
    assert cfg.quick and cfg.dataset_options["num_tasks"] == 2
    assert "train_per_class" in cfg.dataset_options  # quick preset kept


@pytest.mark.parametrize("key,value,match", [
    ("gate_act", "relu", "gate_act"),
    ("scheduler", "linear", "scheduler"),
    ("batch_size", "0", "batch_size"),
    ("prompt_momentum", "1.5", "prompt_momentum"),
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
        assert set(cfg.method_options) <= set(cls.option_defaults), method  # presets are valid
        assert cls.resolve_options({}) == cls.option_defaults
        with pytest.raises(ValueError) as info:
            resolve_config("synthetic", method, overrides={"method_options": '{"no_such": 1}'})
        message = str(info.value)
        assert message.startswith("method_options") and "\n" not in message, message
        assert "no_such" in message and "allowed: " in message, message
        for name in cls.option_defaults:
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
        assert cls.resolve_options({"schedule": value})["schedule"] == value
