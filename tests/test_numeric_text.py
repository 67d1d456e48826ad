"""The cross-CPU comparison of report files: structure exact, floats to a tolerance."""

from __future__ import annotations

from numeric_text import json_mismatches, text_mismatches


def test_json_floats_at_tolerance_everything_else_exact():
    want = {"slope": -0.49055698717931817, "n": [100, 200], "verdict": "power law", "ok": True,
            "ci": [-0.505999790518199, None]}
    last_bits = {**want, "slope": -0.4905569871793182, "ci": [-0.5059997905181992, None]}
    assert json_mismatches(last_bits, want, rel=1e-9) == []
    assert json_mismatches(last_bits, want, rel=0.0) == ["$.slope: -0.4905569871793182 vs "
                                                         "-0.49055698717931817",
                                                         "$.ci[0]: -0.5059997905181992 vs "
                                                         "-0.505999790518199"]
    assert json_mismatches({**want, "slope": -0.4906}, want, rel=1e-9) != []
    assert json_mismatches({**want, "n": [100, 201]}, want, rel=1.0) == ["$.n[1]: 201 vs 200"]
    assert json_mismatches({**want, "n": [100.0, 200]}, want, rel=1.0) != []  # int -> float
    assert json_mismatches({**want, "verdict": "flat"}, want, rel=1.0) != []
    assert json_mismatches({**want, "ok": False}, want, rel=1.0) != []
    assert json_mismatches({**want, "ci": [-0.5]}, want, rel=1.0) == ["$.ci: length 1 vs 2"]
    assert json_mismatches({"n": want["n"], **want}, want, rel=1.0) != []  # key order
    assert json_mismatches({**want, "extra": 1}, want, rel=1.0) != []
    assert json_mismatches(float("nan"), float("nan"), rel=0.0) == []
    assert json_mismatches(0.0, float("nan"), rel=1.0) != []


def test_text_words_and_integers_exact_decimals_to_the_last_digit():
    want = "fits 40: converged 20; slope -0.491 [-0.506, -0.475]; C=10.16; n >= 1e4\n"
    assert text_mismatches(want, want, rel=0.0) == []
    # a value on a rounding boundary may flip by one unit of the last printed digit
    assert text_mismatches(want.replace("-0.506", "-0.507"), want, rel=0.0) == []
    assert text_mismatches(want.replace("-0.506", "-0.508"), want, rel=1e-9) == ["number 3: "
                                                                                 "-0.508 vs -0.506"]
    assert text_mismatches(want.replace("fits 40", "fits 41"), want, rel=0.5) != []  # counts
    assert text_mismatches(want.replace("1e4", "2e4"), want, rel=1e-9) != []
    assert text_mismatches(want.replace("power", "flat").replace("slope", "slop"), want,
                           rel=1.0) == ["text after number 2: '; slop ' vs '; slope '"]
    assert text_mismatches(want + "1.5\n", want, rel=1.0) != []
    # full-precision floats (fits.csv) at the relative tolerance
    assert text_mismatches("a,0.9075153291141704\n", "a,0.9075153291141701\n", rel=1e-12) == []
    assert text_mismatches("a,0.9075153291141704\n", "a,0.9075153291141701\n", rel=1e-17) != []
