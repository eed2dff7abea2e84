"""One person's brain: tissue changes (ageing, neurodegeneration, neurodevelopment, WMH) and the
single combined warp (random deformation, ventricle enlargement, lesion mass effect, affine).

Why one warp: every tissue map must move together, and interpolation is the most expensive step,
so all displacements are summed on a coarse node grid and each map is resampled exactly once.
Tissue effects are applied in template space first so that regions (hippocampus, frontal lobe)
are where the template says they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brainbench.phantoms.fields import lowres_nodes, node_coords, smooth_field, smooth_noise, upsample
from brainbench.phantoms.template import GRID_SHAPE, Template, mm_to_voxel

AGEING_GM_LOSS_PER_YEAR = 0.0035  # fraction of GM turning into CSF per year after 25
WARP_NODE_STEP = 4.0  # voxels between warp control nodes (8 mm)


@dataclass(frozen=True)
class AnatomySpec:
    """Everything about a brain except lesions and the scanner.

    ``warp_seed`` is per person (so follow-up scans keep the same anatomy); ages and losses are
    per scan. Losses are fractions of local GM (0.35 = 35% at the centre of the region).
    """

    age: float
    sex: str  # "M" / "F"
    warp_seed: int
    head_scale: float = 1.0
    gm_offset: float = 0.0  # individual GM fraction deviation (exchanged with WM)
    ageing_rate: float = 1.0  # multiplier on AGEING_GM_LOSS_PER_YEAR
    ventricle_rate: float = 1.0
    wmh_rate: float = 1.0
    mtl_loss: float = 0.0  # neurodegeneration: medial temporal GM loss
    parietal_loss: float = 0.0  # neurodegeneration: parietal GM loss
    frontal_gm: float = 0.0  # neurodevelopment: relative frontal GM change (+0.06 = +6%)


@dataclass(frozen=True)
class MassEffect:
    """Radial push away from ``centre_mm`` (a tumour), strength in [0, 0.6], width in mm."""

    centre_mm: tuple[float, float, float]
    strength: float
    sigma_mm: float


@dataclass
class Tissues:
    """Warped tissue fractions on the output grid plus the latent truths measured on the way.

    Lesion classes are stored as patches (class name, bounding-box slices, fractions) so that
    they cost nothing outside their box.
    """

    maps: dict[str, np.ndarray]
    patches: list[tuple[str, tuple[slice, slice, slice], np.ndarray]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    gad: dict[str, float] = field(default_factory=dict)  # class -> contrast agent (mM) in T1c

    def brain(self) -> np.ndarray:
        b = sum(self.maps.values())
        for _, sl, p in self.patches:
            b[sl] += p
        return b


def ventricle_enlargement(age: float, rate: float) -> float:
    """Fractional pull towards the ventricle centres: 0 at 30 y, about 0.2 at 80 y."""
    return float(np.clip(0.004 * max(age - 30.0, 0.0) * rate, 0.0, 0.45))


def wmh_load(age: float, rate: float) -> float:
    """Periventricular WMH load, starting after about 65 years."""
    return float(np.clip(0.035 * max(age - 63.0, 0.0) * rate, 0.0, 0.9))


def _modify_tissues(t: Template, a: AnatomySpec):
    """Template-space effects; returns (gm, wm, csf, wmh or None, stats)."""
    gm0 = t.gm
    gm = gm0.copy()
    wm = t.wm.copy()
    csf = t.csf.copy()
    reg = t.regions
    # GM gains (young brains, individual offset, neurodevelopmental frontal effect) come from WM
    young = 0.004 * max(25.0 - a.age, 0.0)
    gain = gm0 * (young + a.gm_offset + a.frontal_gm * reg["frontal"])
    gain = np.clip(gain, -gm, wm)
    gm += gain
    wm -= gain
    # GM losses (ageing everywhere, neurodegeneration regionally) become CSF
    ageing = AGEING_GM_LOSS_PER_YEAR * max(a.age - 25.0, 0.0) * a.ageing_rate
    loss_frac = ageing + a.mtl_loss * reg["mtl"] + a.parietal_loss * reg["parietal"]
    loss_frac = np.clip(loss_frac, 0.0, 0.9).astype(np.float32)
    lost = gm * loss_frac
    gm -= lost
    csf += lost

    def rel_change(w):
        den = float(np.sum(gm0 * w))
        return float(np.sum((gm - gm0) * w)) / den

    stats = {
        "gm_change": float(gm.sum() / gm0.sum()) - 1.0,
        "gm_ml": float(gm.sum()) * 8e-3,
        "csf_ml": float(csf.sum()) * 8e-3,
        "mtl_gm_change": rel_change(reg["mtl"]),
        "parietal_gm_change": rel_change(reg["parietal"]),
        "frontal_gm_change": rel_change(reg["frontal"]),
    }
    wmh = None
    load = wmh_load(a.age, a.wmh_rate)
    if load > 0:
        wrng = np.random.default_rng([a.warp_seed, 7])
        pattern = 0.55 + 0.45 * smooth_field(wrng, GRID_SHAPE, 3.0)
        frac = np.clip(reg["periventricular"] * pattern * (1.6 * load), 0.0, 0.9)
        wmh = (wm * frac).astype(np.float32)
        wm -= wmh
    stats["wmh_ml"] = float(wmh.sum()) * 8e-3 if wmh is not None else 0.0
    stats["wm_ml"] = float(wm.sum()) * 8e-3
    brain = float(gm.sum() + wm.sum() + csf.sum() + t.vessel.sum()) + stats["wmh_ml"] / 8e-3
    stats["gm_fraction"] = float(gm.sum()) / brain
    return gm, wm, csf, wmh, stats


def _displacement(a: AnatomySpec, mass: list[MassEffect], rng: np.random.Generator) -> np.ndarray:
    """Summed displacement (3, *GRID_SHAPE), in voxels: output voxel x samples template at x + d."""
    nodes = lowres_nodes(GRID_SHAPE, WARP_NODE_STEP)
    x = node_coords(GRID_SHAPE, nodes)  # (3, *nodes) voxel coords
    centre = mm_to_voxel([0.0, -18.0, 12.0]).astype(np.float32).reshape(3, 1, 1, 1)
    # small random affine: rotation (deg), per-axis scale around head size, translation (mm)
    ang = np.deg2rad(rng.normal(0.0, [3.0, 2.0, 2.0]))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    scale = a.head_scale * (1.0 + rng.normal(0.0, 0.015, 3))
    m = np.linalg.inv(rz @ ry @ rx @ np.diag(scale)).astype(np.float32)
    shift = (rng.normal(0.0, 1.5, 3) / 2.0).astype(np.float32).reshape(3, 1, 1, 1)
    rel = x - centre
    d = np.einsum("ij,j...->i...", m, rel) + centre + shift - x
    # random smooth deformation of about 3 mm (1.5 voxels)
    for ax in range(3):
        d[ax] += 1.5 * smooth_noise(rng, nodes, smooth=1.2)
    # ventricle enlargement: pull samples towards each lateral ventricle's centre line
    s = ventricle_enlargement(a.age, a.ventricle_rate)
    if s > 0:
        for cmm in ((-14.0, -12.0, 16.0), (14.0, -12.0, 16.0)):
            c = mm_to_voxel(cmm).astype(np.float32).reshape(3, 1, 1, 1)
            sig = np.array([9.0, 24.0, 12.0], np.float32).reshape(3, 1, 1, 1) / 2.0
            r = x - c
            g = np.exp(-0.5 * np.sum((r / sig) ** 2, axis=0))
            d += -s * r * g
    for me in mass:
        c = mm_to_voxel(me.centre_mm).astype(np.float32).reshape(3, 1, 1, 1)
        r = x - c
        g = np.exp(-0.5 * np.sum(r**2, axis=0) / (me.sigma_mm / 2.0) ** 2)
        d += -me.strength * r * g
    return d.astype(np.float32)


def build_tissues(t: Template, a: AnatomySpec, mass: list[MassEffect] | None = None) -> Tissues:
    """Apply tissue effects, then the combined warp, to every tissue map (once each)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng([a.warp_seed, 1])
    gm, wm, csf, wmh, stats = _modify_tissues(t, a)
    d_lo = _displacement(a, mass or [], rng)
    act = t.active
    coords = np.empty((3, act.size), np.float32)
    idx = np.unravel_index(act, GRID_SHAPE)
    for ax in range(3):
        coords[ax] = upsample(d_lo[ax], GRID_SHAPE).ravel()[act] + idx[ax]
    maps = {}
    srcs = {"gm": gm, "wm": wm, "csf": csf, "vessel": t.vessel}
    if wmh is not None:
        srcs["wmh"] = wmh
    for name, src in srcs.items():
        out = np.zeros(GRID_SHAPE, np.float32)
        out.ravel()[act] = ndi.map_coordinates(src, coords, order=1, mode="constant", cval=0.0,
                                               prefilter=False, output=np.float32)
        maps[name] = out
    stats["ventricle_enlargement"] = ventricle_enlargement(a.age, a.ventricle_rate)
    stats["ventricle_ml"] = float(np.sum(t.regions["ventricles"])) * 8e-3 / max(
        1.0 - stats["ventricle_enlargement"], 0.5) ** 3
    return Tissues(maps=maps, stats=stats)
