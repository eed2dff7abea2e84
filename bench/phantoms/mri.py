"""From tissue fractions to MR images: signal equations, gadolinium, scanner/site effects, noise.

Why per-class signals: partial-volume mixing of signals is linear, so each tissue class's signal
is computed once per contrast (a scalar) and the image is a weighted sum of fraction maps. This
keeps a 4-contrast subject to a few dozen vector operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainbench.phantoms.anatomy import Tissues
from brainbench.phantoms.fields import smooth_field
from brainbench.phantoms.template import GRID_SHAPE

CONTRASTS = ("t1", "t1c", "t2", "flair")
RELAXIVITY_PER_MS_MM = 4e-3  # gadolinium r1 (1/(ms*mM)) at 1.5 T
INTENSITY_SCALE = 4000.0


@dataclass(frozen=True)
class TissueParams:
    """Relaxation times (ms) at 1.5 T, proton density, contrast agent (mM) reaching the water
    in T1c, and a flow factor (< 1: signal loss of moving blood)."""

    t1: float
    t2: float
    pd: float
    gad: float = 0.0
    flow: float = 1.0


TISSUES: dict[str, TissueParams] = {
    "csf": TissueParams(4000, 1800, 1.00),
    "gm": TissueParams(1350, 100, 0.80, gad=0.03),
    "wm": TissueParams(850, 75, 0.69, gad=0.015),
    "wmh": TissueParams(1150, 140, 0.80, gad=0.02),
    "vessel": TissueParams(1650, 200, 0.90, gad=3.5, flow=0.7),
    "oedema": TissueParams(1550, 190, 0.90, gad=0.03),
    "necrosis": TissueParams(2600, 500, 0.95),
    "enhancing": TissueParams(1450, 130, 0.86, gad=0.6),
    "idh_core": TissueParams(2900, 380, 0.95, gad=0.02),
    "solid_core": TissueParams(1500, 150, 0.88, gad=0.05),
    "infarct": TissueParams(1500, 115, 0.84),
    "gliosis": TissueParams(1250, 170, 0.84),
}


@dataclass(frozen=True)
class Sequence:
    """Spin echo (ti = 0) or inversion-recovery spin echo; times in ms."""

    tr: float
    te: float
    ti: float = 0.0
    contrast_agent: bool = False
    thick_slices: bool = False  # 2-D acquisition: blur along z is larger


SEQUENCES: dict[str, Sequence] = {
    "t1": Sequence(550, 10),
    "t1c": Sequence(550, 10, contrast_agent=True),
    "t2": Sequence(4200, 95, thick_slices=True),
    "flair": Sequence(9000, 120, ti=2500, thick_slices=True),
}


@dataclass(frozen=True)
class SiteProtocol:
    """One scanner/site: what makes its images look like its own (a confounder, on purpose)."""

    site: int
    field_t: float  # 1.5 or 3.0
    timing: tuple[tuple[float, float], ...]  # per CONTRASTS: (TR multiplier, TE multiplier)
    blur_vox: float  # gaussian sigma in voxels (in-plane)
    snr: float  # mean brain signal / noise sigma
    bias_amp: float  # sd of log bias field
    gain: float  # arbitrary scanner units


def sample_site(rng: np.random.Generator, site: int) -> SiteProtocol:
    """A random but plausible scanner for one site."""
    return SiteProtocol(
        site=site,
        field_t=float(rng.choice([1.5, 3.0])),
        timing=tuple((float(rng.uniform(0.88, 1.12)), float(rng.uniform(0.85, 1.15))) for _ in CONTRASTS),
        blur_vox=float(rng.uniform(0.35, 0.8)),
        snr=float(rng.uniform(14.0, 38.0)),
        bias_amp=float(rng.uniform(0.05, 0.22)),
        gain=float(rng.uniform(0.6, 1.6)),
    )


def class_signal(p: TissueParams, seq: Sequence, field_t: float, gad: float | None = None) -> float:
    """Signal of one pure tissue class (PD and flow in the amplitude)."""
    t1 = p.t1 * (1.2 if field_t > 2 and p.t1 < 3500 else 1.0)  # T1 lengthens at 3 T (not CSF)
    t2 = p.t2 * (0.93 if field_t > 2 else 1.0)
    if seq.contrast_agent:
        c = p.gad if gad is None else gad
        r1 = RELAXIVITY_PER_MS_MM * (0.9 if field_t > 2 else 1.0)
        t1 = 1.0 / (1.0 / t1 + r1 * c)
    e2 = np.exp(-seq.te / t2)
    if seq.ti > 0:
        s = abs(1.0 - 2.0 * np.exp(-seq.ti / t1) + np.exp(-seq.tr / t1))
    else:
        s = 1.0 - np.exp(-seq.tr / t1)
    return float(p.pd * p.flow * s * e2)


def _sequence_for(contrast: str, proto: SiteProtocol) -> Sequence:
    base = SEQUENCES[contrast]
    trm, tem = proto.timing[CONTRASTS.index(contrast)]
    return Sequence(base.tr * trm, base.te * tem, base.ti * (trm if base.ti else 0.0),
                    base.contrast_agent, base.thick_slices)


def clean_signal(tis: Tissues, contrast: str, proto: SiteProtocol) -> np.ndarray:
    """Noise-free image of one contrast (float32), before blur and bias."""
    seq = _sequence_for(contrast, proto)
    out = np.zeros(GRID_SHAPE, np.float32)
    for name, frac in tis.maps.items():
        out += np.float32(class_signal(TISSUES[name], seq, proto.field_t, tis.gad.get(name))) * frac
    for name, sl, frac in tis.patches:
        out[sl] += np.float32(class_signal(TISSUES[name], seq, proto.field_t, tis.gad.get(name))) * frac
    return out


def acquire(clean: np.ndarray, contrast: str, proto: SiteProtocol, mask_idx: np.ndarray,
            rng: np.random.Generator, snr_jitter: float = 1.0, gain_jitter: float = 1.0) -> np.ndarray:
    """Scanner effects on a clean image: blur, smooth bias field, Rician noise, int16 scaling.

    Background (outside the skull-stripping mask) is exactly 0, like the real skull-stripped
    datasets (BraTS, UCSF-PDGM, UPENN-GBM).
    """
    from scipy import ndimage as ndi

    seq = SEQUENCES[contrast]
    s = proto.blur_vox
    sig = (s, s, s * (2.2 if seq.thick_slices else 1.0))
    img = ndi.gaussian_filter(clean, sig, truncate=2.5, mode="constant")
    vals = img.ravel()[mask_idx]
    bias = np.exp(proto.bias_amp * smooth_field(rng, GRID_SHAPE, 22.0)).ravel()[mask_idx]
    vals *= bias
    sigma = np.float32(float(vals.mean()) / (proto.snr * snr_jitter))
    n1 = rng.standard_normal(vals.size, dtype=np.float32)
    n2 = rng.standard_normal(vals.size, dtype=np.float32)
    vals = np.sqrt((vals + sigma * n1) ** 2 + (sigma * n2) ** 2)
    vals *= np.float32(INTENSITY_SCALE * proto.gain * gain_jitter)
    out = np.zeros(int(np.prod(GRID_SHAPE)), np.int16)
    out[mask_idx] = np.clip(np.rint(vals), 0, 32767).astype(np.int16)
    return out.reshape(GRID_SHAPE)
