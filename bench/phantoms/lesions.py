"""Lesions painted into warped tissue maps: gliomas with BraTS labels and evolving strokes.

Why level sets: a distance-from-centre field plus smooth noise gives irregular, nested shapes
(necrosis inside enhancing rim inside oedema) in a few array operations, and the same fields
give both the tissue fractions and the ground-truth labels, so labels match the images exactly.
Everything runs inside the lesion's bounding box only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainbench.phantoms.anatomy import MassEffect, Tissues
from brainbench.phantoms.fields import smooth_field
from brainbench.phantoms.template import GRID_SHAPE, VOXEL_MM, Template, mm_to_voxel, voxel_to_mm

# BraTS 2021 labels
NCR, ED, ET = 1, 2, 4


@dataclass(frozen=True)
class TumourSpec:
    """A glioma's appearance. Sizes in mm.

    ``rim_mm`` > 0: enhancing rim around necrosis (glioblastoma-like). ``rim_mm`` = 0: a
    non-enhancing core (BraTS label 1) whose tissue is ``core`` = "mismatch" (T2-bright,
    FLAIR-suppressed: the T2-FLAIR mismatch sign of IDH-mutant astrocytoma) or "solid"
    (FLAIR-bright), optionally with a small enhancing focus.
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float  # solid core (enhancing + necrotic / non-enhancing core)
    rim_mm: float
    core: str  # "mismatch" / "solid" (used when rim_mm == 0)
    oedema_factor: float  # oedema radius / core radius
    enhancing_focus: bool
    gad_mM: float  # contrast agent concentration in enhancing tumour
    shape_seed: int
    mass_strength: float


@dataclass(frozen=True)
class StrokeSpec:
    """An ischaemic stroke in one vascular territory, ``days`` after onset."""

    territory: str  # MCA, ACA, PCA, lacunar
    hemisphere: str  # L / R
    centre_mm: tuple[float, float, float]
    radius_mm: float
    days: float
    tempo: float  # subject-level speed of the tissue evolution (1 = typical)
    shape_seed: int


#: territory boxes in MNI mm: (|x| range, y range, z range, radius range mm)
TERRITORIES = {
    "MCA": ((26, 62), (-62, 32), (-12, 52), (9.0, 22.0)),
    "ACA": ((3, 16), (-35, 45), (18, 64), (8.0, 16.0)),
    "PCA": ((6, 40), (-100, -62), (-12, 24), (8.0, 17.0)),
    "lacunar": ((12, 28), (-24, 16), (-4, 18), (3.5, 7.0)),
}


def _candidates(indices: np.ndarray, box, hemisphere: str | None = None) -> np.ndarray:
    """Subset of flat voxel indices whose world position lies in box ((|x|), (y), (z))."""
    v = np.stack(np.unravel_index(indices, GRID_SHAPE)).astype(np.float64)
    p = voxel_to_mm(v.T).T
    (ax0, ax1), (y0, y1), (z0, z1) = box
    ok = (np.abs(p[0]) >= ax0) & (np.abs(p[0]) <= ax1) & (p[1] >= y0) & (p[1] <= y1) & (p[2] >= z0) & (p[2] <= z1)
    if hemisphere == "L":
        ok &= p[0] < 0
    elif hemisphere == "R":
        ok &= p[0] > 0
    return indices[ok]


def pick_centre(t: Template, rng: np.random.Generator, box, hemisphere: str | None = None,
                wm: bool = True) -> tuple[float, float, float]:
    """A random voxel centre (mm) in white matter (or any tissue) inside a box."""
    pool = _candidates(t.wm_core if wm else t.tissue_core, box, hemisphere)
    if pool.size == 0:
        pool = t.wm_core if wm else t.tissue_core
    v = np.array(np.unravel_index(int(rng.choice(pool)), GRID_SHAPE), dtype=np.float64)
    return tuple(float(c) for c in voxel_to_mm(v))  # type: ignore[return-value]


def mass_effects(tumour: TumourSpec | None) -> list[MassEffect]:
    if tumour is None:
        return []
    extent = tumour.radius_mm * (0.5 + 0.5 * tumour.oedema_factor)
    return [MassEffect(tumour.centre_mm, tumour.mass_strength, 1.3 * extent)]


