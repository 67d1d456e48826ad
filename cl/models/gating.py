"""The prefix-logit gate: the one place where the linear / NoRGa score is computed.

HiDe-Prompt uses the prefix-key logits ``s`` as they are (linear gating). NoRGa replaces them by
``s + alpha * sigma(tau * s)`` (docs/cl-background.md#norga-attention). The statistical twin of this
formula lives in ``moe_theory.gates``; both must give the same numbers.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from norga.choices import ChoiceError, check_choice

Gate = Literal["linear", "norga"]
Activation = Literal["tanh", "sigmoid", "gelu"]

GATES: tuple[Gate, ...] = get_args(Gate)
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)


def activation_fn(activation: Activation, x: torch.Tensor) -> torch.Tensor:
    """Apply ``sigma`` (tanh, sigmoid or exact erf GELU)."""
    if activation == "tanh":
        return torch.tanh(x)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    if activation == "gelu":
        return F.gelu(x, approximate="none")
    raise ChoiceError("activation", activation, ACTIVATIONS)


def prefix_gate_residual(
    scores: torch.Tensor,
    gate: Gate,
    activation: Activation,
    alpha: torch.Tensor | float,
    tau: torch.Tensor | float,
) -> torch.Tensor | None:
    """The additive change ``gate(s) - s`` of the prefix logits, or ``None`` for linear gating.

    Kept separate so that the fused attention path can add it as a float bias without the
    round-off of ``(s + r) - s``.
    """
    if check_choice("gate", gate, GATES) == "linear":
        return None
    return alpha * activation_fn(check_choice("activation", activation, ACTIVATIONS),
                                 tau * scores)


def prefix_gate(
    scores: torch.Tensor,
    gate: Gate,
    activation: Activation = "tanh",
    alpha: torch.Tensor | float = 1.0,
    tau: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Gate the prefix-key attention logits.

    Parameters
    ----------
    scores:
        Prefix logits ``s = q . p_K / sqrt(d)`` of any shape.
    gate:
        ``"linear"`` returns ``s`` unchanged (HiDe-Prompt); ``"norga"`` returns
        ``s + alpha * sigma(tau * s)``.
    activation:
        ``sigma``: ``"tanh"``, ``"sigmoid"`` or ``"gelu"`` (exact, erf-based).
    alpha, tau:
        Scalars (floats or 0-d tensors) of the NoRGa gate; ignored for ``"linear"``.

    Returns
    -------
    torch.Tensor
        Gated logits, same shape as ``scores``.
    """
    residual = prefix_gate_residual(scores, gate, activation, alpha, tau)
    return scores if residual is None else scores + residual
