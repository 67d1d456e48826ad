"""CODA-Prompt: prompt components mixed by attention-weighted query-key similarity.

Per prompted layer ``l`` there are ``M`` components (``pool_per_task`` new ones per task), each a
prompt ``P_m`` of ``L`` tokens of size ``C``, a key ``K_m`` and an attention vector ``A_m``
(docs/cl-background.md#coda-prompt). With the frozen [CLS] feature ``q`` of the input::

    alpha_m = cos(q * A_m, K_m)                   # no softmax
    P       = sum_m alpha_m P_m                   # (L, C)

The first ``L / 2`` tokens of ``P`` are the key prefix, the rest the value prefix; each
``C``-token is split over the heads, as in prefix tuning. Only the components of the current task
are trained; the older ones are used but detached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cl.models.frozen_vit import FrozenPrefixViT, freeze_and_wrap
from cl.models.prefix_attention import PrefixAttention
from cl.models.vit import pooled, run_blocks


def component_weights(
    query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor
) -> torch.Tensor:
    """``alpha[b, m] = cos(q_b * A_m, K_m)``.

    Parameters
    ----------
    query:
        ``(B, C)`` frozen features.
    keys, attention:
        ``(M, C)`` component keys and attention vectors.

    Returns
    -------
    torch.Tensor
        ``(B, M)`` weights in ``[-1, 1]``.
    """
    attended = F.normalize(query.unsqueeze(1) * attention.unsqueeze(0), dim=-1)  # (B, M, C)
    return torch.einsum("bmc,mc->bm", attended, F.normalize(keys, dim=-1))


def orthogonality_penalty(vectors: torch.Tensor) -> torch.Tensor:
    """``mean((V V^T - I)^2)`` of the rows of ``vectors`` (flattened to ``(M, -1)``)."""
    flat = vectors.reshape(vectors.shape[0], -1)
    gram = flat @ flat.T
    return ((gram - torch.eye(flat.shape[0], dtype=flat.dtype, device=flat.device)) ** 2).mean()


def gram_schmidt_rows(
    vectors: torch.Tensor, start: int, stop: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Re-draw rows ``[start, stop)`` at random and orthonormalise them against all earlier rows.

    Rows before ``start`` are kept as they are (they belong to older tasks). When there are more
    rows than dimensions a new row cannot be orthogonal to all others; it is then left as a
    normalised random vector.

    Parameters
    ----------
    vectors:
        ``(M, ...)``; rows are flattened for the projections.
    start, stop:
        The rows to re-draw.
    generator:
        Random source of the new rows.

    Returns
    -------
    torch.Tensor
        A new tensor, same shape as ``vectors``.
    """
    shape = vectors.shape
    out = vectors.detach().reshape(shape[0], -1).to(torch.float64).clone()
    for row in range(start, stop):
        fresh = torch.randn(out.shape[1], generator=generator, dtype=torch.float64)
        for _ in range(2):  # a second pass restores the orthogonality lost to round-off
            fresh = _project_out(fresh, out[:row])
        norm = fresh.norm()
        if norm < 1e-8:  # no room left: keep a unit random direction
            fresh = torch.randn(out.shape[1], generator=generator, dtype=torch.float64)
            norm = fresh.norm()
        out[row] = fresh / norm
    return out.reshape(shape).to(vectors.dtype)


