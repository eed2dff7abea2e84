"""Per-voxel tissue truth of a phantom scan, recomputed on demand (nothing extra is written).

Why recomputed: the generator writes images and lesion labels only, and adding files would change
every pinned cohort hash. Everything a scan's tissue maps depend on is a deterministic function of
(dataset, cohort size, seed) in ``_phantom.json``, so re-planning the cohort and rebuilding one
scan's warped tissue maps (the renderer's own `build_tissues` and lesion painting, no contrast or
noise) gives exactly the fractions its image was rendered from.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from brainbench.phantoms import lesions
from brainbench.phantoms.anatomy import build_tissues
from brainbench.phantoms.specs import ScanSpec

MANIFEST = "_phantom.json"
TISSUES = ("csf", "gm", "wm")  # the classes the truth maps give (background = the rest)


@dataclass(frozen=True)
class TissueTruth:
    """Fractions on the image's own grid (float32, the image's shape): CSF, GM, WM (WM
    hyperintensities count as WM) and lesion (tumour or stroke classes); background = what is
    left (the renderer's brain mask is ``brain > 0.25``)."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    lesion: np.ndarray

    def stack(self) -> np.ndarray:
        """(4, X, Y, Z): background, CSF, GM, WM fractions (lesion counts as not background)."""
        brain = np.clip(self.csf + self.gm + self.wm + self.lesion, 0.0, 1.0)
        return np.stack([1.0 - brain, self.csf, self.gm, self.wm]).astype(np.float32)


def phantom_root(image: Path) -> Path | None:
    """The phantom root an image lies under (the folder holding ``_phantom.json``), or None."""
    for parent in Path(image).resolve().parents:
        if (parent / MANIFEST).is_file():
            return parent
    return None


@functools.lru_cache(maxsize=8)
def _scans(root: str, dataset: str, n: int, seed: int) -> dict[str, ScanSpec]:
    from brainbench.phantoms.cohorts import plan_cohort
    from brainbench.phantoms.template import load_template

    plan = plan_cohort(dataset, n, seed, load_template())
    return {rel: scan for scan in plan.scans for _, rel in scan.images}


def scan_spec(image: Path) -> ScanSpec | None:
    """The ScanSpec a phantom image was rendered from (None: not a phantom image)."""
    from brainbench.phantoms.layouts import FOLDERS

    root = phantom_root(image)
    if root is None:
        return None
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    from brainbench.phantoms.generate import _manifest_problem

    if _manifest_problem(manifest) is not None:  # as an unreadable one: no record of the scan
        return None
    resolved = Path(image).resolve()
    for dataset, folder in FOLDERS.items():
        base = root / folder
        if base in resolved.parents and dataset in manifest.get("sizes", {}):
            rel = resolved.relative_to(base).as_posix()
            scans = _scans(str(root), dataset, int(manifest["sizes"][dataset]),
                           int(manifest.get("seed", 0)))
            return scans.get(rel)
    return None


def tissue_truth(image: Path) -> TissueTruth | None:
    """The tissue fractions a phantom image was rendered from (None: not a phantom image)."""
    spec = scan_spec(image)
    if spec is None:
        return None
    from brainbench.phantoms.template import load_template

    with threadpool_limits(1):  # as the renderer: same arithmetic, same fractions
        tis = build_tissues(load_template(), spec.anatomy, lesions.mass_effects(spec.tumour))
        if spec.tumour is not None:
            lesions.paint_tumour(tis, spec.tumour)
        if spec.stroke is not None:
            lesions.paint_stroke(tis, spec.stroke)
    lesion = np.zeros_like(tis.maps["gm"])
    for _, sl, frac in tis.patches:
        lesion[sl] += frac
    wm = tis.maps["wm"] + tis.maps.get("wmh", 0.0)
    return TissueTruth(tis.maps["csf"], tis.maps["gm"], np.asarray(wm, np.float32), lesion)
