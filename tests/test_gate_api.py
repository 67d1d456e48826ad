"""One rule for the theory gate at the API: a value named ``gate`` (or ``gates``) is a
:class:`~moe_theory.gates.Gate` where the code computes with it and its ``GateKind`` label
where it only names results (config ``gates``, the ``gate`` column, ``rate_fit(setting, gate)``);
never a bare ``str``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from moe_theory.gates import GATES, Gate, GateKind
from moe_theory.near.config import NearConfig
from moe_theory.rates.config import RateConfig

ROOT = Path(__file__).resolve().parents[1]


def gate_annotations(path: Path) -> list[tuple[int, str, str]]:
    """(line, name, annotation) of every parameter and annotated field called gate/gates
    (``varpro``'s ``gate`` arrays of gate parameters included: they are not strings)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.arg) and node.annotation is not None:
            name, annotation, line = node.arg, node.annotation, node.lineno
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation, line = node.target.id, node.annotation, node.lineno
        else:
            continue
        if name in ("gate", "gates"):
            found.append((line, name, ast.unparse(annotation)))
    return found


def test_a_gate_is_a_gate_or_its_label_never_a_bare_string():
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}: {annotation}"
           for path in sorted((ROOT / "moe_theory").rglob("*.py"))
           for line, name, annotation in gate_annotations(path)
           if re.search(r"\bstr\b", annotation)]
    assert not bad, bad


def test_the_scan_sees_a_string_gate(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f(gate: str, gates: tuple[str, ...]) -> None: ...\n"
                    "class C:\n    gate: GateKind\n")
    assert gate_annotations(path) == [(3, "gate", "GateKind"), (1, "gate", "str"),
                                      (1, "gates", "tuple[str, ...]")]


def test_the_label_is_the_kind_of_a_gate():
    assert GATES == ("linear", "norga")
    assert {Gate(kind).kind for kind in GATES} == set(GATES)
    assert RateConfig.__dataclass_fields__["gates"].type == "tuple[GateKind, ...]"
    assert NearConfig.__dataclass_fields__["gates"].type == "tuple[GateKind, ...]"
    assert GateKind.__args__ == GATES  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="gate"):
        RateConfig(gates=("relu",))  # type: ignore[arg-type]
