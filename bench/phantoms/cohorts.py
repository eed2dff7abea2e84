"""Who is in each phantom dataset: covariates, label models, ids, visits and file quirks.

Why here and not in the renderer: every label is a function of latent covariates drawn in this
module (with per-person generators), so the ground truth is known before a voxel is drawn and a
person's covariates do not depend on the cohort size (cohort n is a prefix of cohort n + k,
except for the few rows that exist to reproduce a label file's quirks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Callable

import numpy as np

from brainbench.phantoms import layouts
from brainbench.phantoms.anatomy import AnatomySpec
from brainbench.phantoms.lesions import TERRITORIES, StrokeSpec, TumourSpec, pick_centre
from brainbench.phantoms.mri import SiteProtocol, sample_site
from brainbench.phantoms.specs import CohortPlan, Record, ScanSpec, rng_for
from brainbench.phantoms.template import Template

SUPRA_BOX = ((14, 55), (-75, 50), (-15, 50))
FRONTAL_BOX = ((14, 50), (5, 55), (-10, 45))
BRATS_CONTRASTS = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
BRATS_SITES = 8
BRATS_PROTOCOL_SPREAD = 3.0  # TR/TE multipliers 0.64-1.36 / 0.55-1.45 instead of 0.88-1.12


# ----------------------------------------------------------------------------- shared pieces
def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


def _sites(seed: int, dataset: str, k: int, fields: tuple[float, ...] | None = None,
           spread: float = 1.0) -> list[SiteProtocol]:
    """k scanners; ``spread`` > 1 widens their sequence timings around the reference
    protocol (multi-institution collections such as BraTS, where protocols vary the most)."""
    rng = rng_for(seed, dataset, 10_000)
    sites = [sample_site(rng, i) for i in range(k)]
    if fields:
        sites = [dataclasses.replace(s, field_t=f) for s, f in zip(sites, fields)]
    if spread != 1.0:
        sites = [dataclasses.replace(s, timing=tuple((1 + spread * (tr - 1), 1 + spread * (te - 1))
                                                     for tr, te in s.timing)) for s in sites]
    return sites


def _anatomy(rng: np.random.Generator, age: float, sex: str, **effects: float) -> AnatomySpec:
    """Individual brain: head size (sex, childhood), GM fraction, ageing/ventricle/WMH rates."""
    head = (1.025 if sex == "M" else 0.975) * float(rng.normal(1.0, 0.025))
    if age < 14:
        head *= 0.94 + 0.06 * (age - 7.0) / 7.0
    return AnatomySpec(
        age=float(age), sex=sex, warp_seed=_seed(rng), head_scale=head,
        gm_offset=float(rng.normal(0.0, 0.025)), ageing_rate=float(rng.lognormal(0.0, 0.2)),
        ventricle_rate=float(rng.lognormal(0.0, 0.3)), wmh_rate=float(rng.lognormal(0.0, 0.5)),
        **effects,
    )


def _scan(dataset: str, scan_id: str, images: dict[str, str], anat: AnatomySpec, proto: SiteProtocol,
          rng: np.random.Generator, label: tuple[str, str] | None = None,
          tumour: TumourSpec | None = None, stroke: StrokeSpec | None = None) -> ScanSpec:
    return ScanSpec(
        dataset=dataset, scan_id=scan_id, images=tuple(images.items()), anatomy=anat, protocol=proto,
        noise_seed=_seed(rng), label_path=label[0] if label else None,
        label_kind=label[1] if label else "brats", tumour=tumour, stroke=stroke,
        snr_jitter=float(rng.uniform(0.85, 1.15)), gain_jitter=float(rng.uniform(0.93, 1.07)),
    )


def _glioma(rng: np.random.Generator, t: Template, idh_mutant: bool) -> TumourSpec:
    """IDH-mutant: more frontal, smaller, mostly non-enhancing (T2-FLAIR mismatch in about
    60%), little oedema; about 30% enhance like grade-4 astrocytomas. Wildtype: enhancing rim
    around necrosis with large oedema; about 12% non-enhancing. The overlap keeps IDH
    prediction from being trivial."""
    hemi = "L" if rng.random() < 0.5 else "R"
    if idh_mutant:
        box = FRONTAL_BOX if rng.random() < 0.65 else SUPRA_BOX
        centre = pick_centre(t, rng, box, hemi)
        enh = rng.random() < 0.3
        return TumourSpec(
            centre_mm=centre, radius_mm=float(rng.uniform(9.0, 19.0)),
            rim_mm=float(rng.uniform(1.5, 3.5)) if enh else 0.0,
            core="mismatch" if rng.random() < 0.6 else "solid",
            oedema_factor=float(rng.uniform(1.25, 1.7) if enh else rng.uniform(1.15, 1.6)),
            enhancing_focus=bool(rng.random() < 0.15), gad_mM=float(rng.uniform(0.25, 0.6)),
            shape_seed=_seed(rng), mass_strength=float(rng.uniform(0.08, 0.22)))
    centre = pick_centre(t, rng, SUPRA_BOX, hemi)
    enh = rng.random() >= 0.12
    return TumourSpec(
        centre_mm=centre, radius_mm=float(rng.uniform(10.0, 21.0)),
        rim_mm=float(rng.uniform(2.5, 6.0)) if enh else 0.0, core="solid",
        oedema_factor=float(rng.uniform(1.3, 2.0) if enh else rng.uniform(1.25, 1.7)),
        enhancing_focus=bool(not enh and rng.random() < 0.3), gad_mM=float(rng.uniform(0.45, 1.0)),
        shape_seed=_seed(rng), mass_strength=float(rng.uniform(0.2, 0.4)))


def _glioma_age(rng: np.random.Generator, idh_mutant: bool) -> float:
    return float(np.clip(rng.normal(44.0, 14.0), 18, 82) if idh_mutant else np.clip(rng.normal(60.0, 13.0), 22, 89))


def survival_draw(rng: np.random.Generator, age: float, idh_mutant: bool, vol_tc_ml: float) -> tuple[float, float]:
    """Log-normal survival in IDH, age and enhancing+necrotic volume; uniform censoring time."""
    mu = 5.85 + 1.1 * idh_mutant - 0.03 * (age - 60.0) - 0.4 * np.log(max(vol_tc_ml, 1.0) / 10.0)
    t = float(np.exp(mu + 0.7 * rng.standard_normal()))
    c = float(rng.uniform(100.0, 1900.0))  # about 30% censored, about 50% dead within a year
    return t, c


def _quirk_rows(n: int, k: int, start: int = 1) -> list[int]:
    """k distinct person indices spread over the cohort (deterministic, valid for tiny n)."""
    if n <= 0:
        return []
    return sorted({min(n - 1, start + j * max(n // (k + 1), 1)) for j in range(k)})


# ----------------------------------------------------------------------------- the datasets
@dataclasses.dataclass(frozen=True)
class PhantomDataset:
    """How one dataset's phantom is made. ``plan(name, n, seed, template)`` samples the cohort;
    ``write_table`` writes the release's own label file (None: it has none, like BraTS);
    ``survival``: outcomes depend on the rendered tumour volume (drawn in `finalize`). The folder
    it is written to is its adapter's (`layouts.FOLDERS`)."""

    name: str
    plan: Callable[[str, int, int, Template], CohortPlan]
    write_table: Callable[[Path, list[Record]], None] | None
    survival: bool = False


