"""Multi-head self-attention with per-sample key/value prefixes (prefix tuning).

For a prompted block the keys and values are extended by a prefix that lives directly in the
per-head key/value space (cl-pipeline.md sections 1.3-1.4)::

    s_P = q P_K^T * scale ,  s_X = q k^T * scale
    A   = softmax([gate(s_P), s_X])             # one joint softmax over L_p + N columns
    out = proj(merge_heads(A [P_V; v]))

Two implementations sit behind the ``fused`` switch, like timm's ``fused_attn``:

* reference: the textbook formula above, written out;
* fused: ``F.scaled_dot_product_attention`` on the concatenated keys/values, with an additive
  float bias ``gate(s_P) - s_P`` on the prefix columns (NoRGa) and no mask (linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl.models.gating import (
    Activation,
    Gate,
    check_activation,
    check_gate,
    prefix_gate,
    prefix_gate_residual,
)


class PrefixAttention(nn.Module):
    """timm-compatible attention that accepts a per-sample key/value prefix.

    Built from an existing timm ``Attention`` with :meth:`from_timm`, sharing its projection
    modules, so it can replace ``block.attn`` in place. Without a prefix it computes plain
    self-attention and matches the timm module it replaced.

    Parameters
    ----------
    qkv, proj:
        The (frozen) projections of the wrapped attention.
    num_heads:
        Number of heads ``H``; the head size is ``D = attn_dim / H``.
    gate, activation:
        Prefix gate, see :func:`cl.models.gating.prefix_gate`.
    fused:
        Use ``scaled_dot_product_attention`` (True) or the reference formula (False).
    """

    def __init__(
        self,
        qkv: nn.Linear,
        proj: nn.Linear,
        num_heads: int,
        *,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        norm: nn.Module | None = None,
        attn_drop: nn.Module | None = None,
        proj_drop: nn.Module | None = None,
        gate: Gate = "linear",
        activation: Activation = "tanh",
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.qkv = qkv
        self.proj = proj
        self.num_heads = num_heads
        self.attn_dim = qkv.out_features // 3
        self.head_dim = self.attn_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.norm = norm if norm is not None else nn.Identity()
        self.attn_drop = attn_drop if attn_drop is not None else nn.Dropout(0.0)
        self.proj_drop = proj_drop if proj_drop is not None else nn.Dropout(0.0)
        self.gate = check_gate(gate)
        self.activation = check_activation(activation)
        self.fused = fused

    @classmethod
    def from_timm(
        cls, attn: nn.Module, *, gate: Gate, activation: Activation, fused: bool
    ) -> PrefixAttention:
        """Wrap a timm ``Attention`` (its modules are shared, not copied)."""
        if getattr(attn, "gate", None) is not None:
            raise ValueError("gated timm attention (attn.gate) is not supported for prefixes")
        return cls(
            attn.qkv,
            attn.proj,
            attn.num_heads,
            q_norm=attn.q_norm,
            k_norm=attn.k_norm,
            norm=attn.norm,
            attn_drop=attn.attn_drop,
            proj_drop=attn.proj_drop,
            gate=gate,
            activation=activation,
            fused=fused,
        )

    def forward(
        self,
        x: torch.Tensor,
        prefix: torch.Tensor | None = None,
        alpha: torch.Tensor | float = 1.0,
        tau: torch.Tensor | float = 1.0,
        **_: object,
    ) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        x:
            Tokens ``(B, N, C)`` (already layer-normed by the block).
        prefix:
            ``(B, 2, L_p, H, D)``: index 0 of dim 1 is the key prefix, 1 the value prefix, one
            prefix per sample. ``None`` gives plain self-attention.
        alpha, tau:
            NoRGa gate scalars of this layer (ignored for the linear gate).
        """
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        q, k = self.q_norm(q), self.k_norm(k)
        training_dropout = self.training and isinstance(self.attn_drop, nn.Dropout)
        drop_p = self.attn_drop.p if training_dropout else 0.0

        if prefix is None:
            if self.fused:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop_p, scale=self.scale)
            else:
                attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
                out = self.attn_drop(attn) @ v
        else:
            expected = (B, 2, prefix.shape[2], self.num_heads, self.head_dim)
            if tuple(prefix.shape) != expected:
                raise ValueError(f"prefix has shape {tuple(prefix.shape)}, expected {expected}")
            p_k = prefix[:, 0].permute(0, 2, 1, 3)  # (B, H, L_p, D)
            p_v = prefix[:, 1].permute(0, 2, 1, 3)
            if self.fused:
                out = self._fused(q, k, v, p_k, p_v, alpha, tau, drop_p)
            else:
                out = self._reference(q, k, v, p_k, p_v, alpha, tau)

        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        return self.proj_drop(self.proj(out))

    def _reference(self, q, k, v, p_k, p_v, alpha, tau) -> torch.Tensor:
        # Textbook formula: gate the prefix logits, then one softmax over [prefix, tokens].
        q = q * self.scale
        s_prefix = prefix_gate(q @ p_k.transpose(-2, -1), self.gate, self.activation, alpha, tau)
        s_tokens = q @ k.transpose(-2, -1)
        attn = torch.cat([s_prefix, s_tokens], dim=-1).softmax(dim=-1)
        attn = self.attn_drop(attn)
        return attn @ torch.cat([p_v, v], dim=2)

    def _fused(self, q, k, v, p_k, p_v, alpha, tau, drop_p: float) -> torch.Tensor:
        keys = torch.cat([p_k, k], dim=2)
        values = torch.cat([p_v, v], dim=2)
        bias = None
        if self.gate != "linear":
            # NoRGa only changes the prefix columns: add gate(s) - s there, 0 elsewhere.
            s_prefix = (q @ p_k.transpose(-2, -1)) * self.scale
            residual = prefix_gate_residual(s_prefix, self.gate, self.activation, alpha, tau)
            zeros = residual.new_zeros(*residual.shape[:-1], k.shape[2])
            bias = torch.cat([residual, zeros], dim=-1)
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=bias, dropout_p=drop_p, scale=self.scale
        )
