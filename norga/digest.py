"""A short digest of a run's configuration, the same for every seed of one configuration.

Two runs belong together (are seeds of one experiment) exactly when their configurations agree
on every field except the seed and the fields that say where or how a run executes, not what it
computes. The digest names that equivalence class: :mod:`cl` puts it into the default run
directory name and :mod:`figures` groups runs by it, so that runs of different configurations
are never averaged as if they were seeds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Fields left out of the digest: the seed (what is averaged over), where and how the run
#: executes (device, workers, data and weights locations, downloads, compilation), bookkeeping
#: (checkpoint retention) and the labels the figures' example runs carry.
NON_CONFIG_FIELDS: frozenset[str] = frozenset({
    "seed", "device", "num_workers", "data_root", "download", "compile", "weights",
    "keep_checkpoints", "kind", "synthetic",
})

DIGEST_LENGTH = 8


def digest_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``config`` that define the experiment (:data:`NON_CONFIG_FIELDS` dropped)."""
    return {k: v for k, v in config.items() if k not in NON_CONFIG_FIELDS}


def config_digest(config: Mapping[str, Any]) -> str:
    """Eight hex digits of the SHA-256 of the experiment-defining fields (sorted-key JSON).

    Equal for two seeds of one configuration, different (up to hash collisions) when any other
    field differs. Values are hashed as JSON, so ``1`` and ``1.0`` differ only if the saved
    files spell them differently; :mod:`cl` always writes a field with its declared type.
    """
    text = json.dumps(digest_fields(config), sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects flattened to dotted keys (``method_options.top_k``); lists kept whole."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differing_fields(configs: list[Mapping[str, Any]]) -> list[str]:
    """Dotted names of the experiment-defining fields on which ``configs`` do not all agree.

    A field missing from some configurations counts as differing. Sorted, with ``protocol`` and
    ``recipe`` first (each implies several others, so a label reads best starting with them).
    """
    flat = [flatten(digest_fields(c)) for c in configs]
    names = set().union(*flat) if flat else set()
    diff = [n for n in names
            if len({json.dumps(f[n], sort_keys=True, default=str) if n in f else "<missing>"
                    for f in flat}) > 1]
    first = {"protocol": 0, "recipe": 1}
    return sorted(diff, key=lambda n: (first.get(n, 2), n))
