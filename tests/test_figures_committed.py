"""The committed documentation images are the ones the docs quote: the numbers printed in
each image's legends (recorded in docs/img/legends.json when the image was rendered, together
with the image's SHA-256) equal the documentation's tables, and every thumbnail has at least
150 dpi."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
RECORD = json.loads((IMG / "legends.json").read_text())


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text.replace("\u2212", "-"))]


def _png_dpi(path: Path) -> float:
    """Horizontal resolution from the PNG's pHYs chunk (pixels per metre -> dpi)."""
    data = path.read_bytes()
    at = data.find(b"pHYs")
    assert at > 0, f"{path.name} has no resolution chunk"
    ppm_x, _, unit = struct.unpack(">IIB", data[at + 4:at + 13])
    assert unit == 1  # metre
    return ppm_x * 0.0254


@pytest.mark.parametrize("name", sorted(RECORD))
def test_record_describes_the_committed_image(name: str) -> None:
    """The legend record belongs to these bytes: re-rendering one without the other fails."""
    png = IMG / f"{name}.png"
    assert hashlib.sha256(png.read_bytes()).hexdigest() == RECORD[name]["png_sha256"], name


@pytest.mark.parametrize("png", sorted(p.name for p in IMG.glob("*.png")))
def test_thumbnails_have_at_least_150_dpi(png: str) -> None:
    assert _png_dpi(IMG / png) >= 149.9


def _theory_table_row(preset: str, gate: str) -> list[str]:
    """The cells of the docs/theory.md results table for (preset, gate)."""
    for line in (ROOT / "docs" / "theory.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[0] == preset and cells[1] == gate:
            return cells
    raise AssertionError(f"no row {preset} / {gate} in docs/theory.md")


def test_convergence_legend_equals_the_theory_table() -> None:
    """docs/img/convergence.png is E1 of the paper preset: its legends' L_1 and L2 slopes with
    their CIs are the 'paper' rows of the table in docs/theory.md."""
    legends = RECORD["convergence"]["legends"]
    gate_legends = [leg for leg in legends if any(t.startswith("Linear:") for t in leg)]
    assert len(gate_legends) == 2  # panel (a) L_1, panel (b) L2
    for gate, name in (("linear", "Linear"), ("NoRGa (tanh)", "NoRGa (tanh)")):
        row = _theory_table_row("paper", gate)
        l1, l2 = (_numbers(next(t for t in leg if t.startswith(name + ":")))
                  for leg in gate_legends)
        assert l1 == _numbers(row[2]), (gate, l1, row[2])
        assert l2 == _numbers(row[3]), (gate, l2, row[3])
    assert RECORD["convergence"]["synthetic"] is False
