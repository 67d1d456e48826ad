"""Voronoi losses beyond the formula tests: the parts one by one, batches of fits, the default
exponent, and masses that overflow."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from moe_theory.voronoi import voronoi_loss

TRUE = np.array([0.0, 2.0, -2.0, 1.0, 0.5, -2.0, 1.5, -1.0])  # two atoms in d = 1


def test_parts_by_hand_in_an_exact_cell():
    """One fitted atom per true atom; the first off by (log 2, 0.1, 0.3, 0.4), the second
    exact: mass |2 - 1| = 1, beta1 2 * 0.1, eta 2 * ||(0.3, 0.4)|| = 2 * 0.5."""
    fitted = TRUE + np.array([np.log(2.0), 0.1, 0.3, 0.4, 0, 0, 0, 0])
    res = voronoi_loss(fitted, TRUE, 1)
    assert res.mass[0] == pytest.approx(1.0, rel=1e-12)
    assert res.beta1[0] == pytest.approx(0.2, rel=1e-12)
    assert res.eta[0] == pytest.approx(1.0, rel=1e-12)
    assert res.total[0] == pytest.approx(2.2, rel=1e-12)
    np.testing.assert_array_equal(res.cell_sizes, [[1, 1]])


def test_parts_by_hand_in_an_over_specified_cell():
    """Two fitted atoms (masses 0.5 each) in the first cell, b off by +-0.2: exponent 2."""
    atoms = np.array([[np.log(0.5), 2.0, -2.0, 1.2], [np.log(0.5), 2.0, -2.0, 0.8],
                      TRUE[4:]])
    res = voronoi_loss(atoms.reshape(-1), TRUE, 1)
    assert res.mass[0] == pytest.approx(0.0, abs=1e-15)
    assert res.beta1[0] == 0.0
    assert res.eta[0] == pytest.approx(2 * 0.5 * 0.2**2, rel=1e-12)
    np.testing.assert_array_equal(res.cell_sizes, [[2, 1]])


def test_a_batch_of_fits_equals_each_fit_alone():
    rng = np.random.default_rng(5)
    batch = np.stack([
        TRUE + rng.normal(0, 0.2, 8),
        np.concatenate([TRUE[:4] + 0.1, TRUE[:4] - 0.1]),  # both atoms in cell 0
        np.concatenate([TRUE[4:], TRUE[:4]]) + rng.normal(0, 0.05, 8),
    ])
    res = voronoi_loss(batch, TRUE, 1, r=1.5)
    for i, theta in enumerate(batch):
        one = voronoi_loss(theta, TRUE, 1, r=1.5)
        for field in ("total", "mass", "beta1", "eta", "loss_r"):
            assert getattr(res, field)[i] == pytest.approx(getattr(one, field)[0], rel=1e-13)
        np.testing.assert_array_equal(res.cell_sizes[i], one.cell_sizes[0])
    np.testing.assert_array_equal(res.cell_sizes[1], [2, 0])


def test_default_exponent_of_l1r_is_two():
    fitted = TRUE + np.array([0.0, 0.1, 0.3, 0.4, 0, 0, 0, 0])
    assert voronoi_loss(fitted, TRUE, 1).loss_r[0] == pytest.approx(0.01 + 0.09 + 0.16,
                                                                   rel=1e-12)


def test_huge_masses_overflow_quietly_to_infinity():
    """exp(1000) overflows; the other true atom's cell must not turn inf * 0 into nan."""
    fitted = TRUE + 0.1
    fitted[0] = 1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = voronoi_loss(fitted, TRUE, 1)
    assert np.isinf(res.total[0]) and np.isinf(res.mass[0])
