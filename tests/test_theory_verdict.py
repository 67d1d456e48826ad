"""Verdict words as a table, the AICc rule of the rate-model label, and the L2 error."""

from dataclasses import replace

import numpy as np
import pytest

from moe_theory.inference import AICC_DECISIVE, compare_rate_models
from moe_theory.rates.sweep import l2_error, rate_verdict
from moe_theory.settings import get_setting

N7 = np.logspace(2, 5, 7)
POWER = {"classification": "power law", "reason": "power law has the lowest AICc by 9.0"}
UNDECIDED = {"classification": "inconclusive",
             "reason": "power law / log rate indistinguishable (AICc within 4 of the best)"}


def fisher(lo, hi, ratio=None):
    return {"fisher_ratio": (lo + hi) / 2 if ratio is None else ratio,
            "fisher_ratio_ci": [lo, hi], "fisher_n": 100000}


# (expected slope, slope CI, L2 slope and CI, rate model, Fisher ratio CI) -> words
VERDICTS = [
    (-0.5, (-0.6, -0.4), (-0.5, (-0.52, -0.48)), POWER, fisher(0.8, 1.1),
     ["CI [-0.60, -0.40] contains -0.5", "; power law;", "agrees with Thm 4.1",
      "level consistent with the Fisher prediction", "CI overlaps [0.7, 1.3]"],
     ["excludes", "not consistent", "inconclusive", "departs"]),
    (-0.5, (-0.45, -0.30), (-0.5, (-0.52, -0.48)), POWER, fisher(0.3, 0.6),
     ["CI [-0.45, -0.30] excludes -0.5", "level not consistent with the Fisher prediction",
      "0.45 [0.30, 0.60]", "CI misses [0.7, 1.3]"],
     ["contains", "overlaps"]),
    (-0.5, (-0.7, -0.55), (-0.5, (-0.52, -0.48)), UNDECIDED, fisher(1.25, 1.6),
     ["excludes -0.5", "rate model inconclusive (power law / log rate indistinguishable",
      "level consistent", "CI overlaps"], ["not consistent"]),
    (-0.5, (-0.6, -0.4), (-0.5, (-0.52, -0.48)), POWER, fisher(1.35, 1.6),
     ["level not consistent", "CI misses"], ["level consistent", "overlaps"]),
    (-0.5, (-0.6, -0.4), (-0.5, (-0.52, -0.48)), POWER, fisher(0.5, 0.69),
     ["level not consistent", "CI misses"], ["level consistent"]),
    (-0.5, (-0.6, -0.4), (-0.8, (-0.9, -0.7)), POWER, None,
     ["regression error slope -0.80 departs from -1/2"], ["Fisher", "agrees"]),
    (-0.5, (-0.6, -0.4), (-0.62, (-0.7, -0.45)), POWER, None,
     ["agrees with Thm 4.1 (L2 slope -0.62)"], ["departs"]),
    (None, (-0.6, -0.4), (-0.5, (-0.52, -0.48)), UNDECIDED, None,
     ["rate model inconclusive", "no parameter rate is guaranteed", "heuristic"],
     ["contains", "excludes", "Fisher"]),
]


@pytest.mark.parametrize("expected, slope_ci, l2, model, fisher_entry, present, absent", VERDICTS)
def test_verdict_table(expected, slope_ci, l2, model, fisher_entry, present, absent):
    text = rate_verdict(expected=expected, slope_ci=slope_ci, l2_slope=l2[0], l2_ci=l2[1],
                        model=model, fisher=fisher_entry)
    for words in present:
        assert words in text, (words, text)
    for words in absent:
        assert words not in text, (words, text)


def independent_aicc(y, columns):
    """AICc of Gaussian least squares, k = coefficients + 1 (the noise variance)."""
    A = np.column_stack(columns)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    rss = float(np.sum((y - A @ coef) ** 2))
    m, k = len(y), A.shape[1] + 1
    if m - k - 1 <= 0:
        return np.nan
    return m * np.log(rss / m) + m * (1 + np.log(2 * np.pi)) + 2 * k + 2 * k * (k + 1) / (m - k - 1)


def test_aicc_values_and_the_decisive_rule_on_random_curves():
    rng = np.random.default_rng(11)
    labels = {"pow": "power law", "loglog": "sub-polynomial (log-like)", "flat": "plateau",
              "curv": "curved"}
    seen = set()
    for trial in range(300):
        m = (5, 7, 13)[trial % 3]
        n = np.logspace(3, 5, m)
        x = np.log(n)
        shape = trial % 4
        mean = (-0.5 * x, -1.5 * np.log(x), 0.0 * x, -0.5 * x + 0.08 * (x - 9) ** 2)[shape]
        y = mean + rng.normal(0, (0.02, 0.1, 0.3)[trial % 3], m)
        res = compare_rate_models(n, np.exp(y))
        ref = {
            "pow": independent_aicc(y, [np.ones(m), x]),
            "loglog": independent_aicc(y, [np.ones(m), np.log(x)]),
            "curv": independent_aicc(y, [np.ones(m), x, x**2]),
            "flat": independent_aicc(y, [np.ones(m)]),
        }
        for k, v in ref.items():
            got = res["aicc"][k]
            assert (got is None) == bool(np.isnan(v))
            if got is not None:
                assert got == pytest.approx(v, rel=1e-9, abs=1e-9)
        defined = sorted((v, k) for k, v in ref.items() if np.isfinite(v))
        margin = defined[1][0] - defined[0][0]
        best = defined[0][1]
        decisive = margin >= AICC_DECISIVE and not (
            best == "flat" and res["slope_ci"][0] <= -0.25)
        expected = labels[best] if decisive else "inconclusive"
        assert res["classification"] == expected, (trial, res["reason"])
        if expected == "inconclusive":
            assert "indistinguishable" in res["reason"] or "not ruled out" in res["reason"]
        seen.add(res["classification"])
    assert {"power law", "inconclusive", "plateau", "sub-polynomial (log-like)"} <= seen


def test_range_note_follows_the_grid():
    note = compare_rate_models(np.array([1e3, 3e3, 1e4, 3e4, 1e5]),
                               np.array([1.0, 0.6, 0.3, 0.2, 0.1]))["range_note"]
    assert "n = 1000..100000" in note
    assert f"{np.log(np.log(1e3)):.2f}..{np.log(np.log(1e5)):.2f}" in note  # 1.93..2.44
    other = compare_rate_models(N7, N7**-0.5)["range_note"]
    assert "n = 100..100000" in other and "1.53..2.44" in other


def test_l2_error_against_a_closed_form():
    """A dominant prompt (beta_0 = 40) makes g = a x + b up to e^-40, so two models differing
    by (da, db) have ||g - g'||_{L2(U[-1,1])} = sqrt(da^2 / 3 + db^2)."""
    base = get_setting("exact").truth("linear", "tanh")
    truth = replace(base, beta0=np.array([40.0]))
    theta = np.stack([truth.theta + np.array([0.0, 0.0, da, db])
                      for da, db in ((0.3, 0.2), (0.0, 0.5), (1.2, 0.0), (0.0, 0.0))])
    got = l2_error(truth.with_theta(theta), truth)
    expected = np.sqrt(np.array([0.3**2 / 3 + 0.2**2, 0.25, 1.44 / 3, 0.0]))
    np.testing.assert_allclose(got, expected, atol=1e-10)
