"""E5 mechanism (moe_theory.near.mechanism): Fisher spectra of near-coincident prompts and their
exponents.

References are computed independently here: a two-exponential model whose degeneracy is known in
closed form, finite differences of the textbook g(x), and mpmath at 50 digits.
"""

import mpmath as mp
import numpy as np
import pytest

from moe_theory.gates import Gate
from moe_theory.model import textbook_regression
from moe_theory.near import mechanism as near


def _two_exponentials(t: float, nodes: int = 400) -> np.ndarray:
    """Weighted Jacobian of g(x) = w1 exp(c1 x) + w2 exp(c2 x) at w = 1/2, c = 1 +/- t.

    Columns: d/dw_i = exp(c_i x), d/dc_i = w_i x exp(c_i x). By Taylor expansion (Hermite
    divided differences at the two nodes c +/- t) the column space is
    span{f, f', t f'', t^3 f'''}, f = exp(c x): singular values ~ 1, 1, t, t^3, so the
    eigenvalues of I(t) vanish like t^0, t^0, t^2 and t^6.
    """
    x, w = near.quadrature(nodes)
    x = x[:, 0]
    cols = []
    for c in (1 + t, 1 - t):
        e = np.exp(c * x)
        cols += [e, 0.5 * x * e]
    return np.sqrt(w)[:, None] * np.stack(cols, axis=1)


def test_exponents_recovered_on_a_model_with_closed_form_degeneracy():
    ts = near.t_grid(0.4, 0.0025)
    lam = near.spectrum(_two_exponentials, ts)
    assert lam[-1, 0] < 1e-17 * lam[-1, -1]  # below an eigen-solver's floor on J^T J
    floor = near.resolution_floor(lam)
    fits = [near.fit_exponent(ts, lam[:, k], floor=floor) for k in range(4)]
    assert fits[0].p == pytest.approx(6.0, abs=0.05)
    assert fits[1].p == pytest.approx(2.0, abs=0.05)
    assert abs(fits[2].p) < 0.05 and abs(fits[3].p) < 0.05
    assert fits[0].resid_max < 0.05  # a straight line over the t used
    assert max(fits[0].t_used) < 0.01  # the smallest t enter the fit


def test_fit_exponent_uses_only_resolved_points_and_smallest_t():
    ts = np.geomspace(0.8, 0.01, 10)
    lam = 3.0 * ts**4
    lam[-2:] = 1e-40  # "below the float floor": must be ignored
    fit = near.fit_exponent(ts, lam, n_fit=4, floor=np.full(10, 1e-30))
    assert fit.p == pytest.approx(4.0, abs=1e-12)
    assert np.exp(fit.log_c) == pytest.approx(3.0, rel=1e-10)
    assert fit.t_used == tuple(sorted(ts[:-2])[:4])
    assert near.fit_exponent(ts[:2], lam[:2]) is None


def _fd_jacobian(truth, X, h=1e-5):
    theta = truth.theta
    cols = []
    for k in range(len(theta)):
        e = np.zeros_like(theta)
        e[k] = h
        cols.append((textbook_regression(X, theta + e, truth)
                     - textbook_regression(X, theta - e, truth)) / (2 * h))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("gate", [Gate("linear"), Gate("norga", "tanh"), Gate("norga", "gelu")])
def test_fisher_spectrum_matches_independent_finite_differences(gate):
    truth = near.near_truth(0.4, gate, "affine", split="both")
    X, w = near.quadrature(200)
    J = _fd_jacobian(truth, X)
    reference = np.linalg.eigvalsh(J.T @ (w[:, None] * J))
    lam = near.fisher_eigenvalues(truth, 200)
    big = reference > 1e-7 * reference[-1]  # finite differences resolve these
    np.testing.assert_allclose(lam[big], reference[big], rtol=1e-5)
    assert big.sum() >= 5


