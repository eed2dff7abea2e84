"""Label maps -> region masks (WT, TC, ET), refusing maps that do not fit their images.

One check per label map (`label_problem`: shape and affine against each image, then the label
values against the subject's scheme), shared by the run (`read_regions`, `validate_label_maps`)
and `data check` (`check_label_maps`), so what the data check passes the run accepts. Masks are
brought to the orientation their images are sliced in (`brainbench.preprocess.reorientation`:
a map whose last axis is not axial gets the images' reorientation to RAS, the identical axis
permutation and flips), so tokens and masks share one grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np

from brainbench.errors import BenchError
from brainbench.preprocess import reorient, reorient_zooms, reorientation
from brainbench.targets import SegLabel, SegmentationTarget

AFFINE_TOLERANCE_MM = 1e-3
#: how many bad label maps a run's refusal lists with their problem; the others by id only
MAX_LISTED = 10


@dataclass(frozen=True)
class RegionVolume:
    """One subject's region masks in the label map's own grid (reoriented as its images are)."""

    subject: str
    masks: np.ndarray  # (R, X, Y, Z) bool, regions in the target's order
    spacing: tuple[float, float, float]  # mm per voxel along X, Y, Z

    @property
    def empty_regions(self) -> list[int]:
        return [i for i in range(self.masks.shape[0]) if not self.masks[i].any()]


class _Problem(Exception):
    """A label-map problem, its message without the subject (callers add it)."""


def _header(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise _Problem(f"{what} file not found: {path}") from None
    except Exception as exc:
        raise _Problem(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[-1] == 1:
        shape = shape[:3]
    return shape, np.asarray(image.affine, dtype=np.float64)


def _geometry(label: Path, images: Mapping[str, Path]) -> None:
    shape, affine = _header(label, "segmentation")
    if len(shape) != 3:
        raise _Problem(f"segmentation {label} has shape {shape}, expected a 3D label map")
    for modality, path in images.items():
        other_shape, other_affine = _header(path, f"{modality} image")
        if other_shape != shape:
            raise _Problem(f"segmentation {label} has shape {shape} but its {modality} image "
                           f"{path} has shape {other_shape}; they must share one voxel grid")
        if not np.allclose(affine, other_affine, atol=AFFINE_TOLERANCE_MM):
            raise _Problem(
                f"segmentation {label} and its {modality} image {path} have different affines "
                f"(max difference {np.abs(affine - other_affine).max():.3g} mm, tolerance "
                f"{AFFINE_TOLERANCE_MM:g}); the mask would not overlay the image")


def _read(label: SegLabel, target: SegmentationTarget
          ) -> tuple[np.ndarray, dict[str, tuple[int, ...]], tuple[float, ...]]:
    """(reoriented label values, region table, reoriented spacing); unknown or non-integer
    label values are a `_Problem`."""
    image = nib.load(str(label.path))
    try:
        data = np.asarray(image.dataobj)
    except Exception as exc:
        raise _Problem(f"cannot read segmentation {label.path}: {type(exc).__name__}: {exc} "
                       "(corrupt or truncated file?)") from None
    if data.ndim == 4:
        data = data[..., 0]
    values = np.unique(data)
    table = target.region_labels(label.scheme)
    allowed = {0, *{v for labels in table.values() for v in labels}}
    unknown = [v for v in values.tolist() if v not in allowed]
    if unknown:
        raise _Problem(
            f"segmentation {label.path} contains label values {unknown[:10]} that the "
            f"{label.scheme} scheme does not define; expected {sorted(allowed)} "
            f"({', '.join(f'{r}={list(v)}' for r, v in table.items())})")
    ornt = reorientation(image.affine)  # the transform its images get (same affine)
    return reorient(data, ornt), table, reorient_zooms(image.header.get_zooms(), ornt)


def check_geometry(subject: str, label: Path, images: Mapping[str, Path]) -> None:
    """The label map must share each image's voxel grid (shape) and placement (affine)."""
    try:
        _geometry(label, images)
    except _Problem as exc:
        raise BenchError(f"subject {subject}: {exc}") from None


def label_problem(label: SegLabel, images: Mapping[str, Path], target: SegmentationTarget,
                  *, voxels: bool = True) -> str | None:
    """Why a label map cannot be used with its images (None: it can): the run's own checks,
    geometry from the headers, then (``voxels``) the label values against its scheme."""
    try:
        _geometry(label.path, images)
        if voxels:
            _read(label, target)
    except _Problem as exc:
        return str(exc)
    return None


def check_label_maps(samples: Sequence, target: SegmentationTarget, *, voxels: bool = True
                     ) -> dict[str, str]:
    """Every sample's label-map problem, by sample id (samples without one are left out)."""
    problems: dict[str, str] = {}
    for sample in samples:
        if not isinstance(sample.target, SegLabel):
            continue
        problem = label_problem(sample.target, dict(sample.images), target, voxels=voxels)
        if problem is not None:
            problems[sample.id] = problem
    return problems


def validate_label_maps(samples: Sequence, target: SegmentationTarget) -> None:
    """The run's refusal: one BenchError naming every subject whose label map cannot be used
    (what `data check` lists), before any compute."""
    refuse_label_maps(check_label_maps(samples, target))


def refuse_label_maps(problems: Mapping[str, str]) -> None:
    """One BenchError naming every subject of ``problems`` (sample id -> `label_problem`), or
    nothing when there is none: for a caller that collects them while reading the maps."""
    if not problems:
        return
    if len(problems) == 1:
        (subject, problem), = problems.items()
        raise BenchError(f"subject {subject}: {problem}")
    lines = [f"  subject {s}: {p}" for s, p in list(problems.items())[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:  # the rest named too, without their (long) messages
        rest = list(problems)[MAX_LISTED:]
        lines.append(f"  ... and {len(rest)} more: {', '.join(rest)}")
    raise BenchError(f"{len(problems)} label maps cannot be used (nothing was computed; "
                     "`brainbench data-check` lists them all):\n" + "\n".join(lines))


def read_regions(subject: str, label: SegLabel, images: Mapping[str, Path],
                 target: SegmentationTarget) -> RegionVolume:
    """Check and read a label map; unknown or non-integer label values name the subject."""
    try:
        _geometry(label.path, images)
        data, table, zooms = _read(label, target)
    except _Problem as exc:
        raise BenchError(f"subject {subject}: {exc}") from None
    masks = np.stack([np.isin(data, labels) for labels in table.values()])
    return RegionVolume(subject, masks, zooms)
