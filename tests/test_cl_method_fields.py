"""What a method reads: run fields from the config, its own settings from its typed options
(checked against the source), and an explicit value of a field the method does not have is
refused in one line that names the methods that have it."""

from __future__ import annotations

import inspect
import re

import pytest

from cl.config import RUN_FIELDS, method_uses, methods_with_option, resolve_config
from cl.methods import available_methods, get_method
from cl.methods.base import Method


def _sources(cls: type) -> list[str]:
    """The source of the modules of the classes ``cls`` is made of (its own and its bases')."""
    return [inspect.getsource(inspect.getmodule(klass)) for klass in cls.__mro__
            if klass is not Method and klass.__module__.startswith("cl.methods")]


@pytest.mark.parametrize("method", available_methods())
def test_a_method_reads_run_fields_from_the_config(method):
    read = {name for text in _sources(get_method(method))
            for name in re.findall(r"\b(?:config|cfg)\.(\w+)", text)}
    assert read, method
    assert read <= set(RUN_FIELDS), f"{method} reads {sorted(read - set(RUN_FIELDS))} from the " \
        "config: a method's own setting belongs to its options class"


@pytest.mark.parametrize("method", available_methods())
def test_a_method_reads_only_its_declared_options(method):
    cls = get_method(method)
    read = {name for text in _sources(cls)
            for name in re.findall(r"\b(?:self\.options|opts|o)\.(\w+)\b(?!\()", text)}
    declared = set(cls.options_type.field_names())
    assert read, method
    assert read <= declared, f"{method} reads {sorted(read - declared)}, not in " \
        f"{cls.options_type.__name__}"


@pytest.mark.parametrize("method, key, value", [
    ("l2p", "prompt_layers", [99]), ("dualprompt", "prompt_length", 7),
    ("sprompt", "tii_mlp", [3]), ("coda-prompt", "scheduler", "cosine"),
    ("smope", "reg", 0.5), ("hide", "gate_act", "gelu"), ("l2p", "attention", "reference"),
])
def test_a_field_the_method_lacks_set_explicitly_is_refused_in_one_line(method, key, value):
    with pytest.raises(ValueError) as info:
        resolve_config("synthetic", method, overrides={key: value})
    message = str(info.value)
    assert message.startswith(f"{key}: ") and f"not used by method {method}" in message
    assert "\n" not in message
    users = methods_with_option(key)
    assert users and method not in users and message.endswith(", ".join(users))
    for name in get_method(method).options_type.field_names():  # what it does have
        assert name in message


def test_fields_the_method_has_are_set_as_usual():
    assert resolve_config("synthetic", "norga", overrides={"prompt_layers": "[1, 2]"}) \
        .method_options.prompt_layers == [1, 2]
    assert resolve_config("synthetic", "l2p", overrides={"scheduler": "cosine"}) \
        .method_options.scheduler == "cosine"
    assert all(method_uses(m, "epochs") for m in available_methods())  # a run field
    assert method_uses("not-registered", "prompt_layers")  # left to the engine
    assert not method_uses("l2p", "tii_epochs") and method_uses("hide", "tii_epochs")


def test_dotted_method_options_are_left_to_the_method():
    cfg = resolve_config("synthetic", "dualprompt",
                         overrides={"method_options.match_all_keys": "true"})
    assert cfg.method_options.match_all_keys is True


def test_allow_unused_drops_a_field_the_method_lacks():
    base = resolve_config("synthetic", "l2p")
    cfg = resolve_config("synthetic", "l2p", overrides={"tii_epochs": 1, "method.tap_epochs": 2},
                         allow_unused=True)
    assert cfg == base  # nothing recorded: L2P has no TII model and no head alignment
    with pytest.raises(ValueError, match="unknown config key 'no_such'"):  # a typo still fails
        resolve_config("synthetic", "l2p", overrides={"no_such": 1}, allow_unused=True)