def _box(centre_mm, radius_mm: float):
    """Bounding-box slices around a centre, plus the local voxel offsets (dx, dy, dz) in mm."""
    c = mm_to_voxel(centre_mm)
    r = radius_mm / VOXEL_MM + 3
    sl, axes = [], []
    for ax in range(3):
        lo = int(max(0, np.floor(c[ax] - r)))
        hi = int(min(GRID_SHAPE[ax], np.ceil(c[ax] + r) + 1))
        sl.append(slice(lo, hi))
        axes.append(((np.arange(lo, hi) - c[ax]) * VOXEL_MM).astype(np.float32))
    x = axes[0].reshape(-1, 1, 1)
    y = axes[1].reshape(1, -1, 1)
    z = axes[2].reshape(1, 1, -1)
    return tuple(sl), np.sqrt(x * x + y * y + z * z)


def _replace(tis: Tissues, sl, frac: np.ndarray) -> np.ndarray:
    """Remove ``frac`` (0..1, of the local brain fraction) of every base tissue inside ``sl``;
    returns the removed brain fraction available to lesion classes."""
    total = np.zeros(frac.shape, np.float32)
    for m in tis.maps.values():
        total += m[sl]
    keep = 1.0 - frac
    for m in tis.maps.values():
        m[sl] *= keep
    return total * frac


def paint_tumour(tis: Tissues, spec: TumourSpec) -> tuple[np.ndarray, dict[str, float]]:
    """Add tumour classes to ``tis``; returns the BraTS label map and volumes (ml) per label."""
    rng = np.random.default_rng([spec.shape_seed, 11])
    R = spec.radius_mm
    ext = R * spec.oedema_factor * 1.35 + 6
    sl, r = _box(spec.centre_mm, ext)
    shape = r.shape
    n1 = np.clip(smooth_field(rng, shape, 4.0, smooth=0.8), -2.5, 2.5)
    n2 = np.clip(smooth_field(rng, shape, 5.0, smooth=0.8), -2.5, 2.5)
    n3 = smooth_field(rng, shape, 2.5)
    gm = tis.maps["gm"][sl]
    brain = sum(m[sl] for m in tis.maps.values())
    phi_core = r / R - 1.0 + 0.16 * n1
    inside = brain > 0.35
    core = (phi_core < 0) & inside
    seg = np.zeros(shape, np.int16)
    enhancing = spec.rim_mm > 0
    if enhancing:
        necrotic = phi_core < -(spec.rim_mm / R) + 0.05 * n3
        seg[core] = ET
        seg[core & necrotic] = NCR
    else:
        seg[core] = NCR  # non-enhancing tumour core
        if spec.enhancing_focus:
            seg[core & (n3 > 1.0) & (phi_core < -0.15)] = ET
    ro = R * spec.oedema_factor
    phi_oed = r / ro - 1.0 + 0.22 * n2 + 0.45 * (gm / np.maximum(brain, 1e-3) - 0.35)
    oedema = (phi_oed < 0) & ~core & inside & (tis.maps["csf"][sl] < 0.6 * np.maximum(brain, 1e-3))
    mismatch = not enhancing and spec.core == "mismatch"
    if mismatch:  # a thin FLAIR-bright rim around the core (T2-FLAIR mismatch sign)
        oedema &= phi_core < 0.18 + 0.1 * n2
    seg[oedema] = ED
    frac = np.zeros(shape, np.float32)
    frac[seg > 0] = 1.0
    frac[seg == ED] = 0.55 if mismatch else 0.7
    avail = _replace(tis, sl, frac)
    core_class = "necrosis" if enhancing else ("idh_core" if mismatch else "solid_core")
    classes = {"enhancing": seg == ET, core_class: seg == NCR, "oedema": seg == ED}
    for name, m in classes.items():
        if m.any():
            tis.patches.append((name, sl, (avail * m).astype(np.float32)))
    tis.gad["enhancing"] = spec.gad_mM
    full = np.zeros(GRID_SHAPE, np.int16)
    full[sl] = seg
    vox_ml = VOXEL_MM**3 / 1000.0
    vols = {f"vol_label{k}_ml": float((seg == k).sum()) * vox_ml for k in (NCR, ED, ET)}
    return full, vols


