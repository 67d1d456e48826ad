"""Deterministic checks behind the rates (experiment E4, docs/theory-background.md#identifiability
and #experiments).

* :func:`pde_residual`: the second-order PDE ``d2F/dbeta_1 db = dF/da`` that merges Taylor terms
  under linear gating, and that NoRGa breaks.
* :func:`fisher_information` and :func:`fisher_prediction`: the Fisher information of the
  least-squares model at the truth and the Voronoi loss it predicts, ``E[L_1] ~ C / sqrt(n)``.
* :func:`flat_manifold_example`: two over-specified affine atoms with ``g_G = g_{G*}`` exactly but
  ``L_1 > 0`` (under either gate).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moe_theory.gates import Gate
from moe_theory.model import PrefixMoE, expert_output, regression, regression_and_jacobian
from moe_theory.simulate import integration_points
from moe_theory.voronoi import voronoi_loss


def _atom_function(gate: Gate, beta1: float, a: float, b: float, x: np.ndarray) -> np.ndarray:
    """One unnormalised prompt atom ``F = exp(phi(beta_1 x)) * (a x + b)`` (d = 1)."""
    return np.exp(gate.phi(beta1 * x)) * expert_output(a * x + b, "affine")


def pde_residual(
    gate: Gate,
    beta1: float = 2.0,
    a: float = -2.0,
    b: float = 1.0,
    x: np.ndarray | None = None,
    step: float = 1e-4,
) -> dict[str, float]:
    """Largest ``|d2F/(dbeta_1 db) - dF/da|`` over ``x``
    (docs/theory-background.md#identifiability), d = 1.

    The derivatives are taken by central finite differences, independently of the analytic
    formula, which is returned alongside: ``x exp(phi) (phi' - 1)``, zero for linear gating.

    Returns
    -------
    dict with ``finite_difference`` and ``analytic`` maxima.
    """
    x = np.linspace(-1.0, 1.0, 5) if x is None else np.asarray(x, dtype=float)
    h = step

    def F(bt: float, aa: float, bb: float) -> np.ndarray:
        return _atom_function(gate, bt, aa, bb, x)

    mixed = (
        F(beta1 + h, a, b + h)
        - F(beta1 + h, a, b - h)
        - F(beta1 - h, a, b + h)
        + F(beta1 - h, a, b - h)
    ) / (4 * h * h)
    d_a = (F(beta1, a + h, b) - F(beta1, a - h, b)) / (2 * h)
    analytic = x * np.exp(gate.phi(beta1 * x)) * (gate.dphi(beta1 * x) - 1.0)
    return {
        "finite_difference": float(np.max(np.abs(mixed - d_a))),
        "analytic": float(np.max(np.abs(analytic))),
    }


def fisher_information(truth: PrefixMoE, n_points: int = 400, seed: int = 0) -> np.ndarray:
    """``I = E_X[grad_theta g grad_theta g^T]`` at the truth, ``(P, P)``."""
    X, weights = integration_points(truth.dim, n_points, seed)
    _, J = regression_and_jacobian(X, truth.theta, truth)
    return J.T @ (weights[:, None] * J)


def fisher_prediction(
    truth: PrefixMoE,
    noise_sd: float = 0.1,
    n_draws: int = 200_000,
    seed: int = 0,
) -> dict[str, float]:
    """The constant ``C`` of ``E[L_1] ~ C / sqrt(n)`` in the exact-specified model.

    Asymptotically ``sqrt(n) (theta_hat - theta*) ~ N(0, nu I^{-1})``; to first order
    ``L_1 = sum_j exp(beta_0j*) (|d beta_0j| + ||d beta_1j|| + ||d eta_j||)``. ``C`` is its
    expectation under that Gaussian (Monte Carlo, fixed seed). ``C_sum`` is the simpler
    bound ``sqrt(2/pi) sqrt(nu) sum_j exp(beta_0j*) sum_k sqrt((I^{-1})_kk)``, which replaces each
    norm by a sum of absolute values.

    Returns
    -------
    dict with ``C``, ``C_sum``, ``lambda_min`` and ``cond`` of ``I``.
    """
    info = fisher_information(truth)
    cov = noise_sd**2 * np.linalg.inv(info)
    d, L = truth.dim, truth.n_prompts
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    z = rng.multivariate_normal(np.zeros(len(cov)), cov, size=n_draws, method="cholesky")
    z = z.reshape(n_draws, L, 2 + 2 * d)
    per_atom = (
        np.abs(z[..., 0])
        + np.linalg.norm(z[..., 1 : 1 + d], axis=-1)
        + np.linalg.norm(z[..., 1 + d :], axis=-1)
    )
    mass = np.exp(truth.beta0)
    sd = np.sqrt(np.diag(cov)).reshape(L, 2 + 2 * d)
    eig = np.linalg.eigvalsh(info)
    return {
        "C": float((per_atom.mean(axis=0) * mass).sum()),
        "C_sum": float(np.sqrt(2 / np.pi) * (mass * sd.sum(axis=-1)).sum()),
        "lambda_min": float(eig[0]),
        "cond": float(eig[-1] / eig[0]),
    }


def flat_manifold_example(
    truth: PrefixMoE, split: float = 0.3, shift: float = 0.5
) -> dict[str, float]:
    """Two over-specified affine atoms that reproduce ``g_{G*}`` exactly
    (docs/theory-background.md#identifiability).

    Both atoms keep ``beta_1 = beta_1*``; masses ``w_1 = split * w*``, ``w_2 = (1-split) * w*``;
    experts ``eta_1 = eta* + shift`` and ``eta_2 = eta* - (w_1/w_2) shift``, so that
    ``w_1 eta_1 + w_2 eta_2 = w* eta*``. Affine experts add up, so ``g_G = g_{G*}`` while
    ``L_1 = w_1 ||d eta_1||^2 + w_2 ||d eta_2||^2 > 0``.

    Returns
    -------
    dict with ``max_abs_g_difference`` (on 2001 points) and ``voronoi_loss``.
    """
    if truth.n_prompts != 1 or truth.expert != "affine":
        raise ValueError("the example needs one true prompt with an affine expert")
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must be in (0, 1); got {split}")
    w_star = np.exp(truth.beta0[0])
    w1, w2 = split * w_star, (1 - split) * w_star
    delta = np.full(truth.dim + 1, shift)
    eta = np.concatenate([truth.a[0], truth.b])
    eta1, eta2 = eta + delta, eta - (w1 / w2) * delta
    d = truth.dim
    fitted = replace(
        truth,
        beta0=np.log([w1, w2]),
        beta1=np.repeat(truth.beta1, 2, axis=0),
        a=np.stack([eta1[:d], eta2[:d]]),
        b=np.array([eta1[d], eta2[d]]),
    )
    grid = (
        np.linspace(-1.0, 1.0, 2001)[:, None]
        if d == 1
        else np.random.default_rng(0).uniform(-1, 1, size=(2001, d))
    )
    diff = np.max(np.abs(regression(grid, fitted) - regression(grid, truth)))
    loss = voronoi_loss(fitted.theta, truth.theta, d).total[0]
    return {"max_abs_g_difference": float(diff), "voronoi_loss": float(loss)}
