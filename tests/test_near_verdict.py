"""E5 verdicts that survive a referee: the parametric-regime verdict on synthetic records, and
the error rates of its equivalence test of the level, by simulation.

The records are made by hand (no fitting): losses placed relative to the Fisher line of the
configured truth, with chosen cell sizes. The simulation draws ``L_1`` from its first-order
distribution at a near truth (the Gaussian limit pushed through the loss).
"""

from __future__ import annotations

import numpy as np
import pytest

from moe_theory.near import mechanism as near
from moe_theory.near.analysis import (
    EQUIVALENCE_LEVEL,
    RATIO_BAND,
    RESOLVED_SD_FRACTION,
    _mean_ci,
    analyse_near,
    fisher_terms,
)
from moe_theory.near.config import NearConfig

T = 0.8
# a dense grid (ratio 1.25): a flat curve stays within the level band over several n
N_VALUES = tuple(int(100_000 * 1.25**k) for k in range(6))
R = 8
SPREAD = np.exp(np.linspace(-0.15, 0.15, R))  # replicate spread of log L_1 (deterministic)


def _config() -> NearConfig:
    return NearConfig(gates=("norga",), t_values=(T,), gammas=(), n_values=N_VALUES,
                      replicates=R, bases=())


@pytest.fixture(scope="module")
def terms():
    cfg = _config()
    return fisher_terms(cfg.truth("norga", T), cfg.noise_sd, cfg.seed)


def _records(loss_of_n, cells_of=lambda n, rep: "1;1"):
    # a small alternating wiggle per n keeps the slope fits' residuals (and CIs) non-zero
    return [{"kind": "fixed", "t": T, "gamma": 0.0, "gate": "norga", "n": n, "replicate": rep,
             "voronoi_loss": float(loss_of_n(n) * SPREAD[rep] * np.exp(0.01 * (-1) ** k)),
             "loss_mass": 0.0,
             "loss_beta1": 0.0, "loss_eta": 0.0, "l2_error": 1e-3, "status": "converged",
             "at_bound": False, "cell_sizes": cells_of(n, rep)}
            for k, n in enumerate(N_VALUES) for rep in range(R)]


def _verdict(records):
    return analyse_near(_config(), records, {"cases": []})["fixed"][f"{T:g}"]["norga"]


def test_the_grid_resolves_the_weak_direction(terms):
    # the premise of the other tests: the regime is blocked by what they vary, not by this
    sd = terms["weak_sd_1"] / np.sqrt(N_VALUES[0])
    assert sd <= RESOLVED_SD_FRACTION * terms["half_separation"]


def test_a_parametric_curve_on_the_fisher_line_is_called_parametric(terms):
    e = _verdict(_records(lambda n: terms["C"] / np.sqrt(n)))
    assert e["parametric_from"] == N_VALUES[0] and e["not_reached_because"] is None
    assert e["regime_slope"]["slope"] == pytest.approx(-0.5, abs=0.02)
    assert e["regime_level"]["equivalent"] and e["regime_level"]["fits"] == R * len(N_VALUES)


def test_a_flat_curve_that_crosses_the_fisher_line_is_not_called_parametric(terms):
    n_cross = N_VALUES[2]  # L_1 = C/sqrt(n) there, flat in n
    e = _verdict(_records(lambda n: terms["C"] / np.sqrt(n_cross)))
    # the old criterion (95% CI of the ratio overlapping the band) passed at the crossing
    cross = next(p for p in e["per_n"] if p["n"] == n_cross)
    assert cross["ratio_ci"][0] <= RATIO_BAND[1] and cross["ratio_ci"][1] >= RATIO_BAND[0]
    assert cross["level_equivalent"]
    # ...and the pooled level of the n around the crossing is inside the band, so only the
    # slope (0, not -1/2) stops the verdict
    ratios = [p["ratio"] for p in e["per_n"][1:]]
    assert RATIO_BAND[0] < np.mean(ratios) < RATIO_BAND[1]
    assert e["parametric_from"] is None
    assert "excludes -1/2" in e["not_reached_because"]


