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
