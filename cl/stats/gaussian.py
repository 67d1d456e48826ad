"""Gaussian class statistics of features, and sampling from them.

Statistics are accumulated as float64 sums (``count``, ``sum x``, ``sum x x^T``) so that shards
computed on different processes can simply be added (:meth:`GaussianClassStats.all_reduce`).
Mean and covariance are derived on demand: ``mu = S1 / n`` and the unbiased
``Sigma = (S2 - n mu mu^T) / (n - 1) + eps I`` (``torch.cov`` convention plus the 1e-4 jitter of
docs/cl-background.md#tii-model).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from norga.choices import check_choice

StatsMethod = Literal["covariance", "variance", "multi-centroid"]
#: every ``stats_method`` of a run (``multi-centroid``: :mod:`cl.stats.centroids`)
STATS_METHODS: tuple[StatsMethod, ...] = get_args(StatsMethod)
#: the methods of :class:`GaussianClassStats` (one Gaussian per class)
GAUSSIAN_METHODS: tuple[StatsMethod, ...] = ("covariance", "variance")


def build_class_stats(dim: int, method: StatsMethod, *, n_centroids: int = 10,
                      seed: int = 0, n_init: int = 10, split_budget: bool = False):
    """Class statistics for ``stats_method``: :class:`GaussianClassStats` (``covariance``,
    ``variance``) or the k-means :class:`cl.stats.centroids.MultiCentroidClassStats`
    (``multi-centroid``; ``n_init`` and ``split_budget`` are its own)."""
    if method == "multi-centroid":
        from cl.stats.centroids import MultiCentroidClassStats

        return MultiCentroidClassStats(dim, n_centroids=n_centroids, seed=seed, n_init=n_init,
                                       split_budget=split_budget)
    return GaussianClassStats(dim, method)


class GaussianClassStats:
    """Per-class Gaussian statistics of ``dim``-dimensional features.

    Parameters
    ----------
    dim:
        Feature size.
    method:
        ``"covariance"`` (full matrix) or ``"variance"`` (its diagonal).
    eps:
        Jitter added to the diagonal of every covariance.
    """

    def __init__(self, dim: int, method: StatsMethod = "covariance", eps: float = 1e-4) -> None:
        check_choice("stats method", method, GAUSSIAN_METHODS)
        self.dim = dim
        self.method = method
        self.eps = eps
        self.count: dict[int, torch.Tensor] = {}
        self.sum: dict[int, torch.Tensor] = {}
        self.sum_sq: dict[int, torch.Tensor] = {}  # (d, d) for covariance, (d,) for variance
        self._chol: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ accumulate
    @property
    def classes(self) -> list[int]:
        return sorted(self.count)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of features ``(B, dim)`` with integer labels ``(B,)``."""
        x = features.detach().to("cpu", torch.float64)
        y = labels.detach().to("cpu")
        for c in torch.unique(y).tolist():
            xc = x[y == c]
            if c not in self.count:
                self.count[c] = torch.zeros((), dtype=torch.float64)
                self.sum[c] = torch.zeros(self.dim, dtype=torch.float64)
                shape = (self.dim, self.dim) if self.method == "covariance" else (self.dim,)
                self.sum_sq[c] = torch.zeros(shape, dtype=torch.float64)
            self.count[c] += xc.shape[0]
            self.sum[c] += xc.sum(0)
            self.sum_sq[c] += xc.T @ xc if self.method == "covariance" else (xc * xc).sum(0)
            self._chol.pop(c, None)

    def all_reduce(self, classes: list[int] | None = None) -> None:
        """Sum the statistics of ``classes`` over all processes (no-op without distributed).

        Every process must call this with the same class list, in the same order.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for c in classes if classes is not None else self.classes:
            if c not in self.count:  # this rank's shard had no sample of c: contribute zeros
                self.count[c] = torch.zeros((), dtype=torch.float64)
                self.sum[c] = torch.zeros(self.dim, dtype=torch.float64)
                shape = (self.dim, self.dim) if self.method == "covariance" else (self.dim,)
                self.sum_sq[c] = torch.zeros(shape, dtype=torch.float64)
            for store in (self.count, self.sum, self.sum_sq):
                dist.all_reduce(store[c])
            self._chol.pop(c, None)

    # ------------------------------------------------------------------ moments
    def mean(self, c: int) -> torch.Tensor:
        """float64 mean of class ``c``."""
        return self.sum[c] / self.count[c]

    def covariance(self, c: int, jitter: bool = True) -> torch.Tensor:
        """Unbiased float64 covariance (a diagonal matrix for ``"variance"``)."""
        n = self.count[c]
        if n < 2:
            raise ValueError(f"class {c} has {int(n)} sample(s); a covariance needs at least 2")
        mu = self.mean(c)
        if self.method == "covariance":
            cov = (self.sum_sq[c] - n * torch.outer(mu, mu)) / (n - 1)
            cov = 0.5 * (cov + cov.T)
        else:
            cov = torch.diag((self.sum_sq[c] - n * mu * mu) / (n - 1))
        if jitter:
            cov = cov + self.eps * torch.eye(self.dim, dtype=torch.float64)
        return cov

    def means(self, classes: list[int]) -> torch.Tensor:
        """Stacked float64 means ``(len(classes), dim)``."""
        if not classes:
            return torch.zeros(0, self.dim, dtype=torch.float64)
        return torch.stack([self.mean(c) for c in classes])

    # ------------------------------------------------------------------ sampling
    def _cholesky(self, c: int) -> torch.Tensor:
        if c not in self._chol:
            cov = self.covariance(c)
            factor, info = torch.linalg.cholesky_ex(cov)
            if int(info) != 0:  # numerically indefinite: fall back to the eigen square root
                evals, evecs = torch.linalg.eigh(cov)
                factor = evecs * evals.clamp_min(self.eps).sqrt()
            self._chol[c] = factor
        return self._chol[c]

    def sample(
        self, classes: list[int], n_per_class: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n_per_class`` float32 samples of each class from ``N(mu_c, Sigma_c)``.

        Returns
        -------
        features, labels:
            ``(len(classes) * n, dim)`` float32 and ``(len(classes) * n,)`` int64, grouped by
            class in the order of ``classes``.
        """
        xs, ys = [], []
        for c in classes:
            z = torch.randn(n_per_class, self.dim, generator=generator, dtype=torch.float64)
            xs.append(self.mean(c) + z @ self._cholesky(c).T)
            ys.append(torch.full((n_per_class,), c, dtype=torch.int64))
        if not xs:
            return torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.int64)
        return torch.cat(xs).float(), torch.cat(ys)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "dim": self.dim,
            "method": self.method,
            "eps": self.eps,
            "classes": self.classes,
            "count": [self.count[c] for c in self.classes],
            "sum": [self.sum[c] for c in self.classes],
            "sum_sq": [self.sum_sq[c] for c in self.classes],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["dim"] != self.dim or state["method"] != self.method:
            raise ValueError("statistics checkpoint does not match dim/method")
        self.eps = state["eps"]
        self._chol.clear()
        self.count = {c: v.clone() for c, v in zip(state["classes"], state["count"], strict=True)}
        self.sum = {c: v.clone() for c, v in zip(state["classes"], state["sum"], strict=True)}
        self.sum_sq = {c: v.clone() for c, v in zip(state["classes"], state["sum_sq"], strict=True)}
