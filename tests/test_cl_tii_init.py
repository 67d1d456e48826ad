"""The TII adapter and head start as the official ones do (issue 23): timm's ViT weight init.

In the official code the adapter (``MlpMapping``) and the head are submodules of the timm ViT,
so ``init_weights_vit_timm`` gives every Linear a truncated normal weight (std 0.02) and a zero
bias (MoE_PromptCL e418337 vits/norga_prompt_vision_transformer.py l.540-561, l.758-763).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl.models.tii import TIIHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dim,structure", [
    pytest.param(768, [2], marks=pytest.mark.slow), (128, [4, 4])])
def test_tii_adapter_linears_start_with_timm_vit_init(dim: int, structure: list[int]) -> None:
    """Official: timm's ``init_weights_vit_timm`` reaches the adapter (a ViT submodule):
    truncated normal std 0.02 and zero bias for every Linear (MoE_PromptCL
    vits/norga_prompt_vision_transformer.py l.540-561, l.758-763). PyTorch's own Linear init
    would give uniform weights (std 0.0208 at fan-in 768, 0.0147 at 1536) and non-zero biases."""
    torch.manual_seed(0)
    tii = TIIHead(dim, 100, structure)
    linears = [m for m in tii.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == len(structure) + 2  # adapter layers + head
    for layer in linears:
        assert torch.count_nonzero(layer.bias) == 0
        w = layer.weight.detach().double().flatten()
        # 5 standard errors of n normal draws (std: 0.02 / sqrt(2n), mean: 0.02 / sqrt(n)); at
        # dim 768 (n >= 76,800) the std bound is 1.3%, well below PyTorch's 0.0208 (4%)
        n = w.numel()
        assert abs(float(w.std()) - 0.02) < 5 * 0.02 / (2 * n) ** 0.5, layer
        assert abs(float(w.mean())) < 5 * 0.02 / n**0.5, layer
        z = (w - w.mean()) / w.std()
        excess_kurtosis = float((z**4).mean()) - 3.0  # normal: 0, uniform: -1.2
        assert abs(excess_kurtosis) < 5 * (24 / n) ** 0.5, layer
    norms = [m for m in tii.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)
