"""Helpers shared by the prompt-based ViTs of the baselines (L2P, DualPrompt, S-Prompt++,
CODA-Prompt, SMoPE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cl.models.prefix_attention import PrefixAttention, rewrap_attention
from cl.models.vit import block_indices, pooled, seeded_trunc_normal_head


def freeze(vit: nn.Module) -> None:
    """Turn off the gradients of every parameter of ``vit``."""
    for p in vit.parameters():
        p.requires_grad_(False)


def freeze_and_wrap(
    vit: nn.Module, prompt_layers: Sequence[int], attention: type[PrefixAttention], fused: bool
) -> list[int]:
    """Freeze ``vit`` and replace the attention of ``prompt_layers`` by ``attention``.

    The new modules share the projections of the timm attention they replace. Returns the
    validated layer list; :class:`cl.errors.ConfigError` (a ``ValueError``) if the indices
    are not distinct blocks of ``vit``.
    """
    layers = block_indices("prompt_layers", prompt_layers, len(vit.blocks))
    freeze(vit)
    for i in layers:  # (re-)wrap: no setting of an earlier model on this ViT persists
        rewrap_attention(vit.blocks[i], attention, fused=fused)
    return layers


def seeded_head(dim: int, num_classes: int, generator: torch.Generator | None) -> nn.Linear:
    """``Linear(dim, num_classes)`` with the timm init drawn from ``generator``
    (:func:`cl.models.vit.seeded_trunc_normal_head`)."""
    head = nn.Linear(dim, num_classes)
    seeded_trunc_normal_head(head, generator)
    return head


class FrozenPrefixViT(nn.Module):
    """What the prefix-prompted frozen ViTs of CODA-Prompt and SMoPE share: the prompted-block
    switch, the pooled feature and the ``fc_norm`` + linear head (set by :meth:`_add_head`).

    Subclasses set ``self.vit`` and ``self.prompt_layers``.
    """

    vit: nn.Module
    prompt_layers: list[int]

    def _add_head(self, num_classes: int, generator: torch.Generator | None) -> None:
        """Identity ``fc_norm`` and a :func:`seeded_head` over ``num_classes`` classes."""
        self.fc_norm: nn.Module = nn.Identity()
        self.num_classes = num_classes
        self.head = seeded_head(self.vit.embed_dim, num_classes, generator)

    def set_fused(self, fused: bool) -> None:
        """Switch every prompted block between the fused and the reference path."""
        for i in self.prompt_layers:
            self.vit.blocks[i].attn.fused = fused

    def pre_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled feature (CLS after the final norm), used for the Gaussian statistics."""
        return pooled(self.vit, tokens)
