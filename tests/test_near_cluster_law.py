"""Cluster-size law (moe_theory.near.cluster_law): the arbitrary-precision Fisher spectrum of
k-atom clusters, checked against independent computations.

* the mpmath model against the project's float64 model (:mod:`moe_theory.model`) where float64
  is accurate (the largest eigenvalues, two atoms);
* for k = 4 at one t, the smallest eigenvalues and the exponent between two t against a Fisher
  matrix built from a *numerical* gradient (mpmath differentiation of the regression function)
  at higher precision.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from moe_theory.gates import Gate
from moe_theory.near import cluster_law as law
from moe_theory.near import mechanism as near

NODES = 40  # > 4k parameters; the same nodes for both computations


def numerical_gradient(cluster: law.Cluster, x):
    """d g / d theta by mpmath's numerical differentiation, one parameter at a time."""
    atoms = [list(a) for a in cluster.atoms()]
    out = []
    for i in range(cluster.size):
        for j in range(4):
            def g_of(v, i=i, j=j):
                moved = [list(a) for a in atoms]
                moved[i][j] = v
                return law.regression(cluster, x, [tuple(a) for a in moved])

            out.append(mpmath.diff(g_of, atoms[i][j]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("gate", [Gate("linear"), Gate("norga", "tanh")])
def test_mpmath_model_matches_the_float64_model_for_two_atoms(gate):
    lam = np.array([float(v) for v in law.eigenvalues(law.Cluster(2, 0.4, gate, "both"),
                                                      nodes=500, dps=40)])
    ref = near.fisher_eigenvalues(near.near_truth(0.4, gate, "affine", split="both"))
    np.testing.assert_allclose(lam[-6:], ref[-6:], rtol=1e-9)
    np.testing.assert_allclose(lam[0], ref[0], rtol=1e-6)  # 1e-12 of the largest: float64 ok


@pytest.mark.slow
def test_k4_exponents_against_a_numerical_gradient_at_higher_precision():
    gate = Gate("linear")
    ts = (0.02, 0.04)
    mine, ref = [], []
    for t in ts:
        cluster = law.Cluster(4, t, gate, "both")
        mine.append(law.eigenvalues(cluster, nodes=NODES, dps=law.DPS))
        with mpmath.workdps(law.DPS + 40):
            fisher = law.fisher_matrix(cluster, NODES, grad=numerical_gradient)
            ref.append(sorted(mpmath.eigsy(fisher, eigvals_only=True)))
    for a, b in zip(mine, ref, strict=True):
        for j in range(4):  # the four smallest, down to ~1e-40
            assert float(abs(a[j] / b[j] - 1)) < 1e-8, (j, a[j], b[j])
    assert float(mine[0][0] / mine[0][-1]) < 1e-30  # below what float64 resolves
    p_mine = float(mpmath.log(mine[1][0] / mine[0][0]) / mpmath.log(2))
    p_ref = float(mpmath.log(ref[1][0] / ref[0][0]) / mpmath.log(2))
    assert p_mine == pytest.approx(p_ref, abs=1e-8)
    assert 12 < p_mine < 18  # between k = 3 (~10) and k = 5 (~20) of the table


def test_exponent_fit_recovers_a_known_power_with_a_zero_width_interval():
    ts = np.geomspace(0.01, 0.04, 5)
    e = law.fit_exponent(ts, np.log(3.0) + 7.0 * np.log(ts))
    lo, hi = e.conf_int()
    assert e.p == pytest.approx(7.0, abs=1e-10) and hi - lo < 1e-8
    bent = law.fit_exponent(ts, 7.0 * np.log(ts) + 0.3 * np.log(ts) ** 2)
    lo, hi = bent.conf_int()
    assert lo < bent.p < hi and hi - lo > 0.1


def test_too_few_digits_are_refused():
    with pytest.raises(ArithmeticError, match="floor of 30 digits"):
        law.eigenvalues(law.Cluster(3, 0.01, Gate("linear"), "both"), nodes=NODES, dps=30)
