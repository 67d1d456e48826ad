"""Key-matched prompt pools: L2P prompt tuning and DualPrompt / S-Prompt++ G/E prefixes.

The baselines of docs/cl-background.md#key-matched-baselines share one mechanism: a learnable key
per prompt, a query ``q`` that is the frozen, prompt-free pre-logits feature of the ViT, cosine
similarity between ``q`` and the keys, and top-``k`` selection. What they prompt differs:

* :class:`PromptTuningViT` (L2P): the selected prompts are *tokens* prepended to the sequence
  before block 0 (after the position embedding, so the [CLS] token sits at index ``k * L``).
* :class:`GEPrefixViT` (DualPrompt, S-Prompt++): key/value *prefixes* in chosen blocks, a shared
  G-prompt in the early blocks and a selected E-prompt in the following ones, fed to the
  existing :class:`cl.models.prefix_attention.PrefixAttention` (linear gate).

Selection is per sample: each image uses the prompts chosen from its own query. The original
code's batch-majority vote is available (:func:`majority_vote`) for comparison only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.models.frozen_vit import freeze, seeded_head
from cl.models.prefix_attention import PrefixAttention, rewrap_attention
from cl.models.vit import (
    block_indices,
    embed_tokens,
    fresh_fc_norm,
    pooled,
    run_blocks,
    trunc_normal_head,
)
from norga.choices import check_choice


# ---------------------------------------------------------------------------- key matching
def cosine_similarity_matrix(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(B, pool)`` between queries ``(B, C)`` and keys ``(pool, C)``."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def cosine_match(
    query: torch.Tensor,
    keys: torch.Tensor,
    top_k: int,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` keys by cosine similarity, per sample.

    Parameters
    ----------
    query:
        ``(B, C)`` frozen features.
    keys:
        ``(pool, C)`` prompt keys.
    top_k:
        Number of keys chosen per sample.
    allowed:
        Optional boolean ``(pool,)`` mask of the keys that may be chosen.

    Returns
    -------
    ids, similarity:
        ``(B, top_k)`` chosen key indices (most similar first) and the full ``(B, pool)``
        cosine-similarity matrix.
    """
    sim = cosine_similarity_matrix(query, keys)
    scores = sim if allowed is None else sim.masked_fill(~allowed.to(sim.device), float("-inf"))
    n_allowed = keys.shape[0] if allowed is None else int(allowed.sum())
    if not 1 <= top_k <= n_allowed:
        raise ValueError(f"top_k={top_k} must be in [1, {n_allowed}] (selectable keys)")
    ids = scores.topk(top_k, dim=1).indices
    return ids, sim


def majority_vote(ids: torch.Tensor, top_k: int) -> torch.Tensor:
    """The original code's ``batchwise_prompt``: the ``top_k`` ids chosen most often in the batch.

    Every sample then uses the same ids. This makes a prediction depend on the other images of
    the batch (test-time task leakage, docs/cl-background.md#batchwise-prompt); for comparison only.
    Ties go to the smaller id.
    """
    values, counts = torch.unique(ids.flatten(), return_counts=True)
    # stable order: by count descending, then by id ascending (unique returns sorted ids)
    order = torch.argsort(counts, descending=True, stable=True)
    chosen = values[order][:top_k]
    if chosen.numel() < top_k:  # fewer distinct ids than top_k: pad with the most frequent
        chosen = torch.cat([chosen, chosen[:1].expand(top_k - chosen.numel())])
    return chosen.unsqueeze(0).expand(ids.shape[0], -1)


