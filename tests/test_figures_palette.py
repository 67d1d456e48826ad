"""The method colours stay apart for colour-blind readers and in greyscale.

Colour vision deficiency is simulated with the published severity-1 matrices of Machado,
Oliveira and Fernandes (2009) on linear RGB; greyscale is the relative luminance. Nine method
colours cannot all differ under every simulation, so every method also has its own marker (what
keeps curves apart in greyscale); the colours of the seven implemented methods must differ under
each simulation, and NoRGa and HiDe-Prompt (the paper's comparison) also in luminance.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from figures.style import METHOD_COLORS, METHOD_MARKERS

SIMULATIONS = {
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                   [-0.003882, -0.048116, 1.051998]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                   [0.004733, 0.691367, 0.303900]],
}
IMPLEMENTED = ("norga", "hide", "l2p", "dualprompt", "sprompt", "coda-prompt", "smope")


def _linear(color: str) -> np.ndarray:
    c = np.asarray(to_rgb(color))
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _encode(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def _luminance(color: str) -> float:
    return float(np.dot([0.2126, 0.7152, 0.0722], _linear(color)))


def test_every_method_has_its_own_marker() -> None:
    assert set(METHOD_MARKERS) == set(METHOD_COLORS)
    assert len(set(METHOD_MARKERS.values())) == len(METHOD_MARKERS)


@pytest.mark.parametrize("kind", sorted(SIMULATIONS))
def test_implemented_methods_differ_under_colour_vision_deficiency(kind: str) -> None:
    matrix = np.asarray(SIMULATIONS[kind])
    seen = {m: _encode(matrix @ _linear(METHOD_COLORS[m])) for m in IMPLEMENTED}
    close = [(a, b, round(float(np.linalg.norm(seen[a] - seen[b])), 3))
             for a, b in itertools.combinations(IMPLEMENTED, 2)
             if np.linalg.norm(seen[a] - seen[b]) < 0.1]
    assert not close, f"look alike under {kind}: {close}"


def test_no_two_blues_and_the_paper_pair_differs_in_greyscale() -> None:
    hues = {m: to_rgb(c) for m, c in METHOD_COLORS.items()}
    blue_ish = [m for m, (r, g, b) in hues.items() if b > max(r, g) + 0.15]
    assert len(blue_ish) <= 2, blue_ish  # at most a blue and a sky blue (the issue: three blues)
    assert abs(_luminance(METHOD_COLORS["norga"]) - _luminance(METHOD_COLORS["hide"])) > 0.05
