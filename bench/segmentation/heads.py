"""The two trainable heads on frozen patch tokens; the encoder is never part of them.

Inputs are one (B, C_l, h, w) grid per layer, C_l = modalities x token dim: each modality is
encoded alone by the frozen backbone and the head combines them (no trained stem in front of
the encoder).

linear:     BatchNorm + 1x1 conv on the (concatenated) grids, logits upsampled bilinearly to
            the slice, as in the DINOv2 linear segmentation protocol.
multiscale: per-layer 1x1 projections of four intermediate layers, a 3x3 fusion conv, and
            x2 upsampling conv stages back to full resolution.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from brainbench.errors import BenchError

HEADS = ("linear", "multiscale")


def head_layers(kind: str, depth: int) -> tuple[int, ...]:
    """Block indices a head reads: the last one (linear), or four spread evenly (multiscale:
    2, 5, 8, 11 for a 12-block ViT-B)."""
    if kind == "linear":
        return (depth - 1,)
    if kind == "multiscale":
        if depth < 4:
            return tuple(range(depth))
        return tuple(sorted({round(depth * q / 4) - 1 for q in (1, 2, 3, 4)}))
    raise BenchError(f"unknown segmentation head {kind!r}; choose one of {list(HEADS)}")


class LinearHead(nn.Module):
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


class MultiscaleHead(nn.Module):
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


def make_head(kind: str, channels: Sequence[int], n_out: int, out_size: tuple[int, int],
              grid_size: tuple[int, int], seed: int) -> nn.Module:
    """A fresh head, initialised from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "linear":
            return LinearHead(channels, n_out, out_size)
        if kind == "multiscale":
            return MultiscaleHead(channels, n_out, out_size, grid_size)
    raise BenchError(f"unknown segmentation head {kind!r}; choose one of {list(HEADS)}")


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