def official_vote(ids: torch.Tensor, top_k: int, pool_size: int) -> torch.Tensor:
    """The batch vote exactly as coded in the official repositories (``legacy_vote_ties``).

    MoE_PromptCL ``peft/prompt/dp_prompt.py`` lines 99-110 (``norga_prompt.py`` lines 87-96 for
    the TII task vote): ``torch.unique(ids, return_counts=True, sorted=True)``; if fewer than
    ``pool_size`` ids occur, the ids are padded with the smallest chosen id and the counts with
    0; then ``torch.topk(counts, top_k)`` picks the winners, so among equal counts the order is
    whatever ``torch.topk`` returns (not the smaller id, unlike :func:`majority_vote`).
    """
    values, counts = torch.unique(ids, return_counts=True, sorted=True)
    if values.numel() < pool_size:
        pad = pool_size - values.numel()
        values = torch.cat([values, ids.min().reshape(1).expand(pad)])
        counts = torch.cat([counts, counts.new_zeros(pad)])
    chosen = values[torch.topk(counts, k=top_k).indices]
    return chosen.unsqueeze(0).expand(ids.shape[0], -1)


def key_pull(query: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Surrogate matching term ``sum_b sum_{j in ids_b} cos(q_b, K_j) / B``.

    The training loss subtracts ``pull_coeff`` times this value, pulling the chosen keys
    towards the queries that chose them. ``query`` is frozen, so only the keys get gradients.
    """
    q = F.normalize(query.detach(), dim=-1)  # (B, C)
    k = F.normalize(keys, dim=-1)[ids]  # (B, top_k, C)
    return (k * q.unsqueeze(1)).sum() / query.shape[0]


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    # U(-1, 1): the ``uniform`` prompt / key initialisation of the original code
    return torch.rand(shape, generator=generator) * 2.0 - 1.0


class _KeyedViT(nn.Module):
    """What both prompt models share: the frozen ViT, the keys, the head and the query."""

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        pool_size: int,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        token_pool = getattr(vit, "global_pool", "token") == "token"
        if getattr(vit, "cls_token", None) is None or not token_pool:
            raise ValueError("key-matched prompts need a ViT with a [CLS] token and token pooling")
        self.vit = vit
        freeze(self.vit)
        self.embed_dim = int(vit.embed_dim)
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.key = nn.Parameter(_uniform((pool_size, self.embed_dim), generator))
        # MoCo v3 backbones (fc_norm=True): a fresh, trainable LayerNorm before the head, as in
        # MoE_PromptCL vits/dp_vision_transformer.py (fc_norm; its freeze list does not match
        # "fc_norm"); Identity for every other backbone
        self.fc_norm: nn.Module = fresh_fc_norm(vit)
        self.head = seeded_head(self.embed_dim, num_classes, generator)

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen prompt-free pre-logits feature ``(B, C)`` (the matching query)."""
        return pooled(self.vit, run_blocks(self.vit, x))

    def match(
        self, query: torch.Tensor, top_k: int, allowed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`cosine_match` against this model's keys."""
        return cosine_match(query, self.key, top_k, allowed)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(features))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh ``Linear(embed_dim, num_classes)`` (timm interface)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes).to(self.key.device)
        trunc_normal_head(self.head)


# ---------------------------------------------------------------------------- L2P
HEAD_TYPES = ("token", "prompt")


