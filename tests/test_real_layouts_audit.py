"""Real releases' layouts and label-file forms that the phantoms do not use (audit of the formats).

Evidence for each form is cited in the adapters' docstrings: the TCIA BraTS 2021 package groups
cases by source collection; IXI.xls writes ``SEX_ID (1=m, 2=f)`` and 0 for "not recorded";
UCSF-PDGM v5 marks six follow-up exams ``_FU<days>d`` and spells IDH ``mutated (NOS)`` /
``IDH1 p.R132H``; UPENN-GBM v2.1 keeps the censoring time in Survival_Censor; ATLAS R2.0 ships
``20220425_ATLAS_2.0_MetaData.xlsx``; BIDS sessions sort numerically.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from brainbench.cli import main
from brainbench.datasets import load_cohort
from brainbench.datasets.locations import data_locations
from brainbench.errors import BenchError
from brainbench.phantoms.layouts import FOLDERS
from brainbench.taskspec import build_samples, get_task

from .phantom_cohorts import phantoms  # noqa: F401  (fixture)
from .test_dataset_recognition import env  # noqa: F401  (fixture)
from .test_datasets import (by_id, csv, make_atlas, make_bids, make_ucsf, make_upenn, nii, notes, ucsf_row,
                            upenn_row)


def data_check(task, data):
    return main(["data-check", "--task", task, "--data", str(data), "--headers-only", "--no-progress"])


# ------------------------------------------------------------------------ 1. recognition of folders

COLLECTIONS = ("TCGA-GBM", "UCSF-PDGM", "UPENN-GBM")  # source folders of the TCIA BraTS 2021 package


def tcia_brats_from_phantoms(phantoms, train: Path) -> int:  # noqa: F811
    """The phantom BraTS cases laid out as the TCIA package: <TrainingSet>/<collection>/<case>/."""
    cases = sorted(p for p in (phantoms / FOLDERS["brats2021"]).iterdir() if p.is_dir())
    for i, case in enumerate(cases):
        shutil.copytree(case, train / COLLECTIONS[i % len(COLLECTIONS)] / case.name)
    return len(cases)


def brats_case(folder: Path, name: str) -> None:
    suffixes = ("t1", "t1ce", "t2", "flair", "seg") if name.startswith("BraTS2021_") else (
        "t1n", "t1c", "t2w", "t2f", "seg")
    sep = "_" if name.startswith("BraTS2021_") else "-"
    for suffix in suffixes:
        nii(folder / name / f"{name}{sep}{suffix}.nii.gz")


def test_tcia_brats_split_by_collection_is_one_cohort_and_no_other_dataset(phantoms, env, capsys):  # noqa: F811
    package = env / "data" / "RSNA-ASNR-MICCAI-BraTS-2021"
    train = package / "BraTS2021_TrainingSet"
    n = tcia_brats_from_phantoms(phantoms, train)
    shutil.copytree(phantoms / FOLDERS["upenn_gbm"], env / "data" / "UPENN-GBM")  # the real UPENN-GBM beside
    for root in (env / "data", package, train):
        loc = data_locations(root, env={}, config_file=None)
        assert loc.present("brats2021") and loc.path_for("brats2021") == train
        assert not loc.present("ucsf_pdgm")  # the BraTS source folder UCSF-PDGM/ is not that dataset
    loc = data_locations(env / "data", env={}, config_file=None)
    assert loc.present("upenn_gbm") and load_cohort("upenn_gbm", loc.path_for("upenn_gbm")).subjects
    assert not data_locations(train, env={}, config_file=None).present("upenn_gbm")
    cohort = load_cohort("brats2021", train)
    assert len(cohort.subjects) == n  # every collection, not the first one found
    assert "3 source subfolder(s) of BraTS2021_TrainingSet: TCGA-GBM" in notes(cohort)
    assert data_check("sequence_cls", env / "data") == 0
    assert "result: OK" in capsys.readouterr().out


def test_one_dataset_in_two_folders_is_refused_naming_both(phantoms, env, capsys):  # noqa: F811
    first = env / "data" / "ixi_2019"
    second = env / "data" / "old" / "ixi_backup"
    for folder in (first, second):
        shutil.copytree(phantoms / FOLDERS["ixi"], folder)
    loc = data_locations(env / "data", env={}, config_file=None)
    with pytest.raises(BenchError) as exc:
        loc.present("ixi")
    assert str(first) in str(exc.value) and str(second) in str(exc.value)
    assert f"BRAINBENCH_DATA_IXI={first}" in str(exc.value)
    assert data_check("brain_age", env / "data") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(first) in err and str(second) in err
    chosen = data_locations(env / "data", env={"BRAINBENCH_DATA_IXI": str(second)}, config_file=None)
    assert chosen.present("ixi") and chosen.path_for("ixi") == second


def test_two_brats_releases_side_by_side_are_refused_not_mixed(tmp_path):
    package = tmp_path / "RSNA-ASNR-MICCAI-BraTS-2021"
    for split, number in (("BraTS2021_TrainingSet", 0), ("BraTS2021_ValidationSet", 800)):
        for i, collection in enumerate(COLLECTIONS[:2]):
            brats_case(package / split / collection, f"BraTS2021_{number + i:05d}")
    with pytest.raises(BenchError, match=r"(?s)brats2021 .*2 folders.*BraTS2021_TrainingSet.*ValidationSet"):
        data_locations(package, env={}, config_file=None).present("brats2021")
    both = tmp_path / "both"  # a 2021 and a 2023 release: two releases, not parts of one
    brats_case(both / "brats21", "BraTS2021_00000")
    brats_case(both / "brats23", "BraTS-GLI-00000-000")
    with pytest.raises(BenchError, match=r"(?s)brats21.*brats23.*BRAINBENCH_DATA_BRATS2021="):
        data_locations(both, env={}, config_file=None).present("brats2021")


def test_a_named_folder_stays_its_dataset_unless_its_files_are_another_datasets(tmp_path):
    brats_case(tmp_path / "BraTS2021", "BraTS2021_00000")
    (tmp_path / "BraTS2021" / "participants.tsv").write_text("participant_id\tage\n")  # a stray label file
    brats_case(tmp_path / "UPENN-GBM", "BraTS2021_00001")  # a BraTS collection under the UPENN-GBM name
    loc = data_locations(tmp_path, env={}, config_file=None)
    assert loc.present("brats2021") and load_cohort("brats2021", loc.path_for("brats2021")).subjects
    assert not loc.present("upenn_gbm")


def test_a_brats_case_in_two_source_folders_is_an_error(tmp_path):
    for collection in COLLECTIONS[:2]:
        brats_case(tmp_path / "BraTS2021_TrainingSet" / collection, "BraTS2021_00001")
    with pytest.raises(BenchError, match=r"(?s)BraTS2021_00001 is in two folders.*TCGA-GBM.*UCSF-PDGM"):
        load_cohort("brats2021", tmp_path / "BraTS2021_TrainingSet")


# ------------------------------------------------------------------------------------------- 2. IXI

IXI_REAL_COLUMNS = ["IXI_ID", "SEX_ID (1=m, 2=f)", "HEIGHT", "WEIGHT", "ETHNIC_ID", "MARITAL_ID",
                    "OCCUPATION_ID", "QUALIFICATION_ID", "DOB", "DATE_AVAILABLE", "STUDY_DATE", "AGE"]


def write_ixi_xls(path: Path, columns: list[str], rows: list[list]) -> None:
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("Table")
    dates = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    for c, name in enumerate(columns):
        sheet.write(0, c, name)
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row):
            if value is not None:
                sheet.write(r, c, value, dates) if isinstance(value, dt.date) else sheet.write(r, c, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(str(path))


def ixi_real_row(i, sex, age):  # coded columns 0 = not recorded, as in the real sheet
    return [i, sex, 0, 0, 0, 0, 0, 0, dt.date(1960, 1, 1), 1, dt.date(2005, 6, 1), age]


def test_ixi_real_sex_header_zero_code_and_unknown_code_do_not_stop_brain_age(tmp_path):
    folder = tmp_path / "IXI"
    rows = [ixi_real_row(2, 2, 35.8), ixi_real_row(12, 0, 38.78), ixi_real_row(13, 3, 46.7),
            ixi_real_row(15, 0, 50.0), ixi_real_row(15, 1, 50.0)]  # a zeroed copy, then the full row
    write_ixi_xls(folder / "IXI.xls", IXI_REAL_COLUMNS, rows)
    for stem in ("IXI002-Guys-0828", "IXI012-HH-1211", "IXI013-HH-1212", "IXI015-IOP-0873"):
        nii(folder / "IXI-T1" / f"{stem}-T1.nii.gz")
    cohort = load_cohort("ixi", tmp_path)
    subs = by_id(cohort)
    assert list(subs) == ["IXI002", "IXI012", "IXI013", "IXI015"]
    assert [subs[s].meta["sex"] for s in subs] == ["F", None, None, "M"]
    text = notes(cohort)
    assert "1 subject(s) with 'SEX_ID (1=m, 2=f)' empty or 0 (not recorded)" in text and "IXI012" in text
    assert "unknown 'SEX_ID (1=m, 2=f)' code" in text and "IXI013 ('3', line 4)" in text
    samples, _ = build_samples(get_task("brain_age"), cohort)
    assert len(samples) == 4


def test_ixi_without_a_sex_column_still_reads(tmp_path):
    folder = tmp_path / "IXI"
    csv(folder / "IXI.csv", [{"IXI_ID": 2, "DOB": "1970-01-30", "STUDY_DATE": "2005-11-18", "AGE": 35.8}])
    nii(folder / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz")
    cohort = load_cohort("ixi", tmp_path)
    assert cohort.subjects[0].meta["sex"] is None and "no SEX_ID column in IXI.csv" in notes(cohort)


# ------------------------------------------------------------------------------------- 3. UCSF-PDGM


def test_ucsf_pdgm_follow_up_exams_and_real_idh_spellings(tmp_path):
    rows = [ucsf_row(433, "mutated (NOS)", 1, 500),
            {**ucsf_row(433, "mutated (NOS)", 1, 493), "ID": "UCSF-PDGM-0433_FU007d"},  # v5 writes 4 digits here
            ucsf_row(4, "IDH1 p.R132H", 0, 2000), ucsf_row(5, "IDH2 p.R172K", 0, 1500),
            ucsf_row(6, "wildtype", 1, 90),
            {**ucsf_row(391, "wildtype", 1, 80), "ID": "UCSF-PDGM-0391_FU016d"}]  # no baseline exam here
    folder = make_ucsf(tmp_path, rows, folders=(433, 4, 5, 6))
    for name in ("UCSF-PDGM-0433_FU007d", "UCSF-PDGM-0391_FU016d"):
        for suffix in ("T1", "T1c", "T2", "FLAIR"):
            nii(folder / "UCSF-PDGM-v5" / f"{name}_nifti" / f"{name}_{suffix}.nii.gz")
    cohort = load_cohort("ucsf_pdgm", folder)
    subs = by_id(cohort)
    assert list(subs) == ["UCSF-PDGM-0004", "UCSF-PDGM-0005", "UCSF-PDGM-0006", "UCSF-PDGM-0433"]
    assert subs["UCSF-PDGM-0433"].group == "UCSF-PDGM-0433" and subs["UCSF-PDGM-0433"].targets["os_days"] == 500
    assert [subs[s].targets["idh"] for s in subs] == ["mutant", "mutant", "wildtype", "mutant"]
    text = notes(cohort)
    assert "2 follow-up exam(s) set aside" in text and "UCSF-PDGM-0433_FU007d" in text
    assert "1 patient(s) with a follow-up exam but no usable baseline exam" in text and "UCSF-PDGM-0391" in text
    assert "without a row" not in text  # the follow-up folders have their rows
    samples, _ = build_samples(get_task("idh_status"), cohort)
    assert len(samples) == 4 and len({s.group for s in samples}) == 4


def test_ucsf_pdgm_unparseable_exam_id_names_forms(tmp_path):
    make_ucsf(tmp_path, [{**ucsf_row(4, "wildtype", 1, 10), "ID": "UCSF-PDGM-004_repeat"}], folders=(4,))
    with pytest.raises(BenchError, match=r"(?s)'UCSF-PDGM-004_repeat'.*'ID'.*UCSF-PDGM-0433_FU007d"):
        load_cohort("ucsf_pdgm", tmp_path)


# ------------------------------------------------------------------------------------- 4. UPENN-GBM


def upenn_v21_row(session, days, status, censor):
    return {**upenn_row(0, days, status, censor), "ID": session}


def test_upenn_v21_censoring_times_statuses_and_follow_up_count(tmp_path):
    na = "Not Available"
    rows = [upenn_v21_row("UPENN-GBM-00001_11", 400, "Deceased", na),
            upenn_v21_row("UPENN-GBM-00001_21", 380, "Deceased", na),  # v2.1 has a row per scan
            upenn_v21_row("UPENN-GBM-00002_11", na, "Alive", 900),
            upenn_v21_row("UPENN-GBM-00003_11", na, "Lost to Follow-up", 200),
            upenn_v21_row("UPENN-GBM-00004_11", na, "Deceased - uncertain date of death", 300),
            upenn_v21_row("UPENN-GBM-00005_21", 100, "Deceased", na)]  # a follow-up without a baseline
    make_upenn(tmp_path, rows, [r["ID"] for r in rows])
    cohort = load_cohort("upenn_gbm", tmp_path)
    subs = by_id(cohort)
    assert {s: (subs[s].targets["os_days"], subs[s].targets["event"]) for s in subs} == {
        "UPENN-GBM-00001_11": (400.0, True), "UPENN-GBM-00001_21": (380.0, True),
        "UPENN-GBM-00002_11": (900.0, False), "UPENN-GBM-00003_11": (200.0, False),
        "UPENN-GBM-00004_11": (None, True), "UPENN-GBM-00005_21": (100.0, True)}
    text = notes(cohort)
    assert "Survival_Censor read as the censoring time in days" in text
    assert "1 session(s) 'Lost to Follow-up': censored at the last known time" in text
    assert "1 session(s) 'Deceased - uncertain date of death': no usable survival time" in text
    assert "survival 'Not Available'" not in text  # the uncertain one is counted once, above
    assert "2 follow-up session(s) (not _11)" in text and "set them aside" in text
    assert "1 patient(s) with follow-up sessions only" in text and "UPENN-GBM-00005" in text
    cox, _ = build_samples(get_task("survival_cox"), cohort)
    assert {s.id: s.target for s in cox} == {"UPENN-GBM-00001_11": (400.0, True),
                                             "UPENN-GBM-00002_11": (900.0, False),
                                             "UPENN-GBM-00003_11": (200.0, False)}
    one_year, _ = build_samples(get_task("survival_1yr"), cohort)
    assert {s.id: s.target for s in one_year} == {"UPENN-GBM-00001_11": "alive_beyond",
                                                  "UPENN-GBM-00002_11": "alive_beyond"}


def test_upenn_flag_form_still_checked_and_bad_censor_named(tmp_path):
    rows = [upenn_row(1, 960, "Deceased", 0), upenn_row(2, 300, "Lost to Follow-up", 1),
            upenn_row(3, 200, "Deceased - uncertain date of death", 0)]
    make_upenn(tmp_path, rows, ["UPENN-GBM-00001_11", "UPENN-GBM-00002_11", "UPENN-GBM-00003_11"])
    subs = by_id(load_cohort("upenn_gbm", tmp_path))
    assert subs["UPENN-GBM-00002_11"].targets["os_days"] == 300 and subs["UPENN-GBM-00002_11"].targets["event"] is False
    assert subs["UPENN-GBM-00003_11"].targets["os_days"] is None
    make_upenn(tmp_path, [upenn_row(1, 960, "Deceased", "yes")], ["UPENN-GBM-00001_11"])
    with pytest.raises(BenchError, match=r"(?s)Survival_Censor 'yes'.*line 2.*censoring time in days"):
        load_cohort("upenn_gbm", tmp_path)


# ----------------------------------------------------------------------------------------- 5. ATLAS

ATLAS_SHEET = "20220425_ATLAS_2.0_MetaData.xlsx"


def test_atlas_release_spreadsheet_without_openpyxl_says_what_to_do(tmp_path, monkeypatch):
    folder = make_atlas(tmp_path, [(1, 1, 180, "L")])
    (folder / "ATLAS_2.0_MetaData.csv").unlink()
    with pytest.raises(BenchError, match=r"(?s)missing metadata .*ATLAS_2\.0_MetaData\.csv.*xlsx"):
        load_cohort("atlas2", tmp_path)
    (folder / ATLAS_SHEET).write_bytes(b"PK\x03\x04")
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # as where openpyxl is not installed
    with pytest.raises(BenchError, match=r"(?s)20220425_ATLAS_2\.0_MetaData\.xlsx.*openpyxl.*export.*to CSV"):
        load_cohort("atlas2", tmp_path)


def test_atlas_release_spreadsheet_is_read(tmp_path):
    pytest.importorskip("openpyxl")
    folder = make_atlas(tmp_path, [(1, 1, 180, "L"), (4, 12, 7.5, "R")])
    table = pd.read_csv(folder / "ATLAS_2.0_MetaData.csv")
    (folder / "ATLAS_2.0_MetaData.csv").unlink()
    table.to_excel(folder / ATLAS_SHEET, index=False)
    cohort = load_cohort("atlas2", tmp_path)
    assert by_id(cohort)["sub-r004s012"].targets["days"] == 7.5
    assert f"metadata read from {ATLAS_SHEET}" in notes(cohort)


# ------------------------------------------------------------------------------------------ 6. BIDS


def test_bids_sessions_in_natural_order(tmp_path):
    folder = make_bids(tmp_path, [{"participant_id": "sub-01", "age": "9"}],
                       ["sub-01/ses-10/anat/sub-01_ses-10_T1w.nii.gz", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"])
    subject = load_cohort("bids", folder).subjects[0]
    assert subject.images["t1"].name == "sub-01_ses-2_T1w.nii.gz"