def _project_out(vector: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    # Subtract the projection on every (non-zero) earlier row, one row at a time.
    for b in basis:
        denom = b @ b
        if denom > 0:
            vector = vector - (b @ vector) / denom * b
    return vector


class CodaPromptPool(nn.Module):
    """Components ``P`` ``(n_layers, M, L, C)``; keys ``K``, attention ``A`` ``(n_layers, M, C)``.

    Parameters
    ----------
    n_layers:
        Prompted blocks.
    pool_size:
        ``M`` components per layer (``pool_per_task * num_tasks``).
    length:
        Prompt length ``L`` (even: ``L/2`` key and ``L/2`` value tokens).
    dim:
        Token size ``C``.
    """

    def __init__(self, n_layers: int, pool_size: int, length: int, dim: int) -> None:
        super().__init__()
        if length % 2:
            raise ValueError(f"CODA prompt length must be even (keys + values), got {length}")
        self.length = length
        self.prompts = nn.Parameter(torch.zeros(n_layers, pool_size, length, dim))
        self.keys = nn.Parameter(torch.zeros(n_layers, pool_size, dim))
        self.attention = nn.Parameter(torch.zeros(n_layers, pool_size, dim))

    @property
    def n_layers(self) -> int:
        return self.prompts.shape[0]

    @torch.no_grad()
    def init_components(self, start: int, stop: int, generator: torch.Generator | None) -> None:
        """Fresh orthonormal components ``[start, stop)`` in every layer (at a task start)."""
        for tensor in (self.prompts, self.keys, self.attention):
            for layer in range(self.n_layers):
                tensor[layer] = gram_schmidt_rows(tensor[layer], start, stop, generator)

    def used(self, stop: int, frozen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Components ``[0, stop)``; those before ``frozen`` are detached."""

        def part(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[:, :frozen].detach(), t[:, frozen:stop]], dim=1)

        return part(self.prompts), part(self.keys), part(self.attention)

    def prefixes(
        self, query: torch.Tensor, stop: int, frozen: int, num_heads: int
    ) -> torch.Tensor:
        """Per-sample prefixes ``(n_layers, B, 2, L/2, H, D)`` from components ``[0, stop)``."""
        prompts, keys, attention = self.used(stop, frozen)
        B = query.shape[0]
        layers = []
        for layer in range(self.n_layers):
            alpha = component_weights(query, keys[layer], attention[layer])  # (B, M)
            mixed = torch.einsum("bm,mlc->blc", alpha, prompts[layer])  # (B, L, C)
            layers.append(mixed.reshape(B, 2, self.length // 2, num_heads, -1))
        return torch.stack(layers)

    def ortho_loss(self, stop: int, frozen: int) -> torch.Tensor:
        """Orthogonality penalty of K, A and P, summed over layers."""
        prompts, keys, attention = self.used(stop, frozen)
        return sum(
            orthogonality_penalty(keys[l]) + orthogonality_penalty(attention[l])
            + orthogonality_penalty(prompts[l])
            for l in range(self.n_layers)
        )


class CodaViT(FrozenPrefixViT):
    """Frozen timm ViT with CODA prefixes in ``prompt_layers`` and a linear head.

    Parameters
    ----------
    vit:
        timm ``VisionTransformer`` with ``num_classes=0``; frozen here.
    num_classes:
        Head outputs (all classes of the benchmark).
    pool_size, length:
        See :class:`CodaPromptPool`.
    prompt_layers:
        Prompted blocks (default 0-4).
    fused:
        Fused or reference prefix attention.
    generator:
        Random source of the head initialisation.
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        *,
        pool_size: int,
        length: int = 8,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
        fused: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.vit = vit
        self.prompt_layers = layers = freeze_and_wrap(vit, prompt_layers, PrefixAttention, fused)
        self.num_heads = vit.blocks[layers[0]].attn.num_heads
        self.embed_dim = vit.embed_dim
        self.pool = CodaPromptPool(len(layers), pool_size, length, self.embed_dim)
        self._add_head(num_classes, generator)

    def _blocks(self, x: torch.Tensor, prefixes: torch.Tensor | None) -> torch.Tensor:
        if prefixes is None:
            return run_blocks(self.vit, x)
        return run_blocks(self.vit, x, self.prompt_layers,
                          lambda block, normed, j: block.attn(normed, prefix=prefixes[j]))

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen, prompt-free [CLS] feature (the extra query pass)."""
        return pooled(self.vit, self._blocks(x, None))

    def forward_features(
        self, x: torch.Tensor, stop: int, frozen: int | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prompted tokens after the final norm, using components ``[0, stop)``.

        Components before ``frozen`` (default ``stop``: all) are detached.
        """
        q = self.query(x) if query is None else query
        prefixes = self.pool.prefixes(q, stop, stop if frozen is None else frozen, self.num_heads)
        return self._blocks(x, prefixes)

    def forward(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Logits over all classes with components ``[0, stop)`` (two passes: query + prompted)."""
        return self.head(self.fc_norm(self.pre_logits(self.forward_features(x, stop))))
