"""The fit cache checks what it reads back: the checksum is bound to the entry's key, and every
value's type and range are checked, so an edited entry with a recomputed checksum, a float
``n``, a status with a line break or a text loss is recomputed (one warning), never used."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

import moe_theory.cache as cache_module
from moe_theory.rates.sweep import RateConfig, run_rates

SMALL = RateConfig(settings=("exact",), gates=("norga",), n_values=(100, 150, 200), replicates=2,
                   block=2, fit_n_min=100, max_iter=40)


def _reseal(entry: dict) -> None:
    """Recompute the checksum the way the cache under test does (a determined editor can)."""
    digest = getattr(cache_module, "entry_digest", None)
    if digest is not None:
        entry["sha256"] = digest(entry["inputs"], entry["records"])
    else:  # a cache whose checksum covers the records only
        canonical = json.dumps(entry["records"], sort_keys=True, separators=(",", ":"))
        entry["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()


def _edit(field: str, value):
    def damage(entry: dict) -> None:
        entry["records"][0][field] = value
        _reseal(entry)
    return damage


def _records_only_checksum(entry: dict) -> None:
    entry["records"][0]["voronoi_loss"] *= 1.5
    canonical = json.dumps(entry["records"], sort_keys=True, separators=(",", ":"))
    entry["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()


DAMAGES = {
    "edited, records-only checksum recomputed": _records_only_checksum,
    "float n": _edit("n", 100.0),
    "status with a newline": _edit("status", "converged\nexact,norga"),
    "text loss": _edit("voronoi_loss", "abc"),
    "negative loss": _edit("l2_error", -1.0),
    "unknown status": _edit("status", "great"),
    "list value": _edit("rss", [1, 2]),
}


def _plain(records):
    return [replace(r, seconds=0.0) for r in records]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_bad_values_in_a_resealed_entry_are_recomputed(tmp_path, count_fits, caplog, damage):
    cache = tmp_path / "cache"
    first = run_rates(SMALL, jobs=1, cache_dir=cache)
    entries = sorted((cache / "fits-v1").glob("*.json"))
    # the entry of n = 100 (its first record's n is the one the float-n damage rewrites)
    entry_path = next(p for p in entries if json.loads(p.read_text())["inputs"]["n"] == 100)
    entry = json.loads(entry_path.read_text())
    DAMAGES[damage](entry)
    entry_path.write_text(json.dumps(entry))
    count_fits[0] = 0
    caplog.clear()
    again = run_rates(SMALL, jobs=1, cache_dir=cache)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and entry_path.name in warnings[0].getMessage(), warnings
    assert "\n" not in warnings[0].getMessage()
    assert count_fits[0] == SMALL.restarts, "exactly the damaged block is refitted"
    assert _plain(again.records) == _plain(first.records)


def test_an_entry_copied_to_another_blocks_file_is_refused(tmp_path, count_fits, caplog):
    cache = tmp_path / "cache"
    first = run_rates(SMALL, jobs=1, cache_dir=cache)
    a, b, *_ = sorted((cache / "fits-v1").glob("*.json"))
    b.write_bytes(a.read_bytes())
    count_fits[0] = 0
    again = run_rates(SMALL, jobs=1, cache_dir=cache)
    assert count_fits[0] == SMALL.restarts
    assert _plain(again.records) == _plain(first.records)
