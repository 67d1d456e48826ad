"""The NoRGa / HiDe-Prompt ViT: a frozen timm ``VisionTransformer`` with prefix-prompted blocks.

The wrapped ViT keeps working on its own (``vit.forward_features`` gives the prompt-free features
used by the task-identity model); :class:`PromptedViT` adds per-sample prefixes in the chosen
blocks, its own ``fc_norm`` (trainable LayerNorm for MoCo v3 backbones, else Identity) and a
classifier over all classes of the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from cl.errors import ConfigError
from cl.models.gating import Activation, Gate
from cl.models.prefix_attention import PrefixAttention, rewrap_attention
from cl.models.prompts import PrefixPrompt


def block_indices(field: str, layers: Sequence[int], depth: int, *,
                  allow_empty: bool = False) -> list[int]:
    """``layers`` as ints, checked to be distinct blocks of a ViT of ``depth`` blocks.

    Raises :class:`cl.errors.ConfigError` naming ``field`` (the config field or
    ``method_options`` key that set them), e.g. ``prompt_layers: [99] must be distinct block
    indices in [0, 12)``.
    """
    out = [int(i) for i in layers]
    if (not out and not allow_empty) or len(set(out)) != len(out) \
            or not all(0 <= i < depth for i in out):
        raise ConfigError(field, f"{out} must be distinct block indices in [0, {depth})")
    return out

def trunc_normal_head(head: nn.Linear) -> None:
    """timm-style head init: truncated normal (std 0.02) weights, zero bias."""
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)


def seeded_trunc_normal_head(head: nn.Linear, generator: torch.Generator | None) -> None:
    """:func:`trunc_normal_head` drawn from ``generator`` (``None``: the global RNG).

    ``trunc_normal_`` has no generator argument, so the draw runs under a forked global RNG
    seeded from ``generator`` (the caller's global RNG is untouched).
    """
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        trunc_normal_head(head)


def uses_fc_norm(vit: nn.Module) -> bool:
    """Whether ``vit`` was built with timm's ``fc_norm=True`` (MoCo v3,
    docs/cl-background.md#backbone).

    Such a backbone has no final norm (``vit.norm`` is an ``Identity``), so its pooled feature is
    the un-normalised CLS token; the models on top of it then apply their own fresh, trainable
    ``fc_norm`` LayerNorm after pooling.
    """
    return not isinstance(getattr(vit, "fc_norm", nn.Identity()), nn.Identity)


def fresh_fc_norm(vit: nn.Module) -> nn.Module:
    """A new trainable LayerNorm like ``vit.fc_norm`` for MoCo-style backbones, else Identity."""
    if not uses_fc_norm(vit):
        return nn.Identity()
    template = vit.fc_norm
    return nn.LayerNorm(template.normalized_shape, eps=template.eps)


def embed_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering block 0 of a timm ViT: patches, [CLS], position embedding, pre-norm."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


def finish_block(block: nn.Module, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-norm timm ``Block`` once its attention output is known.

    Prompted blocks compute ``block.attn(block.norm1(h), ...)`` themselves (with a prefix or
    prompt experts); this adds the residual and the MLP branch exactly as ``Block.forward``.
    """
    h = h + block.drop_path1(block.ls1(attn_out))
    return h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))