def stroke_stage(days: float, tempo: float) -> dict[str, float]:
    """Tissue-state weights of an infarct ``days`` after onset (tempo rescales the clock).

    acute: cytotoxic change rising over the first day; oedema: vasogenic swelling peaking near
    day 4; enhance: BBB breakdown peaking near day 12; cavity: liquefaction after about 45 d
    (with a gliotic rim); shrink: slow chronic volume loss up to 1000 d.
    """
    d = max(days / tempo, 1e-3)
    ld = np.log(d)
    acute = 1.0 - np.exp(-d / 0.35)
    oedema = np.exp(-0.5 * ((ld - np.log(4.0)) / 0.9) ** 2)
    enhance = np.exp(-0.5 * ((ld - np.log(12.0)) / 0.6) ** 2)
    cavity = 1.0 / (1.0 + np.exp(-(ld - np.log(45.0)) / 0.35))
    late = float(np.clip(np.log(d / 45.0) / np.log(1000.0 / 45.0), 0.0, 1.0))
    shrink = float(np.clip(np.log(max(d, 20.0) / 20.0) / np.log(1000.0 / 20.0), 0.0, 1.0))
    return {"acute": float(acute), "oedema": float(oedema), "enhance": float(enhance),
            "cavity": float(cavity * (0.55 + 0.4 * late)), "gliosis": float(cavity),
            "shrink": shrink}


def paint_stroke(tis: Tissues, spec: StrokeSpec) -> tuple[np.ndarray, dict[str, float]]:
    """Add infarct classes to ``tis``; returns the binary lesion mask and stage features."""
    rng = np.random.default_rng([spec.shape_seed, 13])
    st = stroke_stage(spec.days, spec.tempo)
    R = spec.radius_mm * (1.0 + 0.15 * st["oedema"]) * (1.0 - 0.3 * st["shrink"])
    sl, r = _box(spec.centre_mm, R * 1.4 + 4)
    shape = r.shape
    n1 = np.clip(smooth_field(rng, shape, 3.0, smooth=0.8), -2.5, 2.5)
    brain = sum(m[sl] for m in tis.maps.values())
    parenchyma = tis.maps["gm"][sl] + tis.maps["wm"][sl]
    phi = r / R - 1.0 + 0.25 * n1
    # stay on the stroke's side of the midline
    xs = mm_to_voxel(spec.centre_mm)[0]
    xi = np.arange(sl[0].start, sl[0].stop, dtype=np.float32).reshape(-1, 1, 1)
    mid = mm_to_voxel([0.0, 0.0, 0.0])[0]
    side = (xi - mid) * np.sign(xs - mid) > 1.0
    lesion = (phi < 0) & side & (parenchyma > 0.35 * np.maximum(brain, 1e-3)) & (brain > 0.3)
    rim = lesion & (phi > -0.28)
    core = lesion & ~rim
    a = st["acute"]
    frac = np.zeros(shape, np.float32)
    frac[lesion] = a
    avail = _replace(tis, sl, frac)
    cav = np.where(core, st["cavity"], 0.2 * st["cavity"]).astype(np.float32)
    gli = np.where(rim, 0.75 * st["gliosis"], 0.15 * st["gliosis"]).astype(np.float32)
    oed = (st["oedema"] * 0.65 * (1.0 - cav - gli)).astype(np.float32)
    inf = np.clip(1.0 - cav - gli - oed, 0.0, 1.0)
    for name, w in (("infarct", inf), ("oedema", oed), ("gliosis", gli)):
        tis.patches.append((name, sl, (avail * w * lesion).astype(np.float32)))
    tis.maps["csf"][sl] += avail * cav * lesion
    tis.gad["infarct"] = 0.5 * st["enhance"]
    tis.gad["gliosis"] = 0.15 * st["enhance"]
    full = np.zeros(GRID_SHAPE, np.uint8)
    full[sl] = lesion
    out = {f"stage_{k}": v for k, v in st.items()}
    out["lesion_ml"] = float(lesion.sum()) * VOXEL_MM**3 / 1000.0
    return full, out
