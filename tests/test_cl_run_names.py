"""Default run directory names: one folder per configuration, seeds side by side."""

from __future__ import annotations

import dataclasses
import re

from cl.cli import default_run_dir
from cl.config import resolve_config
from norga.digest import config_digest


def _name(**changes) -> str:
    cfg = dataclasses.replace(resolve_config("synthetic", "hide", quick=True), **changes)
    return default_run_dir(cfg.to_dict())


def test_name_has_the_digest_and_the_seed():
    cfg = resolve_config("synthetic", "hide", quick=True)
    name = default_run_dir(cfg.to_dict())
    assert name == (f"runs/synthetic-hide-vit-tiny-random-{config_digest(cfg.to_dict())}-s42")
    assert re.fullmatch(r"runs/synthetic-hide-vit-tiny-random-[0-9a-f]{8}-s42", name)


def test_any_non_seed_field_changes_the_name_runtime_fields_do_not():
    base = _name()
    for change in ({"lr": 0.1}, {"epochs": 2}, {"legacy_drop_last": True},
                   {"method_options": {"x": 1}}, {"precision": "bf16"}):
        assert _name(**change) != base, change
    assert _name(seed=7).replace("-s7", "-s42") == base
    for change in ({"device": "cuda"}, {"num_workers": 4}, {"keep_checkpoints": "all"},
                   {"data_root": "/data"}, {"compile": True}):
        assert _name(**change) == base, change


def test_official_protocol_and_hub_backbones_give_plain_folder_names():
    assert _name(protocol="official").endswith("-s42-official")
    name = _name(backbone="hf_hub:timm/vit_base_patch16_224.augreg_in21k")
    assert "/" not in name.removeprefix("runs/") and ":" not in name
