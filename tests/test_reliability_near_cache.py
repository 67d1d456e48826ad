"""The E5 (``--setting near``) fit cache: the checksummed JSON entries of the E1-E4 sweep
(moe_theory/cache.py), no pickles; damaged entries are recomputed with one warning; results are
bit-identical with and without the cache; a re-run or a larger grid reuses finished blocks."""

from __future__ import annotations

import json
import os

import pytest

from moe_theory.near.config import NearConfig
from moe_theory.near.output import near_fits_csv
from moe_theory.near.sweep import plan_near_tasks, run_near

SMALL = NearConfig(gates=("norga",), t_values=(0.8,), gammas=(0.1,),
                   n_values=(1000, 1500, 2000), replicates=2, block=2, max_iter=200, seed=5)


def _outputs(result) -> tuple[str, str]:
    """What near_fits.csv and near.json hold (timing apart)."""
    return near_fits_csv(result.records), json.dumps(result.to_json(), sort_keys=True)


@pytest.fixture(scope="module")
def uncached():
    return _outputs(run_near(SMALL))


@pytest.mark.slow
def test_cache_is_checksummed_json_and_reruns_reuse_it(tmp_path, count_fits, uncached):
    cache = tmp_path / "cache"
    first = run_near(SMALL, cache_dir=cache)
    blocks = len(plan_near_tasks(SMALL))
    assert count_fits[0] == blocks * SMALL.restarts
    assert _outputs(first) == uncached, "the cache changes no byte of the results"
    entries = sorted((cache / "fits-v1").glob("*.json"))
    assert len(entries) == blocks
    for path in entries:
        entry = json.loads(path.read_text())
        assert set(entry) == {"format", "inputs", "records", "sha256"}
        assert len(entry["sha256"]) == 64
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == entries, "only JSON entries"
    count_fits[0] = 0
    again = run_near(SMALL, cache_dir=cache)
    assert count_fits[0] == 0, "a finished run is served from the cache entirely"
    assert _outputs(again) == uncached
    assert again.timing == first.timing, "cached blocks keep their measured wall time"


def _damage_edit(path):
    entry = json.loads(path.read_text())
    entry["records"][0]["voronoi_loss"] *= 1.5  # valid JSON, wrong checksum
    path.write_text(json.dumps(entry))


DAMAGES = {
    "edited": _damage_edit,
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_entry_is_recomputed_with_one_warning(tmp_path, count_fits, caplog, uncached,
                                                      damage):
    cache = tmp_path / "cache"
    run_near(SMALL, cache_dir=cache)
    entry = sorted((cache / "fits-v1").glob("*.json"))[0]
    DAMAGES[damage](entry)
    count_fits[0] = 0
    caplog.clear()
    again = run_near(SMALL, cache_dir=cache)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and entry.name in warnings[0].getMessage(), warnings
    assert "\n" not in warnings[0].getMessage()
    assert count_fits[0] == SMALL.restarts, "exactly the damaged block is refitted"
    assert _outputs(again) == uncached
    caplog.clear()
    run_near(SMALL, cache_dir=cache)  # the rewritten entry is trusted again
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.slow
def test_larger_grid_computes_only_new_blocks(tmp_path, count_fits):
    cache = tmp_path / "cache"
    run_near(SMALL, cache_dir=cache)
    larger = NearConfig(**{**SMALL.__dict__, "n_values": (*SMALL.n_values, 2500)})
    count_fits[0] = 0
    result = run_near(larger, cache_dir=cache)
    # one new n in the fixed-t group and in the schedule (2500 >= schedule_n0)
    assert count_fits[0] == 2 * SMALL.restarts
    assert _outputs(result) == _outputs(run_near(larger))


@pytest.mark.slow
def test_interrupted_run_keeps_finished_blocks(tmp_path, count_fits):
    cache = tmp_path / "cache"

    def interrupt_after_two(results, total):
        for i, block in enumerate(results):
            if i == 2:
                raise KeyboardInterrupt
            yield block

    with pytest.raises(KeyboardInterrupt):
        run_near(SMALL, cache_dir=cache, progress=interrupt_after_two)
    assert len(list((cache / "fits-v1").glob("*.json"))) == 3  # the third was stored, then Ctrl-C
    count_fits[0] = 0
    run_near(SMALL, cache_dir=cache)
    assert count_fits[0] == (len(plan_near_tasks(SMALL)) - 3) * SMALL.restarts
