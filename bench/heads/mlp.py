"""`mlp`: the BrainDINO reference head on one aggregated vector per sample (slice mean)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from brainbench.heads._torch import ReferenceHead, TorchHead, check_array


class MLPHead(TorchHead):
    """LayerNorm -> Linear(d, d) -> GELU -> Linear(d, K), trained with the reference recipe."""

    head_name = "mlp"

    def _check_inputs(self, X: Any) -> np.ndarray:
        return check_array(X, 2, "mlp head (n, d)")

    def _build(self, input_shape: tuple[int, ...], out: int) -> torch.nn.Module:
        return ReferenceHead(input_shape[0], out)
