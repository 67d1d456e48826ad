"""Gaussian class statistics at the edges: the exact sampling rule, the eigen fallback for an
indefinite covariance, cache invalidation, two-sample classes, empty requests, checkpoints that
do not fit, and the (single-process) all-reduce path."""

from __future__ import annotations

import pytest
import torch

from cl.stats.gaussian import GaussianClassStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _filled(method: str = "covariance", eps: float = 1e-4, seed: int = 0, d: int = 4,
            n: int = 50) -> GaussianClassStats:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 2.0
    y = torch.arange(n) % 3
    stats = GaussianClassStats(d, method, eps=eps)
    stats.update(x, y)
    return stats


def test_defaults_and_unknown_method_message():
    stats = GaussianClassStats(3)
    assert stats.method == "covariance" and stats.eps == 1e-4
    with pytest.raises(ValueError, match=r"^stats method must be one of covariance, variance; "
                                         r"got 'full'$"):
        GaussianClassStats(3, "full")  # type: ignore[arg-type]


def test_jitter_is_exactly_eps_on_the_diagonal_in_float64():
    stats = GaussianClassStats(2)
    stats.update(torch.tensor([[0.0, 0.0], [2.0, 4.0]]), torch.tensor([0, 0]))
    exact = torch.tensor([[2.0, 4.0], [4.0, 8.0]], dtype=torch.float64)
    assert torch.equal(stats.covariance(0, jitter=False), exact)
    assert torch.equal(stats.covariance(0), exact + 1e-4 * torch.eye(2, dtype=torch.float64))


def test_sampling_is_mean_plus_cholesky_factor_times_standard_normals():
    stats = _filled()
    feats, labels = stats.sample([2, 0], 5, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    want = []
    for c in (2, 0):
        z = torch.randn(5, 4, generator=g, dtype=torch.float64)
        chol = torch.linalg.cholesky(stats.covariance(c))
        want.append(stats.mean(c) + z @ chol.T)
    assert torch.equal(feats, torch.cat(want).float())
    assert labels.dtype == torch.int64 and labels.tolist() == [2] * 5 + [0] * 5


def test_indefinite_covariance_falls_back_to_the_clamped_eigen_root():
    """Two samples in 4 dimensions and no jitter: a rank-1 covariance, Cholesky fails."""
    stats = GaussianClassStats(4, eps=0.0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    stats.update(x, torch.tensor([5, 5]))
    cov = stats.covariance(5)
    factor = stats._cholesky(5)
    torch.testing.assert_close(factor @ factor.T, cov, rtol=0, atol=1e-12)
    feats, _ = stats.sample([5], 20, torch.Generator().manual_seed(0))
    assert torch.isfinite(feats).all()
    # every sample lies on the line through the two points
    direction = (x[1] - x[0]) / (x[1] - x[0]).norm()
    centred = feats.double() - stats.mean(5)
    residual = centred - (centred @ direction.double())[:, None] * direction.double()
    assert residual.abs().max() < 1e-5


def test_new_data_invalidates_the_cached_factor():
    stats = _filled()
    stats.sample([1], 2, torch.Generator().manual_seed(0))  # caches the factor of class 1
    stats.update(100.0 * torch.randn(30, 4, generator=torch.Generator().manual_seed(1)),
                 torch.ones(30, dtype=torch.long))
    factor = stats._cholesky(1)
    torch.testing.assert_close(factor @ factor.T, stats.covariance(1), rtol=1e-10, atol=1e-8)


def test_two_samples_are_enough_for_a_covariance():
    stats = GaussianClassStats(2, eps=0.0)
    stats.update(torch.tensor([[0.0, 0.0], [2.0, 4.0]]), torch.tensor([0, 0]))
    torch.testing.assert_close(stats.covariance(0),
                               torch.tensor([[2.0, 4.0], [4.0, 8.0]], dtype=torch.float64))


def test_empty_requests_give_empty_tensors_of_the_right_shape():
    stats = _filled()
    feats, labels = stats.sample([], 7, torch.Generator().manual_seed(0))
    assert feats.shape == (0, 4) and labels.shape == (0,) and labels.dtype == torch.int64
    means = stats.means([])
    assert means.shape == (0, 4) and means.dtype == torch.float64
    both = stats.means([2, 0])
    assert torch.equal(both, torch.stack([stats.mean(2), stats.mean(0)]))


@pytest.mark.parametrize("change", ["dim", "method"])
def test_checkpoint_of_another_dim_or_method_is_refused(change):
    state = _filled().state_dict()
    other = GaussianClassStats(5) if change == "dim" else GaussianClassStats(4, "variance")
    with pytest.raises(ValueError, match="^statistics checkpoint does not match dim/method$"):
        other.load_state_dict(state)


@pytest.mark.parametrize("key", ["count", "sum", "sum_sq"])
def test_checkpoint_with_a_missing_class_entry_is_refused(key):
    state = _filled().state_dict()
    state[key] = state[key][:-1]
    with pytest.raises(ValueError):
        GaussianClassStats(4).load_state_dict(state)


def test_loading_restores_eps_and_drops_cached_factors():
    source = _filled(eps=0.5)
    target = _filled(seed=3, eps=1e-4)
    target.sample([0], 1, torch.Generator().manual_seed(0))  # a cached factor of other data
    target.load_state_dict(source.state_dict())
    assert target.eps == 0.5
    torch.testing.assert_close(target._cholesky(0), torch.linalg.cholesky(source.covariance(0)))


def test_all_reduce_in_a_one_process_group_keeps_sums_and_fills_missing_classes(tmp_path):
    import torch.distributed as dist

    stats = _filled()
    before = {c: (stats.count[c].clone(), stats.sum[c].clone()) for c in stats.classes}
    stats.sample([0], 1, torch.Generator().manual_seed(0))
    stats.all_reduce()  # no process group: a no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        stats.all_reduce([0, 1, 2, 7])
        stats.all_reduce()
    finally:
        dist.destroy_process_group()
    for c, (count, total) in before.items():
        assert torch.equal(stats.count[c], count) and torch.equal(stats.sum[c], total)
    assert stats.classes == [0, 1, 2, 7]
    assert float(stats.count[7]) == 0.0 and stats.sum[7].shape == (4,)
    assert stats.sum_sq[7].shape == (4, 4) and not stats.sum_sq[7].any()
    assert stats.sum[7].dtype == stats.sum_sq[7].dtype == torch.float64
    assert 0 not in stats._chol  # reduced statistics: the cached factor is stale
    variance = GaussianClassStats(4, "variance")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store2", rank=0,
                            world_size=1)
    try:
        variance.all_reduce([3])
    finally:
        dist.destroy_process_group()
    assert variance.sum_sq[3].shape == (4,)
    assert variance.count[3].dtype == variance.sum_sq[3].dtype == torch.float64
