"""Fit status: converged / capped / stalled, counted in the summary, warned about by group."""

import warnings

import numpy as np
import pytest

from moe_theory.estimate import LAMBDA_STALL, ConvergenceWarning, _levenberg_marquardt, fit_status
from moe_theory.io import fits_csv_text
from moe_theory.rates.sweep import RateConfig, run_rates


class RejectEverything:
    """A problem whose Jacobian promises descent but whose RSS rises for every step."""

    def __init__(self, start):
        self.start = start

    def evaluate(self, theta, rows, jacobian):
        rss = 1.0 + 1e6 * np.sum((theta - self.start[rows]) ** 2, axis=1)
        k, P = theta.shape
        if not jacobian:
            return rss, None, None
        return rss, np.broadcast_to(np.eye(P), (k, P, P)).copy(), np.ones((k, P))


def test_blown_up_damping_is_stalled_not_converged():
    start = np.array([[1.0, -2.0, 0.5]])
    res = _levenberg_marquardt(RejectEverything(start), start, bound=None, max_iter=400,
                               ftol=1e-12, xtol=1e-12, gtol=1e-12)
    assert res.status.tolist() == ["stalled"]
    assert not res.converged[0] and res.stalled[0]
    np.testing.assert_array_equal(res.theta, start)  # every step was rejected
    assert LAMBDA_STALL == 1e16


def test_fit_status_labels():
    got = fit_status(np.array([True, False, False, True]), np.array([False, True, False, False]))
    assert got.tolist() == ["converged", "stalled", "capped", "converged"]


def test_capped_fits_are_counted_and_named_in_one_warning():
    config = RateConfig(settings=("exact",), gates=("norga", "linear"), n_values=(100, 300, 1000),
                        replicates=3, seed=5, fit_n_min=100, max_iter=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_rates(config)
    mine = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(mine) == 1
    text = str(mine[0].message)
    for gate in ("norga", "linear"):
        for n in (100, 300, 1000):
            assert f"exact/{gate}/n={n}: 3 capped" in text
    assert {r.status for r in res.records} == {"capped"}
    assert all(not r.converged for r in res.records)
    csv_rows = fits_csv_text(res.records).splitlines()
    status_col = csv_rows[0].split(",").index("status")
    assert {row.split(",")[status_col] for row in csv_rows[1:]} == {"capped"}
    for e in res.summary_dict()["settings"]["exact"].values():
        assert (e["n_converged"], e["n_capped"], e["n_stalled"]) == (0, 9, 0)
    assert "converged 0, capped 9, stalled 0" in res.summary()


def test_converged_run_gives_no_warning():
    config = RateConfig(settings=("exact",), gates=("norga",), n_values=(1000, 2000, 3000),
                        replicates=2, seed=5, fit_n_min=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = run_rates(config)
    assert {r.status for r in res.records} == {"converged"}


def test_fit_n_min_above_the_grid_is_refused():
    with pytest.raises(ValueError, match="fit_n_min=5000 is above every n"):
        RateConfig(settings=("exact",), n_values=(100, 1000), fit_n_min=5000)
    RateConfig(settings=("mechanism",), n_values=(100, 1000), fit_n_min=5000)  # no fits: fine
