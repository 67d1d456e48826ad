"""SMoPE: one shared prefix split into per-head prompt experts, chosen sparsely per sample.

In every prompted block (0-5 by default) each head ``h`` owns ``N_p`` prompt experts, a key
``p^K_{h,j}`` and a value ``p^V_{h,j}`` in the per-head space
(docs/cl-background.md#prompt-experts).
A sample routes each head to ``K`` of them with the *proxy score* (section 7.2)::

    q_bar   = mean_i q_i                          # (B, H, D): one averaged query per head
    s_bar_j = (q_bar . p^K_j) * scale             # (B, H, N_p), identical for every token
    K_X     = top-K_j ( s_bar_j - eps_j * (max_j s_bar_j - min_j s_bar_j) )

``eps_j`` is the adaptive noise (section 7.3): non-zero only in training, for experts that were
used frequently on earlier tasks; the range is per (sample, head) and detached. The logit of a
selected expert is ``s_bar_j`` for every query token; it joins the usual token logits
``q k^T * scale`` in one softmax, and the values are ``[p^V_selected; v]``.

Selection is per sample and per head, so a prediction never depends on the rest of the batch.
Like :class:`cl.models.prefix_attention.PrefixAttention`, attention has a reference path (the
formula written out) and a fused path (``scaled_dot_product_attention`` with an additive bias
that turns the per-token prefix logits ``q_i . p^K_j * scale`` into ``s_bar_j``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cl.models.frozen_vit import FrozenPrefixViT, freeze_and_wrap
from cl.models.prefix_attention import PrefixAttention, prefix_bias_attention
from cl.models.vit import run_blocks


def proxy_scores(q: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Proxy score of every expert: the averaged query against the expert keys.

    Parameters
    ----------
    q:
        Queries ``(B, H, N, D)``.
    keys:
        Expert keys ``(H, N_p, D)``.
    scale:
        ``1 / sqrt(D)`` (pass 1.0 for the original code's unscaled score).

    Returns
    -------
    torch.Tensor
        ``(B, H, N_p)``; by linearity equal to the mean over tokens of ``q_i . p^K_j * scale``.
    """
    return torch.einsum("bhd,hjd->bhj", q.mean(dim=2), keys) * scale


def adaptive_noise(
    scores: torch.Tensor, frequent: torch.Tensor | None, eps: float
) -> torch.Tensor | None:
    """Selection penalty ``eps * 1[frequent_j] * (max_j s - min_j s)`` (range detached).

    Parameters
    ----------
    scores:
        Proxy scores ``(B, H, N_p)``.
    frequent:
        Boolean/float flags ``(H, N_p)`` of frequently used experts, or ``None``.
    eps:
        Noise level in ``[0, 1]``.

    Returns
    -------
    torch.Tensor or None
        ``(B, H, N_p)`` penalty to subtract before top-K, ``None`` when there is none.
    """
    if frequent is None or eps == 0.0:
        return None
    spread = (scores.amax(dim=-1) - scores.amin(dim=-1)).detach().unsqueeze(-1)  # (B, H, 1)
    return eps * frequent.to(scores.dtype) * spread


