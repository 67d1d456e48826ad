"""Correctness of the fast paths of the model and the fitter (no timings here)."""

import numpy as np
import pytest

from moe_theory import estimate, model
from moe_theory.estimate import fit_batched, near_truth_starts
from moe_theory.gates import Gate
from moe_theory.model import collapse_pretrained, regression, regression_and_jacobian
from moe_theory.settings import default_truth
from moe_theory.simulate import simulate


def direct_g(X, theta, m):
    """Softmax over all N + L' experts, written out with a max shift (slow, obvious)."""
    lg, out = m.pretrained.logits_and_outputs(X)
    b0, b1, a, b = model.unpack_theta(theta, m.dim)
    u = X @ b1.T
    logits = np.concatenate([lg, m.gate.phi(u) + b0], axis=-1)
    outs = np.concatenate([out, model.expert_output(X @ a.T + b, m.expert)], axis=-1)
    w = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (w * outs).sum(axis=-1) / w.sum(axis=-1)


@pytest.mark.parametrize("expert", ["affine", "tanh"])
@pytest.mark.parametrize("gate", [Gate("linear"), Gate("norga", "tanh", alpha=0.7, tau=1.9),
                                  Gate("norga", "sigmoid")])
def test_collapsed_pretrained_block_gives_the_full_softmax(gate, expert):
    rng = np.random.default_rng(0)
    m = default_truth(Gate("norga"), expert)
    m = m.with_theta(rng.normal(size=8) * 2)  # two prompt atoms
    m = model.replace(m, gate=gate)
    X = rng.uniform(-1, 1, size=(50, 1))
    np.testing.assert_allclose(regression(X, m), direct_g(X, m.theta, m), rtol=1e-13, atol=1e-14)
    lse, mean = collapse_pretrained(*m.pretrained.logits_and_outputs(X))
    lg, out = m.pretrained.logits_and_outputs(X)
    np.testing.assert_allclose(lse, np.log(np.exp(lg).sum(-1)), rtol=1e-14)


@pytest.mark.parametrize("dim", [1, 3])
def test_expert_by_expert_collapse_equals_the_collapse_of_the_full_arrays(dim):
    rng = np.random.default_rng(dim)
    N = 3
    B = rng.normal(size=(N, dim, dim))
    pre = model.Pretrained(B=B + np.swapaxes(B, 1, 2), c=rng.normal(size=N),
                           a=rng.normal(size=(N, dim)), b=rng.normal(size=N))
    X = rng.uniform(-2, 2, size=(4, 60, dim))
    lse, mean = pre.collapsed(X)
    lg, out = pre.logits_and_outputs(X)
    # independent: the log-sum-exp and softmax average written out
    np.testing.assert_allclose(lse, np.log(np.exp(lg).sum(-1)), rtol=1e-13)
    w = np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)
    np.testing.assert_allclose(mean, (w * out).sum(-1), rtol=1e-12, atol=1e-13)
    ref_lse, ref_mean = collapse_pretrained(lg, out)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-14, atol=1e-15)


def test_overflowing_samples_use_the_shifted_softmax_and_do_not_touch_their_mates():
    m = default_truth(Gate("norga"))
    X = np.linspace(-1, 1, 9)[:, None]
    thetas = np.array([[800.0, 2.0, -2.0, 1.0], [0.3, 2.0, -2.0, 1.0], [705.0, 3.0, 1.0, 0.5]])
    g_batch, J_batch = regression_and_jacobian(X, thetas, m)
    for r, th in enumerate(thetas):
        g_alone, J_alone = regression_and_jacobian(X, th, m)
        np.testing.assert_array_equal(g_alone, g_batch[r])  # bit for bit
        np.testing.assert_array_equal(J_alone, J_batch[r])
        np.testing.assert_allclose(g_alone, direct_g(X, th, m), rtol=1e-12, atol=1e-14)
    assert np.isfinite(J_batch).all()


def test_sample_blocks_inside_the_model_do_not_change_numbers(monkeypatch):
    rng = np.random.default_rng(1)
    m = default_truth(Gate("norga"), "tanh")
    X = rng.uniform(-1, 1, size=(3, 1000, 1))
    theta = rng.normal(size=(3, 4))
    g, J = regression_and_jacobian(X, theta, m)
    monkeypatch.setattr(model, "_SAMPLE_BLOCK", 77)
    g2, J2 = regression_and_jacobian(X, theta, m)
    np.testing.assert_array_equal(g, g2)
    np.testing.assert_array_equal(J, J2)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("bound", [None, 5.0])
def test_fitter_numbers_do_not_depend_on_subset_caching_or_batch_mates(monkeypatch, bound,
                                                                        backend):
    truth = default_truth(Gate("linear"))
    structure = truth.with_theta(np.zeros(8))  # over-specified: many rejected steps
    X, Y = simulate(truth, 700, list(range(5)), seed=4, setting="perf-test")
    rng = np.random.default_rng(4)
    starts = np.stack([near_truth_starts(truth, 2, 1, rng, bound=bound)[0] for _ in range(5)])
    ref = fit_batched(X, Y, starts, structure, bound=bound, max_iter=60, chunk=256,
                      backend=backend)
    monkeypatch.setattr(estimate, "_SUBSET_CACHE_BYTES", 0)  # copy subsets chunk by chunk
    lazy = fit_batched(X, Y, starts, structure, bound=bound, max_iter=60, chunk=256,
                      backend=backend)
    for name in ("theta", "rss", "n_iter", "converged"):
        np.testing.assert_array_equal(getattr(ref, name), getattr(lazy, name))
    for r in (0, 3):
        alone = fit_batched(X[r : r + 1], Y[r : r + 1], starts[r : r + 1], structure,
                            bound=bound, max_iter=60, chunk=256, backend=backend)
        np.testing.assert_array_equal(alone.theta[0], ref.theta[r])
        assert alone.rss[0] == ref.rss[r] and alone.n_iter[0] == ref.n_iter[r]
