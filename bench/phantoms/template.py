"""The anatomy every phantom starts from: nilearn's bundled ICBM152 2009a (sym) tissue maps on a 2 mm grid.

Why this module exists: reading and decimating the 1 mm maps costs about a second, so it is done
once per process (cached in memory) and handed to worker processes, never re-read per subject.
The files are read with nibabel straight from nilearn's package data, which avoids importing
``nilearn.datasets`` (about 2 s) and resamples with a proper triangle (anti-aliasing) filter.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: Output grid: 2 mm isotropic, RAS, in MNI152NLin2009aSym space, cropped around the brain.
VOXEL_MM = 2.0
GRID_SHAPE: tuple[int, int, int] = (88, 104, 88)
GRID_ORIGIN_MM = np.array([-86.0, -120.0, -82.0])
GRID_AFFINE = np.array(
    [[2.0, 0, 0, -86.0], [0, 2.0, 0, -120.0], [0, 0, 2.0, -82.0], [0, 0, 0, 1.0]]
)

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Template:
    """Tissue fractions and fixed region weights on the output grid (all float32, GRID_SHAPE).

    gm, wm, csf, vessel sum to the brain fraction (<= 1). ``regions`` holds smooth weights in
    [0, 1] for the named anatomical regions the effects act on; ``wm_core``/``tissue_core`` are
    flat voxel indices where lesions may be centred.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    vessel: np.ndarray
    regions: dict[str, np.ndarray]
    wm_core: np.ndarray
    tissue_core: np.ndarray
    active: np.ndarray  # flat indices of voxels a warped brain can reach

    @property
    def shape(self) -> tuple[int, int, int]:
        return GRID_SHAPE


