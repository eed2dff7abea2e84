"""Render one ScanSpec to NIfTI files (runs in worker processes).

Why a module of its own: it is the only code that touches voxels and files per subject, so it is
what the process pool runs and what the per-subject timing measures.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from threadpoolctl import threadpool_limits

from brainbench.phantoms import lesions
from brainbench.phantoms.anatomy import build_tissues
from brainbench.phantoms.mri import acquire, clean_signal
from brainbench.phantoms.specs import ScanSpec
from brainbench.phantoms.template import GRID_AFFINE, Template, load_template

_TEMPLATE: Template | None = None


def init_worker(template: Template | None) -> None:
    """Pool initializer: keep the parent's template (no re-reading per process)."""
    global _TEMPLATE
    _TEMPLATE = template


def nifti_bytes(data: np.ndarray) -> bytes:
    """Deterministic .nii.gz bytes: fixed header, gzip with mtime 0 and no file name."""
    img = nib.Nifti1Image(data, GRID_AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(GRID_AFFINE, code=4)  # MNI152 space
    img.set_sform(GRID_AFFINE, code=4)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_nifti(path: Path, data: np.ndarray) -> None:
    """``.nii.gz`` as above; ``.img`` writes an Analyze 7.5 ``.img``/``.hdr`` pair (OASIS-1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".img":
        nib.save(nib.AnalyzeImage(data, GRID_AFFINE), str(path))
        return
    path.write_bytes(nifti_bytes(data))


def render_arrays(spec: ScanSpec, template: Template) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict]:
    """Images (contrast -> int16 volume), label map (or None) and latent measurements."""
    with threadpool_limits(1):  # tiny BLAS calls: threads only add overhead and nondeterminism
        tis = build_tissues(template, spec.anatomy, lesions.mass_effects(spec.tumour))
        label = None
        stats = dict(tis.stats)
        if spec.tumour is not None:
            label, vols = lesions.paint_tumour(tis, spec.tumour)
            stats.update(vols)
        if spec.stroke is not None:
            label, st = lesions.paint_stroke(tis, spec.stroke)
            stats.update(st)
        brain = tis.brain()
        mask_idx = np.flatnonzero(brain.ravel() > 0.25)
        rng = np.random.default_rng(spec.noise_seed)
        images = {}
        for contrast, _ in spec.images:
            clean = clean_signal(tis, contrast, spec.protocol)
            images[contrast] = acquire(clean, contrast, spec.protocol, mask_idx, rng,
                                       spec.snr_jitter, spec.gain_jitter)
    if label is not None and spec.label_kind == "binary":
        label = (label > 0).astype(np.uint8)
    return images, label, stats


def render_scan(spec: ScanSpec, dest: str | os.PathLike) -> tuple[str, str, dict]:
    """Render and write one scan under ``dest`` (the dataset folder); returns
    (dataset, scan_id, stats) with the seconds it took in ``stats['seconds']``."""
    t0, c0 = time.perf_counter(), time.process_time()
    template = _TEMPLATE if _TEMPLATE is not None else load_template()
    images, label, stats = render_arrays(spec, template)
    dest = Path(dest)
    for contrast, rel in spec.images:
        write_nifti(dest / rel, images[contrast])
    if spec.label_path is not None and label is not None:
        write_nifti(dest / spec.label_path, label)
    stats["seconds"] = time.perf_counter() - t0
    stats["cpu_seconds"] = time.process_time() - c0
    return spec.dataset, spec.scan_id, stats
