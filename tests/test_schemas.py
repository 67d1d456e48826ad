"""The theory CSV schemas are written once (norga.schemas): the simulator writes them, and the
figures' synthetic example runs write exactly the same columns, every cell filled."""

from __future__ import annotations

import csv

import pytest

from figures.examples import write_example_rates_run
from figures.runs import REQUIRED_FIT_COLUMNS
from moe_theory.near import config as near_config
from moe_theory.rates import config as rates_config
from norga import schemas


def test_the_simulator_uses_the_shared_lists():
    assert rates_config.FIT_COLUMNS is schemas.FIT_COLUMNS
    assert rates_config.TIMING_COLUMNS is schemas.TIMING_COLUMNS
    assert near_config.NEAR_FIT_COLUMNS is schemas.NEAR_FIT_COLUMNS
    # the columns the figures refuse a run without are columns the simulator writes
    assert set(REQUIRED_FIT_COLUMNS) <= set(schemas.FIT_COLUMNS)


def test_the_losses_sit_in_both_fit_files():
    for columns in (schemas.FIT_COLUMNS, schemas.NEAR_FIT_COLUMNS):
        at = columns.index("voronoi_loss")
        assert columns[at:at + len(schemas.FIT_LOSS_COLUMNS)] == schemas.FIT_LOSS_COLUMNS
        assert len(set(columns)) == len(columns)


@pytest.mark.parametrize(("name", "columns"), [("fits.csv", schemas.FIT_COLUMNS),
                                               ("timing.csv", schemas.TIMING_COLUMNS)])
def test_the_example_run_has_the_simulators_columns(tmp_path, name, columns):
    run = write_example_rates_run(tmp_path / "run", settings=("exact",), replicates=2)
    with (run / name).open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == columns
    assert rows and all(all(v != "" for v in row.values()) for row in rows)
