"""The torch modules behind the built-in trained heads (mlp, attention, segmentation).

They live apart from their `Head` classes so that importing the head registry (the CLI, the
search) does not import torch; a head's ``_build`` imports this module when it builds one.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------- probe heads


class ReferenceHead(nn.Module):
    """BrainDINO's head: LayerNorm -> Linear(d, d) -> GELU -> Linear(d, K)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                 nn.Linear(dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GatedAttentionPool(nn.Module):
    """Gated attention (Ilse et al., 2018): a_s = softmax_s(w . (tanh(V h_s) * sigmoid(U h_s)))
    per modality, the modalities then averaged (the reference's fusion)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.value = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, S, d) -> slice weights (B, M, S) summing to 1 over S."""
        h = self.norm(x)
        logits = self.score(torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))).squeeze(-1)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = (self.weights(x).unsqueeze(-1) * x).sum(dim=2)  # (B, M, d)
        return pooled.mean(dim=1)  # modalities averaged


class AttentionMIL(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.pool = GatedAttentionPool(dim, hidden)
        self.head = ReferenceHead(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


# --------------------------------------------------------------------------- segmentation


class LinearSegmentationNet(nn.Module):
    """BatchNorm + 1x1 conv on the (concatenated) grids, logits upsampled bilinearly to the
    slice, as in the DINOv2 linear segmentation protocol."""

    def __init__(self, channels: Sequence[int], n_out: int, out_size: tuple[int, int]) -> None:
        super().__init__()
        total = sum(channels)
        self.out_size = tuple(out_size)
        # a 1x1 conv with BatchNorm2d, written per patch token: the same maths and parameters,
        # several times faster on CPU (one matmul instead of the slow 1x1-conv backward)
        self.norm = nn.BatchNorm1d(total)
        self.classify = nn.Linear(total, n_out)

    def forward(self, grids: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(list(grids), dim=1)
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        logits = self.classify(self.norm(tokens)).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return F.interpolate(logits, size=self.out_size, mode="bilinear", align_corners=False)


def _block(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.GELU())


class MultiscaleSegmentationNet(nn.Module):
    """Per-layer 1x1 projections of four intermediate layers, a 3x3 fusion conv, and x2
    upsampling conv stages back to full resolution."""

    def __init__(self, channels: Sequence[int], n_out: int, out_size: tuple[int, int],
                 grid_size: tuple[int, int], width: int = 64) -> None:
        super().__init__()
        self.out_size = tuple(out_size)
        self.project = nn.ModuleList(_block(c, width, 1) for c in channels)
        self.fuse = _block(width * len(channels), width, 3)
        factor = max(out_size[0] / grid_size[0], out_size[1] / grid_size[1])
        stages, cin = [], width
        for _ in range(max(0, math.ceil(math.log2(factor)))):
            cout = max(16, cin // 2)
            stages.append(_block(cin, cout, 3))
            cin = cout
        self.up = nn.ModuleList(stages)
        self.classify = nn.Conv2d(cin, n_out, kernel_size=1)

    def forward(self, grids: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.fuse(torch.cat([p(g) for p, g in zip(self.project, grids)], dim=1))
        for stage in self.up:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        logits = self.classify(x)
        return F.interpolate(logits, size=self.out_size, mode="bilinear", align_corners=False)
