"""The task-identity (TII) model: residual MLP adapter + head on frozen prompt-free features.

The frozen ViT is shared with the prompted model (see :meth:`PromptedViT.backbone_features`);
this module holds only the trainable part ``head(fc_norm(mlp(f)))`` (docs/cl-background.md#backbone
and #tii-model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cl.models.vit import trunc_normal_head


class MlpAdapter(nn.Module):
    """Residual MLP adapter ``LN(x + g(x))`` (the original ``MlpMapping``).

    ``structure=[2]`` gives ``g = Linear(2C->C) o GELU o Linear(C->2C)``; ``[4, 4]`` gives
    ``g = Linear(4C->C) o LN o Linear(4C->4C) o GELU o Linear(C->4C)`` (no activation after the
    middle layer, as in the original code). ``final_norm=False`` drops the final LayerNorm
    (MoCo v3 backbones, docs/cl-background.md#backbone).
    """

    def __init__(self, dim: int, structure: Sequence[int] = (2,), *, final_norm: bool = True
                 ) -> None:
        super().__init__()
        structure = [int(m) for m in structure]
        if not structure or any(m <= 0 for m in structure):
            raise ValueError(f"mlp structure must be positive multipliers, got {structure}")
        layers: list[nn.Module] = []
        width = dim
        for j, mult in enumerate(structure):
            hidden = dim * mult
            layers.append(nn.Linear(width, hidden))
            layers.append(nn.GELU() if j == 0 else nn.LayerNorm(hidden))
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)
        # with an fc_norm backbone (MoCo v3) the final LN is an Identity: fc_norm plays its role
        self.norm: nn.Module = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.body(x))


class TIIHead(nn.Module):
    """Trainable part of the TII model: ``head(fc_norm(mlp(features)))``.

    Parameters
    ----------
    dim:
        Feature size of the frozen backbone.
    num_classes:
        Classes of the whole benchmark; the task is read off the predicted class.
    structure:
        Hidden multipliers of the MLP adapter.
    fc_norm:
        MoCo v3 backbones (:func:`cl.models.vit.uses_fc_norm`): a fresh trainable LayerNorm
        (eps 1e-6, as timm's) after the adapter, whose own final LayerNorm is then dropped.
    """

    def __init__(self, dim: int, num_classes: int, structure: Sequence[int] = (2,), *,
                 fc_norm: bool = False) -> None:
        super().__init__()
        self.mlp = MlpAdapter(dim, structure, final_norm=not fc_norm)
        self.fc_norm: nn.Module = nn.LayerNorm(dim, eps=1e-6) if fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_head(self.head)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.mlp(features)))