class PromptTuningViT(_KeyedViT):
    """L2P: a pool of prompt tokens prepended before block 0
    (docs/cl-background.md#key-matched-baselines).

    Parameters
    ----------
    vit:
        timm ``VisionTransformer`` with a [CLS] token (frozen here).
    num_classes:
        Outputs of the single head.
    pool_size, length:
        ``pool`` prompts of ``length`` tokens each, init U(-1, 1); one key per prompt.
    generator:
        Random source of the prompt, key and head initialisation.
    head_type:
        What the head reads (after the final norm): ``"token"``, the [CLS] output (MoE_PromptCL's
        L2P); ``"prompt"``, the mean of the ``k * length`` prompt outputs, [CLS] and patches
        excluded (JH-LEE-KR/l2p-pytorch ``head_type='prompt'``).
    prompt_pos_embed:
        Add the [CLS] position embedding to every prompt token, as the original port does (its
        position table gives the prompt slots the [CLS] entry); by default prompts get none.
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        *,
        pool_size: int,
        length: int,
        generator: torch.Generator | None = None,
        head_type: str = "token",
        prompt_pos_embed: bool = False,
    ) -> None:
        super().__init__(vit, num_classes, pool_size, generator)
        check_choice("head_type", head_type, HEAD_TYPES)
        if prompt_pos_embed and (getattr(vit, "pos_embed", None) is None
                                 or getattr(vit, "no_embed_class", False)):
            raise ValueError("prompt_pos_embed needs a ViT whose position table has a [CLS] "
                             "entry (pos_embed with no_embed_class=False)")
        self.length = length
        self.head_type = head_type
        self.prompt_pos_embed = prompt_pos_embed
        self.prompt = nn.Parameter(_uniform((pool_size, length, self.embed_dim), generator))

    def forward_features(
        self, x: torch.Tensor, prompt_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens ``(B, k*L + N, C)`` after the final norm.

        ``prompt_ids`` ``(B, k)``: each sample's chosen prompts, prepended in that order (no
        position embedding, as in MoE_PromptCL; the [CLS] one with ``prompt_pos_embed``, as in
        the original port). ``None`` runs without prompts.
        """
        h = embed_tokens(self.vit, x)
        if prompt_ids is not None:
            tokens = self.prompt[prompt_ids].flatten(1, 2)  # (B, k*L, C)
            if self.prompt_pos_embed:
                tokens = tokens + self.vit.pos_embed[:, :1]
            h = torch.cat([tokens, h], dim=1)
        return self.vit.norm(self.vit.blocks(h))

    def pre_logits(self, tokens: torch.Tensor, prompt_ids: torch.Tensor | None) -> torch.Tensor:
        """The head's input: the [CLS] output, at index ``k * L`` behind the prepended prompts
        (``head_type="token"``), or the mean of the outputs at indices ``0 .. k*L - 1``
        (``"prompt"``; needs prompts)."""
        n_prompt = 0 if prompt_ids is None else prompt_ids.shape[1] * self.length
        if self.head_type == "prompt":
            if n_prompt == 0:
                raise ValueError("head_type='prompt' reads the prompt outputs: prompt_ids needed")
            return tokens[:, :n_prompt].mean(dim=1)
        return tokens[:, n_prompt]

    def features(self, x: torch.Tensor, prompt_ids: torch.Tensor | None) -> torch.Tensor:
        """Pooled prompted feature ``(B, C)``."""
        return self.pre_logits(self.forward_features(x, prompt_ids), prompt_ids)

    def forward(self, x: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.features(x, prompt_ids))


