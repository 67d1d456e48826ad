"""HiDe-Prompt's multi-centroid class statistics (``ca_storage_efficient_method='multi-centroid'``).

The protocol of the original HiDe-Prompt scripts (thu-ml/HiDe-Prompt,
docs/cl-background.md#tii-model and #lr-scaling), in place of one full-covariance Gaussian per
class:

* the features of a class are clustered by k-means into ``n_centroids`` (10) clusters
  (scikit-learn ``KMeans``, k-means++ init, Lloyd iterations; ``n_init=10``, the scikit-learn
  default when the original code was written; here seeded, there unseeded);
* each cluster stores its mean and its per-dimension variance (biased, ``np.var``);
* alignment draws ``n`` samples *per cluster* from ``N(mu_k, diag(var_k) + 1e-4 I)`` (both
  engines of the original code draw ``num_sampled_pcls`` per cluster, so a class contributes
  ``n_centroids * n`` samples); a cluster whose variance is all zero (a single point) is skipped,
  as in the original;
* the contrastive regulariser uses every centroid as an old-class mean.

A class with fewer distinct features than ``n_centroids`` gets one cluster per distinct feature
(scikit-learn would refuse it). Features are buffered (float64, CPU) until the statistics are
first needed, then clustered once; under ``torch.distributed`` :meth:`all_reduce` gathers every
rank's features of a class first.
"""

from __future__ import annotations

import numpy as np
import torch

from cl.run.seeding import derive_seed


class MultiCentroidClassStats:
    """Per-class k-means centroids with diagonal variances.

    Parameters
    ----------
    dim:
        Feature size.
    n_centroids:
        Clusters per class (HiDe-Prompt: 10).
    seed:
        Run seed; class ``c`` is clustered with a random state derived from ``(seed, c)``.
    eps:
        Jitter added to every variance when sampling.
    n_init:
        k-means restarts (the best inertia is kept).
    """

    method = "multi-centroid"

    def __init__(self, dim: int, n_centroids: int = 10, seed: int = 0, eps: float = 1e-4,
                 n_init: int = 10) -> None:
        if n_centroids < 1:
            raise ValueError(f"n_centroids must be >= 1, got {n_centroids}")
        self.dim = dim
        self.n_centroids = n_centroids
        self.seed = seed
        self.eps = eps
        self.n_init = n_init
        self._pending: dict[int, list[np.ndarray]] = {}
        self.centroids: dict[int, torch.Tensor] = {}  # (k, dim) float64
        self.variances: dict[int, torch.Tensor] = {}  # (k, dim) float64
        self.counts: dict[int, torch.Tensor] = {}  # (k,) samples per cluster

    # ------------------------------------------------------------------ accumulate
    @property
    def classes(self) -> list[int]:
        return sorted(set(self.centroids) | set(self._pending))

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Buffer a batch of features ``(B, dim)`` with integer labels ``(B,)``."""
        x = features.detach().to("cpu", torch.float64).numpy()
        y = labels.detach().to("cpu").numpy()
        for c in np.unique(y).tolist():
            if c in self.centroids:
                raise ValueError(f"class {c} was already clustered; statistics are per task")
            self._pending.setdefault(int(c), []).append(x[y == c])

    def all_reduce(self, classes: list[int] | None = None) -> None:
        """Gather the buffered features of ``classes`` from every process (no-op without
        distributed); every process must call it with the same class list."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for c in classes if classes is not None else sorted(self._pending):
            mine = np.concatenate(self._pending.get(c, [np.zeros((0, self.dim))]))
            gathered: list[np.ndarray | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            self._pending[c] = [g for g in gathered if g is not None and len(g)]

    # ------------------------------------------------------------------ k-means
    def _fit_pending(self) -> None:
        for c in sorted(self._pending):
            self._fit(c, np.concatenate(self._pending.pop(c)))

    def _fit(self, c: int, x: np.ndarray) -> None:
        from sklearn.cluster import KMeans  # a declared dependency; imported only when used

        if len(x) == 0:
            raise ValueError(f"class {c} has no features to cluster")
        k = min(self.n_centroids, len(np.unique(x, axis=0)))
        state = derive_seed(self.seed, f"kmeans-class-{c}") % (2**32)
        labels = KMeans(n_clusters=k, n_init=self.n_init, random_state=state).fit(x).labels_
        means, variances, counts = [], [], []
        for j in range(k):
            members = x[labels == j]
            means.append(members.mean(axis=0))
            variances.append(members.var(axis=0))  # biased, like np.var in the original
            counts.append(len(members))
        self.centroids[c] = torch.from_numpy(np.stack(means))
        self.variances[c] = torch.from_numpy(np.stack(variances))
        self.counts[c] = torch.tensor(counts, dtype=torch.float64)

    # ------------------------------------------------------------------ moments
    def means(self, classes: list[int]) -> torch.Tensor:
        """Every centroid of ``classes``, stacked ``(sum of clusters, dim)`` float64 (the
        contrastive regulariser treats each centroid as an old-class mean)."""
        self._fit_pending()
        if not classes:
            return torch.zeros(0, self.dim, dtype=torch.float64)
        return torch.cat([self.centroids[c] for c in classes])

    # ------------------------------------------------------------------ sampling
    def sample(
        self, classes: list[int], n_per_class: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_per_class`` float32 samples *per usable cluster* of each class, grouped by class
        (in the order of ``classes``) and, within a class, by cluster."""
        self._fit_pending()
        xs, ys = [], []
        for c in classes:
            for mu, var in zip(self.centroids[c], self.variances[c], strict=True):
                if float(var.mean()) == 0.0:  # a single-point cluster: skipped, as in HiDe
                    continue
                z = torch.randn(n_per_class, self.dim, generator=generator, dtype=torch.float64)
                xs.append(mu + z * (var + self.eps).sqrt())
                ys.append(torch.full((n_per_class,), c, dtype=torch.int64))
        if not xs:
            return torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.int64)
        return torch.cat(xs).float(), torch.cat(ys)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        self._fit_pending()
        classes = sorted(self.centroids)
        return {
            "dim": self.dim,
            "method": self.method,
            "n_centroids": self.n_centroids,
            "eps": self.eps,
            "classes": classes,
            "centroids": [self.centroids[c] for c in classes],
            "variances": [self.variances[c] for c in classes],
            "counts": [self.counts[c] for c in classes],
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["dim"], state["method"], state["n_centroids"]) != (
                self.dim, self.method, self.n_centroids):
            raise ValueError("statistics checkpoint does not match dim/method/n_centroids")
        self.eps = state["eps"]
        self._pending.clear()
        self.centroids = {c: v.clone() for c, v in zip(state["classes"], state["centroids"],
                                                       strict=True)}
        self.variances = {c: v.clone() for c, v in zip(state["classes"], state["variances"],
                                                       strict=True)}
        self.counts = {c: v.clone() for c, v in zip(state["classes"], state["counts"],
                                                    strict=True)}
