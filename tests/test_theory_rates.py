"""The sweep: reproducibility, independence of parallelism and chunking, E4 targets."""

from dataclasses import replace

import numpy as np
import pytest

from moe_theory.fit_record import FitRecord
from moe_theory.io import dumps_json, fits_csv_text
from moe_theory.rates.sweep import (
    FIT_COLUMNS,
    RECORD_KEYS,
    RateConfig,
    RateResult,
    mechanism_report,
    n_grid,
    run_rates,
)

TINY = dict(gates=("norga", "linear"), n_values=(100, 300, 1000),
            replicates=4, seed=11, fit_n_min=100)


@pytest.mark.slow
def test_same_seed_gives_identical_fits_and_chunking_does_not_matter():
    a = run_rates(RateConfig(**TINY, settings=("exact",), block=4))
    b = run_rates(RateConfig(**TINY, settings=("exact",), block=4))
    c = run_rates(RateConfig(**TINY, settings=("exact",), block=1))
    strip = [replace(r, seconds=0.0) for r in a.records]
    assert fits_csv_text(a.records).count("\n") == 1 + 2 * 3 * 4
    assert strip == [replace(r, seconds=0.0) for r in b.records]
    assert strip == [replace(r, seconds=0.0) for r in c.records]
    d = run_rates(RateConfig(**{**TINY, "seed": 12, "settings": ("exact",)}))
    assert [r.voronoi_loss for r in d.records] != [r.voronoi_loss for r in a.records]


@pytest.mark.slow
def test_fits_csv_and_summary_json_are_byte_identical_for_any_jobs_and_block():
    outputs = set()
    for jobs, block in ((1, 4), (2, 1), (2, 3)):
        res = run_rates(RateConfig(**TINY, settings=("exact",), block=block), jobs=jobs)
        outputs.add((fits_csv_text(res.records), dumps_json(res.summary_dict())))
    assert len(outputs) == 1
    fits, summary = outputs.pop()
    assert "seconds" not in fits.splitlines()[0] and "seconds" not in summary
    assert fits.splitlines()[0] == ",".join(FIT_COLUMNS)


def test_both_gates_see_the_same_data():
    res = run_rates(RateConfig(**TINY, settings=("exact",)))
    # identical X and noise: the RSS at the optimum is close, not equal, for the two gates
    lin = [r.rss for r in res.records if r.gate == "linear"]
    nor = [r.rss for r in res.records if r.gate == "norga"]
    np.testing.assert_allclose(lin, nor, rtol=0.2)


def test_summary_reports_slopes_counts_and_honesty_notes():
    config = {**TINY, "n_values": (100, 200, 400, 800), "settings": ("exact", "mechanism")}
    res = run_rates(RateConfig(**config))
    summary = res.summary_dict()["settings"]["exact"]
    for gate in ("norga", "linear"):
        e = summary[gate]
        assert e["n_converged"] + e["n_capped"] + e["n_stalled"] == e["n_fits"]
        assert e["slope_ci"][0] < e["slope"] < e["slope_ci"][1]
        assert e["fisher_C"] > 0 and e["n_used"] == [100, 200, 400, 800]
        assert e["n_fits"] == 16
    text = res.summary()
    for needle in ("L_1 slope", "AICc", "q=", "capped", "stalled", "ln ln n", "Fisher check",
                   "pooled (second criterion", "PDE residual", "n used",
                   "over n = 100..800, ln n spans 4.61..6.68"):
        assert needle in text
    # four values of n are too few for an AICc comparison: the verdict says so
    for gate in ("norga", "linear"):
        assert summary[gate]["model_comparison"]["classification"] == "inconclusive"
        assert "rate model inconclusive" in summary[gate]["verdict"]
    assert "inconclusive" in text


