"""Gaussian class statistics against numpy; sampling reproduces mean and covariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl.stats.gaussian import GaussianClassStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed: int = 0, n: int = 300, d: int = 5):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    x = rng.standard_normal((n, d)) @ mix + rng.standard_normal(d) * 3
    y = rng.integers(0, 3, size=n)
    return x.astype(np.float32), y


def test_matches_numpy_mean_and_unbiased_covariance() -> None:
    x, y = _data()
    stats = GaussianClassStats(5, "covariance", eps=1e-4)
    for chunk in np.array_split(np.arange(len(y)), 7):  # several mixed-class batches
        stats.update(torch.from_numpy(x[chunk]), torch.from_numpy(y[chunk]))
    for c in range(3):
        xc = x[y == c].astype(np.float64)
        np.testing.assert_allclose(stats.mean(c).numpy(), xc.mean(0), rtol=1e-10, atol=1e-10)
        expected = np.cov(xc, rowvar=False, ddof=1) + 1e-4 * np.eye(5)
        np.testing.assert_allclose(stats.covariance(c).numpy(), expected, rtol=1e-9, atol=1e-9)
        assert stats.count[c].dtype == torch.float64


def test_variance_method_keeps_the_diagonal() -> None:
    x, y = _data(1)
    stats = GaussianClassStats(5, "variance", eps=0.0)
    stats.update(torch.from_numpy(x), torch.from_numpy(y))
    xc = x[y == 2].astype(np.float64)
    np.testing.assert_allclose(stats.covariance(2).numpy(), np.diag(xc.var(0, ddof=1)), rtol=1e-9)


def test_sampling_reproduces_moments_and_is_seeded() -> None:
    x, y = _data(2)
    stats = GaussianClassStats(5, "covariance", eps=1e-4)
    stats.update(torch.from_numpy(x), torch.from_numpy(y))
    feats, labels = stats.sample([0, 2], 40000, torch.Generator().manual_seed(3))
    assert feats.dtype == torch.float32 and labels.tolist()[:1] == [0]
    for c in (0, 2):
        s = feats[labels == c].double().numpy()
        cov = stats.covariance(c).numpy()
        scale = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(s.mean(0), stats.mean(c).numpy(), atol=0.05 * scale.max())
        np.testing.assert_allclose(np.cov(s, rowvar=False), cov, atol=0.05 * cov.max())
    again, _ = stats.sample([0, 2], 40000, torch.Generator().manual_seed(3))
    assert torch.equal(feats, again)


def test_state_round_trip_and_too_few_samples() -> None:
    x, y = _data(3)
    stats = GaussianClassStats(5)
    stats.update(torch.from_numpy(x), torch.from_numpy(y))
    other = GaussianClassStats(5)
    other.load_state_dict(stats.state_dict())
    assert torch.equal(other.covariance(1), stats.covariance(1))
    lonely = GaussianClassStats(5)
    lonely.update(torch.zeros(1, 5), torch.tensor([7]))
    with pytest.raises(ValueError, match="at least 2"):
        lonely.covariance(7)


# ---------------------------------------------------------------- multi-centroid (HiDe-Prompt)
def _sorted_rows(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a[np.lexsort(a.T[::-1])]


def test_multi_centroid_matches_hand_computed_kmeans() -> None:
    from cl.stats.gaussian import build_class_stats

    # class 0: three far-apart groups -> k-means with k = 3 finds exactly these clusters
    group_a = [[0.0, 0.0], [0.0, 2.0]]  # mean (0, 1), biased var (0, 1)
    group_b = [[10.0, 10.0], [12.0, 10.0]]  # mean (11, 10), var (1, 0)
    group_c = [[-10.0, 5.0], [-10.0, 7.0], [-10.0, 9.0]]  # mean (-10, 7), var (0, 8/3)
    # class 1: a lone point (variance 0: skipped when sampling) and two pairs
    lone = [[100.0, 100.0]]
    pair1 = [[0.0, 0.0], [2.0, 0.0]]  # mean (1, 0), var (1, 0)
    pair2 = [[50.0, -50.0], [50.0, -48.0]]  # mean (50, -49), var (0, 1)
    x = torch.tensor(group_a + group_b + group_c + lone + pair1 + pair2)
    y = torch.tensor([0] * 7 + [1] * 5)
    stats = build_class_stats(2, "multi-centroid", n_centroids=3, seed=0)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    stats.update(x[perm[:5]], y[perm[:5]])  # two batches, shuffled
    stats.update(x[perm[5:]], y[perm[5:]])
    means = stats.means([0])
    np.testing.assert_allclose(_sorted_rows(means), [[-10, 7], [0, 1], [11, 10]], atol=1e-12)
    order = np.lexsort(means.numpy().T[::-1])
    np.testing.assert_allclose(stats.variances[0].numpy()[order],
                               [[0, 8 / 3], [0, 1], [1, 0]], atol=1e-12)
    np.testing.assert_allclose(_sorted_rows(stats.means([1])),
                               [[1, 0], [50, -49], [100, 100]], atol=1e-12)
    assert stats.means([0, 1]).shape == (6, 2)  # every centroid is an old-class mean
    # sampling: n per usable cluster from N(mu, diag(var) + 1e-4 I), the lone point skipped
    n = 4000
    feats, labels = stats.sample([1, 0], n, torch.Generator().manual_seed(1))
    assert labels.tolist() == [1] * (2 * n) + [0] * (3 * n)
    ones = feats[: 2 * n].double()
    assert float(ones.max()) < 60  # nothing drawn around the lone point (100, 100)
    expected = {(1.0, 0.0): (1.0, 0.0), (50.0, -49.0): (0.0, 1.0)}
    for j in range(2):
        block = ones[j * n:(j + 1) * n]
        mu = tuple(float(v) for v in block.mean(0).round())
        np.testing.assert_allclose(block.mean(0).numpy(), mu, atol=0.1)
        np.testing.assert_allclose(block.var(0).numpy(), np.add(expected[mu], 1e-4), rtol=0.1,
                                   atol=2e-3)
    # same seed, same clusters and samples; state round trip
    again = build_class_stats(2, "multi-centroid", n_centroids=3, seed=0)
    again.load_state_dict(stats.state_dict())
    torch.testing.assert_close(again.sample([0], 5, torch.Generator().manual_seed(2)),
                               stats.sample([0], 5, torch.Generator().manual_seed(2)))
