"""Dataset adapters read tiny fake copies of each release's real layout and label files."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainbench.datasets import ADAPTERS, DatasetAdapter, load_cohort
from brainbench.errors import BenchError

from .phantom_cohorts import phantoms  # noqa: F401  (fixture)

_NII_GZ = gzip.compress(
    nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)).to_bytes(), compresslevel=1
)


def nii(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_NII_GZ)
    return path


def csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def by_id(cohort):
    return {s.id: s for s in cohort.subjects}


def notes(cohort) -> str:
    return "\n".join(cohort.notes)


# ------------------------------------------------------------------------------------------- BraTS


def make_brats2021(root: Path, cases=(0, 1)) -> Path:
    folder = root / "BraTS2021"
    for n in cases:
        case = f"BraTS2021_{n:05d}"
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            nii(folder / case / f"{case}_{suffix}.nii.gz")
    return folder


def test_brats2021_reads_cases(tmp_path):
    folder = make_brats2021(tmp_path, cases=(1, 0))
    cohort = load_cohort("brats2021", tmp_path)
    assert [s.id for s in cohort.subjects] == ["BraTS2021_00000", "BraTS2021_00001"]
    s = cohort.subjects[0]
    assert s.group == s.id
    assert set(s.images) == {"t1", "t1c", "t2", "flair"}
    assert s.images["t1c"].name == "BraTS2021_00000_t1ce.nii.gz"
    assert s.targets["seg"] == folder / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    assert s.meta == {"label_scheme": "brats2021"}
    assert cohort.dataset == "brats2021" and cohort.root == folder


def test_brats_incomplete_case_skipped_and_2023_naming(tmp_path):
    folder = make_brats2021(tmp_path, cases=(0,))
    (folder / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz").unlink()
    make_brats2021(tmp_path, cases=(3,))
    for case in ("BraTS-GLI-00002-000", "BraTS-GLI-00002-001"):
        for suffix in ("t1c", "t1n", "t2f", "t2w", "seg"):
            nii(folder / case / f"{case}-{suffix}.nii.gz")
    cohort = load_cohort("brats2021", folder)
    subs = by_id(cohort)
    assert set(subs) == {"BraTS2021_00003", "BraTS-GLI-00002-000", "BraTS-GLI-00002-001"}
    g = subs["BraTS-GLI-00002-001"]
    assert g.group == "BraTS-GLI-00002" == subs["BraTS-GLI-00002-000"].group
    assert g.images["t1"].name.endswith("-t1n.nii.gz") and g.images["flair"].name.endswith("-t2f.nii.gz")
    assert g.images["t2"].name.endswith("-t2w.nii.gz")
    assert g.meta["label_scheme"] == "brats2023"
    assert "BraTS2021_00000" in notes(cohort) and "skipped" in notes(cohort)


def test_brats_no_cases_is_an_error(tmp_path):
    (tmp_path / "BraTS2021").mkdir()
    with pytest.raises(BenchError, match="no usable subjects") as err:
        load_cohort("brats2021", tmp_path)
    assert "BraTS2021_00000_t1ce.nii.gz" in str(err.value)  # the expected tree is shown


# -------------------------------------------------------------------------------------------- ADNI


def adni_row(ptid, vis, date, dx, dx_bl="CN", age=70.0, sex="Male", site=11, rid=None):
    return {
        "RID": rid or int(ptid[-4:]), "PTID": ptid, "VISCODE": vis, "SITE": site, "EXAMDATE": date,
        "DX_bl": dx_bl, "AGE": age, "PTGENDER": sex, "MMSE": 28, "DX": dx,
    }


def make_adni(root: Path, rows: list[dict], images=None) -> Path:
    folder = root / "ADNI"
    csv(folder / "ADNIMERGE.csv", rows)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    keys = images if images is not None else [(r["PTID"], r["VISCODE"]) for r in rows]
    for ptid, vis in keys:
        nii(folder / "images" / ptid / vis / f"ADNI_{ptid}_{vis}_T1.nii.gz")
    return folder


ADNI_ROWS = [
    adni_row("011_S_0002", "bl", "2005-09-08", "CN", age=74.3),
    adni_row("011_S_0002", "m12", "2006-09-08", "MCI", age=74.3),
    adni_row("011_S_0003", "bl", "2005-09-12", "Dementia", dx_bl="AD", age=81.3, sex="Female", site=22),
    adni_row("011_S_0003", "m24", "2007-09-12", "", dx_bl="AD", age=81.3, sex="Female", site=22),
    adni_row("011_S_0005", "bl", "2005-09-20", "CN", age=73.7),  # no image
]


def test_adni_visits_share_group_with_visit_age(tmp_path):
    make_adni(tmp_path, ADNI_ROWS, images=[(r["PTID"], r["VISCODE"]) for r in ADNI_ROWS[:4]])
    cohort = load_cohort("adni", tmp_path)
    subs = by_id(cohort)
    assert list(subs) == ["011_S_0002_bl", "011_S_0002_m12", "011_S_0003_bl"]
    bl, m12 = subs["011_S_0002_bl"], subs["011_S_0002_m12"]
    assert bl.group == m12.group == "011_S_0002"
    assert bl.targets == {"dx": "CN", "age": 74.3}
    assert m12.targets["dx"] == "MCI"
    assert m12.targets["age"] == pytest.approx(74.3 + 365 / 365.25)
    ad = subs["011_S_0003_bl"]
    assert ad.targets["dx"] == "AD"  # Dementia -> AD
    assert ad.meta == {"site": "22", "sex": "F", "viscode": "bl", "dx_bl": "AD"}
    assert set(ad.images) == {"t1"}
    text = notes(cohort)
    assert "empty DX" in text and "011_S_0003_m24" in text
    assert "1 row(s) without an image" in text


def test_adni_unknown_dx_names_value_column_file(tmp_path):
    rows = [adni_row("011_S_0002", "bl", "2005-09-08", "Demented")]
    make_adni(tmp_path, rows)
    with pytest.raises(BenchError) as err:
        load_cohort("adni", tmp_path)
    msg = str(err.value)
    assert "'Demented'" in msg and "'DX'" in msg and "ADNIMERGE.csv" in msg and "Dementia" in msg


def test_adni_bad_date_and_missing_column(tmp_path):
    rows = [adni_row("011_S_0002", "bl", "Sept 8th", "CN")]
    make_adni(tmp_path, rows)
    with pytest.raises(BenchError, match=r"(?s)'Sept 8th'.*'EXAMDATE'.*ADNIMERGE\.csv"):
        load_cohort("adni", tmp_path)
    rows = [{k: v for k, v in adni_row("011_S_0002", "bl", "2005-09-08", "CN").items() if k not in ("DX", "AGE")}]
    make_adni(tmp_path, rows)
    with pytest.raises(BenchError, match=r"ADNIMERGE\.csv lacks the column\(s\) 'DX', 'AGE'"):
        load_cohort("adni", tmp_path)


def test_adni_missing_label_file_shows_tree(tmp_path):
    (tmp_path / "ADNI" / "images").mkdir(parents=True)
    expected = r"(?s)missing label file .*ADNIMERGE\.csv.*expected layout.*ADNI_011_S_0002_bl_T1"
    with pytest.raises(BenchError, match=expected):
        load_cohort("adni", tmp_path)


# ------------------------------------------------------------------------------------------- ABIDE


def abide_row(site, sub, dx, age, sex):
    return {"SITE_ID": site, "SUB_ID": sub, "DX_GROUP": dx, "DSM_IV_TR": 0, "AGE_AT_SCAN": age, "SEX": sex,
            "FIQ": -9999}


def make_abide(root: Path, rows, padded=()) -> Path:
    folder = root / "ABIDE_I"
    csv(folder / "Phenotypic_V1_0b.csv", rows)
    for r in rows:
        name = f"{r['SUB_ID']:07d}" if r["SUB_ID"] in padded else str(r["SUB_ID"])
        nii(folder / r["SITE_ID"] / name / "session_1" / "anat_1" / "mprage.nii.gz")
    return folder


def test_abide_reads_with_missing_values(tmp_path):
    rows = [
        abide_row("CALTECH", 51456, 1, 55.4, 1),
        abide_row("CALTECH", 51457, 2, -9999, 2),
        abide_row("NYU", 50952, 2, 12.1, -9999),
        abide_row("NYU", 50953, -9999, 12.5, 1),
    ]
    make_abide(tmp_path, rows, padded={50952})
    cohort = load_cohort("abide1", tmp_path / "ABIDE_I")
    subs = by_id(cohort)
    assert list(subs) == ["50952", "51456", "51457"]
    a = subs["51456"]
    assert a.group == "51456" and set(a.images) == {"t1"}
    assert a.targets == {"dx": "ASD", "age": 55.4}
    assert a.meta == {"site": "CALTECH", "sex": "M"}
    assert subs["51457"].targets == {"dx": "TC", "age": None}
    assert subs["51457"].meta["sex"] == "F"
    assert subs["50952"].meta == {"site": "NYU", "sex": None}
    assert subs["50952"].images["t1"].parts[-4] == "0050952"
    assert "50953" in notes(cohort) and "DX_GROUP missing" in notes(cohort)


def test_abide_unknown_dx_code(tmp_path):
    make_abide(tmp_path, [abide_row("NYU", 50952, 3, 12.1, 1)])
    with pytest.raises(BenchError, match=r"(?s)'3'.*'DX_GROUP'.*Phenotypic_V1_0b\.csv.*valid codes"):
        load_cohort("abide1", tmp_path)


# --------------------------------------------------------------------------------------------- IXI

IXI_COLUMNS = ["IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "ETHNIC_ID", "MARITAL_ID", "OCCUPATION_ID",
               "QUALIFICATION_ID", "DOB", "DATE_AVAILABLE", "STUDY_DATE", "AGE"]


def ixi_row(i, sex, dob, study, age):
    return dict(zip(IXI_COLUMNS, [i, sex, 170, 70, 1, 2, 1, 5, dob, 1, study, age]))


def write_xls(path: Path, rows: list[dict], sheet="Table") -> None:
    import xlwt

    book = xlwt.Workbook()
    ws = book.add_sheet(sheet)
    date_style = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    for c, name in enumerate(IXI_COLUMNS):
        ws.write(0, c, name)
    for r, row in enumerate(rows, start=1):
        for c, name in enumerate(IXI_COLUMNS):
            v = row[name]
            if v is None or v == "":
                continue
            if isinstance(v, dt.date):
                ws.write(r, c, v, date_style)
            else:
                ws.write(r, c, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(str(path))


IXI_ROWS = [
    ixi_row(2, 2, dt.date(1970, 1, 30), dt.date(2005, 11, 18), 35.8),
    ixi_row(12, 1, dt.date(1966, 8, 20), dt.date(2005, 6, 1), 38.78),
    ixi_row(12, 1, dt.date(1966, 8, 20), dt.date(2005, 6, 1), 38.78),  # duplicate, same AGE -> keep one
    ixi_row(13, 1, dt.date(1958, 9, 15), dt.date(2005, 6, 1), 46.71),
    ixi_row(13, 1, dt.date(1958, 9, 15), dt.date(2005, 6, 1), 52.0),  # duplicate, different AGE -> drop
    ixi_row(35, 2, dt.date(1950, 1, 1), dt.date(2006, 1, 1), None),  # AGE derived from dates
    ixi_row(40, 2, None, dt.date(2006, 1, 1), None),  # no AGE, no DOB -> dropped
    ixi_row(99, 1, dt.date(1980, 1, 1), dt.date(2006, 1, 1), 26.0),  # no image
]
IXI_IMAGES = ["IXI002-Guys-0828", "IXI012-HH-1211", "IXI013-HH-1212", "IXI035-IOP-0873", "IXI040-IOP-0874",
              "IXI500-Guys-1000"]


def make_ixi(root: Path, rows=IXI_ROWS, images=IXI_IMAGES, fmt="xls") -> Path:
    folder = root / "IXI"
    if fmt == "xls":
        write_xls(folder / "IXI.xls", rows)
    else:
        csv(folder / "IXI.csv", [{k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in r.items()}
                                 for r in rows])
    for stem in images:
        nii(folder / "IXI-T1" / f"{stem}-T1.nii.gz")
    return folder


@pytest.mark.parametrize("fmt", ["xls", "csv"])
def test_ixi_reads_sheet_and_resolves_quirks(tmp_path, fmt):
    make_ixi(tmp_path, fmt=fmt)
    cohort = load_cohort("ixi", tmp_path)
    subs = by_id(cohort)
    assert list(subs) == ["IXI002", "IXI012", "IXI035"]
    s = subs["IXI002"]
    assert s.group == "IXI002" and set(s.images) == {"t1"}
    assert s.targets == {"age": pytest.approx(35.8)}
    assert s.meta == {"site": "Guys", "sex": "F"}
    assert subs["IXI012"].meta == {"site": "HH", "sex": "M"}
    assert subs["IXI035"].meta["site"] == "IOP"
    assert subs["IXI035"].targets["age"] == pytest.approx((dt.date(2006, 1, 1) - dt.date(1950, 1, 1)).days / 365.25)
    text = notes(cohort)
    assert "IXI_ID 12 appears 2 times with the same AGE: one row kept" in text
    assert "IXI_ID 13 appears 2 times with different AGE" in text and "dropped" in text
    assert "IXI040" in text and "derived" in text
    assert "1 row(s) without a T1 image" in text
    assert "IXI500" in text  # image without a row


def test_ixi_missing_sheet_and_label_file(tmp_path):
    folder = tmp_path / "IXI"
    write_xls(folder / "IXI.xls", IXI_ROWS, sheet="Sheet1")
    nii(folder / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz")
    with pytest.raises(BenchError, match=r"(?s)IXI\.xls has no sheet 'Table'.*'Sheet1'"):
        load_cohort("ixi", tmp_path)
    (folder / "IXI.xls").unlink()
    with pytest.raises(BenchError, match=r"(?s)missing label file .*IXI\.xls.*expected layout.*IXI-T1/"):
        load_cohort("ixi", folder)


def test_ixi_unparseable_age_and_date(tmp_path):
    rows = [ixi_row(2, 2, "1970-01-30", "2005-11-18", "thirty")]
    make_ixi(tmp_path, rows=rows, fmt="csv")
    with pytest.raises(BenchError, match=r"(?s)'thirty'.*'AGE'.*IXI\.csv \(line 2\)"):
        load_cohort("ixi", tmp_path)
    rows = [ixi_row(2, 2, "30th Jan 1970", "2005-11-18", "")]
    make_ixi(tmp_path, rows=rows, fmt="csv")
    with pytest.raises(BenchError, match=r"(?s)'30th Jan 1970'.*'DOB'.*IXI\.csv"):
        load_cohort("ixi", tmp_path)


def test_ixi_missing_columns_named(tmp_path):
    folder = tmp_path / "IXI"
    csv(folder / "IXI.csv", [{"IXI_ID": 2, "SEX_ID": 1}])
    nii(folder / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz")
    with pytest.raises(BenchError, match=r"IXI\.csv lacks the column\(s\) 'DOB', 'STUDY_DATE', 'AGE'"):
        load_cohort("ixi", tmp_path)


# ------------------------------------------------------------------------------------------- ATLAS

SPACE = "space-MNI152NLin2009aSym"


def make_atlas(root: Path, subjects, mask=True) -> Path:
    folder = root / "ATLAS_2"
    rows = []
    for site, n, days, hemi in subjects:
        sid = f"sub-r{site:03d}s{n:03d}"
        anat = folder / "Training" / f"R{site:03d}" / sid / "ses-1" / "anat"
        nii(anat / f"{sid}_ses-1_{SPACE}_T1w.nii.gz")
        if mask:
            nii(anat / f"{sid}_ses-1_{SPACE}_label-L_desc-T1lesion_mask.nii.gz")
        rows.append({"Subject ID": sid, "Site": f"R{site:03d}", "Session": "ses-1", "Days Post Stroke": days,
                     "Lesion Hemisphere": hemi, "Age": 60, "Sex": "M"})
    csv(folder / "ATLAS_2.0_MetaData.csv", rows)
    return folder


def test_atlas_reads_bids(tmp_path):
    folder = make_atlas(tmp_path, [(1, 1, 180, "L"), (4, 12, 7.5, "R"), (4, 13, "", "R")])
    cohort = load_cohort("atlas2", tmp_path)
    subs = by_id(cohort)
    assert list(subs) == ["sub-r001s001", "sub-r004s012"]
    s = subs["sub-r004s012"]
    assert s.group == s.id and set(s.images) == {"t1"}
    assert s.images["t1"].name == f"sub-r004s012_ses-1_{SPACE}_T1w.nii.gz"
    assert s.targets["days"] == 7.5 and isinstance(subs["sub-r001s001"].targets["days"], float)
    assert s.targets["lesion"] == (folder / "Training" / "R004" / "sub-r004s012" / "ses-1" / "anat"
                                   / f"sub-r004s012_ses-1_{SPACE}_label-L_desc-T1lesion_mask.nii.gz")
    assert s.meta == {"site": "R004", "hemisphere": "R"}
    assert "sub-r004s013" in notes(cohort)


def test_atlas_bad_days_and_wrong_layout(tmp_path):
    make_atlas(tmp_path, [(1, 1, "a week", "L")])
    with pytest.raises(BenchError, match=r"(?s)'a week'.*'Days Post Stroke'.*ATLAS_2\.0_MetaData\.csv"):
        load_cohort("atlas2", tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "ATLAS_2" / "Training")
    with pytest.raises(BenchError, match=r"(?s)missing image folder .*Training.*expected layout"):
        load_cohort("atlas2", tmp_path)


# --------------------------------------------------------------------------------------- UCSF-PDGM


def make_ucsf(root: Path, rows, folders) -> Path:
    folder = root / "UCSF-PDGM"
    csv(folder / "UCSF-PDGM-metadata_v5.csv", rows)
    for n in folders:
        name = f"UCSF-PDGM-{n:04d}"
        for suffix in ("T1", "T1c", "T2", "FLAIR", "tumor_segmentation"):
            nii(folder / "UCSF-PDGM-v5" / f"{name}_nifti" / f"{name}_{suffix}.nii.gz")
    return folder


def ucsf_row(n, idh, dead, os_days, width=3):
    return {"ID": f"UCSF-PDGM-{n:0{width}d}", "Sex": "M", "Age at MRI": 52, "WHO CNS Grade": 4,
            "Final pathologic diagnosis (WHO 2021)": "Glioblastoma, IDH-wildtype", "MGMT status": "negative",
            "1p/19q": "", "IDH": idh, "1-dead 0-alive": dead, "OS": os_days}


def test_ucsf_pdgm_maps_three_to_four_digit_ids(tmp_path):
    rows = [ucsf_row(4, "wildtype", 1, 1303), ucsf_row(5, "mutant (R132H)", 0, 2000),
            ucsf_row(7, "mutant (NOS)", "", "", width=4), ucsf_row(8, "wildtype", 0, 100)]
    folder = make_ucsf(tmp_path, rows, folders=(4, 5, 7, 9))
    cohort = load_cohort("ucsf_pdgm", folder)
    subs = by_id(cohort)
    assert list(subs) == ["UCSF-PDGM-0004", "UCSF-PDGM-0005", "UCSF-PDGM-0007"]
    s = subs["UCSF-PDGM-0004"]
    assert s.group == "UCSF-PDGM-0004"
    assert set(s.images) == {"t1", "t1c", "t2", "flair"}
    assert s.images["t1c"].name == "UCSF-PDGM-0004_T1c.nii.gz"
    assert s.targets["idh"] == "wildtype" and s.targets["event"] is True and s.targets["os_days"] == 1303.0
    assert s.targets["seg"].name == "UCSF-PDGM-0004_tumor_segmentation.nii.gz"
    assert s.meta == {"sex": "M", "age": 52.0, "grade": 4}
    assert subs["UCSF-PDGM-0005"].targets["idh"] == "mutant"
    assert subs["UCSF-PDGM-0005"].targets["event"] is False
    assert subs["UCSF-PDGM-0007"].targets["os_days"] is None
    text = notes(cohort)
    assert "1 row(s) without an image folder" in text and "UCSF-PDGM-0009" in text


def test_ucsf_pdgm_unknown_idh(tmp_path):
    make_ucsf(tmp_path, [ucsf_row(4, "positive", 1, 10)], folders=(4,))
    with pytest.raises(BenchError, match=r"(?s)'positive'.*'IDH'.*UCSF-PDGM-metadata_v5\.csv.*mutant"):
        load_cohort("ucsf_pdgm", tmp_path)


# --------------------------------------------------------------------------------------- UPENN-GBM


def upenn_row(n, days, status, censor, idh="Wildtype", sex="M", age=61.2):
    return {"ID": f"UPENN-GBM-{n:05d}_11", "Gender": sex, "Age_at_scan_years": age,
            "Survival_from_surgery_days_UPDATED": days, "Survival_Status": status, "Survival_Censor": censor,
            "Survival_from_surgery_days": days, "IDH1": idh, "MGMT": "Unmethylated", "KPS": 80}


def make_upenn(root: Path, rows, sessions) -> Path:
    folder = root / "UPENN-GBM"
    csv(folder / "UPENN-GBM_clinical_info_v2.1.csv", rows)
    for sid in sessions:
        for suffix in ("T1", "T1GD", "T2", "FLAIR"):
            nii(folder / "images_structural" / sid / f"{sid}_{suffix}.nii.gz")
    return folder


def test_upenn_follow_up_sessions_share_group_and_inherit(tmp_path):
    rows = [upenn_row(1, 960, "Deceased", 0), upenn_row(2, "Not Available", "Alive", 1, idh="NOS/NEC", sex="F"),
            upenn_row(3, 400, "Deceased", 0, idh="Mutated")]
    make_upenn(tmp_path, rows, ["UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "UPENN-GBM-00002_11",
                                "UPENN-GBM-00004_11"])
    cohort = load_cohort("upenn_gbm", tmp_path)
    subs = by_id(cohort)
    assert list(subs) == ["UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "UPENN-GBM-00002_11"]
    base, follow = subs["UPENN-GBM-00001_11"], subs["UPENN-GBM-00001_21"]
    assert base.group == follow.group == "UPENN-GBM-00001"
    assert set(base.images) == {"t1", "t1c", "t2", "flair"}
    assert base.images["t1c"].name == "UPENN-GBM-00001_11_T1GD.nii.gz"
    assert base.targets == {"os_days": 960.0, "event": True, "idh": "wildtype"}
    assert follow.targets == base.targets
    assert base.meta == {"session": "11", "sex": "M", "age": 61.2}
    assert follow.meta == {"session": "21", "sex": "M", "age": 61.2}
    alive = subs["UPENN-GBM-00002_11"]
    assert alive.targets == {"os_days": None, "event": False, "idh": None}
    text = notes(cohort)
    assert "UPENN-GBM-00001_21" in text and "inherit" in text
    assert "UPENN-GBM-00004_11" in text  # session without a patient row
    assert "1 row(s) without a complete image session" in text  # patient 3


def test_upenn_censor_disagreeing_with_status_names_row(tmp_path):
    make_upenn(tmp_path, [upenn_row(1, 960, "Deceased", 0), upenn_row(7, 100, "Deceased", 1)],
               ["UPENN-GBM-00001_11"])
    expected = r"(?s)UPENN-GBM-00007_11.*Survival_Status 'Deceased'.*Survival_Censor '1'.*line 3"
    with pytest.raises(BenchError, match=expected):
        load_cohort("upenn_gbm", tmp_path)


# ------------------------------------------------------------------------------------------ general


def test_registry_lists_adapters_and_unknown_name():
    assert ADAPTERS.names() == ["abide1", "adni", "atlas2", "bids", "brats2021", "ixi", "oasis1", "ucsf_pdgm",
                                "upenn_gbm"]
    for name in ADAPTERS:
        adapter = ADAPTERS.get(name)
        assert isinstance(adapter, DatasetAdapter) and adapter.name == name
        assert adapter.expected_tree.startswith(adapter.folder + "/")
    with pytest.raises(BenchError, match="unknown dataset 'oasis'.*valid names: abide1, adni, atlas2, bids"):
        load_cohort("oasis", Path("."))


def test_load_cohort_accepts_both_root_forms(tmp_path):
    folder = make_upenn(tmp_path, [upenn_row(1, 960, "Deceased", 0)], ["UPENN-GBM-00001_11"])
    a = load_cohort("upenn_gbm", tmp_path)
    b = load_cohort("upenn_gbm", folder)
    c = load_cohort("upenn_gbm", str(folder))
    assert a == b == c and a.root == folder


def test_root_that_does_not_match_layout(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(BenchError, match=r"(?s)neither the UCSF-PDGM/ folder.*something_else/.*expected layout"):
        load_cohort("ucsf_pdgm", tmp_path)
    with pytest.raises(BenchError, match="does not exist"):
        load_cohort("ixi", tmp_path / "nope")


def test_layouts_markdown_names_every_adapter():
    from brainbench.datasets import layouts_markdown

    text = layouts_markdown()
    for name in ADAPTERS:
        assert f"`{name}`" in text and ADAPTERS.get(name).expected_tree in text


def test_zero_usable_subjects_lists_what_was_resolved(tmp_path):
    make_abide(tmp_path, [abide_row("NYU", 50952, -9999, 12.1, 1)])
    with pytest.raises(BenchError, match=r"(?s)no usable subjects.*DX_GROUP missing"):
        load_cohort("abide1", tmp_path)


# ------------------------------------------------------------------------------------------ OASIS-1


def oasis_row(sid, cdr, age=72, sex="F", delay="N/A"):
    return {"ID": sid, "M/F": sex, "Hand": "R", "Age": age, "Educ": 3, "SES": 2, "MMSE": 27, "CDR": cdr,
            "eTIV": 1500, "nWBV": 0.7, "ASF": 1.2, "Delay": delay}


def make_oasis(root: Path, rows, sessions, suffix=".img") -> Path:
    folder = root / "OASIS-1"
    csv(folder / "oasis_cross-sectional.csv", rows)
    for disc, sid in sessions:
        stem = folder / f"disc{disc}" / sid / "PROCESSED" / "MPRAGE" / "T88_111" / \
            f"{sid}_mpr_n4_anon_111_t88_masked_gfc"
        if suffix == ".img":
            stem.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.AnalyzeImage(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(stem) + ".img")
        else:
            nii(Path(str(stem) + suffix))
    return folder


def test_oasis_cdr_label_rescans_grouped_and_unrated_reported(tmp_path):
    make_oasis(tmp_path, [oasis_row("OAS1_0001_MR1", 0), oasis_row("OAS1_0002_MR1", 0.5),
                          oasis_row("OAS1_0002_MR2", 0.5, delay=30), oasis_row("OAS1_0003_MR1", "", age=25),
                          oasis_row("OAS1_0004_MR1", 1)],
               [(1, "OAS1_0001_MR1"), (1, "OAS1_0002_MR1"), (1, "OAS1_0002_MR2"), (2, "OAS1_0003_MR1")])
    cohort = load_cohort("oasis1", tmp_path)
    subs = by_id(cohort)
    assert set(subs) == {"OAS1_0001_MR1", "OAS1_0002_MR1", "OAS1_0002_MR2", "OAS1_0003_MR1"}
    assert subs["OAS1_0001_MR1"].targets["dementia"] == "nondemented"
    assert subs["OAS1_0002_MR2"].targets["dementia"] == "demented"
    assert subs["OAS1_0002_MR2"].group == subs["OAS1_0002_MR1"].group == "OAS1_0002"
    assert subs["OAS1_0003_MR1"].targets["dementia"] is None
    assert subs["OAS1_0001_MR1"].images["t1"].suffix == ".img"
    text = notes(cohort)
    assert "OAS1_0004_MR1" in text and "CDR empty" in text and "OAS1_0002_MR2" in text


def test_oasis_bad_cdr_and_missing_header_file(tmp_path):
    make_oasis(tmp_path, [oasis_row("OAS1_0001_MR1", 4)], [(1, "OAS1_0001_MR1")], suffix=".nii.gz")
    with pytest.raises(BenchError, match=r"unknown code '4' in column 'CDR' of .*oasis_cross-sectional.csv \(line 2\)"):
        load_cohort("oasis1", tmp_path)
    make_oasis(tmp_path / "b", [oasis_row("OAS1_0001_MR1", 0)], [(1, "OAS1_0001_MR1")])
    next((tmp_path / "b").rglob("*.hdr")).unlink()  # an .img without its .hdr is no image
    with pytest.raises(BenchError, match="no usable subjects"):
        load_cohort("oasis1", tmp_path / "b")


# ---------------------------------------------------------------------------------------------- BIDS


def make_bids(root: Path, rows, images, name="ds000228") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "participants.tsv", sep="\t", index=False)
    for rel in images:
        nii(folder / rel)
    return folder


def test_bids_any_study_age_column_and_sessions(tmp_path):
    folder = make_bids(tmp_path, [{"participant_id": "sub-01", "AGE": "7.5", "site": "MIT"},
                                  {"participant_id": "sub-02", "AGE": "n/a", "site": "MIT"},
                                  {"participant_id": "03", "AGE": "30", "site": "BU"},
                                  {"participant_id": "sub-04", "AGE": "40", "site": "BU"}],
                       ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz",
                        "sub-03/ses-2/anat/sub-03_ses-2_T1w.nii.gz", "sub-03/ses-1/anat/sub-03_ses-1_run-2_T1w.nii.gz",
                        "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz", "sub-05/anat/sub-05_T1w.nii.gz"],
                       name="my_study")
    cohort = load_cohort("bids", folder)  # any folder name, found by its participants.tsv
    subs = by_id(cohort)
    assert set(subs) == {"sub-01", "sub-02", "sub-03"}
    assert subs["sub-01"].targets["age"] == 7.5 and subs["sub-02"].targets["age"] is None
    assert subs["sub-03"].images["t1"].name == "sub-03_ses-1_T1w.nii.gz"
    assert subs["sub-03"].meta["site"] == "BU"
    text = notes(cohort)
    assert "sub-04" in text and "sub-05" in text and "sub-03 (3)" in text


def test_bids_without_age_column_lists_columns(tmp_path):
    make_bids(tmp_path, [{"participant_id": "sub-01", "years": "7"}], ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(BenchError, match=r"participants.tsv has no age column.*'participant_id', 'years'"):
        load_cohort("bids", tmp_path)


# ------------------------------------------------------------------------------- dataset locations


def test_locations_precedence_env_then_file_then_data(tmp_path):
    from brainbench.datasets.locations import data_locations

    for d in ("data", "adni_here", "ixi_env", "cli"):
        (tmp_path / d).mkdir()
    config = tmp_path / "brainbench.toml"
    config.write_text('[data]\nroot = "data"\n\n[datasets]\nadni = "adni_here"\nixi = "adni_here"\n')
    loc = data_locations(None, env={"BRAINBENCH_DATA_IXI": str(tmp_path / "ixi_env")}, config_file=config)
    assert loc.real and loc.path_for("adni") == tmp_path / "adni_here"
    assert loc.path_for("ixi") == tmp_path / "ixi_env"  # env beats the file
    assert loc.path_for("abide1") == tmp_path / "data"  # [data] root
    assert data_locations(tmp_path / "cli", env={}, config_file=config).path_for("abide1") == tmp_path / "cli"
    assert not data_locations(None, env={}, config_file=None).real  # nothing set: phantoms
    assert loc.source_label(["adni"]).startswith("real:adni=")
    assert data_locations(tmp_path / "cli", env={}, config_file=None).source_label(["adni"]) == \
        f"real:{(tmp_path / 'cli').resolve()}"


def test_locations_errors_name_file_and_key(tmp_path):
    from brainbench.datasets.locations import data_locations

    config = tmp_path / "brainbench.toml"
    config.write_text('[datasets]\nadnii = "x"\n')
    with pytest.raises(BenchError, match=r"brainbench.toml: \[datasets\] 'adnii' is not a dataset; valid names: abide1"):
        data_locations(None, env={}, config_file=config)
    config.write_text('[datasets]\nadni = "missing"\n')
    with pytest.raises(BenchError, match=r"\[datasets\] adni: .*missing does not exist"):
        data_locations(None, env={}, config_file=config)
    with pytest.raises(BenchError, match="BRAINBENCH_DATA_ADNI"):
        data_locations(None, env={"BRAINBENCH_DATA_ADNI": str(tmp_path / "nope")}, config_file=None)


def test_present_finds_dataset_folders_under_root(tmp_path):
    from brainbench.datasets.locations import data_locations

    (tmp_path / "ADNI").mkdir()
    (tmp_path / "oasis-1").mkdir()
    loc = data_locations(tmp_path, env={}, config_file=None)
    assert loc.present("adni") and loc.present("oasis1") and not loc.present("ixi")


# ------------------------------------------------------------------- every adapter on phantom data


def _truth(root: Path, dataset: str) -> pd.DataFrame:
    return pd.read_csv(root / "_truth" / f"{dataset}.csv", dtype={"key": str, "subject_id": str})


def test_every_adapter_reads_its_phantom_cohort_with_its_quirks(phantoms):  # noqa: F811
    """Each adapter on the generator's layout: ids, grouping and labels agree with the truth file."""
    for name in ADAPTERS:
        cohort = load_cohort(name, phantoms)
        assert all(p.is_file() for s in cohort.subjects for p in s.images.values()), name
        truth = _truth(phantoms, name)
        imaged = truth[truth.has_image]
        subs = by_id(cohort)
        if name == "ucsf_pdgm":  # 3-digit ids in the CSV, 4-digit folders
            assert all(len(k.split("-")[-1]) == 3 for k in truth.key)
            expected = {f"UCSF-PDGM-{int(k.split('-')[-1]):04d}": bool(m) for k, m in zip(imaged.key, imaged.idh_mutant)}
            assert {i: s.targets["idh"] == "mutant" for i, s in subs.items()} == expected
        elif name == "ixi":  # duplicate IXI_IDs: identical kept, different AGE dropped; empty AGE dropped
            text = notes(cohort)
            assert "same AGE: one row kept" in text and "different AGE" in text
            dropped = {f"IXI{int(line.split()[1]):03d}" for line in cohort.notes if "different AGE" in line}
            no_age = set(imaged[imaged.quirk == "age_missing"].key)
            assert set(subs) == set(imaged.key) - dropped - no_age
            for sid, s in subs.items():
                assert s.targets["age"] == pytest.approx(float(imaged.set_index("key").age[sid]), abs=1e-6)
        elif name == "abide1":  # -9999 in FIQ/HANDEDNESS does not drop anyone
            assert set(subs) == set(imaged.key)
            assert (imaged.FIQ == -9999).any()
            assert all(s.targets["dx"] == ("ASD" if a else "TC") for s, a in zip(
                map(subs.get, imaged.key), imaged.asd))
        elif name in ("adni", "upenn_gbm", "oasis1"):  # several scans of one person share a group
            assert set(subs) == set(imaged.key)
            person = dict(zip(imaged.key, imaged.subject_id))
            assert all(s.group == person[i] for i, s in subs.items())
            assert len({s.group for s in cohort.subjects}) < len(cohort.subjects)
        elif name == "bids":
            assert set(subs) == set(imaged.key)
            missing = set(imaged[imaged.quirk == "age_missing"].key)
            assert missing and all(subs[i].targets["age"] is None for i in missing)
        else:
            assert set(subs) == set(imaged.key)
