"""Data simulation: ``(X, Y)`` for R replicates x n samples from one seed.

Every replicate draws from its own ``numpy.random.SeedSequence`` identified by
``(seed, setting, n, replicate)``, so a data set does not depend on how the sweep is chunked or
parallelised, and both gates see the same ``(X, eps)`` (paired comparison, less variance).
"""

from __future__ import annotations

import zlib

import numpy as np

from moe_theory.model import PrefixMoE, regression

# Stream ids inside one replicate's SeedSequence.
DATA_STREAM = 0
INIT_STREAM = 1


def _tag(text: str) -> int:
    """A stable 32-bit integer for a string (for SeedSequence spawn keys)."""
    return zlib.crc32(text.encode())


def replicate_seed(
    seed: int, setting: str, n: int, replicate: int, stream: int
) -> np.random.SeedSequence:
    """The ``SeedSequence`` of one (setting, n, replicate) and one stream (data or init)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    return np.random.SeedSequence(seed, spawn_key=(_tag(setting), int(n), int(replicate), stream))


def sample_inputs(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` inputs from mu = Uniform([-1, 1]^d), shape ``(n, d)``."""
    return rng.uniform(-1.0, 1.0, size=(n, dim))


def simulate(
    truth: PrefixMoE,
    n: int,
    replicates: list[int] | np.ndarray,
    *,
    seed: int,
    setting: str,
    noise_sd: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``Y = g_{G*}(X) + eps`` for each replicate id.

    Parameters
    ----------
    truth:
        True model (no batch axes).
    n:
        Samples per replicate.
    replicates:
        Replicate ids; each id always gives the same data for the same (seed, setting, n).
    seed, setting:
        Identify the random streams.
    noise_sd:
        Standard deviation ``sqrt(nu)`` of the Gaussian noise.

    Returns
    -------
    X:
        ``(R, n, d)``.
    Y:
        ``(R, n)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    X = np.empty((len(replicates), n, truth.dim))
    eps = np.empty((len(replicates), n))
    for row, rep in enumerate(replicates):
        rng = np.random.default_rng(replicate_seed(seed, setting, n, rep, DATA_STREAM))
        X[row] = sample_inputs(rng, n, truth.dim)
        eps[row] = rng.normal(0.0, noise_sd, size=n)
    return X, regression(X, truth) + eps


def integration_points(
    dim: int, n_points: int = 400, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights for expectations ``E_X[f(X)]`` under mu = Uniform([-1, 1]^d).

    d = 1 uses Gauss-Legendre quadrature (``n_points`` nodes, exact for the smooth integrands
    here to machine precision); d > 1 uses at least 20 000 Monte Carlo points from ``seed``.

    Returns
    -------
    X:
        ``(m, d)`` points.
    weights:
        ``(m,)`` weights summing to 1.
    """
    if dim == 1:
        nodes, weights = np.polynomial.legendre.leggauss(n_points)
        return nodes[:, None], weights / 2.0
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    X = sample_inputs(rng, max(n_points, 20000), dim)
    return X, np.full(len(X), 1.0 / len(X))
