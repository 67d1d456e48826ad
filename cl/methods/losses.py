"""Losses of the HiDe-Prompt / NoRGa pipeline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_mask(num_classes: int, allowed: list[int], device: torch.device) -> torch.Tensor:
    """Boolean ``(num_classes,)`` mask, True for the allowed classes."""
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[torch.as_tensor(allowed, dtype=torch.long, device=device)] = True
    return mask


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set the logits of classes outside ``mask`` to ``-inf``."""
    return logits.masked_fill(~mask, float("-inf"))


def contrastive_regulariser(
    features: torch.Tensor, old_means: torch.Tensor, temperature: float = 0.8
) -> torch.Tensor:
    """The WTP contrastive term (``orth_loss`` of the original code, docs/cl-background.md#wtp).

    ``M = [old means; batch features]``, ``S = M M^T / temperature`` and the loss is the cross
    entropy of every row of ``S`` against its own index: each row must be most similar to
    itself, pushing new features away from old class means.
    """
    stacked = torch.cat([old_means.to(features), features], dim=0)
    sims = stacked @ stacked.T / temperature
    return F.cross_entropy(sims, torch.arange(stacked.shape[0], device=features.device))
