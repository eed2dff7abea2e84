"""The phantom generator writes every dataset's real layout, deterministically, with learnable labels."""

from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from brainbench.phantoms import DATASETS, PHANTOM_VERSION, generate_phantoms
from brainbench.phantoms import generate as gen_mod
from brainbench.phantoms.anatomy import build_tissues
from brainbench.phantoms.cohorts import plan_cohort
from brainbench.phantoms.lesions import mass_effects
from brainbench.phantoms.oracle import oracle_report
from brainbench.phantoms.render import render_arrays
from brainbench.phantoms.template import GRID_AFFINE, GRID_SHAPE, load_template

N = 6
SEED = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "root"
    t0 = time.perf_counter()
    out = generate_phantoms(root, N, seed=SEED, workers=2, progress=False)
    print(f"\ntiny cohort ({N}/dataset): {time.perf_counter() - t0:.1f} s")
    assert out == root
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def _load(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    assert img.shape == GRID_SHAPE
    np.testing.assert_allclose(img.affine, GRID_AFFINE)
    return np.asarray(img.dataobj)


def _truth(root: Path, dataset: str) -> pd.DataFrame:
    return pd.read_csv(root / "_truth" / f"{dataset}.csv")


# ----------------------------------------------------------------------------- manifest & truth
def test_manifest_and_truth_outside_dataset_folders(cohort):
    m = json.loads((cohort / "_phantom.json").read_text())
    assert m["version"] == PHANTOM_VERSION and m["seed"] == SEED
    assert m["sizes"] == {d: N for d in DATASETS}
    assert m["seconds"] > 0
    for d in DATASETS:
        t = _truth(cohort, d)
        assert {"key", "has_image", "age", "sex", "site"} <= set(t.columns)
        assert t["key"].is_unique
    from brainbench.phantoms.layouts import FOLDERS

    for d in DATASETS:
        assert not list((cohort / FOLDERS[d]).rglob("*truth*"))
    assert not [p for p in cohort.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_second_call_returns_without_regenerating(cohort):
    f = cohort / "BraTS2021" / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    before = f.stat().st_mtime_ns
    t0 = time.perf_counter()
    generate_phantoms(cohort, N, seed=SEED, workers=2, progress=False)
    generate_phantoms(cohort, {"ixi": N}, seed=SEED, workers=2, progress=False)  # a subset is done too
    assert time.perf_counter() - t0 < 1.0
    assert f.stat().st_mtime_ns == before


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_phantoms(Path("/nonexistent/never"), 3, datasets=["brats2025"])
    with pytest.raises(ValueError):
        generate_phantoms(Path("/nonexistent/never"), 0)


# ----------------------------------------------------------------------------- layouts
def test_brats_layout(cohort):
    root = cohort / "BraTS2021"
    assert sorted(p.name for p in root.iterdir()) == [f"BraTS2021_{i:05d}" for i in range(N)]
    for i in range(N):
        sid = f"BraTS2021_{i:05d}"
        assert sorted(p.name for p in (root / sid).iterdir()) == sorted(
            f"{sid}_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair", "seg"))
        seg = _load(root / sid / f"{sid}_seg.nii.gz")
        assert seg.dtype == np.int16
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        assert (seg > 0).sum() > 100 and (seg == 2).any()
        for k in ("t1", "t1ce", "t2", "flair"):
            im = _load(root / sid / f"{sid}_{k}.nii.gz")
            assert im.dtype == np.int16 and im.min() == 0 and im.max() > 500
            assert im[0, 0, 0] == 0  # skull-stripped background
    assert not list(root.glob("*.csv"))


def test_adni_layout(cohort):
    root = cohort / "ADNI"
    assert _header(root / "ADNIMERGE.csv") == ["RID", "PTID", "VISCODE", "EXAMDATE", "DX_bl", "DX", "AGE",
                                               "PTGENDER", "MMSE", "SITE"]
    rows = _csv(root / "ADNIMERGE.csv")
    persons = {r["PTID"] for r in rows}
    assert len(persons) == N
    imaged, missing = 0, 0
    for r in rows:
        assert re.fullmatch(r"\d{3}_S_\d{4}", r["PTID"]) and int(r["PTID"][:3]) == int(r["SITE"])
        assert int(r["PTID"][-4:]) == int(r["RID"])
        assert r["VISCODE"] in ("bl", "m12", "m24") and re.fullmatch(r"\d{4}-\d\d-\d\d", r["EXAMDATE"])
        assert r["DX_bl"] in ("CN", "SMC", "EMCI", "LMCI", "AD") and r["DX"] in ("CN", "MCI", "Dementia")
        assert r["PTGENDER"] in ("Male", "Female") and float(r["AGE"]) >= 55
        img = root / "images" / r["PTID"] / r["VISCODE"] / f"ADNI_{r['PTID']}_{r['VISCODE']}_T1.nii.gz"
        if img.exists():
            imaged += 1
            assert _load(img).dtype == np.int16
        else:
            missing += 1
    assert any(r["VISCODE"] == "m12" and (root / "images" / r["PTID"] / "m12").is_dir() for r in rows)
    assert 1 <= missing <= 3 and imaged == len(list((root / "images").rglob("*.nii.gz")))


def test_abide_layout(cohort):
    root = cohort / "ABIDE_I"
    assert _header(root / "Phenotypic_V1_0b.csv") == ["SITE_ID", "SUB_ID", "DX_GROUP", "DSM_IV_TR", "AGE_AT_SCAN",
                                                      "SEX", "HANDEDNESS_CATEGORY", "FIQ"]
    rows = _csv(root / "Phenotypic_V1_0b.csv")
    absent = [r for r in rows if not (root / r["SITE_ID"] / r["SUB_ID"] / "session_1" / "anat_1" / "mprage.nii.gz").exists()]
    assert len(rows) - len(absent) == N and 1 <= len(absent) <= 2
    assert any(r["FIQ"] == "-9999" for r in rows) and any(r["HANDEDNESS_CATEGORY"] == "-9999" for r in rows)
    for r in rows:
        assert re.fullmatch(r"5\d{4}", r["SUB_ID"]) and r["DX_GROUP"] in ("1", "2") and r["SEX"] in ("1", "2")
        assert r["SITE_ID"] in ("PITT", "NYU", "UM_1", "USM") and 7 <= float(r["AGE_AT_SCAN"]) <= 40


def test_ixi_layout_and_quirks(cohort):
    import xlrd

    root = cohort / "IXI"
    book = xlrd.open_workbook(str(root / "IXI.xls"))
    sh = book.sheet_by_name("Table")
    cols = sh.row_values(0)
    assert cols == ["IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "ETHNIC_ID", "MARITAL_ID", "OCCUPATION_ID",
                    "QUALIFICATION_ID", "DOB", "DATE_AVAILABLE", "STUDY_DATE", "AGE"]
    rows = [dict(zip(cols, sh.row_values(i))) for i in range(1, sh.nrows)]
    assert sh.cell(1, cols.index("DOB")).ctype == xlrd.XL_CELL_DATE
    ids = [int(r["IXI_ID"]) for r in rows]
    dup = {i for i in ids if ids.count(i) > 1}
    assert 2 <= len(dup) <= 3
    pairs = [[r for r in rows if int(r["IXI_ID"]) == i] for i in dup]
    assert any(p[0] == p[1] for p in pairs) and any(p[0]["AGE"] != p[1]["AGE"] for p in pairs)
    assert sum(r["AGE"] == "" for r in rows) >= 2
    files = {p.name for p in (root / "IXI-T1").iterdir()}
    assert len(files) == N
    for f in files:
        assert re.fullmatch(r"IXI\d{3}-(Guys|HH|IOP)-\d{4}-T1\.nii\.gz", f)
    on_disk = {int(f[3:6]) for f in files}
    assert len(set(ids) - on_disk) == 1  # one row whose image is absent
    for r in rows:
        if r["AGE"] != "":
            study = xlrd.xldate_as_datetime(r["STUDY_DATE"], book.datemode)
            dob = xlrd.xldate_as_datetime(r["DOB"], book.datemode)
            assert abs((study - dob).days / 365.25 - r["AGE"]) < 1e-6
            assert 20 <= r["AGE"] <= 90


def test_atlas_layout(cohort):
    root = cohort / "ATLAS_2"
    assert _header(root / "ATLAS_2.0_MetaData.csv") == ["Subject ID", "Site", "Session", "Days Post Stroke",
                                                        "Lesion Hemisphere", "Age", "Sex"]
    rows = _csv(root / "ATLAS_2.0_MetaData.csv")
    assert len(rows) == N
    for r in rows:
        m = re.fullmatch(r"sub-r(\d{3})s(\d{3})", r["Subject ID"])
        assert m and r["Site"] == f"R{m.group(1)}" and r["Session"] == "ses-1"
        assert 0.5 <= float(r["Days Post Stroke"]) <= 1000 and r["Lesion Hemisphere"] in ("L", "R")
        anat = root / "Training" / r["Site"] / r["Subject ID"] / "ses-1" / "anat"
        base = f"{r['Subject ID']}_ses-1_space-MNI152NLin2009aSym"
        assert sorted(p.name for p in anat.iterdir()) == sorted(
            [f"{base}_T1w.nii.gz", f"{base}_label-L_desc-T1lesion_mask.nii.gz"])
        mask = _load(anat / f"{base}_label-L_desc-T1lesion_mask.nii.gz")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        xs = np.nonzero(mask)[0] * 2.0 + GRID_AFFINE[0, 3]
        assert (np.sign(xs) == (-1 if r["Lesion Hemisphere"] == "L" else 1)).all()


def test_ucsf_layout(cohort):
    root = cohort / "UCSF-PDGM"
    assert _header(root / "UCSF-PDGM-metadata_v5.csv") == [
        "ID", "Sex", "Age at MRI", "WHO CNS Grade", "Final pathologic diagnosis (WHO 2021)", "MGMT status",
        "1p/19q", "IDH", "1-dead 0-alive", "OS", "EOR"]
    rows = _csv(root / "UCSF-PDGM-metadata_v5.csv")
    assert len(rows) == N
    for r in rows:
        assert re.fullmatch(r"UCSF-PDGM-\d{3}", r["ID"])
        assert r["IDH"] == "wildtype" or re.fullmatch(r"mutant \(R132[HC]\)", r["IDH"])
        assert r["WHO CNS Grade"] in ("2", "3", "4") and r["1-dead 0-alive"] in ("0", "1") and float(r["OS"]) > 0
        sid = f"UCSF-PDGM-{int(r['ID'][-3:]):04d}"
        folder = root / "UCSF-PDGM-v5" / f"{sid}_nifti"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{sid}_{k}.nii.gz" for k in ("T1", "T1c", "T2", "FLAIR", "tumor_segmentation"))
        assert set(np.unique(_load(folder / f"{sid}_tumor_segmentation.nii.gz"))) <= {0, 1, 2, 4}


def test_upenn_layout(cohort):
    root = cohort / "UPENN-GBM"
    assert _header(root / "UPENN-GBM_clinical_info_v2.1.csv") == [
        "ID", "Gender", "Age_at_scan_years", "Survival_from_surgery_days_UPDATED", "Survival_Status",
        "Survival_Censor", "IDH1", "MGMT", "KPS"]
    rows = _csv(root / "UPENN-GBM_clinical_info_v2.1.csv")
    assert len(rows) == N
    ids = {r["ID"] for r in rows}
    assert any(r["Survival_from_surgery_days_UPDATED"] == "Not Available" for r in rows)
    for r in rows:
        assert re.fullmatch(r"UPENN-GBM-\d{5}_11", r["ID"])
        assert r["IDH1"] in ("Wildtype", "Mutated", "NOS/NEC") and r["Survival_Censor"] in ("0", "1")
        assert (r["Survival_Status"] == "Alive") == (r["Survival_Censor"] == "1")
    folders = {p.name for p in (root / "images_structural").iterdir()}
    follow = {f for f in folders if f.endswith("_21")}
    assert ids <= folders and follow and not (follow & ids)
    assert all(f.replace("_21", "_11") in ids for f in follow)
    for f in folders:
        assert sorted(p.name for p in (root / "images_structural" / f).iterdir()) == sorted(
            f"{f}_{k}.nii.gz" for k in ("T1", "T1GD", "T2", "FLAIR"))


# ----------------------------------------------------------------------------- image content
def test_t1c_enhances_tumour_and_vessels(cohort):
    """T1c is not T1: enhancing tumour and vessels/choroid plexus are brighter (and the files
    hold exactly what the renderer produces)."""
    t = load_template()
    spec = plan_cohort("brats2021", N, SEED, t).scans[0]
    images, seg, _ = render_arrays(spec, t)
    d = cohort / "BraTS2021" / "BraTS2021_00000"
    np.testing.assert_array_equal(_load(d / "BraTS2021_00000_t1ce.nii.gz"), images["t1c"])
    np.testing.assert_array_equal(_load(d / "BraTS2021_00000_seg.nii.gz"), seg)
    vessel = build_tissues(t, spec.anatomy, mass_effects(spec.tumour)).maps["vessel"]
    t1, t1c = images["t1"].astype(float), images["t1c"].astype(float)
    brain = t1 > 0
    n1, n2 = t1 / np.median(t1[brain]), t1c / np.median(t1c[brain])
    away = brain & ~ndi.binary_dilation(seg > 0, iterations=3)
    et = seg == 4
    ves = away & (vessel > 0.5)
    rest = away & (vessel < 0.05)
    assert et.sum() > 20 and ves.sum() > 50
    assert n2[et].mean() / n1[et].mean() > 1.5
    assert n2[ves].mean() / n1[ves].mean() > 1.3
    assert 0.85 < n2[rest].mean() / n1[rest].mean() < 1.1


def test_deterministic_bytes(cohort, tmp_path):
    again = generate_phantoms(tmp_path / "same", {"brats2021": 1}, seed=SEED, workers=1, progress=False)
    other = generate_phantoms(tmp_path / "other", {"brats2021": 1}, seed=SEED + 1, workers=1, progress=False)
    for k in ("t1", "t1ce", "t2", "flair", "seg"):
        rel = Path("BraTS2021/BraTS2021_00000") / f"BraTS2021_00000_{k}.nii.gz"
        assert (again / rel).read_bytes() == (cohort / rel).read_bytes()
        assert (other / rel).read_bytes() != (cohort / rel).read_bytes()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = gen_mod.render_scan

    def flaky(spec, dest):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(spec, dest)

    monkeypatch.setattr(gen_mod, "render_scan", flaky)
    root = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        generate_phantoms(root, {"ixi": 3}, seed=0, workers=1, progress=False)
    assert not (root / "IXI").exists() and not (root / "_phantom.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_cli_prints_timing(tmp_path, capsys):
    assert gen_mod.main(["--root", str(tmp_path / "cli"), "--n", "1", "--datasets", "ixi", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ixi" in out and "s/scan" in out


def test_progress_counts_each_dataset_written_after_its_scans(tmp_path, capsys):
    """The bar does not stop at the last scan: writing tables, truth and folders is a step per dataset."""
    generate_phantoms(tmp_path / "bar", {"ixi": 2, "atlas2": 1}, seed=0, workers=1, progress=True)
    err = capsys.readouterr().err
    manifest = json.loads((tmp_path / "bar" / "_phantom.json").read_text())
    steps = sum(d["n_scans"] for d in manifest["datasets"].values()) + 2
    assert f"{steps}/{steps}" in err and "writing" in err
    generate_phantoms(tmp_path / "quiet", {"ixi": 1}, seed=0, workers=1, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- learnability
def test_oracle_beats_shuffled(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    generate_phantoms(root, {"ixi": 40, "atlas2": 40}, seed=1, workers=2, progress=False)
    rows = {r.dataset: r for r in oracle_report(root)}
    print("\n" + "\n".join(str(r) for r in rows.values()))
    for d in ("ixi", "atlas2"):
        r = rows[d]
        assert r.metric == "MAE" and r.n == 40
        assert r.oracle < 0.6 * r.chance, r  # clearly learnable
        assert r.shuffled > 0.85 * r.chance, r  # shuffled labels are not


def test_interrupted_pool_run_leaves_no_staging_and_no_workers(tmp_path, monkeypatch):
    import multiprocessing

    real = gen_mod.as_completed

    def interrupted(futures):
        for n, fut in enumerate(real(futures)):
            if n == 2:
                raise KeyboardInterrupt
            yield fut

    monkeypatch.setattr(gen_mod, "as_completed", interrupted)
    root = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        generate_phantoms(root, {"ixi": 4}, seed=0, workers=2, progress=False)
    assert not [p for p in root.rglob(".*")]  # no staging folder or staged file
    assert not (root / "IXI").exists()
    deadline = time.time() + 10
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []  # no orphaned worker


def test_stale_staging_of_a_dead_process_is_removed_at_the_next_start(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # exited: no process has this pid now (barring reuse)
    root = tmp_path / "r"
    generate_phantoms(root, {"ixi": 1}, seed=0, workers=1, progress=False)
    stale = root / f".IXI.tmp.{pid}"
    (stale / "sub").mkdir(parents=True)
    (root / "_truth" / f".ixi.csv.{pid}.tmp").write_text("half")
    live = root / f".IXI.tmp.{os.getppid()}"  # a live process's staging is left alone
    live.mkdir()
    generate_phantoms(root, {"ixi": 1}, seed=0, workers=1, progress=False)  # already done
    assert not stale.exists() and not (root / "_truth" / f".ixi.csv.{pid}.tmp").exists()
    assert live.exists()
    assert gen_mod.remove_stale_staging(root) == []
