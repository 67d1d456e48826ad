"""One ``--seed`` -> independent random streams, one per purpose.

Every random draw of a run comes from a stream derived here with ``numpy.random.SeedSequence``,
so adding a new consumer never shifts the numbers of the others.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` derived from the run seed (stable across runs)."""
    key = zlib.crc32(purpose.encode("utf-8"))
    state = np.random.SeedSequence([int(seed), key]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for ``purpose``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, purpose))
    return gen


def numpy_generator(seed: int, purpose: str) -> np.random.Generator:
    """A numpy ``Generator`` seeded for ``purpose``."""
    return np.random.default_rng(derive_seed(seed, purpose))


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Run library initialisers that only use the global torch RNG (``nn.Linear``,
    ``trunc_normal_``) under ``seed``, leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
