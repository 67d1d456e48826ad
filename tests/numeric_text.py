"""Compare report files across CPUs: the structure exactly, the floats to a relative tolerance.

Floats computed through BLAS, LAPACK or vectorised libm differ in their last bits between CPUs
(AVX-512 / AVX2 / SSE kernels sum in different orders), so a byte-for-byte pin of a file that
prints such floats holds on one machine only. These helpers keep everything else exact:

* :func:`json_mismatches` walks two parsed JSON documents: keys, list lengths, strings,
  booleans, ``null`` and integers must be equal, floats equal to ``rel`` (or ``abs_tol``).
* :func:`text_mismatches` splits two texts into number tokens and the text between them: the
  text and the integers must be equal, the other numbers equal to ``rel`` or to one unit of
  the last decimal printed in the reference (a rounded value on a rounding boundary may flip).
"""

from __future__ import annotations

import math
import re

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\b")


def _close(a: float, b: float, rel: float, abs_tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def json_mismatches(got, want, rel: float, abs_tol: float = 0.0, path: str = "$") -> list[str]:
    """Where two parsed JSON values differ (empty when they match); see the module docstring."""
    if isinstance(want, float) and isinstance(got, float) and type(got) is type(want):
        return [] if _close(got, want, rel, abs_tol) else [f"{path}: {got!r} vs {want!r}"]
    if type(got) is not type(want):
        return [f"{path}: {type(got).__name__} {got!r} vs {type(want).__name__} {want!r}"]
    if isinstance(want, dict):
        if list(got) != list(want):
            return [f"{path}: keys {list(got)} vs {list(want)}"]
        return [m for k in want for m in json_mismatches(got[k], want[k], rel, abs_tol,
                                                          f"{path}.{k}")]
    if isinstance(want, list):
        if len(got) != len(want):
            return [f"{path}: length {len(got)} vs {len(want)}"]
        return [m for i, (g, w) in enumerate(zip(got, want, strict=True))
                for m in json_mismatches(g, w, rel, abs_tol, f"{path}[{i}]")]
    return [] if got == want else [f"{path}: {got!r} vs {want!r}"]


def _last_digit_unit(token: str) -> float:
    """One unit of the last digit printed in ``token`` ("0.25" -> 0.01, "1.5e-3" -> 1e-4)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def text_mismatches(got: str, want: str, rel: float) -> list[str]:
    """Where two texts differ (empty when they match); see the module docstring."""
    got_numbers, want_numbers = NUMBER.findall(got), NUMBER.findall(want)
    got_text, want_text = NUMBER.split(got), NUMBER.split(want)
    if got_text != want_text or len(got_numbers) != len(want_numbers):
        for i, (g, w) in enumerate(zip(got_text, want_text, strict=False)):
            if g != w:
                return [f"text after number {i}: {g!r} vs {w!r}"]
        return [f"{len(got_numbers)} numbers vs {len(want_numbers)}"]
    out = []
    for i, (g, w) in enumerate(zip(got_numbers, want_numbers, strict=True)):
        if _is_integer(g) and _is_integer(w):
            same = g == w  # counts, sizes, seeds: exact
        else:
            a, b = float(g), float(w)
            rounded = "." in w and abs(a - b) <= 1.000001 * _last_digit_unit(w)
            same = _close(a, b, rel, 0.0) or rounded
        if not same:
            out.append(f"number {i}: {g} vs {w}")
    return out


def _is_integer(token: str) -> bool:
    return token.lstrip("+-").isdigit()
