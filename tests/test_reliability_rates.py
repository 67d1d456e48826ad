"""Rates sweeps: an interrupted sweep keeps its finished chunks; capped fits are kept and counted;
a failed write of the results leaves the previous run directory intact."""

from __future__ import annotations

import errno
import os
from dataclasses import replace

import pytest

from moe_theory.fit_record import FitRecord
from moe_theory.io import write_run
from moe_theory.rates.sweep import RateConfig, plan_tasks, run_rates

CONFIG = RateConfig(settings=("exact",), gates=("norga", "linear"), n_values=(100, 200, 400),
                    replicates=4, block=2, fit_n_min=100, max_iter=60)


def _without_seconds(records: list[FitRecord]) -> list[FitRecord]:
    return [replace(r, seconds=0.0) for r in records]


class _Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_sweep_keeps_finished_chunks_and_reruns_only_the_rest(tmp_path, count_fits):
    total = len(plan_tasks(CONFIG))
    assert total == 12
    done_before_interrupt = 5

    def interrupt_after(results, total):
        for i, block in enumerate(results):
            if i == done_before_interrupt:
                raise _Interrupt  # Ctrl-C (or a kill) while the sweep is under way
            yield block

    cache = tmp_path / "cache"
    with pytest.raises(_Interrupt):
        run_rates(CONFIG, jobs=1, cache_dir=cache, progress=interrupt_after)
    # one task more than the finished ones ran: the one being consumed when interrupted
    assert count_fits[0] == done_before_interrupt + 1

    count_fits[0] = 0
    resumed = run_rates(CONFIG, jobs=1, cache_dir=cache)
    assert count_fits[0] == total - (done_before_interrupt + 1)

    count_fits[0] = 0
    again = run_rates(CONFIG, jobs=1, cache_dir=cache)
    assert count_fits[0] == 0, "a finished sweep is served from the cache entirely"

    fresh = run_rates(CONFIG, jobs=1, cache_dir=None)
    assert _without_seconds(resumed.records) == _without_seconds(fresh.records)
    assert again.records == resumed.records


def test_capped_fits_are_kept_with_converged_false_and_counted():
    config = RateConfig(settings=("exact",), gates=("norga",), n_values=(200, 300, 400),
                        replicates=3, block=3, fit_n_min=100, max_iter=1)
    result = run_rates(config, jobs=1)
    assert len(result.records) == 3 * 3, "no fit may be dropped"
    assert not any(r.converged for r in result.records)
    summary = result.summary_dict()["settings"]["exact"]["norga"]
    assert summary["n_fits"] == 9 and summary["n_capped"] == 9 and summary["n_converged"] == 0
    assert "capped 9" in result.summary()


@pytest.mark.slow
def test_failed_write_leaves_previous_results_intact(tmp_path, monkeypatch):
    first = run_rates(CONFIG, jobs=1)
    out = tmp_path / "run"
    write_run(first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    changed = run_rates(RateConfig(**{**CONFIG.__dict__, "seed": 2}), jobs=1)
    real_fsync = os.fsync
    synced: list[int] = []

    def full_disk(fd):  # the third file hits a full disk (after config.json and fits.csv)
        synced.append(fd)
        if len(synced) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left.*previous result files there are intact"):
        write_run(changed, out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------- cache integrity (issue 15)
SMALL = RateConfig(settings=("exact",), gates=("norga",), n_values=(100, 150, 200),
                   replicates=2,
                   block=2, fit_n_min=100, max_iter=40)


def _damage_edit(path):
    """Change one float of a cached record, leaving valid JSON: what silently moved fits.csv."""
    import json

    entry = json.loads(path.read_text())
    entry["records"][0]["voronoi_loss"] *= 1.5
    path.write_text(json.dumps(entry))


DAMAGES = {
    "edited": _damage_edit,
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "not-an-entry": lambda p: p.write_text('{"replicate": 1}'),
    "nan-constant": lambda p: p.write_text(p.read_text().replace('"rss":', '"rss":NaN,"x":', 1)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_cache_entry_is_recomputed_with_one_warning(tmp_path, count_fits, caplog,
                                                            damage):
    cache = tmp_path / "cache"
    first = run_rates(SMALL, jobs=1, cache_dir=cache)
    entries = sorted((cache / "fits-v1").glob("*.json"))
    assert len(entries) == len(plan_tasks(SMALL)) == 3
    DAMAGES[damage](entries[0])
    count_fits[0] = 0
    caplog.clear()
    again = run_rates(SMALL, jobs=1, cache_dir=cache)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and entries[0].name in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert count_fits[0] == SMALL.restarts, "exactly the damaged block is refitted"
    # bit-identical, including the recomputed block (only its wall time differs)
    assert _without_seconds(again.records) == _without_seconds(first.records)
    caplog.clear()
    run_rates(SMALL, jobs=1, cache_dir=cache)  # the repaired entry is trusted again
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_cache_holds_no_pickles_and_one_checksum_per_entry(tmp_path):
    import json

    cache = tmp_path / "cache"
    run_rates(SMALL, jobs=1, cache_dir=cache)
    for path in (cache / "fits-v1").glob("*.json"):
        entry = json.loads(path.read_text())  # plain JSON
        assert set(entry) == {"format", "inputs", "records", "sha256"}
        assert len(entry["sha256"]) == 64
    assert not [p for p in cache.rglob("*") if p.suffix in (".pkl", ".pickle")]


@pytest.mark.slow
def test_workers_exit_when_the_sweep_process_is_gone():
    """SIGKILL of rates.py gives it no chance to stop its loky workers; each worker watches the
    sweep's pid itself (``exit_with_parent``, the workers' initializer)."""
    import subprocess
    import sys

    code = ("import os, time; from moe_theory.rates.sweep import exit_with_parent; "
            "exit_with_parent({parent}, poll=0.05); time.sleep(60)")
    orphan = subprocess.run([sys.executable, "-c", code.format(parent=-1)], timeout=60)
    assert orphan.returncode == 1  # its parent is not the sweep: it ends at once
    child = subprocess.Popen([sys.executable, "-c", code.format(parent="os.getppid()")])
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # parent alive: it keeps working
            child.wait(timeout=3)
    finally:
        child.kill()
        child.wait()
