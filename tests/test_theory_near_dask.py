"""E5 (near) through the Dask backend: bit-identical to the default backend."""

import pytest

from moe_theory.io import dumps_json
from moe_theory.near.config import NearConfig
from moe_theory.near.output import near_fits_csv
from moe_theory.near.sweep import run_near

pytest.importorskip("dask.distributed")


@pytest.mark.slow
def test_near_dask_matches_default_backend_bit_for_bit():
    config = NearConfig(t_values=(0.4,), gammas=(0.1,), n_values=(300, 1000, 2000, 4000),
                        schedule_n0=1000, replicates=3, block=2, bases=("default",), seed=4)
    default = run_near(config, jobs=1)
    dask = run_near(config, jobs=2, backend="dask")
    assert len(dask.records) == 2 * 3 * (4 + 3)
    assert near_fits_csv(dask.records) == near_fits_csv(default.records)
    assert dumps_json(dask.to_json()) == dumps_json(default.to_json())