def world_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm coordinates of the output grid as broadcastable (x, y, z) arrays."""
    n0, n1, n2 = GRID_SHAPE
    x = (GRID_ORIGIN_MM[0] + VOXEL_MM * np.arange(n0, dtype=np.float32)).reshape(-1, 1, 1)
    y = (GRID_ORIGIN_MM[1] + VOXEL_MM * np.arange(n1, dtype=np.float32)).reshape(1, -1, 1)
    z = (GRID_ORIGIN_MM[2] + VOXEL_MM * np.arange(n2, dtype=np.float32)).reshape(1, 1, -1)
    return x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)


def mm_to_voxel(p_mm) -> np.ndarray:
    """World mm -> output voxel coordinates (float)."""
    return (np.asarray(p_mm, dtype=np.float64) - GRID_ORIGIN_MM) / VOXEL_MM


def voxel_to_mm(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) * VOXEL_MM + GRID_ORIGIN_MM


def _data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is required for the phantom template (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _decimate_to_grid(vol1mm: np.ndarray, affine1mm: np.ndarray) -> np.ndarray:
    """1 mm volume -> output grid: triangle filter [1/4,1/2,1/4] per axis, keep every 2nd voxel,
    then shift/zero-pad so voxel centres coincide with GRID_AFFINE (both grids are on even mm)."""
    v = vol1mm.astype(np.float32)
    for ax in range(3):
        v = np.moveaxis(v, ax, 0)
        pad = np.concatenate([np.zeros_like(v[:1]), v, np.zeros_like(v[:2])], axis=0)
        n = (v.shape[0] + 1) // 2
        # sample j sits on source index 2j: 1/4*(2j-1) + 1/2*(2j) + 1/4*(2j+1)
        v = 0.25 * pad[0:2 * n:2] + 0.5 * pad[1:2 * n + 1:2] + 0.25 * pad[2:2 * n + 2:2]
        v = np.moveaxis(v, 0, ax)
    src_origin = affine1mm[:3, 3]
    off = np.round((GRID_ORIGIN_MM - src_origin) / VOXEL_MM).astype(int)  # grid index -> src index
    out = np.zeros(GRID_SHAPE, np.float32)
    src_sl, dst_sl = [], []
    for ax in range(3):
        lo = max(0, -off[ax])
        hi = min(GRID_SHAPE[ax], v.shape[ax] - off[ax])
        dst_sl.append(slice(lo, hi))
        src_sl.append(slice(lo + off[ax], hi + off[ax]))
    out[tuple(dst_sl)] = v[tuple(src_sl)]
    return out


def _blob(x, y, z, c, s) -> np.ndarray:
    """Anisotropic gaussian weight (peak 1) centred at c (mm) with widths s (mm)."""
    return np.exp(
        -0.5 * (((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2)
    ).astype(np.float32)


def _sigmoid(t):
    return (1.0 / (1.0 + np.exp(-t))).astype(np.float32)


def _vessels(brain: np.ndarray, csf: np.ndarray, ventricles: np.ndarray, x, y, z) -> np.ndarray:
    """Enhancing vessels and choroid plexus: superior sagittal sinus along the top of the
    interhemispheric fissure, transverse sinuses, sylvian (MCA) branches, choroid plexus in the
    ventricular atria. They make T1c differ from T1 outside any lesion."""
    from scipy import ndimage as ndi

    seeds = np.zeros(GRID_SHAPE, np.float32)
    xi = int(round(mm_to_voxel([0, 0, 0])[0]))
    # superior sagittal sinus: the top-most brain voxel at the midline for every coronal slice
    col = brain[xi] > 0.5  # (y, z)
    for j in range(GRID_SHAPE[1]):
        zs = np.nonzero(col[j])[0]
        ymm = GRID_ORIGIN_MM[1] + VOXEL_MM * j
        if zs.size and -95 < ymm < 55:
            seeds[xi, j, zs[-1]] = 1.0
            if ymm < -70:  # straight/confluence region is thicker
                seeds[xi, j, max(zs[-1] - 1, 0)] = 1.0
    sss = ndi.gaussian_filter(seeds, 1.1)
    sss /= max(float(sss.max()), 1e-6)
    # transverse sinuses: posterior-inferior arcs on both sides
    trans = np.maximum(_blob(x, y, z, (-38, -78, -8), (16, 6, 3)), _blob(x, y, z, (38, -78, -8), (16, 6, 3)))
    # sylvian fissure MCA branches: CSF lateral to the insula
    sylv = (np.maximum(_blob(x, y, z, (-40, 2, 2), (5, 12, 5)), _blob(x, y, z, (40, 2, 2), (5, 12, 5)))
            * np.clip(csf * 2.0, 0, 1))
    # choroid plexus: glomus in the atria of the lateral ventricles
    chor = ventricles * np.maximum(_blob(x, y, z, (-27, -38, 14), (6, 8, 7)), _blob(x, y, z, (27, -38, 14), (6, 8, 7)))
    v = np.maximum.reduce([1.0 * sss, 0.9 * trans * (brain > 0.3), 0.6 * sylv, 0.9 * chor])
    return np.clip(v, 0, 1).astype(np.float32) * brain


def build_template() -> Template:
    """Read the ICBM152 maps and derive everything the effects need (about 1 s)."""
    from scipy import ndimage as ndi

    d = _data_dir()
    vols = {}
    aff = None
    for key, fname in _FILES.items():
        img = nib.load(str(d / fname))
        a = np.asarray(img.dataobj, dtype=np.float32)
        if a.max() > 1.5:  # stored as 0..255
            a = a / 255.0
        vols[key] = a
        aff = img.affine
    mask1 = (vols["t1"] > 0.2).astype(np.float32)
    t1 = _decimate_to_grid(vols["t1"], aff)
    gm = _decimate_to_grid(vols["gm"], aff)
    wm = _decimate_to_grid(vols["wm"], aff)
    mask = _decimate_to_grid(mask1, aff)
    brain = np.clip(np.maximum(mask, gm + wm), 0, 1)
    s = gm + wm
    over = s > brain
    scale = np.where(over, brain / np.maximum(s, 1e-6), 1.0).astype(np.float32)
    gm *= scale
    wm *= scale
    csf = np.clip(brain - gm - wm, 0, 1)
    x, y, z = world_axes()

    central = ((np.abs(x) < 30) & (y > -48) & (y < 32) & (z > -8) & (z < 36)).astype(np.float32)
    ventricles = np.clip((csf - 0.35) / 0.4, 0, 1) * central * (t1 < 0.5)
    ventricles = ventricles.astype(np.float32)
    vessel = _vessels(brain, csf, ventricles, x, y, z)
    # vessels take their volume from CSF first, then GM
    from_csf = np.minimum(vessel, csf)
    csf = csf - from_csf
    take_gm = np.minimum(vessel - from_csf, gm)
    gm = gm - take_gm
    vessel = (from_csf + take_gm).astype(np.float32)

    periv = ndi.gaussian_filter(ventricles, 2.5)
    periv = np.clip(periv / max(float(periv.max()), 1e-6) * 2.5, 0, 1) * np.clip(wm * 1.5, 0, 1)
    regions = {
        # hippocampus + amygdala + entorhinal cortex, both sides
        "mtl": np.maximum(_blob(x, y, z, (-26, -20, -16), (7, 15, 7)), _blob(x, y, z, (26, -20, -16), (7, 15, 7))),
        # inferior/superior parietal lobules and precuneus
        "parietal": np.maximum.reduce([
            _blob(x, y, z, (-38, -58, 40), (14, 14, 14)), _blob(x, y, z, (38, -58, 40), (14, 14, 14)),
            _blob(x, y, z, (0, -62, 40), (10, 12, 12))]),
        # prefrontal cortex
        "frontal": np.broadcast_to(_sigmoid((y - 18.0) / 7.0) * _sigmoid((z + 18.0) / 6.0), GRID_SHAPE),
        "ventricles": ventricles,
        "periventricular": periv.astype(np.float32),
    }
    supratent = (z > -22) & (np.abs(x) > 12)
    wm_core = np.flatnonzero(((wm > 0.85) & supratent).ravel())
    tissue_core = np.flatnonzero((((gm + wm) > 0.8) & (z > -40)).ravel())
    reach = ndi.binary_dilation(brain > 0.02, iterations=6)
    active = np.flatnonzero(reach.ravel())
    t = Template(gm=gm.astype(np.float32), wm=wm.astype(np.float32), csf=csf.astype(np.float32),
                 vessel=vessel, regions={k: np.ascontiguousarray(v, np.float32) for k, v in regions.items()},
                 wm_core=wm_core, tissue_core=tissue_core, active=active)
    for a in (t.gm, t.wm, t.csf, t.vessel, t.wm_core, t.tissue_core, t.active, *t.regions.values()):
        a.setflags(write=False)  # shared by every subject: effects must copy, never modify
    return t


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """The process-wide cached template (built on first use)."""
    return build_template()