PHANTOMS: dict[str, PhantomDataset] = {}
"""Every dataset with a phantom, in generation order: filled by `phantom` below, the one place
a phantom dataset is named."""


def phantom(name: str, write_table: Callable[[Path, list[Record]], None] | None,
            survival: bool = False) -> Callable:
    """Register a cohort planner as dataset ``name``'s phantom (a dataset adapter must exist)."""
    if name not in layouts.FOLDERS:
        raise ValueError(f"phantom {name!r} has no dataset adapter; known: {sorted(layouts.FOLDERS)}")

    def register(plan: Callable[[str, int, int, Template], CohortPlan]) -> Callable:
        PHANTOMS[name] = PhantomDataset(name, plan, write_table, survival)
        return plan

    return register


# ----------------------------------------------------------------------------- BraTS 2021
@phantom("brats2021", write_table=None)
def plan_brats2021(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    # BraTS pools many institutions: more sites with wider-ranging protocols, so a sequence's
    # look overlaps between sites (sequence_cls is not solved by an intensity histogram)
    sites = _sites(seed, ds, BRATS_SITES, spread=BRATS_PROTOCOL_SPREAD)
    recs = []
    for i in range(n):
        rng = rng_for(seed, ds, i)
        idh = bool(rng.random() < 0.15)
        age = _glioma_age(rng, idh)
        sex = "M" if rng.random() < 0.6 else "F"
        site = int(rng.integers(0, len(sites)))
        tum = _glioma(rng, t, idh)
        paths = layouts.brats_images(i)
        images = {c: paths[k] for k, c in BRATS_CONTRASTS.items()}
        sid = f"BraTS2021_{i:05d}"
        scan = _scan(ds, sid, images, _anatomy(rng, age, sex), sites[site], rng,
                     label=(paths["seg"], "brats"), tumour=tum)
        recs.append(Record(sid, {"subject_id": sid, "age": age, "sex": sex, "site": site, "idh_mutant": idh,
                                 "tumour_y_mm": tum.centre_mm[1]}, scan))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- ADNI
ADNI_SITE_NUMBERS = (2, 5, 11, 13, 22, 23, 27, 31, 33, 35, 41, 53, 57, 67, 73, 94, 98, 100, 114, 116, 123,
                     127, 128, 130, 131, 135, 137, 141, 153, 941)
DX_BL_P = {"CN": 0.27, "SMC": 0.06, "EMCI": 0.17, "LMCI": 0.17, "AD": 0.33}
SEVERITY = {"CN": (0.0, 0.10), "SMC": (0.04, 0.10), "EMCI": (0.32, 0.15), "LMCI": (0.55, 0.18), "AD": (1.0, 0.25)}
PROGRESSION = {"CN": 0.03, "SMC": 0.05, "EMCI": 0.10, "LMCI": 0.16, "AD": 0.2}
DX_ORDER = ("CN", "MCI", "Dementia")


def adni_dx(dx_bl: str, severity: float) -> str:
    """Visit diagnosis: the baseline class, progressed (never regressed) by severity."""
    base = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "Dementia"}[dx_bl]
    by_sev = "Dementia" if severity > 0.85 else ("MCI" if severity > 0.3 else "CN")
    if base == "CN" and by_sev == "Dementia":
        by_sev = "MCI"
    return max(base, by_sev, key=DX_ORDER.index)


