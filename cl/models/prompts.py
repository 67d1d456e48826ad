"""The task-specific prefix pool (E-prompt) and the NoRGa gate scalars.

``prompt`` has shape ``(n_layers, 2, pool, L_p, H, D)`` (docs/cl-background.md#prompt-tensor): one
key/value prefix per prompted layer and per task. ``act_scale`` holds ``(tau, alpha)`` per
prompted layer, initialised to one.
"""

from __future__ import annotations

import torch
from torch import nn


class PrefixPrompt(nn.Module):
    """Pool of per-task key/value prefixes.

    Parameters
    ----------
    n_layers:
        Number of prompted blocks.
    pool_size:
        Number of prefixes per layer (one per task).
    length:
        Prefix length ``L_p``.
    num_heads, head_dim:
        ``H`` and ``D`` of the attention the prefixes are fed to.
    generator:
        Source of the ``U(-1, 1)`` initialisation.
    legacy_kv_reshape:
        Reproduce the original code's reshape without transpose, which mixes samples and
        keys/values across the batch (docs/cl-background.md#protocol-bugs). For comparison only.
    """

    def __init__(
        self,
        n_layers: int,
        pool_size: int,
        length: int,
        num_heads: int,
        head_dim: int,
        *,
        generator: torch.Generator | None = None,
        legacy_kv_reshape: bool = False,
    ) -> None:
        super().__init__()
        shape = (n_layers, 2, pool_size, length, num_heads, head_dim)
        init = torch.rand(shape, generator=generator) * 2.0 - 1.0
        self.prompt = nn.Parameter(init)
        # act_scale[l] = (tau_l, alpha_l), shared by heads, tokens and tasks.
        self.act_scale = nn.Parameter(torch.ones(n_layers, 2))
        self.legacy_kv_reshape = legacy_kv_reshape

    @property
    def n_layers(self) -> int:
        return self.prompt.shape[0]

    @property
    def pool_size(self) -> int:
        return self.prompt.shape[2]

    def tau(self, layer: int) -> torch.Tensor:
        return self.act_scale[layer, 0]

    def alpha(self, layer: int) -> torch.Tensor:
        return self.act_scale[layer, 1]

    def gather(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Per-sample prefixes for task ids ``(B,)``, shape ``(n_layers, B, 2, L_p, H, D)``."""
        selected = self.prompt[:, :, task_ids]  # (n_layers, 2, B, L_p, H, D)
        return self._to_batch_major(selected)

    def blended(self, task: int, batch_size: int, momentum: float) -> torch.Tensor:
        """Training prefix of ``task`` with prompt momentum, expanded to the batch.

        ``(1 - m) * prompt[t] + m * stopgrad(mean_{i<t} prompt[i])`` (docs/cl-background.md#wtp);
        the gradient reaches only ``prompt[t]``. ``m`` is ignored for task 0.
        """
        current = self.prompt[:, :, task]
        if task > 0 and momentum > 0:
            previous = self.prompt[:, :, :task].detach().mean(dim=2)
            current = (1.0 - momentum) * current + momentum * previous
        selected = current.unsqueeze(2).expand(-1, -1, batch_size, -1, -1, -1)
        return self._to_batch_major(selected)

    def _to_batch_major(self, selected: torch.Tensor) -> torch.Tensor:
        n_layers, _, batch, length, heads, dim = selected.shape
        if self.legacy_kv_reshape:
            # The published code's bug: a reshape where a transpose belongs.
            return selected.reshape(n_layers, batch, 2, length, heads, dim)
        return selected.transpose(1, 2)

    @torch.no_grad()
    def copy_prompt(self, source: int, target: int) -> None:
        """Initialise prompt ``target`` from prompt ``source`` (shared prompt pool)."""
        self.prompt[:, :, target] = self.prompt[:, :, source]

    @torch.no_grad()
    def apply_momentum(self, task: int, momentum: float) -> None:
        """Store the blended prompt of ``task`` (the "prompt ensemble" after training)."""
        if task > 0 and momentum > 0:
            previous = self.prompt[:, :, :task].mean(dim=2)
            self.prompt[:, :, task] = (1.0 - momentum) * self.prompt[:, :, task] + (
                momentum * previous
            )
