"""The import graph of the project's packages, read from the source with :mod:`ast`.

Nodes are the modules of the packages (``pkg/a/b.py`` is ``pkg.a.b``, ``pkg/a/__init__.py`` is
``pkg.a``). There is an edge ``A -> B`` for every import statement in ``A`` that loads ``B``,
wherever it stands: module level, class body, function body (a lazy import, kind
``"function"``) and under ``if TYPE_CHECKING:`` (never executed, but a dependency of the design
all the same, kind ``"type-only"``). ``from P import x`` loads ``P.x`` when that is a module,
else ``P``; relative imports are resolved. The parent packages that Python initialises first
are not edges: a package ``__init__`` that re-exports its submodules is not a cycle, but a
submodule that takes names from its own package's ``__init__`` is.

Dynamic imports (``importlib.import_module``, ``__import__``) are not statements; each module
that makes them must say which modules they load (``dynamic=`` of :func:`import_graph`),
otherwise :class:`UnmodelledDynamicImport` is raised.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# module -> (the modules that module can load dynamically, given the list of all modules)
DynamicImports = dict[str, Callable[[list[str]], Iterable[str]]]


class UnmodelledDynamicImport(AssertionError):
    """A module imports by name at run time and the graph was not told what it loads."""


@dataclass(frozen=True)
class Edge:
    """``source`` loads ``target``; ``line`` of the statement, ``kind`` how."""

    source: str
    target: str
    line: int
    kind: str  # "module", "function" (inside a def/class), "type-only" or "dynamic"


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """``module name -> file`` for every ``.py`` file of ``packages`` under ``root``."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.Module) -> Iterator[tuple[ast.stmt | ast.expr, str]]:
    """Every import statement and call, with where it sits: ``"module"``, ``"function"``
    (inside a def or class) or ``"type-only"`` (the body of ``if TYPE_CHECKING:``; its ``else``
    is where it would be without the ``if``)."""

    def walk(node: ast.AST, where: str) -> Iterator[tuple[ast.stmt | ast.expr, str]]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from walk(child, "type-only")
            for child in node.orelse:
                yield from walk(child, where)
            return
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            yield node, where
        inner = "function" if where == "module" and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda) else where
        for child in ast.iter_child_nodes(node):
            yield from walk(child, inner)

    yield from walk(tree, "module")


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def import_graph(
    root: Path, packages: Iterable[str], dynamic: DynamicImports | None = None
) -> tuple[dict[str, list[Edge]], list[str]]:
    """The edges out of every module of ``packages``, and the imported names outside them.

    Returns
    -------
    graph:
        ``module -> edges`` to modules of ``packages`` (every module is a key).
    external:
        ``"module -> name"`` for each import of a top-level name that is not one of the
        project's modules (``numpy``, ``torch``, ...), for the cross-package rules.
    """
    dynamic = dynamic or {}
    modules = find_modules(root, packages)
    names = sorted(modules)
    graph: dict[str, list[Edge]] = {}
    external: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: list[Edge] = []

        loads: list[tuple[str, int, str]] = []  # (imported name, line, where)
        for node, where in _statements(tree):
            if isinstance(node, ast.Import):
                loads.extend((alias.name, node.lineno, where) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    package = ".".join(base + ([node.module] if node.module else []))
                else:
                    package = node.module or ""
                for alias in node.names:
                    sub = f"{package}.{alias.name}"
                    loads.append((sub if sub in modules else package, node.lineno, where))
            elif isinstance(node, ast.Call) and _is_dynamic_import(node):
                if name not in dynamic:
                    raise UnmodelledDynamicImport(
                        f"{path}:{node.lineno}: {name} imports modules by name at run time; "
                        "say which in the dynamic= table of the import-graph test"
                    )
        for target, line, where in loads:
            module = _project_module(target, modules)
            if module is None:
                external.append(f"{name} -> {target}")
            else:
                edges.append(Edge(name, module, line, where))
        for target in dynamic.get(name, lambda _: ())(names):
            if target not in modules:
                raise UnmodelledDynamicImport(f"{name} is said to load {target}, not a module")
            edges.append(Edge(name, target, 0, "dynamic"))
        graph[name] = edges
    return graph, external


def _project_module(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted name ``target`` that is one of ``modules``."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph[v]:
            w = edge.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or any(e.target == v for e in graph[v]):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe_cycle(graph: dict[str, list[Edge]], component: list[str]) -> str:
    """The edges inside one strongly connected component, one per line, with line numbers."""
    inside = set(component)
    lines = dict.fromkeys(f"  {e.source}:{e.line} -> {e.target} ({e.kind})"
                          for v in component for e in graph[v] if e.target in inside)
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(lines)