def test_merged_fits_block_the_verdict(terms):
    def cells(n, rep):
        return "0;2" if n == N_VALUES[-1] and rep < 2 else "1;1"

    e = _verdict(_records(lambda n: terms["C"] / np.sqrt(n), cells))
    assert e["per_n"][-1]["merged"] == 2 and e["merged"] == 2
    assert e["parametric_from"] is None
    assert "2 of 8 fits merged" in e["not_reached_because"]
    # one merge in eight (12.5%) is above the 10% allowed as well; none at the other n
    assert [p["merged"] for p in e["per_n"][:-1]] == [0] * (len(N_VALUES) - 1)


def _first_order_draws(t: float, gate: str, size: int, seed: int) -> np.ndarray:
    """First-order L_1 draws at a near truth, scaled to mean 1."""
    truth = near.near_truth(t, NearConfig().gate(gate), "affine", split="both")
    s, vt = near.fisher_svd(truth)
    xi = np.random.default_rng(seed).standard_normal((size, len(s)))
    loss = near.first_order_loss((xi / s) @ vt, truth)
    return loss / loss.mean()


def _pass_rates(draws, ratio, reps, sims, seed):
    rng = np.random.default_rng(seed)
    sample = ratio * rng.choice(draws, size=(sims, reps))
    mean = sample.mean(axis=1)
    sd = sample.std(axis=1, ddof=1) / np.sqrt(reps)
    from scipy import stats

    h90 = stats.t.ppf(0.5 + EQUIVALENCE_LEVEL / 2, reps - 1) * sd
    h95 = stats.t.ppf(0.975, reps - 1) * sd
    equivalent = (mean - h90 >= RATIO_BAND[0]) & (mean + h90 <= RATIO_BAND[1])
    overlap = (mean - h95 <= RATIO_BAND[1]) & (mean + h95 >= RATIO_BAND[0])
    return float(equivalent.mean()), float(overlap.mean())


@pytest.mark.slow
@pytest.mark.parametrize("gate, t", [("linear", 0.4), ("norga", 0.8)])
def test_equivalence_error_rates_by_simulation(gate, t):
    draws = _first_order_draws(t, gate, 200_000, seed=5)
    sims = 20_000
    for reps in (8, 24, 48):  # fits pooled over the n of a window (e.g. 3 n x 8 or x 16)
        # false "parametric" at the band's edges: nominal 5%; measured 0.5-3.5% at 0.7 and
        # 0.2-6.7% at 1.3 (L_1 is right-skewed, so the t-interval's upper side is a little
        # liberal with 48 fits); 7.5% bounds that with Monte Carlo error
        for edge in RATIO_BAND:
            rate, _ = _pass_rates(draws, edge, reps, sims, seed=[reps, int(edge * 10)])
            assert rate <= 0.075, (gate, reps, edge, rate)
        # and the test has power at ratio 1 only with enough pooled fits (8: below 1%)
        power, _ = _pass_rates(draws, 1.0, reps, sims, seed=[reps, 10])
        assert (power < 0.02) if reps == 8 else (power > {24: 0.15, 48: 0.6}[reps])
    # far outside the band (ratio 1.6): fewer replicates make the old overlap criterion pass
    # more often, the equivalence test less often
    rates = {reps: _pass_rates(draws, 1.6, reps, sims, seed=[reps, 16]) for reps in (8, 24, 48)}
    assert rates[8][1] > rates[24][1] > rates[48][1]
    assert max(r[0] for r in rates.values()) <= 0.01


def test_mean_ci_matches_a_hand_computed_interval():
    x = np.array([1.0, 2.0, 4.0])
    m, lo, hi = _mean_ci(x, 0.90)
    half = 2.919985580355516 * np.std(x, ddof=1) / np.sqrt(3)  # t_{0.95, 2}
    assert (m, lo, hi) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half), rel=1e-9)
