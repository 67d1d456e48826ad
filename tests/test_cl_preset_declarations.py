"""One preset mechanism: every method class declares its presets, :func:`resolve_config` is the
only place that layers them, and importing the method modules changes no shared table."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cl.config import DATASET_PRESETS, RUN_FIELDS, method_presets, method_recipes, resolve_config
from cl.methods import available_methods, base, get_method
from cl.methods.dualprompt import DualPrompt
from cl.options import MethodOptions
from cl.presets import PAPER_BACKBONES

ROOT = Path(__file__).resolve().parents[1]
METHOD_FILES = sorted((ROOT / "cl" / "methods").glob("*.py"))


def _expected(layer: dict) -> dict:
    """The plain fields a preset layer sets (``*_options`` are merged, checked key by key)."""
    return {k: v for k, v in layer.items() if not k.endswith("_options")}


def _value(cfg, name: str):
    """A run field, or else an option of the method (a preset may set either by name)."""
    return getattr(cfg, name) if name in RUN_FIELDS else getattr(cfg.method_options, name)


@pytest.mark.parametrize("method", available_methods())
def test_every_method_declares_its_presets_on_its_class(method: str) -> None:
    cls = get_method(method)
    assert "presets" in vars(cls), f"{cls.__name__} declares no presets of its own"
    assert method_presets(method) is vars(cls)["presets"]
    for key in vars(cls)["presets"]:  # "*", a dataset, or a (dataset, backbone) pair
        dataset = key[0] if isinstance(key, tuple) else key
        assert key == "*" or dataset in DATASET_PRESETS, (method, key)
        if isinstance(key, tuple):
            assert key[1] in PAPER_BACKBONES, (method, key)


@pytest.mark.parametrize("method", available_methods())
def test_the_resolver_applies_each_declared_layer(method: str) -> None:
    """Each value a class declares is the resolved value, unless a later layer of the same
    class sets that field too (``*`` < dataset < (dataset, backbone))."""
    table = method_presets(method)
    for key, layer in table.items():
        if key == "*":
            targets = [(d, "sup21k", [table.get(d, {}), table.get((d, "sup21k"), {})])
                       for d in DATASET_PRESETS]
        elif isinstance(key, tuple):
            targets = [(key[0], key[1], [])]
        else:
            targets = [(key, "sup21k", [table.get((key, "sup21k"), {})])]
        for dataset, backbone, later in targets:
            cfg = resolve_config(dataset, method, backbone)
            for name, value in _expected(layer).items():
                if not any(name in other for other in later):
                    assert _value(cfg, name) == value, (method, key, dataset, name)
            for name, value in layer.get("method_options", {}).items():
                if not any(name in other.get("method_options", {}) for other in later):
                    assert getattr(cfg.method_options, name) == value, (method, key, name)


def test_recipes_are_declared_by_the_class_and_not_inherited() -> None:
    """DualPrompt declares the original-port recipe; S-Prompt++ (its subclass) declares only
    its own (hide-paper) and does not inherit DualPrompt's; NoRGa does not inherit HiDe's."""
    assert set(method_recipes("dualprompt")) == {"original-port"}
    assert set(method_recipes("sprompt")) == {"hide-paper"}
    assert set(method_recipes("hide")) == {"hide-paper"}
    assert get_method("norga").recipe_presets is get_method("hide").recipe_presets  # inherited..
    assert method_recipes("norga") == {}  # ...but not resolved
    port = resolve_config("cifar100", "dualprompt", "sup21k", overrides={"recipe": "original-port"})
    layer = DualPrompt.recipe_presets["original-port"]["cifar100"]
    assert (port.epochs, port.lr, port.batch_size) == (layer["epochs"], layer["lr"], 24)


def test_a_new_class_brings_its_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class ProbeOptions(MethodOptions):
        width: int = 1

    class Probe(base.Method):
        options_type = ProbeOptions
        presets = {"*": dict(epochs=3, method_options=dict(width=2)),
                   "cifar100": dict(epochs=4),
                   ("cifar100", "dino1k"): dict(lr=0.125)}

    monkeypatch.setitem(base._METHODS, "zz-probe", Probe)
    digits = resolve_config("digits", "zz-probe")
    assert (digits.epochs, digits.method_options) == (3, ProbeOptions(width=2))
    assert resolve_config("cifar100", "zz-probe", "sup21k").epochs == 4
    dino = resolve_config("cifar100", "zz-probe", "dino1k")
    assert (dino.epochs, dino.lr) == (4, 0.125)
    # explicit overrides still win over every preset layer
    assert resolve_config("cifar100", "zz-probe", "dino1k", overrides={"lr": "0.5"}).lr == 0.5


def _module_level_mutations(path: Path) -> list[str]:
    """Module-level statements that call something or assign into another object."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            found.append(f"{path.name}:{node.lineno} call")
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Attribute | ast.Subscript):
                found.append(f"{path.name}:{node.lineno} assigns {ast.unparse(target)}")
    return found


def test_method_modules_declare_and_do_not_register() -> None:
    """No method module calls a registration function or writes into another module's table at
    import (the ``@register_method`` decorator is the only registration)."""
    assert METHOD_FILES
    found = [m for path in METHOD_FILES if path.name != "__init__.py"
             for m in _module_level_mutations(path)]
    assert not found, found


@pytest.mark.slow  # starts a Python process
def test_importing_the_methods_changes_no_table_of_the_resolver() -> None:
    """In a fresh interpreter: the module-level containers of the modules below the methods
    (cl.presets, cl.options) are the same before and after every method module is imported
    (cl.config imports the methods; its own tables are literals in its source)."""
    script = (
        "import json, sys\n"
        "import cl.options, cl.presets\n"
        "assert 'cl.methods' not in sys.modules, 'the config records import the methods'\n"
        "def tables():\n"
        "    return {f'{m.__name__}.{k}': repr(v) for m in (cl.options, cl.presets)\n"
        "            for k, v in vars(m).items() if isinstance(v, (dict, list, set, tuple))}\n"
        "before = tables()\n"
        "import cl.methods, cl.config\n"
        "print(json.dumps([before, tables()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    before, after = json.loads(done.stdout)
    assert before == after
    assert "cl.options.RUN_FIELDS" in before and "cl.presets.PAPER_BACKBONES" in before
