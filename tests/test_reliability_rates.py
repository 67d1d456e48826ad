"""Rates sweeps: an interrupted sweep keeps its finished chunks; capped fits are kept and counted;
a failed write of the results leaves the previous run directory intact."""

from __future__ import annotations

import errno
import os

import pytest

import moe_theory.estimate as estimate
from moe_theory.io import write_run
from moe_theory.rates import RateConfig, plan_tasks, run_rates

CONFIG = RateConfig(settings=("exact",), gates=("norga", "linear"), n_values=(100, 200, 400),
                    replicates=4, block=2, fit_n_min=100, max_iter=60)


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture
def count_fits(monkeypatch) -> list[int]:
    """Counts LM runs; one per executed (not cached) task and restart."""
    calls = [0]
    real = estimate._levenberg_marquardt  # run by estimate.fit_restarts, which the sweep uses

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(estimate, "_levenberg_marquardt", counting)
    return calls


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
    config = RateConfig(settings=("exact",), gates=("norga",), n_values=(200, 400),
                        replicates=3, block=3, fit_n_min=100, max_iter=1)
    result = run_rates(config, jobs=1)
    assert len(result.records) == 2 * 3, "no fit may be dropped"
    assert not any(r["converged"] for r in result.records)
    summary = result.summary_dict()["settings"]["exact"]["norga"]
    assert summary["n_fits"] == 6 and summary["n_capped"] == 6 and summary["n_converged"] == 0
    assert "capped 6" in result.summary()


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
