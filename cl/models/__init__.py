"""Prefix-prompted ViT, prefix attention, the gate and the TII model."""

from cl.models.gating import prefix_gate
from cl.models.prefix_attention import PrefixAttention
from cl.models.prompts import PrefixPrompt
from cl.models.tii import MlpAdapter, TIIHead
from cl.models.vit import PromptedViT

__all__ = ["MlpAdapter", "PrefixAttention", "PrefixPrompt", "PromptedViT", "TIIHead", "prefix_gate"]