def run_blocks(
    vit: nn.Module,
    x: torch.Tensor,
    layers: Sequence[int] = (),
    attend: Callable[[nn.Module, torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Tokens ``(B, N, C)`` of a timm ViT after its final norm, with prompted blocks.

    Block ``layers[j]`` computes its attention as ``attend(block, block.norm1(h), j)`` (a
    prefix or prompt experts) and then :func:`finish_block`; every other block runs as is
    (with no ``layers``: the plain ViT).
    """
    h = embed_tokens(vit, x)
    slot = {layer: j for j, layer in enumerate(layers)}
    for i, block in enumerate(vit.blocks):
        if i in slot:
            h = finish_block(block, h, attend(block, block.norm1(h), slot[i]))  # type: ignore[misc]
        else:
            h = block(h)
    return vit.norm(h)


def pooled(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The pre-logits feature of a timm ViT: the CLS token after the final norm."""
    kind = getattr(vit, "global_pool", "token")
    if kind == "token":
        return tokens[:, 0]
    if hasattr(vit, "pool"):  # timm >= 1.0
        return vit.pool(tokens)
    if kind == "avg":  # timm 0.9: forward_head pools inline
        return tokens[:, getattr(vit, "num_prefix_tokens", 1):].mean(dim=1)
    raise ValueError(f"global_pool={kind!r} needs timm >= 1.0 (VisionTransformer.pool)")


class PromptedViT(nn.Module):
    """timm ViT with task prefixes in ``prompt_layers`` and a linear head.

    Parameters
    ----------
    vit:
        A timm ``VisionTransformer`` (its head is ignored; it should be built with
        ``num_classes=0``). Its parameters are frozen here.
    num_classes:
        Outputs of the single classifier head (all classes of the benchmark).
    pool_size:
        Number of task prefixes.
    prompt_length:
        Prefix length ``L_p``.
    prompt_layers:
        Indices of the prompted blocks (default 0-4).
    gate, activation:
        Prefix gate (``"linear"`` HiDe-Prompt, ``"norga"``) and its activation.
    fused:
        Fused (``scaled_dot_product_attention``) or reference attention in prompted blocks.
    generator:
        Random source of the prompt and head initialisation.
    legacy_kv_reshape:
        See :class:`cl.models.prompts.PrefixPrompt`.
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        *,
        pool_size: int,
        prompt_length: int,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
        gate: Gate = "linear",
        activation: Activation = "tanh",
        fused: bool = True,
        generator: torch.Generator | None = None,
        legacy_kv_reshape: bool = False,
    ) -> None:
        super().__init__()
        layers = block_indices("prompt_layers", prompt_layers, len(vit.blocks))
        self.vit = vit
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.prompt_layers = layers
        self.gate = gate
        for i in layers:  # (re-)wrap: settings of an earlier model on this ViT never persist
            rewrap_attention(vit.blocks[i], PrefixAttention, gate=gate, activation=activation,
                             fused=fused)
        first = vit.blocks[layers[0]].attn
        self.num_heads = first.num_heads
        self.head_dim = first.head_dim
        self.embed_dim = vit.embed_dim
        self.prompt = PrefixPrompt(
            len(layers),
            pool_size,
            prompt_length,
            self.num_heads,
            self.head_dim,
            generator=generator,
            legacy_kv_reshape=legacy_kv_reshape,
        )
        # Identity, or for MoCo v3 a fresh trainable LayerNorm (the backbone's own stays frozen
        # and unused; the TII model gets its own one too)
        self.fc_norm: nn.Module = fresh_fc_norm(vit)
        self.uses_fc_norm = uses_fc_norm(vit)
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes)
        self._init_head(generator)

    # ------------------------------------------------------------------ switches
    def set_fused(self, fused: bool) -> None:
        """Switch every prompted block between the fused and the reference path."""
        for i in self.prompt_layers:
            self.vit.blocks[i].attn.fused = fused

    def _init_head(self, generator: torch.Generator | None) -> None:
        seeded_trunc_normal_head(self.head, generator)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh ``Linear(embed_dim, num_classes)`` (timm interface)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes).to(self.prompt.prompt.device)
        trunc_normal_head(self.head)

    # ------------------------------------------------------------------ forward
    def forward_features(
        self,
        x: torch.Tensor,
        task_ids: torch.Tensor | None = None,
        *,
        prefixes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token features ``(B, N, C)`` after the final norm.

        Parameters
        ----------
        x:
            Images ``(B, 3, H, W)``.
        task_ids:
            ``(B,)`` task index per sample; each sample uses its own prefix.
        prefixes:
            Explicit prefixes ``(n_layers, B, 2, L_p, H, D)`` (e.g. the momentum-blended
            training prefix); overrides ``task_ids``. With neither, no prompt is used.
        """
        if prefixes is None and task_ids is not None:
            prefixes = self.prompt.gather(task_ids.to(self.prompt.prompt.device))
        if prefixes is None:
            return run_blocks(self.vit, x)
        return run_blocks(
            self.vit, x, self.prompt_layers,
            lambda block, normed, j: block.attn(
                normed, prefix=prefixes[j], alpha=self.prompt.alpha(j), tau=self.prompt.tau(j)
            ),
        )

    def pre_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled feature used for Gaussian statistics (before ``fc_norm``)."""
        return pooled(self.vit, tokens)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, ``fc_norm`` and classify, as timm's ``VisionTransformer.forward_head``:
        ``pre_logits=True`` returns the pooled feature *after* ``fc_norm`` (the head input).
        The Gaussian statistics use :meth:`pre_logits`, the feature before ``fc_norm``."""
        feats = self.fc_norm(self.pre_logits(tokens))
        return feats if pre_logits else self.head(feats)

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, task_ids))

    @torch.no_grad()
    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Prompt-free pooled features of the frozen ViT (input of the TII model)."""
        return self.pre_logits(self.forward_features(x))
