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
import torch

from brainbench.heads._torch import ReferenceHead, TorchHead, check_array

DEFAULT_ATTENTION_DIM = 128


class GatedAttentionPool(torch.nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.value = torch.nn.Linear(dim, hidden)
        self.gate = torch.nn.Linear(dim, hidden)
        self.score = torch.nn.Linear(hidden, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, S, d) -> slice weights (B, M, S) summing to 1 over S."""
        h = self.norm(x)
        logits = self.score(torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))).squeeze(-1)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = (self.weights(x).unsqueeze(-1) * x).sum(dim=2)  # (B, M, d)
        return pooled.mean(dim=1)  # modalities averaged


class AttentionMIL(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.pool = GatedAttentionPool(dim, hidden)
        self.head = ReferenceHead(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


class AttentionHead(TorchHead):
    head_name = "attention"

    def _check_inputs(self, X: Any) -> np.ndarray:
        return check_array(X, 4, "attention head (n, modalities, slices, d)")

    def _build(self, input_shape: tuple[int, ...], out: int) -> torch.nn.Module:
        hidden = int(self.params.get("attention_dim", DEFAULT_ATTENTION_DIM))
        return AttentionMIL(input_shape[-1], hidden, out)

    def slice_weights(self, X: Any) -> np.ndarray:
        """The learnt attention (n, M, S): which slices each prediction leaned on."""
        if self._module is None:
            raise RuntimeError("fit first")
        with torch.inference_mode():
            x = torch.as_tensor(self._check_inputs(X), dtype=torch.float32)
            return self._module.pool.weights(x).double().numpy()
