"""No import cycles in ``moe_theory``, ``cl`` or ``figures`` (function-level and
``TYPE_CHECKING`` imports included), and the packages keep apart: ``moe_theory`` and ``cl``
never import each other, ``figures`` imports neither (it reads their result files)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from import_graph import (
    UnmodelledDynamicImport,
    cycles,
    describe_cycle,
    import_graph,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("moe_theory", "cl", "figures")


def submodules(package: str):
    """The direct submodules of ``package`` (what ``pkgutil.iter_modules(__path__)`` yields)."""
    depth = package.count(".") + 1
    return lambda names: [n for n in names if n.startswith(package + ".") and n.count(".") == depth]


def dataset_modules(_names: list[str]) -> list[str]:
    """The modules ``cl.data.registry`` imports on demand: the module parts of the
    ``"module:function"`` values of ``_BUILTIN``."""
    tree = ast.parse((ROOT / "cl" / "data" / "registry.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "_BUILTIN":
            return [value.split(":")[0] for value in ast.literal_eval(node.value).values()]
    raise AssertionError("cl.data.registry._BUILTIN not found")


# cl.methods imports every method module when it is imported (eager plugins).
EAGER = {"cl.methods": submodules("cl.methods")}
# cl.data.registry imports a dataset's module by name the first time it is built (lazy plugins).
LAZY = {"cl.data.registry": dataset_modules}


def _report(graph, found) -> str:
    return "\n".join(describe_cycle(graph, c) for c in found)


# Cycles known to remain, each to be removed from this list when it is broken (the test fails
# on an entry that is no longer a cycle, so the list only shrinks). None remain.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles():
    # the lazy dataset loader is modelled with its plugin edges (registry -> dataset modules):
    # the dataset modules never import the registry (they only define builder functions that
    # its table names), so the lookup can import them without closing a cycle
    graph, _ = import_graph(ROOT, PACKAGES, {**EAGER, **LAZY})
    found = cycles(graph)
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, _report(graph, new)
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"no longer cycles, remove them from KNOWN_CYCLES: {gone}"
    kinds = {e.kind for edges in graph.values() for e in edges}
    # every kind is modelled (no TYPE_CHECKING import is left in the packages; the unit tests
    # below check that one is read as a "type-only" edge)
    assert {"module", "function", "dynamic"} <= kinds


def test_the_config_and_the_methods_do_not_import_each_other_in_any_way():
    """cl.config resolves through the method registry; the methods take the run's config
    record from cl.options, below both (lazy and type-only imports counted)."""
    graph, _ = import_graph(ROOT, PACKAGES, {**EAGER, **LAZY})
    methods = [m for m in graph if m == "cl.methods" or m.startswith("cl.methods.")]
    back = [f"{e.source}:{e.line} -> {e.target} ({e.kind})" for m in methods for e in graph[m]
            if e.target in ("cl.config", "cl.config_files", "cl.cli")]
    assert not back, back
    below = {e.target for e in graph["cl.options"]}
    assert not {t for t in below if t.startswith(("cl.methods", "cl.config"))}, below
    assert {"cl.data.cifar100", "cl.data.five_datasets"} <= {
        e.target for e in graph["cl.data.registry"]}, "the lazy plugin edges are not modelled"


def test_the_packages_keep_apart():
    graph, external = import_graph(ROOT, PACKAGES, {**EAGER, **LAZY})
    forbidden = {"moe_theory": ("cl",), "cl": ("moe_theory",), "figures": ("moe_theory", "cl")}
    bad = [f"{e.source}:{e.line} -> {e.target}" for edges in graph.values() for e in edges
           if e.target.split(".")[0] in forbidden[e.source.split(".")[0]]]
    assert not bad, bad
    assert not [x for x in external if x.split(" -> ")[1].split(".")[0] in PACKAGES]


# ---------------------------------------------------------------- the graph builder itself


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_a_function_level_import_closes_a_cycle(tmp_path):
    root = _package(tmp_path, {
        "p/__init__.py": "",
        "p/a.py": "from p.b import f\n",
        "p/b.py": "def f():\n    from p import a\n    return a\n",
        "p/c.py": "import p.a\n",
    })
    graph, _ = import_graph(root, ["p"])
    assert cycles(graph) == [["p.a", "p.b"]]
    assert "p.b:2 -> p.a (function)" in describe_cycle(graph, ["p.a", "p.b"])


def test_relative_and_package_imports_resolve(tmp_path):
    root = _package(tmp_path, {
        "p/__init__.py": "from p.sub.x import X\n",  # re-exporting a submodule: no cycle
        "p/sub/__init__.py": "from . import x\n",
        "p/sub/x.py": "from ..y import Y\nX = 1\n",
        "p/y.py": "from p import sub\nY = 2\n",
    })
    graph, _ = import_graph(root, ["p"])
    targets = {v: sorted(e.target for e in edges) for v, edges in graph.items()}
    assert targets == {"p": ["p.sub.x"], "p.sub": ["p.sub.x"], "p.sub.x": ["p.y"],
                       "p.y": ["p.sub"]}
    assert cycles(graph) == [["p.sub", "p.sub.x", "p.y"]]


def test_type_checking_imports_are_edges_and_dynamic_ones_must_be_modelled(tmp_path):
    root = _package(tmp_path, {
        "p/__init__.py": "",
        "p/a.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import B\n"
                   "else:\n    import json\n"),
        "p/b.py": "import importlib\ndef load():\n    importlib.import_module('p.a')\n",
    })
    with pytest.raises(UnmodelledDynamicImport, match=r"b\.py:3"):
        import_graph(root, ["p"])
    graph, external = import_graph(root, ["p"], {"p.b": lambda names: ["p.a"]})
    assert [(e.target, e.line, e.kind) for e in graph["p.a"]] == [("p.b", 3, "type-only")]
    assert [(e.target, e.kind) for e in graph["p.b"]] == [("p.a", "dynamic")]
    assert cycles(graph) == [["p.a", "p.b"]] and "p.a -> json" in external
    assert "p.a:3 -> p.b (type-only)" in describe_cycle(graph, ["p.a", "p.b"])


def test_a_type_checking_import_inside_a_function_is_type_only(tmp_path):
    root = _package(tmp_path, {
        "p/__init__.py": "",
        "p/a.py": ("import typing\ndef f():\n    if typing.TYPE_CHECKING:\n"
                   "        from p import b\n    from p import c\n"),
        "p/b.py": "", "p/c.py": "",
    })
    graph, _ = import_graph(root, ["p"])
    assert sorted((e.target, e.kind) for e in graph["p.a"]) == [("p.b", "type-only"),
                                                                ("p.c", "function")]