def _mp_eigenvalues(truth, nodes):
    """Eigenvalues of I at 50 digits: textbook g in mpmath, central differences with a 1e-22
    step (error ~1e-44), Gram matrix and symmetric eigen-solver in mpmath."""
    mp.mp.dps = 50
    pre = truth.pretrained
    X, w = near.quadrature(nodes)
    d = truth.dim
    theta = [mp.mpf(float(v)) for v in truth.theta]

    def g(x, th):
        logits = [mp.mpf(float(B[0, 0])) * x * x + mp.mpf(float(c))
                  for B, c in zip(pre.B, pre.c, strict=True)]
        outs = [mp.mpf(float(a[0])) * x + mp.mpf(float(b))
                for a, b in zip(pre.a, pre.b, strict=True)]
        for i in range(len(th) // (2 + 2 * d)):
            b0, b1, a, b = th[4 * i : 4 * i + 4]
            u = b1 * x
            logits.append(b0 + (u if truth.gate.kind == "linear" else u + mp.tanh(u)))
            outs.append(a * x + b)
        top = max(logits)
        e = [mp.exp(v - top) for v in logits]
        return sum(ei * oi for ei, oi in zip(e, outs, strict=True)) / sum(e)

    h = mp.mpf("1e-22")
    A = mp.matrix(len(w), len(theta))
    for q in range(len(w)):
        x = mp.mpf(float(X[q, 0]))
        sw = mp.sqrt(mp.mpf(float(w[q])))
        for k in range(len(theta)):
            up, down = list(theta), list(theta)
            up[k] += h
            down[k] -= h
            A[q, k] = sw * (g(x, up) - g(x, down)) / (2 * h)
    return np.array(sorted(float(v) for v in mp.eigsy(A.T * A, eigvals_only=True)))


@pytest.mark.parametrize("size, gate, t, smallest", [(2, "linear", 0.0125, 1e-22),
                                                     (3, "linear", 0.05, 1e-29),
                                                     (2, "norga", 0.0125, 1e-13)])
def test_smallest_singular_values_agree_with_mpmath(size, gate, t, smallest):
    truth = near.near_truth(t, Gate(gate), "affine", split="both", size=size)
    reference = _mp_eigenvalues(truth, 80)
    lam = near.fisher_eigenvalues(truth, 80)
    assert reference[0] < smallest
    resolved = lam > near.resolution_floor(lam[None])[0]
    # above the floor: float64 agrees with 50 digits; below it the value is flagged, not used
    np.testing.assert_allclose(lam[resolved][:3], reference[resolved][:3], rtol=2e-4)
    assert np.all(reference[~resolved] < 1e-27)
    if smallest < 1e-20:
        # far below J^T J's round-off floor: an eigen-solver on J^T J could not find them
        A = near.weighted_jacobian(truth, 80)
        naive = np.linalg.eigvalsh(A.T @ A)
        assert abs(naive[0] - reference[0]) > 100 * reference[0]


@pytest.mark.parametrize("gate", [Gate("linear"), Gate("norga", "tanh")])
@pytest.mark.parametrize("split", ["a", "b", "both"])
def test_t0_split_affine_experts_have_an_exactly_flat_direction(gate, split):
    truth = near.near_truth(0.0, gate, "affine", split=split)
    A = near.weighted_jacobian(truth)
    s = np.linalg.svd(A, compute_uv=False)
    assert s[-1] < 1e-15 * s[0]
    # the flat manifold of docs/theory-background.md#identifiability: move the two experts in
    # opposite directions
    for coord in (2, 3):  # a, b inside each atom's (beta0, beta1, a, b)
        v = np.zeros(8)
        v[coord], v[4 + coord] = 1.0, -1.0
        assert np.linalg.norm(A @ v) < 1e-15 * s[0]
    # tanh experts have no such direction
    s_tanh = np.linalg.svd(near.weighted_jacobian(near.near_truth(0.0, gate, "tanh",
                                                                  split=split)),
                           compute_uv=False)
    assert s_tanh[-1] > 1e-6 * s_tanh[0]


def test_linear_gating_b_split_has_an_extra_exact_zero_from_the_pde():
    """At t = 0 with only b split, d2F/dbeta1 db = dF/da makes the antisymmetric beta_1
    direction a combination of a-directions under linear gating only."""
    zero = {}
    for gate in (Gate("linear"), Gate("norga", "tanh")):
        lam = near.fisher_eigenvalues(near.near_truth(0.0, gate, "affine", split="b"))
        zero[gate.kind] = int((lam <= near.resolution_floor(lam[None])[0]).sum())
    assert zero == {"linear": 4, "norga": 3}


def test_near_truth_layout():
    truth = near.near_truth(0.3, Gate("norga"), "affine", split="a", size=3, base=(2, -2, 1))
    np.testing.assert_allclose(np.exp(truth.beta0), [1 / 3] * 3)
    np.testing.assert_allclose(truth.beta1[:, 0], [1.7, 2.0, 2.3])
    np.testing.assert_allclose(truth.a[:, 0], [-2.5, -2.0, -1.5])
    np.testing.assert_allclose(truth.b, [1, 1, 1])
    with pytest.raises(ValueError, match="split must be one of"):
        near.near_truth(0.3, Gate("norga"), split="c")
    with pytest.raises(ValueError, match="cluster size"):
        near.near_truth(0.3, Gate("norga"), size=4)


def test_mechanism_table_linear_exponent_larger_with_split_experts():
    ts = near.t_grid()
    out = {}
    for gate, act in (("linear", "tanh"), ("norga", "tanh")):
        case = near.CaseSpec("default", 2, "affine", "both", gate, act)
        out[gate] = near.analyse_case(case, ts, noise_sd=0.001)
    assert out["linear"]["exponents"][0]["p"] == pytest.approx(8.0, abs=0.1)
    assert out["norga"]["exponents"][0]["p"] == pytest.approx(4.0, abs=0.1)
    # n* = nu / (lambda_min eps^2), recomputed from the stored eigenvalue
    lam = out["linear"]["lambda_smallest"][5][0]
    assert out["linear"]["n_star"][5] == pytest.approx(0.001**2 / (lam * 0.01))


def test_fisher_constant_closed_form_and_monte_carlo_agree_in_order():
    truth = near.near_truth(0.4, Gate("norga"), "affine")
    fc = near.fisher_constant(truth, 0.001, n_draws=20000)
    # C_sum sums |component| where C takes norms: C <= C_sum, and within a factor 1.5 here
    assert fc["C"] <= fc["C_sum"] <= 1.5 * fc["C"]
    assert fc["C_sum"] == pytest.approx(near.c_sum(truth, 0.001))
    cov = near.loss_covariance(truth, 0.001)
    X, w = near.quadrature()
    from moe_theory.model import regression_and_jacobian

    _, J = regression_and_jacobian(X, truth.theta, truth)
    np.testing.assert_allclose(cov @ (J.T @ (w[:, None] * J)), 0.001**2 * np.eye(8), atol=1e-6)
