"""`attention`: gated attention-MIL pooling over per-slice tokens, then the reference head.

Averaging 16-128 slices dilutes a focal finding (a tumour or infarct on a few slices) into the
healthy ones. Gated attention pooling (Ilse et al., 2018) learns a weight per slice,
a_s = softmax_s(w . (tanh(V h_s) * sigmoid(U h_s))), pools each modality with its own weights,
averages the modalities (the reference's fusion), and feeds the reference head.

Inputs: (n, M, S, d) = samples x modalities x slices x feature dim.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainbench.heads._torch import TorchHead
from brainbench.heads.base import register_head

DEFAULT_ATTENTION_DIM = 128


@register_head("attention")
class AttentionHead(TorchHead):
    ndim = 4
    layout = "(n, modalities, slices, d)"

    def _build(self, input_shape: tuple[int, ...], out: int) -> Any:
        from brainbench.heads.nets import AttentionMIL

        hidden = int(self.params.get("attention_dim", DEFAULT_ATTENTION_DIM))
        return AttentionMIL(input_shape[-1], hidden, out)

    def slice_weights(self, X: Any) -> np.ndarray:
        """The learnt attention (n, M, S): which slices each prediction leaned on."""
        import torch

        self.check_is_fitted()
        with torch.inference_mode():
            x = torch.as_tensor(self._check_inputs(X), dtype=torch.float32)
            return self._module.pool.weights(x).double().numpy()