def synthetic_result(loss_of_n, n_values=(1000, 3162, 10000, 31623, 100000, 316228, 1000000)):
    """A RateResult of hand-made E1 records (no fitting): 12 fits per n of loss_of_n(n, r)."""
    config = RateConfig(settings=("exact",), gates=("norga",), n_values=n_values,
                        replicates=12, fit_n_min=1000)
    records = [
        FitRecord(setting="exact", gate="norga", activation="tanh", expert="affine",
                  n=n, replicate=r, voronoi_loss=loss_of_n(n, r), voronoi_loss_r=1.0,
                  loss_mass=0.1, loss_beta1=0.1, loss_eta=0.1, l2_error=n**-0.5,
                  rss=1.0, converged=True, status="converged", at_bound=False, n_iter=5,
                  restarts=1, cell_sizes="1", seconds=0.0)
        for n in n_values for r in range(12)
    ]
    return RateResult(config=config, records=records)


def test_inconclusive_appears_only_when_the_models_are_indistinguishable():
    spread = 1.0 + np.linspace(-0.3, 0.3, 12)  # mean exactly 1
    clean = synthetic_result(lambda n, r: 10.16 / np.sqrt(n) * spread[r])
    e = clean.analyse()["exact"]["norga"]
    assert e["model_comparison"]["classification"] == "power law"
    assert "inconclusive" not in clean.summary()
    assert "; power law;" in e["verdict"] and "contains -0.5" in e["verdict"]
    assert e["fisher_ratio"] == pytest.approx(1.0, rel=0.01) and e["fisher_consistent"]
    # a level 2x the prediction with a tight CI fails the Fisher check
    high = synthetic_result(lambda n, r: 20.3 / np.sqrt(n) * spread[r]).analyse()["exact"]["norga"]
    assert not high["fisher_consistent"] and "level not consistent" in high["verdict"]
    # log-rate data are decisively sub-polynomial
    log_rate = synthetic_result(lambda n, r: spread[r] / np.log(n))
    assert log_rate.analyse()["exact"]["norga"]["model_comparison"]["classification"] == (
        "sub-polynomial (log-like)")
    assert "inconclusive" not in log_rate.summary()


def test_mechanism_reproduces_spec_targets():
    m = mechanism_report(RateConfig(settings=("mechanism",)))
    assert m["pde_residual"]["linear"] < 1e-6
    assert m["pde_residual"]["norga"] > 0.1
    table = {(f["gate"], f["expert"]): f for f in m["fisher"]}
    # prototype values of docs/theory-background.md#reference-numbers
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


def test_records_of_another_schema_are_never_misread(monkeypatch, tmp_path, caplog):
    """A cache entry from the old fits.csv schema (no status) is recomputed, never misread."""
    import json

    import moe_theory.rates.sweep as rates
    from moe_theory.cache import entry_digest

    before = rates._source_fingerprint()
    monkeypatch.setattr(rates, "RECORD_KEYS", rates.RECORD_KEYS - {"status"})
    assert rates._source_fingerprint() != before  # the schema keys the cache
    monkeypatch.undo()

    config = RateConfig(**{**TINY, "replicates": 1, "n_values": (100, 200, 300)},
                        settings=("exact",))
    cache = tmp_path / "cache"
    fresh = run_rates(config, cache_dir=cache)
    entry_path = sorted((cache / "fits-v1").glob("*.json"))[0]
    entry = json.loads(entry_path.read_text())
    for row in entry["records"]:  # an old-schema entry with a valid checksum
        del row["status"]
    entry["sha256"] = entry_digest(entry["inputs"], entry["records"])
    entry_path.write_text(json.dumps(entry))
    caplog.clear()
    again = run_rates(config, cache_dir=cache)
    assert [r.status for r in again.records] == [r.status for r in fresh.records]
    assert any("columns differ" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="a fit record has columns"):
        FitRecord.from_row(entry["records"][0])


def test_fit_record_round_trips_through_its_row():
    record = synthetic_result(lambda n, r: 1.0 / n).records[0]
    row = record.to_row()
    assert set(row) == RECORD_KEYS and set(FIT_COLUMNS) <= set(row)
    assert FitRecord.from_row(row) == record
    with pytest.raises(ValueError, match="expected"):
        FitRecord.from_row({**row, "extra": 1})
    with pytest.raises(AttributeError):
        record.n = 5  # type: ignore[misc]  # frozen
