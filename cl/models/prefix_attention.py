"""Multi-head self-attention with per-sample key/value prefixes (prefix tuning).

For a prompted block the keys and values are extended by a prefix that lives directly in the
per-head key/value space (docs/cl-background.md#prefix-attention)::

    s_P = q P_K^T * scale ,  s_X = q k^T * scale
    A   = softmax([gate(s_P), s_X])             # one joint softmax over L_p + N columns
    out = proj(merge_heads(A [P_V; v]))

Two implementations sit behind the ``fused`` switch, like timm's ``fused_attn``:

* reference: the textbook formula above, written out;
* fused: ``F.scaled_dot_product_attention`` (SDPA) on the concatenated keys/values, never with
  an ``attn_mask``: see :func:`prefix_bias_attention` for how NoRGa's change of the prefix logits
  reaches the kernel.

NoRGa adds ``r = gate(s_P) - s_P`` (``(B, H, N, L_p)``, differentiable) to the prefix columns.
As a float ``attn_mask`` that needs a gradient it makes SDPA fall back to its math kernel, which
keeps the whole attention matrix for backward. Instead ``r`` rides in ``L_p`` extra head
dimensions, ``q' = [q, r / scale]``, ``k' = [[P_K, I]; [k, 0]]``, ``v' = [P_V; v]`` zero-padded::

    scale * q' k'^T = [s_P + r, s_X] = [gate(s_P), s_X]

exactly the NoRGa logits, so SDPA runs its flash kernel without a mask (which saves only q', k',
v', the output and a log-sum-exp) and the output is sliced back to ``D``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl.models.gating import (
    ACTIVATIONS,
    GATES,
    Activation,
    Gate,
    prefix_gate,
    prefix_gate_residual,
)
from norga.choices import check_choice


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
        self.gate = check_choice("gate", gate, GATES)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.fused = fused

    @classmethod
    def from_timm(
        cls, attn: nn.Module, *, gate: Gate, activation: Activation, fused: bool
    ) -> PrefixAttention:
        """Wrap a timm ``Attention`` (its modules are shared, not copied).

        ``attn`` may itself be a :class:`PrefixAttention` (any subclass) from an earlier
        wrapping of the same ViT: its projections are re-used and ``gate``, ``activation`` and
        ``fused`` are the ones given here, never the old ones. Works with timm >= 0.9: the
        attention output norm ``attn.norm`` (timm >= 1.0.16) is used where it exists.
        """
        if not isinstance(attn, PrefixAttention) and getattr(attn, "gate", None) is not None:
            raise ValueError("gated timm attention (attn.gate) is not supported for prefixes")
        missing = [n for n in ("qkv", "proj", "num_heads") if not hasattr(attn, n)]
        if missing:
            raise TypeError(f"{type(attn).__name__} is not a timm Attention (no "
                            f"{', '.join(missing)}); prefixes need timm's fused qkv Linear")
        return cls(
            attn.qkv,
            attn.proj,
            attn.num_heads,
            q_norm=getattr(attn, "q_norm", None),
            k_norm=getattr(attn, "k_norm", None),
            norm=getattr(attn, "norm", None),
            attn_drop=getattr(attn, "attn_drop", None),
            proj_drop=getattr(attn, "proj_drop", None),
            gate=gate,
            activation=activation,
            fused=fused,
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        *,
        prefix: torch.Tensor | None = None,
        alpha: torch.Tensor | float = 1.0,
        tau: torch.Tensor | float = 1.0,
    ) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        x:
            Tokens ``(B, N, C)`` (already layer-normed by the block).
        attn_mask, is_causal:
            As in timm's ``Attention.forward`` / ``scaled_dot_product_attention``: a boolean
            (``True`` = may attend) or additive float mask broadcastable to ``(B, H, N, N)``
            over the token columns. With a prefix the prefix columns stay visible to every query
            and the reference formula is used. ``is_causal=True`` is honoured without a prefix
            and refused (``ValueError``) with one, where "causal" is not defined.
        prefix:
            ``(B, 2, L_p, H, D)``: index 0 of dim 1 is the key prefix, 1 the value prefix, one
            prefix per sample. ``None`` gives plain self-attention.
        alpha, tau:
            NoRGa gate scalars of this layer (ignored for the linear gate).
        """
        B, N, _ = x.shape
        if is_causal and attn_mask is not None:
            raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
        if is_causal and prefix is not None:
            raise ValueError("is_causal=True is not defined for prefix attention (prefix "
                             "columns have no position); pass an explicit attn_mask instead")
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        q, k = self.q_norm(q), self.k_norm(k)
        training_dropout = self.training and isinstance(self.attn_drop, nn.Dropout)
        drop_p = self.attn_drop.p if training_dropout else 0.0

        if attn_mask is not None or is_causal:
            bias = self._mask_bias(attn_mask, is_causal, N, q.dtype, q.device)
        if prefix is None:
            if self.fused:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                     is_causal=is_causal, dropout_p=drop_p,
                                                     scale=self.scale)
            else:
                logits = (q * self.scale) @ k.transpose(-2, -1)
                if attn_mask is not None or is_causal:
                    logits = logits + bias
                out = self.attn_drop(logits.softmax(dim=-1)) @ v
        else:
            expected = (B, 2, prefix.shape[2], self.num_heads, self.head_dim)
            if tuple(prefix.shape) != expected:
                raise ValueError(f"prefix has shape {tuple(prefix.shape)}, expected {expected}")
            p_k = prefix[:, 0].permute(0, 2, 1, 3)  # (B, H, L_p, D)
            p_v = prefix[:, 1].permute(0, 2, 1, 3)
            if attn_mask is not None:  # the prefix columns are never masked
                out = self._reference(q, k, v, p_k, p_v, alpha, tau, bias)
            elif self.fused:
                out = self._fused(q, k, v, p_k, p_v, alpha, tau, drop_p)
            else:
                out = self._reference(q, k, v, p_k, p_v, alpha, tau)

        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        return self.proj_drop(self.proj(out))

    @staticmethod
    def _mask_bias(attn_mask: torch.Tensor | None, is_causal: bool, n: int,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The additive form of a boolean / float ``attn_mask`` or of ``is_causal``."""
        if is_causal:
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        assert attn_mask is not None
        if attn_mask.dtype == torch.bool:
            return torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(
                ~attn_mask.to(device), float("-inf"))
        return attn_mask.to(device=device, dtype=dtype)

    def _reference(self, q, k, v, p_k, p_v, alpha, tau, token_bias=None) -> torch.Tensor:
        # Textbook formula: gate the prefix logits, then one softmax over [prefix, tokens].
        q = q * self.scale
        s_prefix = prefix_gate(q @ p_k.transpose(-2, -1), self.gate, self.activation, alpha, tau)
        s_tokens = q @ k.transpose(-2, -1)
        if token_bias is not None:
            s_tokens = s_tokens + token_bias
        attn = torch.cat([s_prefix, s_tokens], dim=-1).softmax(dim=-1)
        attn = self.attn_drop(attn)
        return attn @ torch.cat([p_v, v], dim=2)

    def _fused(self, q, k, v, p_k, p_v, alpha, tau, drop_p: float) -> torch.Tensor:
        if self.gate == "linear":
            return F.scaled_dot_product_attention(
                q, torch.cat([p_k, k], dim=2), torch.cat([p_v, v], dim=2),
                dropout_p=drop_p, scale=self.scale,
            )
        # NoRGa only changes the prefix columns, by gate(s) - s.
        s_prefix = (q @ p_k.transpose(-2, -1)) * self.scale
        residual = prefix_gate_residual(s_prefix, self.gate, self.activation, alpha, tau)
        return prefix_bias_attention(q, k, v, p_k, p_v, residual, scale=self.scale,
                                     dropout_p=drop_p)


def rewrap_attention(
    block: nn.Module, cls: type[PrefixAttention], *, gate: Gate = "linear",
    activation: Activation = "tanh", fused: bool = True,
) -> PrefixAttention:
    """Replace ``block.attn`` by a fresh ``cls`` with these settings and return it.

    A block wrapped before (by another prompted model on the same ViT) is re-wrapped around the
    same projections, so no gate, activation or fused setting of the earlier model persists.
    """
    block.attn = cls.from_timm(block.attn, gate=gate, activation=activation, fused=fused)
    return block.attn


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    The gradient that reaches the NoRGa bias is a strided slice of SDPA's ``grad q'``; torch
    2.1's CPU GELU backward reads such a slice wrongly (NaN gradients, found by the
    lowest-versions CI job), so it gets a contiguous copy. Forward and values are unchanged.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad.contiguous()


#: Augmented head sizes are rounded up to a multiple of this: the flash / memory-efficient CUDA
#: kernels want head dimensions that are multiples of 8, and on the CPU (2 cores, float32) the
#: flash kernel measured faster at 72 than at 65-69 for ViT-B/16 shapes.
HEAD_DIM_MULTIPLE = 8


def prefix_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    p_k: torch.Tensor,
    p_v: torch.Tensor,
    bias: torch.Tensor,
    *,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``softmax([scale q P_K^T + bias, scale q k^T]) [P_V; v]`` through SDPA without a mask.

    Parameters
    ----------
    q, k, v:
        Queries ``(B, H, N, D)``, token keys and values ``(B, H, N_k, D)``.
    p_k, p_v:
        Key and value prefixes ``(B, H, L, D)``.
    bias:
        ``(B, H, N, L)``, added to the prefix logits; may require a gradient.
    scale, dropout_p:
        As in ``F.scaled_dot_product_attention``.

    Returns
    -------
    torch.Tensor
        ``(B, H, N, D)``.

    The bias enters as ``L`` extra head dimensions (module docstring): ``q' = [q, bias / scale]``
    and a one-hot ``I_L`` on the prefix rows of ``k'``, zeros on its token rows; the values are
    zero-padded to the same size (the CPU flash kernel needs equal query and value head sizes).
    All extra dimensions are padded with zeros to a multiple of :data:`HEAD_DIM_MULTIPLE`.
    Everything is built in the dtype of ``k`` (the compute dtype under autocast).
    """
    B, H, N, D = q.shape
    L = p_k.shape[2]
    rows = L + k.shape[2]
    dtype, device = k.dtype, k.device
    width = -(-(D + L) // HEAD_DIM_MULTIPLE) * HEAD_DIM_MULTIPLE - D  # extra dims, >= L
    zero = torch.zeros((), dtype=dtype, device=device)
    q_parts = [q.to(dtype), (_ContiguousGrad.apply(bias) / scale).to(dtype)]
    if width > L:
        q_parts.append(zero.expand(B, H, N, width - L))
    q_aug = torch.cat(q_parts, dim=-1)
    one_hot = torch.zeros(rows, width, dtype=dtype, device=device)
    one_hot[:L, :L] = torch.eye(L, device=device).to(dtype)  # torch 2.1: no bf16 CPU eye
    k_aug = torch.cat([torch.cat([p_k.to(dtype), k], dim=2), one_hot.expand(B, H, rows, width)],
                      dim=-1)
    v_aug = torch.cat([torch.cat([p_v.to(dtype), v.to(dtype)], dim=2),
                       zero.expand(B, H, rows, width)], dim=-1)
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, dropout_p=dropout_p, scale=scale)
    return out[..., :D]


def sdpa_backward_node(out: torch.Tensor) -> str | None:
    """Name of the fused SDPA backward node in the autograd graph of ``out``, if any.

    The math fallback of ``scaled_dot_product_attention`` records plain matmul / softmax nodes,
    so ``None`` means no fused kernel ran (or no SDPA at all).
    """
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__.startswith("ScaledDotProduct"):
            return type(node).__name__
        stack.extend(fn for fn, _ in node.next_functions)
    return None
