"""NoRGa: HiDe-Prompt with the non-linear residual gate ``s + alpha * sigma(tau * s)``."""

from __future__ import annotations

from typing import ClassVar

from cl.methods.base import register_method
from cl.methods.hide import HiDePrompt
from cl.models.gating import Gate


@register_method("norga")
class NoRGa(HiDePrompt):
    """NoRGa (cl-pipeline.md section 1.4): only the prefix gate differs from HiDe-Prompt.

    ``alpha`` and ``tau`` (one pair per prompted layer, initialised to 1) are trained with the
    first task's prompt and frozen afterwards unless ``gate_trainable_after_first_task``.
    """

    gate: Gate = "norga"
    config_fields: ClassVar[frozenset[str] | None] = HiDePrompt.config_fields | {
        "gate_act", "gate_trainable_after_first_task"}  # type: ignore[operator]
