"""Between the label's voxel grid and the backbone's slice grid, and which slices train a head.

The backbone sees a volume as the contract's slice grid: `num_slices` axial slices (last
NIfTI axis, depth resized) of `image_size` pixels (brainbench.preprocess.volume_to_input).
Labels go to that grid for training; predictions come back to the label's own grid, where
they are scored.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from brainbench.backbone import InputContract


def grid_shape(contract: InputContract) -> tuple[int, int, int]:
    """(H, W, S) of the slice grid: in-plane size and number of slices."""
    height, width = contract.image_size
    return height, width, int(contract.num_slices)


def to_slice_grid(masks: np.ndarray, contract: InputContract) -> np.ndarray:
    """(R, X, Y, Z) bool masks -> (S, R, H, W) bool on the slice grid.

    Trilinear like the images (same sample positions), then a 0.5 threshold.
    """
    volume = torch.from_numpy(masks.astype(np.float32))[None]  # (1, R, X, Y, Z)
    resized = F.interpolate(volume, size=grid_shape(contract), mode="trilinear",
                            align_corners=False)[0]  # (R, H, W, S)
    return (resized >= 0.5).permute(3, 0, 1, 2).numpy()


def to_volume(probabilities: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(S, R, H, W) per-slice probabilities -> (R, X, Y, Z) in the label's grid (trilinear)."""
    stacked = probabilities.permute(1, 2, 3, 0)[None].float()  # (1, R, H, W, S)
    return F.interpolate(stacked, size=tuple(shape), mode="trilinear", align_corners=False)[0]


def _order(salt: str, index: int) -> str:
    return hashlib.sha256(f"{salt}:{index}".encode()).hexdigest()


def choose_slices(foreground: np.ndarray, k: int, foreground_share: float,
                  salt: str) -> tuple[int, ...]:
    """Foreground-aware choice of k training slices of one subject.

    foreground: (S,) tumour area per slice. ceil(k * share) slices come from the tumour,
    spread evenly over its extent (centre and borders); the rest are background slices in
    a hash order of (salt, index). Depends only on the subject, so the cached tokens of a
    subject serve every seed and fraction.
    """
    n = foreground.shape[0]
    k = min(k, n)
    tumour = np.flatnonzero(foreground > 0)
    take = min(len(tumour), math.ceil(k * foreground_share))
    chosen: list[int] = []
    if take:
        picks = np.unique(np.round(np.linspace(0, len(tumour) - 1, take)).astype(int))
        chosen = [int(tumour[i]) for i in picks]
    rest = sorted((i for i in range(n) if i not in chosen),
                  key=lambda i: (foreground[i] > 0, _order(salt, i)))
    chosen += rest[: k - len(chosen)]
    return tuple(sorted(chosen))
