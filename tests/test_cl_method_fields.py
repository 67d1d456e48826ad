"""Config fields a method does not read: refused when set explicitly to a value other than the
preset's (they would be silently ignored), and each method's declaration of what it reads
(``Method.config_fields``) matches its source."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from cl.config import METHOD_SPECIFIC_FIELDS, method_uses, resolve_config
from cl.methods import available_methods, get_method
from cl.methods.base import Method

# Fields a class's source mentions without using them: HiDe passes gate_act to the prefix
# attention, whose linear gate ignores it, and gates training on gate == "norga"
# (test_hide_ignores_the_norga_gate_fields checks that).
MENTIONED_NOT_USED = {"hide": {"gate_act", "gate_trainable_after_first_task"}}


def _fields_read(cls: type) -> set[str]:
    """The METHOD_SPECIFIC_FIELDS read as ``config.X`` / ``cfg.X`` anywhere in the classes (and
    their modules' helpers) that ``cls`` is made of."""
    found: set[str] = set()
    for klass in cls.__mro__:
        if klass is Method or not klass.__module__.startswith("cl.methods"):
            continue
        source = inspect.getsource(inspect.getmodule(klass))
        found |= set(re.findall(r"\b(?:config|cfg)\.(\w+)", source))
    return found & set(METHOD_SPECIFIC_FIELDS)


@pytest.mark.parametrize("method", available_methods())
def test_declared_fields_cover_what_the_source_reads(method):
    cls = get_method(method)
    assert cls.config_fields is not None, f"{method}: declare config_fields"
    assert cls.config_fields <= set(METHOD_SPECIFIC_FIELDS)
    missed = _fields_read(cls) - cls.config_fields - MENTIONED_NOT_USED.get(method, set())
    assert not missed, f"{method} reads {sorted(missed)} but does not declare them"


def test_hide_ignores_the_norga_gate_fields():
    from cl.models.gating import prefix_gate, prefix_gate_residual

    scores = torch.randn(2, 3)
    for act in ("tanh", "sigmoid", "gelu"):
        assert prefix_gate_residual(scores, "linear", act, 2.0, 3.0) is None
        assert torch.equal(prefix_gate(scores, "linear", act, 2.0, 3.0), scores)


@pytest.mark.parametrize("method, key, value", [
    ("l2p", "prompt_layers", [99]), ("dualprompt", "prompt_length", 7),
    ("sprompt", "tii_mlp", [3]), ("coda-prompt", "scheduler", "cosine"),
    ("smope", "reg", 0.5), ("hide", "gate_act", "gelu"), ("l2p", "attention", "reference"),
])
def test_an_unused_field_set_explicitly_is_refused_in_one_line(method, key, value):
    with pytest.raises(ValueError) as info:
        resolve_config("synthetic", method, overrides={key: value})
    message = str(info.value)
    assert message.startswith(f"{key}: ") and f"not used by method {method}" in message
    assert "\n" not in message and "allowed: leave it at" in message
    users = [m for m in available_methods() if method_uses(m, key)]
    assert users and method not in users and message.endswith(", ".join(users))


def test_preset_values_and_used_fields_are_accepted():
    # the value the presets give is no change: accepted (e.g. a sweep script passing defaults)
    base = resolve_config("synthetic", "l2p")
    same = resolve_config("synthetic", "l2p", overrides={"prompt_layers": base.prompt_layers,
                                                         "tii_epochs": str(base.tii_epochs)})
    assert same == base
    # fields the method reads are set as usual, also from CLI strings
    assert resolve_config("synthetic", "norga", overrides={"prompt_layers": "[1, 2]"}) \
        .prompt_layers == [1, 2]
    assert resolve_config("synthetic", "l2p", overrides={"scheduler": "cosine"}).scheduler == \
        "cosine"
    # every method reads the shared fields
    assert all(method_uses(m, "epochs") for m in available_methods())
    assert method_uses("not-registered", "prompt_layers")  # left to the engine


def test_dotted_method_options_are_left_to_the_method():
    cfg = resolve_config("synthetic", "dualprompt",
                         overrides={"method_options.match_all_keys": "true"})
    assert cfg.method_options["match_all_keys"] is True


def test_allow_unused_accepts_an_ignored_field():
    cfg = resolve_config("synthetic", "l2p", overrides={"tii_epochs": 1}, allow_unused=True)
    assert cfg.tii_epochs == 1  # recorded in config.json, read by no part of L2P
