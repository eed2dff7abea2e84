"""Each dataset's real on-disk layout and label file, reproduced for the phantoms.

Why: the adapters that read real data must be the ones that read phantoms, so names, id formats,
column names and the known quirks of the real files are reproduced exactly. This docstring is the
contract the reader team codes against:

1. `brats2021` -> `root/BraTS2021/BraTS2021_{NNNNN}/BraTS2021_{NNNNN}_{t1,t1ce,t2,flair,seg}.nii.gz` (5-digit zero-padded ids starting 00000; seg int16 labels {0,1,2,4}). No CSV.
2. `adni` -> `root/ADNI/ADNIMERGE.csv` columns RID (int), PTID (`{site:03d}_S_{rid:04d}`), VISCODE (`bl`,`m12`,`m24`), EXAMDATE (YYYY-MM-DD), DX_bl (CN,SMC,EMCI,LMCI,AD), DX (CN,MCI,Dementia), AGE (baseline age, float), PTGENDER (Male/Female), MMSE, SITE (int). Images `root/ADNI/images/{PTID}/{VISCODE}/ADNI_{PTID}_{VISCODE}_T1.nii.gz` (T1 only). About 20% of persons have a second visit (m12) with its own image and row (DX may progress CN->MCI or MCI->Dementia); include a couple of CSV rows with no image (real ADNIMERGE has visits without our scans). Classes roughly balanced CN/MCI/Dementia; Dementia/MCI only in age >= 55.
3. `abide1` -> `root/ABIDE_I/Phenotypic_V1_0b.csv` columns SITE_ID (e.g. PITT, NYU, UM_1, USM), SUB_ID (5-digit int like 50002), DX_GROUP (1=ASD, 2=control), DSM_IV_TR, AGE_AT_SCAN, SEX (1=male, 2=female), HANDEDNESS_CATEGORY, FIQ — with -9999 used for missing in FIQ/HANDEDNESS_CATEGORY for some rows, and one or two rows whose image is absent. Images `root/ABIDE_I/{SITE_ID}/{SUB_ID}/session_1/anat_1/mprage.nii.gz` (T1). Ages 7-40, mostly male; site differences in scanner parameters; ASD fraction differs somewhat by site (a confounder).
4. `ixi` -> `root/IXI/IXI.xls` (legacy Excel written with `xlwt`, sheet named `Table`) columns IXI_ID (int), SEX_ID (1=male, 2=female), HEIGHT, WEIGHT, ETHNIC_ID, MARITAL_ID, OCCUPATION_ID, QUALIFICATION_ID, DOB (date cell), DATE_AVAILABLE (0/1), STUDY_DATE (date cell), AGE (float years, = (STUDY_DATE-DOB)/365.25). Quirks: 2-3 IXI_IDs appear twice (one duplicate pair identical, one pair with different AGE), a couple of rows with AGE empty, a row whose image is absent. Images `root/IXI/IXI-T1/IXI{id:03d}-{Guys|HH|IOP}-{nnnn:04d}-T1.nii.gz` (site in filename, nnnn a running scan number). Ages 20-86.
5. `atlas2` -> BIDS: `root/ATLAS_2/Training/R{site:03d}/sub-r{site:03d}s{n:03d}/ses-1/anat/sub-r{site:03d}s{n:03d}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz` and `..._ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz` (uint8 0/1), plus `root/ATLAS_2/ATLAS_2.0_MetaData.csv` columns `Subject ID` (sub-r001s001), `Site` (R001), `Session` (ses-1), `Days Post Stroke` (float), `Lesion Hemisphere` (L/R), `Age`, `Sex`. T1 only.
6. `ucsf_pdgm` -> `root/UCSF-PDGM/UCSF-PDGM-metadata_v5.csv` columns `ID` (`UCSF-PDGM-004`: THREE digits), `Sex` (M/F), `Age at MRI`, `WHO CNS Grade` (2,3,4), `Final pathologic diagnosis (WHO 2021)`, `MGMT status`, `1p/19q`, `IDH` (`wildtype`, or mutant spelled like `mutant (R132H)` / `mutant (R132C)`), `1-dead 0-alive` (0/1), `OS` (days, float), `EOR`. Images `root/UCSF-PDGM/UCSF-PDGM-v5/UCSF-PDGM-{NNNN}_nifti/UCSF-PDGM-{NNNN}_{T1,T1c,T2,FLAIR,tumor_segmentation}.nii.gz` (FOUR digits in folder/file names). IDH mutant ~30-40%.
7. `upenn_gbm` -> `root/UPENN-GBM/UPENN-GBM_clinical_info_v2.1.csv` columns `ID` (`UPENN-GBM-{NNNNN:05d}_11`), `Gender` (M/F), `Age_at_scan_years`, `Survival_from_surgery_days_UPDATED` (int days, or the string `Not Available` for 1-2 rows), `Survival_Status` (`Deceased`/`Alive`), `Survival_Censor` (1 = censored i.e. alive at last follow-up, 0 = death observed), `IDH1` (`Wildtype`/`Mutated`/`NOS/NEC`), `MGMT`, `KPS`. One row per patient (the `_11` baseline id). Images `root/UPENN-GBM/images_structural/{ID}/{ID}_{T1,T1GD,T2,FLAIR}.nii.gz` for every `_11` session, and for ~15% of patients also a follow-up session `UPENN-GBM-{NNNNN}_21` with its own 4 images and NO csv row. Survival: log-normal model in IDH, age, enhancing+necrotic volume; uniform censoring so that ~25-35% are censored; 1-year death rate roughly 40-60% so both survival_1yr classes exist.
8. `oasis1` -> `root/OASIS-1/oasis_cross-sectional.csv` columns ID (`OAS1_{NNNN}_MR1`), M/F, Hand, Age (int), Educ, SES, MMSE, CDR (0, 0.5, 1, 2; empty for participants under 60, who were not rated), eTIV, nWBV, ASF, Delay (`N/A`, or days for the reliability rescans `OAS1_{NNNN}_MR2`, which have their own row and image). Images `root/OASIS-1/disc{k}/OAS1_{NNNN}_MR{n}/PROCESSED/MPRAGE/T88_111/OAS1_{NNNN}_MR{n}_mpr_n4_anon_111_t88_masked_gfc.{img,hdr}` (Analyze 7.5 pair as distributed; 40 persons per disc). Neurodegeneration (regional GM loss) grows with CDR.
9. `bids` -> OpenNeuro ds000228 ("Pixar"): `root/ds000228/participants.tsv` (tab-separated) columns participant_id (`sub-pixar{NNN}`), Age (years, 2 decimals; one `n/a`), AgeGroup (`3yo` ... `12yo`, `Adult`), Child_Adult, Gender (M/F), Handedness; `dataset_description.json`; images `root/ds000228/sub-pixar{NNN}/anat/sub-pixar{NNN}_T1w.nii.gz`. About 78% children aged 3.5-12, the rest adults 18-39; one site.

Details fixed by this implementation (beyond the contract above): every image is a 2 mm
RAS NIfTI-1 (88x104x88, sform/qform = the MNI152NLin2009aSym grid in
``template.GRID_AFFINE``), int16 without scaling, skull-stripped (background exactly 0).
ATLAS `Sex` is M/F. UCSF-PDGM ids have gaps (like the real ones). ADNI `DX_bl`/`DX` and AGE are
given on every row; rows without images are m24 visits. IXI rows whose AGE is empty have
DATE_AVAILABLE 0 and no STUDY_DATE. UPENN-GBM rows with `Not Available` survival days have
Survival_Status `Alive` and Survival_Censor 1. Ground truth lives only in `root/_truth/`.
Folder, label-file and image-folder names are read from the dataset adapters
(`brainbench.datasets`), where each is declared once; which datasets have phantoms is
`cohorts.PHANTOMS`.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

from brainbench.datasets import ADAPTERS, abide, adni, atlas, bids, ixi, oasis1, ucsf_pdgm, upenn_gbm
from brainbench.phantoms.specs import Record

# The folder each dataset unpacks to, as its adapter declares it (the one declaration).
FOLDERS = {name: ADAPTERS.get(name).folder for name in ADAPTERS}


# ----------------------------------------------------------------------------- image paths
def brats_images(i: int) -> dict[str, str]:
    sid = f"BraTS2021_{i:05d}"
    return {k: f"{sid}/{sid}_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair", "seg")}


def adni_image(ptid: str, viscode: str) -> str:
    return f"images/{ptid}/{viscode}/ADNI_{ptid}_{viscode}_T1.nii.gz"


def abide_image(site_id: str, sub_id: int) -> str:
    return f"{site_id}/{sub_id}/session_1/anat_1/mprage.nii.gz"


def ixi_image(ixi_id: int, site: str, scan_no: int) -> str:
    return f"IXI-T1/IXI{ixi_id:03d}-{site}-{scan_no:04d}-T1.nii.gz"


def atlas_images(site: int, n: int) -> dict[str, str]:
    sub = f"sub-r{site:03d}s{n:03d}"
    base = f"Training/R{site:03d}/{sub}/ses-1/anat/{sub}_ses-1_{atlas.SPACE}"
    return {"t1": f"{base}_T1w.nii.gz", "mask": f"{base}_label-L_desc-T1lesion_mask.nii.gz"}


def ucsf_images(num: int) -> dict[str, str]:
    sid = f"UCSF-PDGM-{num:04d}"
    names = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR", "seg": "tumor_segmentation"}
    return {k: f"{ucsf_pdgm.IMAGE_DIR}/{sid}_nifti/{sid}_{v}.nii.gz" for k, v in names.items()}


def upenn_images(scan_id: str) -> dict[str, str]:
    names = {"t1": "T1", "t1c": "T1GD", "t2": "T2", "flair": "FLAIR"}
    return {k: f"{upenn_gbm.IMAGE_DIR}/{scan_id}/{scan_id}_{v}.nii.gz" for k, v in names.items()}


def oasis_image(num: int, session: int, disc: int) -> str:
    sid = f"OAS1_{num:04d}_MR{session}"
    return f"disc{disc}/{sid}/PROCESSED/MPRAGE/T88_111/{sid}_mpr_n4_anon_111_t88_masked_gfc.img"


def bids_image(participant: str) -> str:
    return f"{participant}/anat/{participant}_T1w.nii.gz"


# ----------------------------------------------------------------------------- label files
def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _fmt(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"


def _table(records: list[Record]) -> list[Record]:
    return [r for r in records if r.in_table]


def write_adni(dest: Path, records: list[Record]) -> None:
    cols = ["RID", "PTID", "VISCODE", "EXAMDATE", "DX_bl", "DX", "AGE", "PTGENDER", "MMSE", "SITE"]
    rows = []
    for r in _table(records):
        f = r.fields
        rows.append({"RID": f["RID"], "PTID": f["PTID"], "VISCODE": f["VISCODE"], "EXAMDATE": f["EXAMDATE"],
                     "DX_bl": f["DX_bl"], "DX": f["DX"], "AGE": _fmt(f["AGE"]),
                     "PTGENDER": "Male" if f["sex"] == "M" else "Female", "MMSE": f["MMSE"], "SITE": f["SITE"]})
    _write_csv(dest / adni.LABEL_FILE, cols, rows)


def write_abide(dest: Path, records: list[Record]) -> None:
    cols = ["SITE_ID", "SUB_ID", "DX_GROUP", "DSM_IV_TR", "AGE_AT_SCAN", "SEX", "HANDEDNESS_CATEGORY", "FIQ"]
    rows = []
    for r in _table(records):
        f = r.fields
        rows.append({"SITE_ID": f["SITE_ID"], "SUB_ID": f["SUB_ID"], "DX_GROUP": 1 if f["asd"] else 2,
                     "DSM_IV_TR": f["DSM_IV_TR"], "AGE_AT_SCAN": _fmt(f["age"], 2),
                     "SEX": 1 if f["sex"] == "M" else 2, "HANDEDNESS_CATEGORY": f["HANDEDNESS_CATEGORY"],
                     "FIQ": f["FIQ"]})
    _write_csv(dest / abide.LABEL_FILE, cols, rows)


def write_ixi(dest: Path, records: list[Record]) -> None:
    import xlwt

    cols = ["IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "ETHNIC_ID", "MARITAL_ID", "OCCUPATION_ID",
            "QUALIFICATION_ID", "DOB", "DATE_AVAILABLE", "STUDY_DATE", "AGE"]
    book = xlwt.Workbook()
    sheet = book.add_sheet(ixi.SHEET)
    date_style = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    for j, c in enumerate(cols):
        sheet.write(0, j, c)
    rows = sorted(_table(records), key=lambda r: r.fields["IXI_ID"])
    for i, r in enumerate(rows, start=1):
        f = r.fields
        vals: list[Any] = [f["IXI_ID"], 1 if f["sex"] == "M" else 2, f["HEIGHT"], f["WEIGHT"], f["ETHNIC_ID"],
                           f["MARITAL_ID"], f["OCCUPATION_ID"], f["QUALIFICATION_ID"]]
        for j, v in enumerate(vals):
            sheet.write(i, j, v)
        sheet.write(i, 8, dt.datetime.combine(f["DOB"], dt.time()), date_style)
        sheet.write(i, 9, f["DATE_AVAILABLE"])
        if f.get("STUDY_DATE") is not None:
            sheet.write(i, 10, dt.datetime.combine(f["STUDY_DATE"], dt.time()), date_style)
        if f.get("AGE") is not None:
            sheet.write(i, 11, float(f["AGE"]))
    book.save(str(dest / ixi.LABEL_FILES[0]))


def write_atlas(dest: Path, records: list[Record]) -> None:
    cols = ["Subject ID", "Site", "Session", "Days Post Stroke", "Lesion Hemisphere", "Age", "Sex"]
    rows = []
    for r in _table(records):
        f = r.fields
        rows.append({"Subject ID": f["subject"], "Site": f"R{f['site_no']:03d}", "Session": "ses-1",
                     "Days Post Stroke": _fmt(f["days"], 2), "Lesion Hemisphere": f["hemisphere"],
                     "Age": int(f["age"]), "Sex": f["sex"]})
    _write_csv(dest / atlas.LABEL_FILE, cols, rows)


def write_ucsf(dest: Path, records: list[Record]) -> None:
    cols = ["ID", "Sex", "Age at MRI", "WHO CNS Grade", "Final pathologic diagnosis (WHO 2021)", "MGMT status",
            "1p/19q", "IDH", "1-dead 0-alive", "OS", "EOR"]
    rows = []
    for r in _table(records):
        f = r.fields
        rows.append({"ID": f"UCSF-PDGM-{f['num']:03d}", "Sex": f["sex"], "Age at MRI": int(round(f["age"])),
                     "WHO CNS Grade": f["grade"], "Final pathologic diagnosis (WHO 2021)": f["diagnosis"],
                     "MGMT status": f["mgmt"], "1p/19q": f["codeletion"], "IDH": f["idh_label"],
                     "1-dead 0-alive": int(f["event"]), "OS": _fmt(f["os_days"], 1), "EOR": f["eor"]})
    _write_csv(dest / ucsf_pdgm.LABEL_FILE, cols, rows)


def write_upenn(dest: Path, records: list[Record]) -> None:
    cols = ["ID", "Gender", "Age_at_scan_years", "Survival_from_surgery_days_UPDATED", "Survival_Status",
            "Survival_Censor", "IDH1", "MGMT", "KPS"]
    rows = []
    for r in _table(records):
        f = r.fields
        na = f.get("os_missing", False)
        rows.append({"ID": r.key, "Gender": f["sex"], "Age_at_scan_years": _fmt(f["age"], 2),
                     "Survival_from_surgery_days_UPDATED": "Not Available" if na else int(round(f["os_days"])),
                     "Survival_Status": "Alive" if (na or not f["event"]) else "Deceased",
                     "Survival_Censor": 1 if (na or not f["event"]) else 0,
                     "IDH1": f["idh_label"], "MGMT": f["mgmt"], "KPS": f["kps"]})
    _write_csv(dest / upenn_gbm.LABEL_FILE, cols, rows)


def write_oasis(dest: Path, records: list[Record]) -> None:
    cols = ["ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay"]
    rows = []
    for r in _table(records):
        f = r.fields
        rated = f["CDR"] is not None
        rows.append({"ID": r.key, "M/F": f["sex"], "Hand": "R", "Age": int(f["AGE"]),
                     "Educ": f["Educ"] if rated else "", "SES": f["SES"] if rated else "",
                     "MMSE": f["MMSE"] if rated else "", "CDR": f"{f['CDR']:g}" if rated else "",
                     "eTIV": f["eTIV"], "nWBV": f"{f['nWBV']:.3f}", "ASF": f"{f['ASF']:.3f}",
                     "Delay": f["Delay"] if f["Delay"] is not None else "N/A"})
    _write_csv(dest / oasis1.LABEL_FILE, cols, rows)


def write_bids(dest: Path, records: list[Record]) -> None:
    cols = ["participant_id", "Age", "AgeGroup", "Child_Adult", "Gender", "Handedness"]
    rows = []
    for r in _table(records):
        f = r.fields
        rows.append({"participant_id": r.key, "Age": "n/a" if f["age_missing"] else _fmt(f["age"], 2),
                     "AgeGroup": f["AgeGroup"], "Child_Adult": f["Child_Adult"], "Gender": f["sex"],
                     "Handedness": f["Handedness"]})
    with open(dest / bids.LABEL_FILE, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    (dest / "dataset_description.json").write_text(
        '{\n  "Name": "brainbench phantom in the layout of OpenNeuro ds000228",\n  "BIDSVersion": "1.0.2"\n}\n')

