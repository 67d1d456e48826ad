"""Voronoi cells and losses: zero at the truth, label invariance, perturbation powers."""

import numpy as np
import pytest

from moe_theory.gates import Gate
from moe_theory.mechanism import flat_manifold_example
from moe_theory.settings import default_truth
from moe_theory.voronoi import voronoi_cells, voronoi_loss

# Two true atoms in d = 1: (beta0, beta1, a, b).
TRUE = np.array([0.0, 2.0, -2.0, 1.0, 0.5, -2.0, 1.5, -1.0])


def test_loss_is_zero_at_the_truth():
    res = voronoi_loss(TRUE, TRUE, dim=1)
    assert res.total[0] == 0.0 and res.loss_r[0] == 0.0
    np.testing.assert_array_equal(res.cell_sizes, [[1, 1]])


def test_loss_is_invariant_to_permuting_fitted_atoms():
    rng = np.random.default_rng(0)
    fitted = TRUE.reshape(2, 4) + rng.normal(0, 0.1, size=(2, 4))
    extra = np.array([[-0.7, 1.9, -2.1, 0.9]])  # a third atom: over-specified first cell
    atoms = np.vstack([fitted, extra])
    base = voronoi_loss(atoms.reshape(-1), TRUE, dim=1)
    for perm in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):
        res = voronoi_loss(atoms[perm].reshape(-1), TRUE, dim=1)
        assert res.total[0] == pytest.approx(base.total[0], rel=1e-14)
        assert res.loss_r[0] == pytest.approx(base.loss_r[0], rel=1e-14)


def test_cells_follow_nearest_true_atom_with_ties_to_smaller_index():
    true_omega = np.array([[0.0, 0.0], [2.0, 0.0]])
    fitted = np.array([[0.1, 0.0], [1.9, 0.0], [1.0, 0.0]])  # last one equidistant
    np.testing.assert_array_equal(voronoi_cells(fitted, true_omega), [0, 1, 0])


def hand_l1(fitted_atoms, true_atoms):
    """L_1 written out for d = 1 with an explicit cell assignment."""
    cells = [int(np.argmin([np.linalg.norm(f[1:] - t[1:]) for t in true_atoms]))
             for f in fitted_atoms]
    total = 0.0
    for j, t in enumerate(true_atoms):
        members = [f for f, c in zip(fitted_atoms, cells, strict=True) if c == j]
        total += abs(sum(np.exp(f[0]) for f in members) - np.exp(t[0]))
        p = 1 if len(members) == 1 else 2
        for f in members:
            total += np.exp(f[0]) * (abs(f[1] - t[1]) ** p + np.linalg.norm(f[2:] - t[2:]) ** p)
    return total


def test_l1_matches_hand_formula_for_exact_and_over_cells():
    rng = np.random.default_rng(4)
    true_atoms = TRUE.reshape(2, 4)
    for _ in range(5):
        fitted = np.vstack([true_atoms, true_atoms[:1]]) + rng.normal(0, 0.2, size=(3, 4))
        got = voronoi_loss(fitted.reshape(-1), TRUE, dim=1).total[0]
        assert got == pytest.approx(hand_l1(fitted, true_atoms), rel=1e-12)


@pytest.mark.parametrize("coord, exact_power, over_power", [
    (0, 1, 1),   # beta0 enters through the mass: |w - w*| ~ eps in both cell types
    (1, 1, 2),   # beta1: power 1 in an exact cell, 2 in an over-specified cell
    (2, 1, 2),   # a
    (3, 1, 2),   # b
])
def test_loss_scales_like_eps_to_the_right_power(coord, exact_power, over_power):
    true_atom = TRUE[:4]
    for n_atoms, power in ((1, exact_power), (2, over_power)):
        losses = []
        for eps in (1e-2, 1e-3):
            atoms = np.tile(true_atom, (n_atoms, 1))
            atoms[:, 0] -= np.log(n_atoms)  # masses add up to the true mass
            if coord == 0:
                atoms[0, 0] += eps
            else:
                atoms[:, coord] += eps * np.array([1.0, -1.0][:n_atoms])  # keep the mean
            losses.append(voronoi_loss(atoms.reshape(-1), true_atom, dim=1).total[0])
        slope = np.log(losses[0] / losses[1]) / np.log(10.0)
        assert slope == pytest.approx(power, abs=0.02)


def test_l1r_uses_one_exponent_everywhere():
    true_atom = TRUE[:4]
    atoms = true_atom + np.array([0.0, 0.1, 0.0, 0.0])
    assert voronoi_loss(atoms, true_atom, 1, r=2.0).loss_r[0] == pytest.approx(0.01, rel=1e-12)
    assert voronoi_loss(atoms, true_atom, 1, r=1.0).loss_r[0] == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("gate", ["linear", "norga"])
def test_flat_manifold_reproduces_g_exactly_with_positive_loss(gate):
    """docs/theory-background.md#identifiability: affine experts are not identifiable in an
    over-specified cell, any gate."""
    res = flat_manifold_example(default_truth(Gate(gate)), split=0.3, shift=0.5)
    assert res["max_abs_g_difference"] < 1e-12
    # w1 ||d1||^2 + w2 ||(w1/w2) d1||^2 with w* = 1, ||d1||^2 = 2 * 0.25
    assert res["voronoi_loss"] == pytest.approx(0.3 * 0.5 + 0.7 * (0.3 / 0.7) ** 2 * 0.5)
