"""Label maps -> region masks (WT, TC, ET), refusing maps that do not fit their images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from brainbench.errors import BenchError
from brainbench.targets import SegLabel, SegmentationTarget

AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class RegionVolume:
    """One subject's region masks in the label map's own grid."""

    subject: str
    masks: np.ndarray  # (R, X, Y, Z) bool, regions in the target's order
    spacing: tuple[float, float, float]  # mm per voxel along X, Y, Z

    @property
    def empty_regions(self) -> list[int]:
        return [i for i in range(self.masks.shape[0]) if not self.masks[i].any()]


def _header(path: Path, subject: str, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise BenchError(f"subject {subject}: {what} file not found: {path}") from None
    except Exception as exc:
        raise BenchError(f"subject {subject}: cannot read {what} {path}: "
                         f"{type(exc).__name__}: {exc}") from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[-1] == 1:
        shape = shape[:3]
    return shape, np.asarray(image.affine, dtype=np.float64)


def check_geometry(subject: str, label: Path, images: Mapping[str, Path]) -> None:
    """The label map must share each image's voxel grid (shape) and placement (affine)."""
    shape, affine = _header(label, subject, "segmentation")
    if len(shape) != 3:
        raise BenchError(f"subject {subject}: segmentation {label} has shape {shape}, "
                         "expected a 3D label map")
    for modality, path in images.items():
        other_shape, other_affine = _header(path, subject, f"{modality} image")
        if other_shape != shape:
            raise BenchError(f"subject {subject}: segmentation {label} has shape {shape} but its "
                             f"{modality} image {path} has shape {other_shape}; they must share "
                             "one voxel grid")
        if not np.allclose(affine, other_affine, atol=AFFINE_TOLERANCE_MM):
            raise BenchError(
                f"subject {subject}: segmentation {label} and its {modality} image {path} have "
                f"different affines (max difference {np.abs(affine - other_affine).max():.3g} "
                f"mm, tolerance {AFFINE_TOLERANCE_MM:g}); the mask would not overlay the image")


def read_regions(subject: str, label: SegLabel, images: Mapping[str, Path],
                 target: SegmentationTarget) -> RegionVolume:
    """Check and read a label map; unknown or non-integer label values name the subject."""
    check_geometry(subject, label.path, images)
    image = nib.load(str(label.path))
    try:
        data = np.asarray(image.dataobj)
    except Exception as exc:
        raise BenchError(f"subject {subject}: cannot read segmentation {label.path}: "
                         f"{type(exc).__name__}: {exc} (corrupt or truncated file?)") from None
    if data.ndim == 4:
        data = data[..., 0]
    values = np.unique(data)
    table = target.region_labels(label.scheme)
    allowed = {0, *{v for labels in table.values() for v in labels}}
    unknown = [v for v in values.tolist() if v not in allowed]
    if unknown:
        raise BenchError(
            f"subject {subject}: segmentation {label.path} contains label values "
            f"{unknown[:10]} that the {label.scheme} scheme does not define; expected "
            f"{sorted(allowed)} ({', '.join(f'{r}={list(v)}' for r, v in table.items())})")
    masks = np.stack([np.isin(data, labels) for labels in table.values()])
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return RegionVolume(subject, masks, zooms)