# ---------------------------------------------------------------------------- DualPrompt
class GEPrefixViT(_KeyedViT):
    """DualPrompt / S-Prompt++: shared G-prefix and key-selected E-prefixes
    (docs/cl-background.md#key-matched-baselines).

    Prefix shapes follow docs/cl-background.md#prompt-tensor: ``g_prompt`` is ``(len(g_layers), 2,
    L_g, H, D)`` and ``e_prompt`` ``(len(e_layers), 2, pool, L_e, H, D)``; index 0 of the second
    axis is the key prefix, 1 the value prefix. A block listed in both gets ``[G; E]`` concatenated
    along the prefix length.

    Parameters
    ----------
    vit:
        timm ``VisionTransformer`` (frozen here; prompted blocks get a
        :class:`PrefixAttention`, which without a prefix equals the original attention).
    num_classes:
        Outputs of the single head.
    pool_size:
        Number of E-prompts (and keys).
    g_layers, g_length:
        Blocks of the shared G-prompt and its length (``g_layers=()`` for S-Prompt++).
    e_layers, e_length:
        Blocks of the E-prompts and their length.
    fused:
        Fused or reference path of the prefix attention.
    generator:
        Random source of the prompt, key and head initialisation.
    legacy_kv_reshape:
        Reproduce the original reshape without transpose, which mixes samples and keys/values
        of the E-prefix across the batch (docs/cl-background.md#prefix-reshape). For comparison
        only.
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        *,
        pool_size: int,
        g_layers: Sequence[int] = (0, 1),
        g_length: int = 5,
        e_layers: Sequence[int] = (2, 3, 4),
        e_length: int = 20,
        fused: bool = True,
        generator: torch.Generator | None = None,
        legacy_kv_reshape: bool = False,
    ) -> None:
        super().__init__(vit, num_classes, pool_size, generator)
        depth = len(vit.blocks)
        self.g_layers = block_indices("method_options.g_layers", g_layers, depth, allow_empty=True)
        if not list(e_layers):
            raise ConfigError("method_options.e_layers", "must name at least one block")
        self.e_layers = block_indices("method_options.e_layers", e_layers, depth)
        for i in sorted(set(self.g_layers) | set(self.e_layers)):  # (re-)wrap: fresh settings
            rewrap_attention(vit.blocks[i], PrefixAttention, fused=fused)
        first = vit.blocks[self.e_layers[0]].attn
        self.num_heads, self.head_dim = first.num_heads, first.head_dim
        H, D = self.num_heads, self.head_dim
        self.g_length, self.e_length = g_length, e_length
        self.g_prompt = (
            nn.Parameter(_uniform((len(self.g_layers), 2, g_length, H, D), generator))
            if self.g_layers else None
        )
        self.e_prompt = nn.Parameter(
            _uniform((len(self.e_layers), 2, pool_size, e_length, H, D), generator)
        )
        self.legacy_kv_reshape = legacy_kv_reshape

    def set_fused(self, fused: bool) -> None:
        """Switch every prompted block between the fused and the reference path."""
        for i in set(self.g_layers) | set(self.e_layers):
            self.vit.blocks[i].attn.fused = fused

    def layer_prefixes(self, e_ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-block prefixes ``{block: (B, 2, L, H, D)}`` for E-prompt ids ``(B,)``.

        Sample ``b`` gets the G-prompt in the G blocks and E-prompt ``e_ids[b]`` in the E blocks,
        key prefix at index 0 and value prefix at index 1 of its own prompts.
        """
        B = e_ids.shape[0]
        out: dict[int, torch.Tensor] = {}
        if self.g_prompt is not None:
            for j, layer in enumerate(self.g_layers):
                out[layer] = self.g_prompt[j].unsqueeze(0).expand(B, -1, -1, -1, -1)
        for j, layer in enumerate(self.e_layers):
            chosen = self.e_prompt[j][:, e_ids]  # (2, B, L_e, H, D)
            if self.legacy_kv_reshape:
                prefix = chosen.reshape(B, 2, *chosen.shape[2:])  # the original bug
            else:
                prefix = chosen.transpose(0, 1)  # (B, 2, L_e, H, D)
            out[layer] = torch.cat([out[layer], prefix], dim=2) if layer in out else prefix
        return out

    def forward_features(self, x: torch.Tensor, e_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``(B, N, C)`` after the final norm; no prompt at all when ``e_ids`` is None."""
        if e_ids is None:
            return run_blocks(self.vit, x)
        prefixes = self.layer_prefixes(e_ids.to(self.key.device))
        layers = list(prefixes)
        return run_blocks(self.vit, x, layers,
                          lambda block, normed, j: block.attn(normed, prefix=prefixes[layers[j]]))

    def features(self, x: torch.Tensor, e_ids: torch.Tensor | None) -> torch.Tensor:
        """Pooled prompted feature ``(B, C)`` (prefixes add no tokens: [CLS] stays at 0)."""
        return pooled(self.vit, self.forward_features(x, e_ids))

    def forward(self, x: torch.Tensor, e_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.features(x, e_ids))
