"""Voronoi cells and the Voronoi losses of docs/theory-background.md#voronoi.

Fitted atoms are assigned to the nearest true atom in ``omega = (beta_1, a, b)`` (ties go to the
smaller true index), which makes every loss invariant to relabelling the fitted atoms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_theory.model import unpack_theta


@dataclass(frozen=True)
class VoronoiLoss:
    """Voronoi losses of a batch of fitted models (each array has shape ``(R,)``).

    Attributes
    ----------
    total:
        ``L_1`` (NoRGa loss, docs/theory-background.md#loss-l1): mass + exponent 1 in exact cells, 2
        in over cells.
    mass, beta1, eta:
        The three parts of ``L_1``; ``total = mass + beta1 + eta``.
    loss_r:
        ``L_{1,r}`` (linear-gating family, docs/theory-background.md#loss-l1r) with one exponent
        ``r`` everywhere.
    cell_sizes:
        ``(R, L)`` number of fitted atoms in each true atom's cell.
    """

    total: np.ndarray
    mass: np.ndarray
    beta1: np.ndarray
    eta: np.ndarray
    loss_r: np.ndarray
    cell_sizes: np.ndarray


def voronoi_cells(fitted_omega: np.ndarray, true_omega: np.ndarray) -> np.ndarray:
    """Index of the nearest true atom for each fitted atom.

    Parameters
    ----------
    fitted_omega:
        ``(..., L', k)`` fitted ``(beta_1, a, b)``.
    true_omega:
        ``(L, k)`` true ``(beta_1, a, b)``.

    Returns
    -------
    ndarray of int, ``(..., L')``.
    """
    dist = np.linalg.norm(fitted_omega[..., :, None, :] - true_omega, axis=-1)
    return np.argmin(dist, axis=-1)  # argmin returns the first minimum: ties -> smaller j


def _omega(beta1: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([beta1, a, b[..., None]], axis=-1)


def voronoi_loss(
    theta: np.ndarray, true_theta: np.ndarray, dim: int, r: float = 2.0
) -> VoronoiLoss:
    """Voronoi losses ``L_1`` (with its parts) and ``L_{1,r}`` of fitted vs true atoms.

    Parameters
    ----------
    theta:
        Fitted flat parameters ``(R, L'(2+2d))`` (or ``(L'(2+2d),)``).
    true_theta:
        True flat parameters ``(L(2+2d),)``.
    dim:
        Input dimension d.
    r:
        Exponent of ``L_{1,r}``.
    """
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    f_b0, f_b1, f_a, f_b = unpack_theta(theta, dim)
    t_b0, t_b1, t_a, t_b = unpack_theta(np.asarray(true_theta, dtype=float), dim)
    cells = voronoi_cells(_omega(f_b1, f_a, f_b), _omega(t_b1, t_a, t_b))  # (R, L')

    with np.errstate(over="ignore"):
        w = np.exp(f_b0)  # (R, L')
    n_true = t_b0.shape[-1]
    member = cells[..., None] == np.arange(n_true)  # (R, L', L)
    cell_sizes = member.sum(axis=-2)  # (R, L)

    # Differences of every fitted atom to the true atom of its cell.
    d_beta1 = np.linalg.norm(f_b1 - t_b1[cells], axis=-1)
    d_a = np.linalg.norm(f_a - t_a[cells], axis=-1)
    d_b = np.abs(f_b - t_b[cells])
    d_eta = np.sqrt(d_a**2 + d_b**2)

    # where, not a product: an overflowed (infinite) mass must not turn into inf * 0 = nan
    cell_mass = np.where(member, w[..., None], 0.0).sum(axis=-2)  # (R, L)
    mass = np.abs(cell_mass - np.exp(t_b0)).sum(axis=-1)
    # Exponent 1 in exact cells (|A_j| = 1), 2 in over-specified cells (|A_j| > 1).
    power = np.where(np.take_along_axis(cell_sizes, cells, axis=-1) > 1, 2.0, 1.0)
    beta1_part = (w * d_beta1**power).sum(axis=-1)
    eta_part = (w * d_eta**power).sum(axis=-1)
    loss_r = mass + (w * (d_beta1**r + d_a**r + d_b**r)).sum(axis=-1)
    return VoronoiLoss(
        total=mass + beta1_part + eta_part,
        mass=mass,
        beta1=beta1_part,
        eta=eta_part,
        loss_r=loss_r,
        cell_sizes=cell_sizes,
    )