@phantom("adni", write_table=layouts.write_adni)
def plan_adni(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    sites = _sites(seed, ds, 4)
    crng = rng_for(seed, ds, 20_000)
    site_nos = [int(s) for s in sorted(crng.choice(ADNI_SITE_NUMBERS, size=4, replace=False))]
    no_image_visits = set(_quirk_rows(n, 2, start=1))
    follow = []
    recs: list[Record] = []
    rid = 1
    for i in range(n):
        rng = rng_for(seed, ds, i)
        rid += int(rng.integers(1, 9))
        dx_bl = str(rng.choice(list(DX_BL_P), p=list(DX_BL_P.values())))
        m, s = SEVERITY[dx_bl]
        sev = float(abs(rng.normal(m, s)) if dx_bl in ("CN", "SMC") else max(rng.normal(m, s), 0.02))
        age = float(np.clip(rng.normal(73.0 + (1.5 if dx_bl == "AD" else 0.0), 7.0), 55.0, 91.0))
        sex = "M" if rng.random() < 0.53 else "F"
        site = int(rng.integers(0, 4))
        ptid = f"{site_nos[site]:03d}_S_{rid:04d}"
        mtl_w, par_w = float(rng.lognormal(0, 0.2)), float(rng.lognormal(0, 0.35))
        anat0 = _anatomy(rng, age, sex)
        date0 = dt.date(2005, 9, 1) + dt.timedelta(days=int(rng.integers(0, 3000)))
        rate = PROGRESSION[dx_bl] * float(rng.lognormal(0, 0.3))
        if dx_bl in ("CN", "SMC") and rng.random() < 0.15:  # preclinical converters
            rate *= 8.0
        has_m12 = bool(rng.random() < 0.2)
        follow.append(has_m12)
        visits = [("bl", 0.0, True)]
        if has_m12:
            visits.append(("m12", 1.0, True))
        if i in no_image_visits:
            visits.append(("m24", 2.0, False))
        for v, (vis, years, imaged) in enumerate(visits):
            vrng = rng_for(seed, ds, i, v + 1)
            s_v = sev + rate * years
            a_v = age + years + (float(vrng.normal(0, 0.05)) if years else 0.0)
            anat = dataclasses.replace(anat0, age=a_v, mtl_loss=0.35 * s_v * mtl_w, parietal_loss=0.15 * s_v * par_w)
            key = f"{ptid}_{vis}"
            scan = (_scan(ds, key, {"t1": layouts.adni_image(ptid, vis)}, anat, sites[site], vrng)
                    if imaged else None)
            date = date0 + dt.timedelta(days=int(round(365.25 * years + (vrng.normal(0, 15) if years else 0))))
            mmse = int(np.clip(round(29.3 - 8.5 * s_v + vrng.normal(0, 1.3)), 0, 30))
            recs.append(Record(key, {
                "subject_id": ptid, "RID": rid, "PTID": ptid, "VISCODE": vis, "EXAMDATE": date.isoformat(),
                "DX_bl": dx_bl, "DX": adni_dx(dx_bl, s_v), "AGE": age, "sex": sex, "MMSE": mmse,
                "SITE": site_nos[site], "site": site, "age": a_v, "severity": s_v,
                "mtl_loss": anat.mtl_loss, "parietal_loss": anat.parietal_loss}, scan,
                quirk="" if imaged else "no_image"))
    if n >= 2 and not any(follow):  # the m12 layout must exist even in tiny cohorts
        _add_visit(recs, seed, ds, t, sites)
    return CohortPlan(ds, n, recs)


def _add_visit(recs: list[Record], seed: int, ds: str, t: Template, sites: list[SiteProtocol]) -> None:
    """Give the first person an imaged m12 visit (only used when chance gave nobody one)."""
    first = recs[0]
    f = dict(first.fields)
    vrng = rng_for(seed, ds, 0, 99)
    s_v = f["severity"] + PROGRESSION[f["DX_bl"]]
    anat = dataclasses.replace(first.scan.anatomy, age=f["age"] + 1.0,
                               mtl_loss=first.scan.anatomy.mtl_loss * s_v / max(f["severity"], 1e-3),
                               parietal_loss=first.scan.anatomy.parietal_loss * s_v / max(f["severity"], 1e-3))
    key = f"{f['PTID']}_m12"
    scan = _scan(ds, key, {"t1": layouts.adni_image(f["PTID"], "m12")}, anat, sites[f["site"]], vrng)
    date = dt.date.fromisoformat(f["EXAMDATE"]) + dt.timedelta(days=365)
    f.update(VISCODE="m12", EXAMDATE=date.isoformat(), DX=adni_dx(f["DX_bl"], s_v), age=f["age"] + 1.0,
             severity=s_v, mtl_loss=anat.mtl_loss, parietal_loss=anat.parietal_loss,
             MMSE=int(np.clip(round(29.3 - 8.5 * s_v), 0, 30)))
    recs.insert(1, Record(key, f, scan))


# ----------------------------------------------------------------------------- ABIDE I
ABIDE_SITES = {  # site: (first SUB_ID, ASD fraction, age range)
    "PITT": (50002, 0.52, (9.5, 35.0)),
    "NYU": (50952, 0.42, (7.0, 30.0)),
    "UM_1": (50272, 0.45, (8.0, 28.0)),
    "USM": (50433, 0.62, (9.0, 40.0)),
}


#: mean frontal GM effect of ASD (sd 0.05 in both groups): d' = 1.8, so the latent truth
#: separates ASD at AUC ~0.9 (phantoms v1.0 used 0.06, which left the oracle at AUC 0.74 with
#: every label and 0.62 at 1%, no room to rank encoders). Real ABIDE effects are far smaller:
#: the phantom gives the benchmark room; it does not claim the effect size.
ASD_FRONTAL_EFFECT = 0.09


@phantom("abide1", write_table=layouts.write_abide)
def plan_abide1(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    sites = _sites(seed, ds, 4)
    names = list(ABIDE_SITES)
    counters = {s: ABIDE_SITES[s][0] for s in names}
    used: set[int] = set()
    n_absent = 1 if n < 30 else 2
    fiq_missing = set(_quirk_rows(n, max(1, n // 15), start=2))
    hand_missing = set(_quirk_rows(n, max(1, n // 15), start=3))
    recs = []
    for i in range(n + n_absent):
        rng = rng_for(seed, ds, i)
        site = int(rng.choice(4, p=[0.25, 0.35, 0.2, 0.2]))
        sname = names[site]
        first, p_asd, (lo, hi) = ABIDE_SITES[sname]
        sub_id = counters[sname]
        while sub_id in used:  # large cohorts: a site's range runs into the next site's
            sub_id += 1
        used.add(sub_id)
        counters[sname] = sub_id + 1 + int(rng.random() < 0.15)
        asd = bool(rng.random() < p_asd)
        age = float(lo + (hi - lo) * rng.beta(1.6, 2.6))
        sex = "M" if rng.random() < (0.89 if asd else 0.8) else "F"
        frontal = float(rng.normal(ASD_FRONTAL_EFFECT if asd else 0.0, 0.05))
        dsm = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15])) if asd else 0
        fiq = int(round(rng.normal(104.0 if asd else 111.0, 15.0)))
        hand = str(rng.choice(["R", "L", "Ambi"], p=[0.86, 0.1, 0.04]))
        if i in fiq_missing:
            fiq = -9999
        if i in hand_missing:
            hand = "-9999"
        anat = _anatomy(rng, age, sex, frontal_gm=frontal)
        imaged = i < n
        scan = (_scan(ds, str(sub_id), {"t1": layouts.abide_image(sname, sub_id)}, anat, sites[site], rng)
                if imaged else None)
        recs.append(Record(str(sub_id), {
            "subject_id": sub_id, "SITE_ID": sname, "SUB_ID": sub_id, "asd": asd, "DSM_IV_TR": dsm,
            "age": age, "sex": sex, "HANDEDNESS_CATEGORY": hand, "FIQ": fiq, "site": site,
            "frontal_effect": frontal}, scan, quirk="" if imaged else "no_image"))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- IXI
IXI_SITES = ("Guys", "HH", "IOP")


@phantom("ixi", write_table=layouts.write_ixi)
def plan_ixi(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    sites = _sites(seed, ds, 3, fields=(1.5, 3.0, 1.5))
    age_missing = set(_quirk_rows(n, 2, start=2))
    recs = []
    ixi_id, scan_no = 1, 480
    for i in range(n + 1):
        rng = rng_for(seed, ds, i)
        ixi_id += int(rng.integers(1, 4))
        scan_no += int(rng.integers(1, 4))
        site = int(rng.choice(3, p=[0.55, 0.3, 0.15]))
        sex = "M" if rng.random() < 0.45 else "F"
        study = dt.date(2005, 6, 1) + dt.timedelta(days=int(rng.integers(0, 570)))
        dob = study - dt.timedelta(days=int(rng.uniform(20.0, 86.0) * 365.25))
        age = (study - dob).days / 365.25
        h = rng.normal(177 if sex == "M" else 164, 7)
        f = {"subject_id": ixi_id, "IXI_ID": ixi_id, "sex": sex, "HEIGHT": int(round(h)),
             "WEIGHT": int(round(rng.normal(80 if sex == "M" else 66, 12))),
             "ETHNIC_ID": int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.78, 0.06, 0.08, 0.04, 0.02, 0.02])),
             "MARITAL_ID": int(rng.integers(1, 6)), "OCCUPATION_ID": int(rng.integers(1, 9)),
             "QUALIFICATION_ID": int(rng.integers(1, 6)), "DOB": dob, "DATE_AVAILABLE": 1,
             "STUDY_DATE": study, "AGE": age, "age": age, "site": site, "SITE_NAME": IXI_SITES[site],
             "scan_no": scan_no}
        quirk = ""
        if i in age_missing:
            f.update(DATE_AVAILABLE=0, STUDY_DATE=None, AGE=None)
            quirk = "age_missing"
        imaged = i < n
        scan = None
        if imaged:
            scan = _scan(ds, f"IXI{ixi_id:03d}", {"t1": layouts.ixi_image(ixi_id, IXI_SITES[site], scan_no)},
                         _anatomy(rng, age, sex), sites[site], rng)
        else:
            quirk = "no_image"
        recs.append(Record(f"IXI{ixi_id:03d}", f, scan, quirk=quirk))
    # duplicated IXI_IDs: one identical pair, one pair that disagrees on AGE
    if n >= 1:
        twin = recs[0]
        recs.append(Record(twin.key, dict(twin.fields), None, quirk="duplicate_identical"))
    if n >= 2:
        j = 1 if 1 not in age_missing else 0
        other = dict(recs[j].fields)
        drng = rng_for(seed, ds, 30_000)
        shift = int(drng.integers(400, 1500))
        other["STUDY_DATE"] = recs[j].fields["STUDY_DATE"] + dt.timedelta(days=shift)
        other["AGE"] = (other["STUDY_DATE"] - other["DOB"]).days / 365.25
        recs.append(Record(recs[j].key, other, None, quirk="duplicate_different_age"))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- ATLAS R2.0
TERRITORY_P = {"MCA": 0.55, "ACA": 0.1, "PCA": 0.15, "lacunar": 0.2}


@phantom("atlas2", write_table=layouts.write_atlas)
def plan_atlas2(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    sites = _sites(seed, ds, 4)
    crng = rng_for(seed, ds, 20_000)
    site_nos = [int(s) for s in sorted(crng.choice(np.arange(1, 36), size=4, replace=False))]
    counters = [0, 0, 0, 0]
    recs = []
    for i in range(n):
        rng = rng_for(seed, ds, i)
        site = int(rng.integers(0, 4))
        counters[site] += 1
        age = float(np.clip(rng.normal(62.0, 12.0), 30, 88))
        sex = "M" if rng.random() < 0.6 else "F"
        days = float(np.exp(rng.uniform(np.log(0.5), np.log(1000.0))))
        hemi = "L" if rng.random() < 0.5 else "R"
        terr = str(rng.choice(list(TERRITORY_P), p=list(TERRITORY_P.values())))
        box, (r0, r1) = TERRITORIES[terr][:3], TERRITORIES[terr][3]
        stroke = StrokeSpec(territory=terr, hemisphere=hemi, centre_mm=pick_centre(t, rng, box, hemi, wm=False),
                            radius_mm=float(rng.uniform(r0, r1)), days=days,
                            tempo=float(rng.lognormal(0.0, 0.3)), shape_seed=_seed(rng))
        subject = f"sub-r{site_nos[site]:03d}s{counters[site]:03d}"
        paths = layouts.atlas_images(site_nos[site], counters[site])
        scan = _scan(ds, subject, {"t1": paths["t1"]}, _anatomy(rng, age, sex), sites[site], rng,
                     label=(paths["mask"], "binary"), stroke=stroke)
        recs.append(Record(subject, {
            "subject_id": subject, "subject": subject, "site_no": site_nos[site], "site": site, "days": days,
            "hemisphere": hemi, "territory": terr, "age": age, "sex": sex, "tempo": stroke.tempo}, scan))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- UCSF-PDGM
@phantom("ucsf_pdgm", write_table=layouts.write_ucsf, survival=True)
def plan_ucsf_pdgm(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    sites = _sites(seed, ds, 4)
    recs = []
    num = 3
    for i in range(n):
        rng = rng_for(seed, ds, i)
        num += int(rng.integers(1, 4))
        idh = bool(rng.random() < 0.35)
        age = _glioma_age(rng, idh)
        sex = "M" if rng.random() < 0.58 else "F"
        site = int(rng.integers(0, 4))
        tum = _glioma(rng, t, idh)
        if idh:  # enhancing IDH-mutant tumours are grade-4 astrocytomas
            oligo = tum.rim_mm == 0 and rng.random() < 0.45
            if tum.rim_mm > 0:
                grade = 4
            else:
                grade = int(rng.choice([2, 3], p=[0.55, 0.45]))
            diag = ("Oligodendroglioma, IDH-mutant, 1p/19q-codeleted" if oligo else "Astrocytoma, IDH-mutant")
            codel = "co-deletion" if oligo else "intact"
            idh_label = "mutant (R132H)" if rng.random() < 0.9 else "mutant (R132C)"
        else:
            grade, diag, codel, idh_label = 4, "Glioblastoma, IDH-wildtype", "", "wildtype"
        paths = layouts.ucsf_images(num)
        images = {c: paths[c] for c in ("t1", "t1c", "t2", "flair")}
        sid = f"UCSF-PDGM-{num:03d}"
        scan = _scan(ds, sid, images, _anatomy(rng, age, sex), sites[site], rng, label=(paths["seg"], "brats"),
                     tumour=tum)
        recs.append(Record(sid, {
            "subject_id": sid, "num": num, "sex": sex, "age": age, "grade": grade, "diagnosis": diag,
            "mgmt": str(rng.choice(["positive", "negative", "indeterminate"], p=[0.45, 0.45, 0.1])),
            "codeletion": codel, "idh_label": idh_label, "idh_mutant": idh,
            "eor": str(rng.choice(["GTR", "STR", "biopsy"], p=[0.5, 0.35, 0.15])), "site": site,
            "tumour_y_mm": tum.centre_mm[1]}, scan))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- UPENN-GBM
@phantom("upenn_gbm", write_table=layouts.write_upenn, survival=True)
def plan_upenn_gbm(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    sites = _sites(seed, ds, 4)
    os_missing = set(_quirk_rows(n, 1 if n < 40 else 2, start=2))
    recs = []
    follow_any = False
    num = 0
    for i in range(n):
        rng = rng_for(seed, ds, i)
        num += int(rng.integers(1, 3))
        idh = bool(rng.random() < 0.1)
        if idh:
            idh_label = "Mutated" if rng.random() < 0.75 else "NOS/NEC"
        else:
            idh_label = "Wildtype" if rng.random() < 0.88 else "NOS/NEC"
        age = _glioma_age(rng, idh)
        sex = "M" if rng.random() < 0.6 else "F"
        site = int(rng.integers(0, 4))
        tum = _glioma(rng, t, idh)
        anat = _anatomy(rng, age, sex)
        kps = "Not Available" if rng.random() < 0.2 else int(np.clip(round(rng.normal(88 - 0.3 * (age - 60), 10), -1), 40, 100))
        base = f"UPENN-GBM-{num:05d}"
        key = f"{base}_11"
        scan = _scan(ds, key, layouts.upenn_images(key), anat, sites[site], rng, tumour=tum)
        f = {"subject_id": base, "sex": sex, "age": age, "idh_mutant": idh, "idh_label": idh_label,
             "mgmt": str(rng.choice(["Methylated", "Unmethylated", "Not Available", "Indeterminate"],
                                    p=[0.35, 0.45, 0.15, 0.05])),
             "kps": kps, "site": site, "session": "11", "os_missing": i in os_missing,
             "tumour_y_mm": tum.centre_mm[1]}
        recs.append(Record(key, f, scan))
        wants_follow = rng.random() < 0.15 or (i == n - 1 and not follow_any and n >= 2)
        if wants_follow:
            follow_any = True
            frng = rng_for(seed, ds, i, 2)
            gap = float(frng.uniform(60, 300))
            tum2 = dataclasses.replace(tum, radius_mm=tum.radius_mm * float(frng.uniform(0.5, 1.1)),
                                       rim_mm=tum.rim_mm * 0.7, shape_seed=_seed(frng),
                                       mass_strength=tum.mass_strength * 0.6)
            key2 = f"{base}_21"
            anat2 = dataclasses.replace(anat, age=age + gap / 365.25)
            scan2 = _scan(ds, key2, layouts.upenn_images(key2), anat2, sites[site], frng, tumour=tum2)
            f2 = dict(f, age=anat2.age, session="21", days_after_baseline=gap)
            recs.append(Record(key2, f2, scan2, in_table=False))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- OASIS-1
CDR_P = {0.0: 0.55, 0.5: 0.3, 1.0: 0.13, 2.0: 0.02}
CDR_SEVERITY = {0.0: (0.0, 0.10), 0.5: (0.5, 0.15), 1.0: (0.9, 0.2), 2.0: (1.2, 0.2)}


@phantom("oasis1", write_table=layouts.write_oasis)
def plan_oasis1(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    """Cross-sectional: about a third under 60 (CDR not rated), CDR-scaled regional GM loss above
    60, and reliability rescans (``_MR2``: same brain, new noise, own row) for a few people."""
    sites = _sites(seed, ds, 1)
    rescans = set(_quirk_rows(n, 2, start=0))
    recs: list[Record] = []
    num = 0
    for i in range(n):
        rng = rng_for(seed, ds, i)
        num += int(rng.integers(1, 3))
        young = rng.random() < 0.35
        age = float(rng.uniform(18.0, 59.9) if young else np.clip(rng.normal(76.0, 8.0), 60.0, 96.0))
        cdr = None if young else float(rng.choice(list(CDR_P), p=list(CDR_P.values())))
        m, sd = CDR_SEVERITY[cdr if cdr is not None else 0.0]
        sev = float(abs(rng.normal(m, sd)) if not cdr else max(rng.normal(m, sd), 0.05))
        sex = "M" if rng.random() < 0.4 else "F"
        anat = dataclasses.replace(_anatomy(rng, age, sex), mtl_loss=0.35 * sev * float(rng.lognormal(0, 0.2)),
                                   parietal_loss=0.15 * sev * float(rng.lognormal(0, 0.35)))
        etiv = int(round(1480 * anat.head_scale ** 3 + rng.normal(0, 60)))
        f = {"subject_id": f"OAS1_{num:04d}", "sex": sex, "AGE": age, "age": age, "site": 0, "CDR": cdr,
             "severity": sev, "mtl_loss": anat.mtl_loss, "parietal_loss": anat.parietal_loss,
             "MMSE": int(np.clip(round(29.3 - 8.0 * sev + rng.normal(0, 1.2)), 0, 30)),
             "Educ": int(rng.integers(1, 6)), "SES": int(rng.integers(1, 6)), "eTIV": etiv,
             "nWBV": float(0.86 - 0.0025 * (age - 18) - 0.03 * sev + rng.normal(0, 0.01)),
             "ASF": 1755.0 / etiv, "Delay": None, "session": 1}
        disc = 1 + i // 40
        for session in (1, 2) if i in rescans else (1,):
            srng = rng_for(seed, ds, i, session)
            key = f"OAS1_{num:04d}_MR{session}"
            fields = dict(f, session=session, Delay=int(srng.integers(1, 90)) if session > 1 else None)
            scan = _scan(ds, key, {"t1": layouts.oasis_image(num, session, disc)}, anat, sites[0], srng)
            recs.append(Record(key, fields, scan, quirk="reliability_rescan" if session > 1 else ""))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- BIDS (ds000228)
@phantom("bids", write_table=layouts.write_bids)
def plan_bids(ds: str, n: int, seed: int, t: Template) -> CohortPlan:
    """Pixar ds000228: mostly children aged 3.5-12 and some adults, one scanner; one ``n/a`` age."""
    sites = _sites(seed, ds, 1, fields=(3.0,))
    age_missing = set(_quirk_rows(n, 1, start=1)) if n >= 3 else set()
    recs = []
    for i in range(n):
        rng = rng_for(seed, ds, i)
        child = rng.random() < 0.78
        age = float(rng.uniform(3.5, 12.3) if child else rng.uniform(18.0, 39.0))
        sex = "M" if rng.random() < 0.5 else "F"
        pid = f"sub-pixar{i + 1:03d}"
        scan = _scan(ds, pid, {"t1": layouts.bids_image(pid)}, _anatomy(rng, age, sex), sites[0], rng)
        recs.append(Record(pid, {
            "subject_id": pid, "age": age, "sex": sex, "site": 0, "age_missing": i in age_missing,
            "AgeGroup": f"{min(int(age), 12)}yo" if child else "Adult",
            "Child_Adult": "child" if child else "adult",
            "Handedness": "R" if rng.random() < 0.9 else "L"}, scan,
            quirk="age_missing" if i in age_missing else ""))
    return CohortPlan(ds, n, recs)


# ----------------------------------------------------------------------------- after rendering
def finalize(plan: CohortPlan, seed: int) -> None:
    """Labels that depend on rendered quantities (survival depends on the measured tumour
    volume); fills ``Record.fields`` in place."""
    if not PHANTOMS[plan.dataset].survival:
        return
    by_subject: dict[str, dict[str, float]] = {}
    for i, r in enumerate(plan.records):
        if r.fields.get("session", "11") != "11":
            continue
        vol = r.stats.get("vol_label1_ml", 0.0) + r.stats.get("vol_label4_ml", 0.0)
        rng = rng_for(seed, plan.dataset, 50_000 + i)
        t, c = survival_draw(rng, r.fields["age"], r.fields["idh_mutant"], vol)
        r.fields.update(true_survival_days=t, censor_days=c, os_days=min(t, c), event=bool(t <= c), vol_tc_ml=vol)
        by_subject[r.fields["subject_id"]] = dict(r.fields)
    for r in plan.records:  # follow-up sessions share their patient's outcome
        if r.fields.get("session") == "21":
            src = by_subject[r.fields["subject_id"]]
            r.fields.update({k: src[k] for k in ("true_survival_days", "censor_days", "os_days", "event")})


def plan_cohort(dataset: str, n: int, seed: int, t: Template) -> CohortPlan:
    return PHANTOMS[dataset].plan(dataset, n, seed, t)
