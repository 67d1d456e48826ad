"""docs/theory-background.md#fisher-check acceptance check, end to end: the E1 quick preset at seed
1.

Runs the sweep exactly as ``python experiments/rates.py --gate both`` does (7 values of n in
1e2..1e5, R = 12, slopes on n >= 1e3) and asserts the bands of
docs/theory-background.md#fisher-check on the analysis.
"""

import pytest

from moe_theory.rates.sweep import PRESETS, RateConfig, n_grid, run_rates


@pytest.fixture(scope="module")
def quick_e1():
    p = PRESETS["quick"]
    config = RateConfig(
        settings=("exact",),
        gates=("norga", "linear"),
        n_values=n_grid(p["n_min"], p["n_max"], p["num_n"]),
        replicates=p["replicates"],
        restarts=p["restarts"],
        seed=1,
        fit_n_min=1000,
        preset="quick",
    )
    return run_rates(config, jobs=1)


@pytest.mark.slow
def test_e1_quick_preset_meets_the_spec_section_7_bands(quick_e1):
    summary = quick_e1.summary_dict()["settings"]["exact"]
    for gate in ("norga", "linear"):
        e = summary[gate]
        assert e["n_used"] == [1000, 3162, 10000, 31623, 100000]
        assert e["n_fits"] == 7 * 12
        assert -0.6 <= e["l2_slope"] <= -0.4, (gate, e["l2_slope"])
        assert -0.65 <= e["slope"] <= -0.4, (gate, e["slope"])
        lo, hi = e["fisher_ratio_ci"]
        assert lo <= 1.3 and hi >= 0.7, (gate, e["fisher_ratio"], lo, hi)  # Fisher check
        assert e["fisher_consistent"] is True
        assert "level consistent with the Fisher prediction" in e["verdict"]
        assert e["fisher_n"] == 100000
    lo, hi = summary["norga"]["slope_ci"]
    assert lo <= -0.5 <= hi
    assert "contains -0.5" in summary["norga"]["verdict"]
