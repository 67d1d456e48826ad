"""The Dask backend gives bit-identical results to the default backend."""

import pytest

from moe_theory.rates.sweep import RateConfig, run_rates

pytest.importorskip("dask.distributed")


@pytest.mark.slow
def test_dask_local_cluster_matches_default_backend_bit_for_bit():
    config = RateConfig(settings=("exact",), gates=("norga", "linear"), n_values=(100, 200, 400),
                        replicates=4, block=2, seed=5, fit_n_min=100)
    default = run_rates(config, jobs=1)
    dask = run_rates(config, jobs=2, backend="dask")

    def drop(rs):
        return [{k: v for k, v in r.to_row().items() if k != "seconds"} for r in rs]

    assert len(dask.records) == 2 * 3 * 4
    assert drop(dask.records) == drop(default.records)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="loky, dask"):
        run_rates(RateConfig(settings=("mechanism",)), backend="ray")
