"""The sweep: reproducibility, independence of parallelism and chunking, E4 targets."""

import numpy as np
import pytest

from moe_theory.io import fits_csv_text
from moe_theory.rates import RateConfig, mechanism_report, n_grid, run_rates

TINY = dict(gates=("norga", "linear"), n_values=(100, 300, 1000),
            replicates=4, seed=11, fit_n_min=100)


def test_same_seed_gives_identical_fits_and_chunking_does_not_matter():
    a = run_rates(RateConfig(**TINY, settings=("exact",), block=4))
    b = run_rates(RateConfig(**TINY, settings=("exact",), block=4))
    c = run_rates(RateConfig(**TINY, settings=("exact",), block=1))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.records]
    assert fits_csv_text(a.records).count("\n") == 1 + 2 * 3 * 4
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.records]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in c.records]
    d = run_rates(RateConfig(**{**TINY, "seed": 12, "settings": ("exact",)}))
    assert [r["voronoi_loss"] for r in d.records] != [r["voronoi_loss"] for r in a.records]


@pytest.mark.slow
def test_jobs_one_and_two_give_identical_records():
    one = run_rates(RateConfig(**TINY, settings=("exact",), block=2), jobs=1)
    two = run_rates(RateConfig(**TINY, settings=("exact",), block=2), jobs=2)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(one.records) == drop(two.records)


def test_both_gates_see_the_same_data():
    res = run_rates(RateConfig(**TINY, settings=("exact",)))
    # identical X and noise: the RSS at the optimum is close, not equal, for the two gates
    lin = [r["rss"] for r in res.records if r["gate"] == "linear"]
    nor = [r["rss"] for r in res.records if r["gate"] == "norga"]
    np.testing.assert_allclose(lin, nor, rtol=0.2)


def test_summary_reports_slopes_counts_and_honesty_notes():
    config = {**TINY, "n_values": (100, 200, 400, 800), "settings": ("exact", "mechanism")}
    res = run_rates(RateConfig(**config))
    summary = res.summary_dict()["settings"]["exact"]
    for gate in ("norga", "linear"):
        e = summary[gate]
        assert e["n_converged"] + e["n_capped"] == e["n_fits"]
        assert e["slope_ci"][0] < e["slope"] < e["slope_ci"][1]
        assert e["fisher_C"] > 0 and e["n_used"] == [100, 200, 400, 800]
        assert e["n_fits"] == 16
    text = res.summary()
    for needle in ("L_1 slope", "AIC", "q=", "capped", "ln ln n", "inconclusive", "Fisher",
                   "PDE residual", "n used"):
        assert needle in text


def test_mechanism_reproduces_spec_targets():
    m = mechanism_report(RateConfig(settings=("mechanism",)))
    assert m["pde_residual"]["linear"] < 1e-6
    assert m["pde_residual"]["norga"] > 0.1
    table = {(f["gate"], f["expert"]): f for f in m["fisher"]}
    # prototype values of spec moe-theory.md section 5.6
    assert table["linear", "affine"]["lambda_min"] == pytest.approx(1.45e-5, rel=0.02)
    assert table["linear", "affine"]["cond"] == pytest.approx(1.7e4, rel=0.03)
    assert table["norga", "affine"]["lambda_min"] == pytest.approx(1.9e-4, rel=0.03)
    assert table["linear", "tanh"]["cond"] == pytest.approx(3.8e2, rel=0.03)
    assert table["linear", "affine"]["C_sum"] == pytest.approx(38.6, rel=0.01)
    assert table["norga", "affine"]["C_sum"] == pytest.approx(10.9, rel=0.01)
    for g in ("linear", "norga"):
        assert m["flat_manifold"][g]["max_abs_g_difference"] < 1e-12


def test_n_grid_and_config_validation():
    assert n_grid(100, 100_000, 7) == (100, 316, 1000, 3162, 10000, 31623, 100000)
    with pytest.raises(ValueError, match="n_min <= n_max"):
        n_grid(1000, 100, 3)
    with pytest.raises(ValueError, match="replicates must be >= 1"):
        RateConfig(replicates=0)
    with pytest.raises(ValueError, match="setting must be one of"):
        RateConfig(settings=("bogus",))
