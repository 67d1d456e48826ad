"""The experiments E1-E4 and their default truths (docs/theory-background.md#simulation-design); E5
(``near``) lives in the :mod:`moe_theory.near` package.

A :class:`Setting` says which truth generates the data and what is fitted: how many prompt atoms
(exact- or over-specified), which expert type, and whether the parameter space is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_theory.gates import Activation, Gate, GateKind
from moe_theory.model import ExpertKind, PrefixMoE, Pretrained
from norga.choices import check_choice

# "near" (E5) runs through moe_theory.near, not through the E1-E3 fitting path.
SETTINGS: tuple[str, ...] = ("exact", "over", "over-tanh", "mechanism", "near")
FIT_SETTINGS: tuple[str, ...] = ("exact", "over", "over-tanh")

# Bound of the compact parameter space Theta for over-specified runs
# (docs/theory-background.md#practical-recipe).
THETA_BOUND = 5.0


def default_pretrained() -> Pretrained:
    """N = 2 pretrained experts of docs/theory-background.md#default-truth (d = 1)."""
    return Pretrained(
        B=np.array([[[1.0]], [[-1.0]]]),
        c=np.zeros(2),
        a=np.array([[1.0], [-1.0]]),
        b=np.array([0.0, 1.0]),
    )


def default_truth(gate: Gate, expert: ExpertKind = "affine") -> PrefixMoE:
    """The default true model: one prompt with beta_0 = 0, beta_1 = 2, a = -2, b = 1."""
    truth = PrefixMoE(
        pretrained=default_pretrained(),
        beta0=np.array([0.0]),
        beta1=np.array([[2.0]]),
        a=np.array([[-2.0]]),
        b=np.array([1.0]),
        gate=gate,
        expert=expert,
    )
    check_identifiable_gate(truth)
    return truth


def check_identifiable_gate(truth: PrefixMoE, min_norm: float = 0.1) -> None:
    """Reject a NoRGa truth with ``|beta_1*| < min_norm``.

    With ``beta_1* = 0`` the NoRGa score is locally linear
    (docs/theory-background.md#identifiability), so the setting would silently test linear gating.
    """
    if truth.gate.kind != "norga":
        return
    norms = np.linalg.norm(truth.beta1, axis=-1)
    if np.any(norms < min_norm):
        raise ValueError(
            f"NoRGa needs |beta_1*| >= {min_norm} for every true prompt (got norms "
            f"{np.round(norms, 4).tolist()}); with beta_1* = 0 the gate is locally linear"
        )


@dataclass(frozen=True)
class Setting:
    """One fitting experiment.

    Attributes
    ----------
    name:
        ``exact`` (E1), ``over`` (E2) or ``over-tanh`` (E3).
    n_fitted:
        Number of fitted prompt atoms L'.
    expert:
        Prompt expert type (pretrained experts are always affine).
    bounded:
        Whether the fit is constrained to ``[-THETA_BOUND, THETA_BOUND]`` per coordinate.
    theorem:
        Which theoretical statement the experiment checks (printed by the summary).
    """

    name: str
    n_fitted: int
    expert: ExpertKind
    bounded: bool
    theorem: str

    def truth(self, gate_kind: GateKind, activation: Activation) -> PrefixMoE:
        """The true model of this setting under the given gate."""
        return default_truth(Gate(gate_kind, activation), self.expert)


_SETTINGS = {
    "exact": Setting(
        "exact",
        1,
        "affine",
        False,
        "E1 exact-specified (L'=L=1, affine experts): Thm 4.1 (L2 ~ n^-1/2, both gates) and the "
        "exact-cell part of Thm 4.3; both gates parametric, L_1 ~ C/sqrt(n) with C from the Fisher "
        "information",
    ),
    "over": Setting(
        "over",
        2,
        "affine",
        True,
        "E2 over-specified (L=1, L'=2, affine experts, |theta|<=5): Thm 4.1 only; the expert part "
        "of L_1 lies on an exact flat manifold under BOTH gates "
        "(docs/theory-background.md#identifiability), so no parameter rate "
        "is guaranteed; any gate difference is heuristic",
    ),
    "over-tanh": Setting(
        "over-tanh",
        2,
        "tanh",
        True,
        "E3 over-specified (L=1, L'=2, tanh experts, |theta|<=5): identifiable; both gates should "
        "approach L_1 ~ n^-1/2 (parameter rates n^-1/4), late (n >= 1e4)",
    ),
}


def get_setting(name: str) -> Setting:
    """The :class:`Setting` called ``name`` (one of ``FIT_SETTINGS``)."""
    check_choice("setting", name, FIT_SETTINGS)
    return _SETTINGS[name]
