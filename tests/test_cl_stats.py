"""Gaussian class statistics against numpy; sampling reproduces mean and covariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl.stats import GaussianClassStats

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
