"""A diverged (nan/inf) or exact (zero-loss) fit never loses a rates sweep: it is written to
fits.csv, left out of the slopes and counted; absurd --noise-sd values are refused up front."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest

from moe_theory import cli as rates_cli
from moe_theory.inference import fit_rate
from moe_theory.io import write_run
from moe_theory.rates.sweep import RateConfig, RateResult, run_rates

CONFIG = RateConfig(settings=("exact",), gates=("norga",), n_values=(100, 200, 400),
                    replicates=4, block=4, fit_n_min=100, max_iter=40)


@pytest.fixture(scope="module")
def clean() -> RateResult:
    return run_rates(CONFIG, jobs=1)


def _spoil(records, where: dict[int, float]):
    return [replace(r, voronoi_loss=where[i]) if i in where else r
            for i, r in enumerate(records)]


@pytest.mark.slow
def test_bad_fits_are_written_flagged_and_excluded_from_the_slope(tmp_path, clean):
    bad = {0: math.nan, 5: 0.0, 9: math.inf}
    result = RateResult(CONFIG, _spoil(clean.records, bad))
    entry = result.summary_dict()["settings"]["exact"]["norga"]
    assert entry["n_fits"] == 12 and entry["n_excluded"] == 3
    keep = [r for i, r in enumerate(clean.records) if i not in bad]
    reference = fit_rate(np.array([r.n for r in keep]), np.array([r.voronoi_loss for r in keep]))
    assert entry["slope"] == pytest.approx(reference.slope, rel=1e-12)
    write_run(result, tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "fits.csv").open()))
    assert len(rows) == 12  # every fit is kept
    assert "n_excluded" not in clean.summary_dict()["settings"]["exact"]["norga"]


@pytest.mark.slow
def test_a_group_without_enough_usable_fits_is_named_not_fatal(tmp_path, clean):
    result = RateResult(CONFIG, _spoil(clean.records, {i: math.nan for i in range(12)}))
    summary = result.summary_dict()
    assert summary["settings"] == {} and "exact/norga" in summary["no_rate"]
    assert "no slope for exact/norga" in result.summary()
    write_run(result, tmp_path / "run")
    assert len(list(csv.DictReader((tmp_path / "run" / "fits.csv").open()))) == 12


@pytest.mark.parametrize("value", ["1e300", "1e3", "1e-20", "0", "-1", "nan", "inf",
                                   "\uff11"])
def test_absurd_noise_sd_is_refused_with_exit_2(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        rates_cli.main(["--noise-sd", value, "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--noise-sd" in err[0]
    assert not (tmp_path / "out").exists()


def test_near_slope_leaves_out_bad_fits_and_never_raises():
    from moe_theory.near.analysis import slope_fit

    n = np.repeat([100.0, 200.0, 400.0], 3)
    loss = 2.0 * n**-0.5 * np.tile([0.9, 1.0, 1.1], 3)
    clean = slope_fit(n, loss)
    assert "n_excluded" not in clean
    spoiled = loss.copy()
    spoiled[[0, 4]] = [np.nan, 0.0]
    out = slope_fit(n, spoiled)
    keep = np.ones(9, bool)
    keep[[0, 4]] = False
    assert out["n_excluded"] == 2
    assert out["slope"] == pytest.approx(fit_rate(n[keep], loss[keep]).slope, rel=1e-12)
    assert slope_fit(n, np.full(9, np.nan)) is None  # no slope, and no exception
