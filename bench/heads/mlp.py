"""`mlp`: the BrainDINO reference head on one aggregated vector per sample (slice mean)."""

from __future__ import annotations

from typing import Any

from brainbench.heads._torch import TorchHead
from brainbench.heads.base import register_head


@register_head("mlp")
class MLPHead(TorchHead):
    """LayerNorm -> Linear(d, d) -> GELU -> Linear(d, K), trained with the reference recipe."""

    def _build(self, input_shape: tuple[int, ...], out: int) -> Any:
        from brainbench.heads.nets import ReferenceHead

        return ReferenceHead(input_shape[0], out)
