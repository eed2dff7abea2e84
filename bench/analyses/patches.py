"""Patch-level truth: tissue and lesion fractions of every patch a 2d backbone encodes.

Why resampled exactly like the images: a patch token of slice s covers one cell of the
(h, w) grid of the contract's resized slice s (brainbench.preprocess: trilinear resize of the
volume to (H, W, num_slices), axial = last axis). Truth maps go through the same resize, then
each patch takes the mean of its cell (adaptive average pooling), so labels and tokens cover
the same voxels.

Where tissue truth comes from: phantom images recompute the fractions they were rendered from
(`brainbench.phantoms.truth_maps`); real images use a segmentation beside the image, named
like the image with ``_dseg`` before the extension (``sub-01_T1w_dseg.nii.gz``), labels 0
background, 1 CSF, 2 GM, 3 WM (FSL FAST / BIDS dseg order). Without either the tissue analyses
are skipped with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from brainbench.backbone import InputContract
from brainbench.errors import BenchError
from brainbench.preprocess import read_reoriented

TISSUE_CLASSES = ("background", "CSF", "GM", "WM")
DSEG_SUFFIX = "_dseg"


def resized(maps: np.ndarray, contract: InputContract) -> np.ndarray:
    """(C, X, Y, Z) maps -> (C, S, H, W) on the contract's slice grid (the images' resize)."""
    from monai.transforms import Resize

    if contract.dims != "2d":
        raise BenchError("patch truth needs a 2d contract (axial slices)")
    height, width = contract.image_size
    out = Resize((height, width, contract.num_slices), mode="trilinear")(
        torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)))
    return torch.as_tensor(out).permute(0, 3, 1, 2).numpy()


def pooled(maps: np.ndarray, slices: Sequence[int], grid: tuple[int, int]) -> np.ndarray:
    """(C, S, H, W) -> (C, len(slices), h, w): each patch's mean over its cell."""
    chosen = torch.from_numpy(np.ascontiguousarray(maps[:, list(slices)]))
    c, s, height, width = chosen.shape
    out = torch.nn.functional.adaptive_avg_pool2d(chosen.reshape(c * s, 1, height, width), grid)
    return out.reshape(c, s, *grid).numpy()


def dseg_path(image: Path) -> Path:
    name = Path(image).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return Path(image).with_name(name[: -len(ext)] + DSEG_SUFFIX + ext)
    return Path(image).with_name(name + DSEG_SUFFIX)


def tissue_source(image: Path) -> str | None:
    """Where the tissue truth of ``image`` comes from ('phantom', 'dseg'), or None."""
    from brainbench.phantoms.truth_maps import scan_spec

    if dseg_path(image).is_file():
        return "dseg"
    return "phantom" if scan_spec(image) is not None else None


def tissue_maps(image: Path) -> np.ndarray:
    """(4, X, Y, Z) background / CSF / GM / WM fractions of ``image`` (see module docstring)."""
    from brainbench.phantoms.truth_maps import tissue_truth

    seg = dseg_path(image)
    if seg.is_file():
        labels = read_reoriented(seg)
        bad = sorted(set(np.unique(labels).tolist()) - {0, 1, 2, 3})
        if bad:
            raise BenchError(f"tissue segmentation {seg}: labels {bad[:5]} are not 0 background, "
                             "1 CSF, 2 GM, 3 WM")
        return np.stack([(labels == i) for i in range(4)]).astype(np.float32)
    truth = tissue_truth(image)
    if truth is None:
        raise BenchError(f"no tissue truth for {image}: not a phantom image and no "
                         f"segmentation {seg.name} beside it")
    return truth.stack()


def mask_map(path: Path) -> np.ndarray:
    """(1, X, Y, Z) 0/1 map of a label file's nonzero voxels (lesion masks, BraTS labels)."""
    return (read_reoriented(path) > 0).astype(np.float32)[None]


def brain_map(image: Path) -> np.ndarray:
    """(1, X, Y, Z) 0/1 map of the image's nonzero voxels (skull-stripped brain)."""
    return (read_reoriented(image) != 0).astype(np.float32)[None]