def select_experts(
    scores: torch.Tensor, top_k: int, penalty: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices ``(B, H, K)`` of the ``K`` best experts of ``scores - penalty``."""
    noisy = scores if penalty is None else scores - penalty
    return noisy.detach().topk(top_k, dim=-1).indices


@dataclass
class Routing:
    """What one prompted layer decided: scores of all experts and the chosen ones.

    ``scores`` is ``(B, H, N_p)`` (with gradient), ``selected`` ``(B, H, K)`` or ``None`` in the
    dense mode (all experts used).
    """

    scores: torch.Tensor
    selected: torch.Tensor | None


class ExpertPrefixAttention(PrefixAttention):
    """Prefix attention whose prefix is a per-sample, per-head choice among prompt experts.

    Without experts it is the plain attention of :class:`PrefixAttention` (so the module can sit
    in a timm block); prompted blocks call :meth:`forward_experts`.
    """

    def forward_experts(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        *,
        top_k: int,
        penalty_fn=None,
    ) -> tuple[torch.Tensor, Routing]:
        """Attend with ``top_k`` experts per (sample, head).

        Parameters
        ----------
        x:
            Tokens ``(B, N, C)`` (already layer-normed by the block).
        keys, values:
            Expert keys and values of this layer, each ``(H, N_p, D)``.
        top_k:
            Experts per head; ``<= 0`` or ``>= N_p`` uses all of them (dense warm-up).
        penalty_fn:
            ``scores -> penalty or None``: the selection penalty (adaptive noise) computed from
            this layer's proxy scores.

        Returns
        -------
        out, routing:
            ``(B, N, C)`` and the layer's :class:`Routing`.
        """
        B, N, _ = x.shape
        H, n_experts, D = keys.shape
        if (H, D) != (self.num_heads, self.head_dim) or values.shape != keys.shape:
            raise ValueError(
                f"expert keys/values have shapes {tuple(keys.shape)}/{tuple(values.shape)}, "
                f"expected ({self.num_heads}, N_p, {self.head_dim})"
            )
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        q, k = self.q_norm(q), self.k_norm(k)
        scores = proxy_scores(q, keys, self.scale)
        if 0 < top_k < n_experts:
            penalty = penalty_fn(scores) if penalty_fn is not None else None
            selected = select_experts(scores, top_k, penalty)
            sel_scores = scores.gather(-1, selected)
            index = selected.unsqueeze(-1).expand(-1, -1, -1, D)
            sel_values = values.unsqueeze(0).expand(B, -1, -1, -1).gather(2, index)
        else:
            selected = None
            sel_scores = scores
            sel_values = values.unsqueeze(0).expand(B, -1, -1, -1)
        if self.fused:
            out = self._fused_experts(q, k, v, sel_values, sel_scores)
        else:
            out = self._reference_experts(q, k, v, sel_values, sel_scores)
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        return self.proj_drop(self.proj(out)), Routing(scores, selected)

    def _reference_experts(self, q, k, v, sel_values, sel_scores) -> torch.Tensor:
        # Textbook: the expert logits are the proxy scores, repeated for every query token.
        N = q.shape[2]
        s_experts = sel_scores.unsqueeze(2).expand(-1, -1, N, -1)
        s_tokens = (q * self.scale) @ k.transpose(-2, -1)
        attn = torch.cat([s_experts, s_tokens], dim=-1).softmax(dim=-1)
        attn = self.attn_drop(attn)
        return attn @ torch.cat([sel_values, v], dim=2)

    def _fused_experts(self, q, k, v, sel_values, sel_scores) -> torch.Tensor:
        # The expert logits do not depend on the query: zero key prefix plus the proxy scores as
        # bias, which rides in extra head dimensions so SDPA keeps its flash kernel in training.
        dropout = self.training and isinstance(self.attn_drop, nn.Dropout)
        drop_p = self.attn_drop.p if dropout else 0.0
        bias = sel_scores.unsqueeze(2).expand(-1, -1, q.shape[2], -1)
        return prefix_bias_attention(
            q, k, v, torch.zeros_like(sel_values), sel_values, bias, scale=self.scale,
            dropout_p=drop_p,
        )


class PromptExperts(nn.Module):
    """The shared prompt: ``N_p`` key/value experts per head in each prompted layer.

    Parameters
    ----------
    n_layers, num_heads, num_experts, head_dim:
        Shapes; ``key`` and ``value`` are ``(n_layers, H, N_p, D)``.
    generator:
        Source of the ``U(0, 1)`` initialisation (``nn.init.uniform_`` in the original code).
    """

    def __init__(
        self,
        n_layers: int,
        num_heads: int,
        num_experts: int,
        head_dim: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        shape = (n_layers, num_heads, num_experts, head_dim)
        self.key = nn.Parameter(torch.rand(shape, generator=generator))
        self.value = nn.Parameter(torch.rand(shape, generator=generator))

    @property
    def num_experts(self) -> int:
        return self.key.shape[2]


class SMoPEViT(FrozenPrefixViT):
    """Frozen timm ViT with prompt experts in ``prompt_layers`` and a linear head.

    Parameters
    ----------
    vit:
        timm ``VisionTransformer`` built with ``num_classes=0``; frozen here.
    num_classes:
        Outputs of the head (all classes of the benchmark).
    num_experts:
        ``N_p`` experts per head and layer.
    prompt_layers:
        Prompted blocks (default 0-5).
    fused:
        Fused or reference attention in the prompted blocks.
    generator:
        Random source of the expert and head initialisation.
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        *,
        num_experts: int = 25,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4, 5),
        fused: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.vit = vit
        layers = freeze_and_wrap(vit, prompt_layers, ExpertPrefixAttention, fused)
        self.prompt_layers = layers
        first = vit.blocks[layers[0]].attn
        self.num_heads, self.head_dim = first.num_heads, first.head_dim
        self.embed_dim = vit.embed_dim
        self.experts = PromptExperts(
            len(layers), self.num_heads, num_experts, self.head_dim, generator=generator
        )
        self._add_head(num_classes, generator)

    def forward_features(
        self,
        x: torch.Tensor,
        *,
        top_k: int,
        penalty_fns: Sequence | None = None,
    ) -> tuple[torch.Tensor, list[Routing]]:
        """Tokens after the final norm and the routing of every prompted layer.

        Parameters
        ----------
        x:
            Images ``(B, 3, H, W)``.
        top_k:
            Experts per head (``<= 0``: all, the dense warm-up).
        penalty_fns:
            One ``scores -> penalty | None`` per prompted layer (adaptive noise), or ``None``.
        """
        routing: list[Routing] = []

        def attend(block: nn.Module, normed: torch.Tensor, j: int) -> torch.Tensor:
            attn_out, route = block.attn.forward_experts(
                normed,
                self.experts.key[j],
                self.experts.value[j],
                top_k=top_k,
                penalty_fn=None if penalty_fns is None else penalty_fns[j],
            )
            routing.append(route)
            return attn_out

        return run_blocks(self.vit, x, self.prompt_layers, attend), routing

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, ``fc_norm`` and classify, as timm's ``forward_head`` (``pre_logits=True``:
        the feature after ``fc_norm``)."""
        feats = self.fc_norm(self.pre_logits(tokens))
        return feats if pre_logits else self.head(feats)

    def forward(self, x: torch.Tensor, top_k: int = 5) -> torch.Tensor:
        """Logits of a single prompted pass with ``top_k`` experts per head, no noise."""
        return self.forward_head(self.forward_features(x, top_k=top_k)[0])
