"""Gates, the regression function and its Jacobian against slow explicit formulas."""

import math

import numpy as np
import pytest

from moe_theory.gates import Gate, activation, activation_derivative, quadratic_scores
from moe_theory.model import PrefixMoE, Pretrained, regression, regression_and_jacobian
from moe_theory.settings import default_pretrained, default_truth


def slow_sigma(u: float, kind: str) -> float:
    if kind == "tanh":
        return math.tanh(u)
    if kind == "sigmoid":
        return 1.0 / (1.0 + math.exp(-u))
    return u * 0.5 * (1.0 + math.erf(u / math.sqrt(2.0)))


@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "gelu"])
def test_activation_and_derivatives_match_scalar_formulas(kind):
    u = np.linspace(-4, 4, 41)
    expected = [slow_sigma(float(v), kind) for v in u]
    np.testing.assert_allclose(activation(u, kind), expected, rtol=1e-13, atol=1e-15)
    h = 1e-5
    fd1 = [(slow_sigma(v + h, kind) - slow_sigma(v - h, kind)) / (2 * h) for v in u]
    fd2 = [(slow_sigma(v + h, kind) - 2 * slow_sigma(v, kind) + slow_sigma(v - h, kind)) / h**2
           for v in u]
    np.testing.assert_allclose(activation_derivative(u, kind), fd1, atol=1e-9)
    np.testing.assert_allclose(activation_derivative(u, kind, 2), fd2, atol=2e-5)


@pytest.mark.parametrize("kind", ["tanh", "sigmoid", "gelu"])
def test_norga_gate_is_residual_plus_scaled_activation(kind):
    gate = Gate("norga", kind, alpha=0.7, tau=1.9)
    u = np.array([-2.0, -0.3, 0.0, 0.4, 3.0])
    expected = [v + 0.7 * slow_sigma(1.9 * v, kind) for v in u]
    np.testing.assert_allclose(gate.phi(u), expected, rtol=1e-14)
    h = 1e-6
    np.testing.assert_allclose(gate.dphi(u), (gate.phi(u + h) - gate.phi(u - h)) / (2 * h),
                               atol=1e-8)
    np.testing.assert_allclose(Gate("linear").phi(u), u)
    np.testing.assert_allclose(Gate("linear").dphi(u), 1.0)


def test_unknown_gate_or_activation_is_rejected_with_allowed_values():
    with pytest.raises(ValueError, match="linear, norga"):
        Gate("softmax")
    with pytest.raises(ValueError, match="tanh, sigmoid, gelu"):
        Gate("norga", "relu")


def test_quadratic_scores_match_loop():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 3))
    B = rng.normal(size=(2, 3, 3))
    c = rng.normal(size=2)
    out = quadratic_scores(X, B, c)
    for i in range(5):
        for j in range(2):
            assert out[i, j] == pytest.approx(X[i] @ B[j] @ X[i] + c[j], rel=1e-12)


def random_model(rng, dim=2, n_pre=3, n_prompts=2, gate=None, expert="affine"):
    pre = Pretrained(rng.normal(size=(n_pre, dim, dim)) * 0.5, rng.normal(size=n_pre),
                     rng.normal(size=(n_pre, dim)), rng.normal(size=n_pre))
    return PrefixMoE(pre, rng.normal(size=n_prompts), rng.normal(size=(n_prompts, dim)),
                     rng.normal(size=(n_prompts, dim)), rng.normal(size=n_prompts),
                     gate=gate or Gate("norga", "sigmoid", 1.3, 0.8), expert=expert)


def slow_regression(x, m):
    """g(x) for one input by explicit exponentials (fine for moderate logits)."""
    num, den = 0.0, 0.0
    for j in range(m.pretrained.c.shape[0]):
        e = math.exp(x @ m.pretrained.B[j] @ x + m.pretrained.c[j])
        num += e * (m.pretrained.a[j] @ x + m.pretrained.b[j])
        den += e
    for i in range(m.n_prompts):
        u = float(m.beta1[i] @ x)
        e = math.exp(float(m.gate.phi(np.array(u))) + m.beta0[i])
        z = float(m.a[i] @ x + m.b[i])
        num += e * (z if m.expert == "affine" else math.tanh(z))
        den += e
    return num / den


@pytest.mark.parametrize("expert", ["affine", "tanh"])
@pytest.mark.parametrize("gate", [Gate("linear"), Gate("norga", "tanh"), Gate("norga", "gelu")])
def test_regression_matches_slow_loop(gate, expert):
    rng = np.random.default_rng(1)
    m = random_model(rng, gate=gate, expert=expert)
    X = rng.uniform(-1, 1, size=(20, 2))
    np.testing.assert_allclose(regression(X, m), [slow_regression(x, m) for x in X], rtol=1e-12)


def test_regression_is_stable_for_huge_logits():
    m = default_truth(Gate("linear"))
    big = m.with_theta(np.array([800.0, 2.0, -2.0, 1.0]))  # exp(800) overflows float64
    X = np.linspace(-1, 1, 7)[:, None]
    g = regression(X, big)
    np.testing.assert_allclose(g, -2 * X[:, 0] + 1, rtol=1e-12)  # all weight on the prompt


def test_batched_regression_equals_per_replicate():
    rng = np.random.default_rng(2)
    m = random_model(rng)
    thetas = rng.normal(size=(4, m.theta.size))
    X = rng.uniform(-1, 1, size=(4, 30, 2))
    g = regression(X, m.with_theta(thetas))
    for r in range(4):
        np.testing.assert_allclose(g[r], regression(X[r], m.with_theta(thetas[r])), rtol=1e-14)


@pytest.mark.parametrize("expert", ["affine", "tanh"])
@pytest.mark.parametrize("gate", [Gate("linear"), Gate("norga", "tanh"), Gate("norga", "sigmoid"),
                                  Gate("norga", "gelu")])
@pytest.mark.parametrize("dim", [1, 2])
def test_analytic_jacobian_matches_central_differences(gate, expert, dim):
    rng = np.random.default_rng(3)
    m = random_model(rng, dim=dim, gate=gate, expert=expert)
    X = rng.uniform(-1, 1, size=(25, dim))
    theta = m.theta
    _, J = regression_and_jacobian(X, theta, m)
    h = 1e-6
    fd = np.empty_like(J)
    for k in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[k] += h
        tm[k] -= h
        fd[:, k] = (regression(X, m.with_theta(tp)) - regression(X, m.with_theta(tm))) / (2 * h)
    rel = np.max(np.abs(J - fd)) / np.max(np.abs(J))
    assert rel < 1e-7


def test_default_truth_is_the_spec_design():
    t = default_truth(Gate("norga"))
    np.testing.assert_array_equal(t.theta, [0.0, 2.0, -2.0, 1.0])
    pre = default_pretrained()
    assert pre.B[:, 0, 0].tolist() == [1.0, -1.0] and pre.b.tolist() == [0.0, 1.0]


def test_norga_truth_with_vanishing_beta1_is_rejected():
    from moe_theory.settings import check_identifiable_gate

    t = default_truth(Gate("norga")).with_theta(np.array([0.0, 0.05, -2.0, 1.0]))
    with pytest.raises(ValueError, match="locally linear"):
        check_identifiable_gate(t)
    check_identifiable_gate(default_truth(Gate("linear")).with_theta(np.array([0, 0.05, -2, 1.0])))
