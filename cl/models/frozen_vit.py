"""Helpers shared by the prompt-based ViTs of the baselines (CODA-Prompt, SMoPE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cl.models.prefix_attention import PrefixAttention
from cl.models.vit import trunc_normal_head


def freeze_and_wrap(
    vit: nn.Module, prompt_layers: Sequence[int], attention: type[PrefixAttention], fused: bool
) -> list[int]:
    """Freeze ``vit`` and replace the attention of ``prompt_layers`` by ``attention``.

    The new modules share the projections of the timm attention they replace. Returns the
    validated layer list; ``ValueError`` if the indices are not distinct blocks of ``vit``.
    """
    depth = len(vit.blocks)
    layers = [int(i) for i in prompt_layers]
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < depth for i in layers):
        raise ValueError(f"prompt_layers {layers} must be distinct block indices in [0, {depth})")
    for p in vit.parameters():
        p.requires_grad_(False)
    for i in layers:
        block = vit.blocks[i]
        if not isinstance(block.attn, attention):
            block.attn = attention.from_timm(block.attn, gate="linear", activation="tanh",
                                             fused=fused)
    return layers


def seeded_head(dim: int, num_classes: int, generator: torch.Generator | None) -> nn.Linear:
    """``Linear(dim, num_classes)`` with the timm init, drawn from ``generator``.

    ``trunc_normal_`` has no generator argument, so the draw runs under a forked global RNG
    seeded from ``generator`` (the caller's global RNG is untouched).
    """
    head = nn.Linear(dim, num_classes)
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        trunc_normal_head(head)
    return head
