"""`data check` passes on every phantom cohort and names the problem in each damaged copy."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainbench.cli import main
from brainbench.datacheck import check_task, image_info, length_problem
from brainbench.errors import BenchError
from brainbench.leakage import HashCache
from brainbench.pipeline import load_samples, prepare_task
from brainbench.splits import Split
from brainbench.runner import manifest_path, resolve_tasks

from .helpers import random_brain, write_nifti
from .phantom_cohorts import copy_dataset, phantoms  # noqa: F401  (fixture)

SOURCE = "real:test"


def task_on(task_id: str, dataset: str | None = None):
    return resolve_tasks([task_id], [dataset] if dataset else None)[0]


def check(task, root, **kw):
    return check_task(task, root, data_source=SOURCE, **kw)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("task", [t.on_dataset(d) for t in resolve_tasks(None) for d in t.datasets],
                         ids=lambda t: f"{t.id}@{t.dataset}")
def test_every_phantom_cohort_passes(phantoms, task, tmp_path):  # noqa: F811
    before = snapshot(phantoms)
    report = check(task, phantoms, results_dir=tmp_path, hash_cache=HashCache(tmp_path / "h.json"))
    assert report.ok, report.render()
    assert report.n_samples > 0 and report.images_checked > 0 and report.voxels_read > 0
    assert sum(report.labels.values()) == report.n_samples
    assert report.split["test_people"] > 0 and report.split["stored"].startswith("none yet")
    assert report.orientations  # every image's header was read
    assert snapshot(phantoms) == before  # the check writes nothing into the data


def test_report_shows_quirks_strata_and_the_stored_manifest(phantoms, tmp_path):  # noqa: F811
    task = task_on("neurodev_cls")
    manifest = manifest_path(tmp_path, SOURCE, task)
    first = check(task, phantoms, results_dir=tmp_path)
    assert manifest == Path(first.split["manifest"])
    text = first.render()
    assert "without an image skipped" in text  # ABIDE label rows without images
    assert any("|" in s for s in first.strata)  # label x site strata
    # the manifest a run writes (the run's own preparation, hashing the voxels)
    hashes, _ = HashCache(None).try_hashes(load_samples(task, phantoms).image_paths())
    split = prepare_task(task, phantoms, SOURCE, hashes=hashes).split
    good = split.to_manifest()
    assert good["hash"] == first.split["hash"]
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(good))
    assert check(task, phantoms, results_dir=tmp_path).split["stored"] == "matches"
    # another split with its own (consistent) hash: the cohort changed
    moved = dict(good, train=sorted(good["train"][1:] + good["test"][:1]),
                 test=sorted(good["test"][1:] + good["train"][:1]))
    moved["hash"] = Split(task.id, task.dataset, "", 0.0, tuple(moved["train"]),
                          tuple(moved["test"])).hash
    manifest.write_text(json.dumps(moved))
    changed = check(task, phantoms, results_dir=tmp_path)
    assert not changed.ok and "differs from the stored manifest" in changed.render()
    # lists edited, hash kept: verified by content, so refused by the check and by a run
    manifest.write_text(json.dumps(dict(moved, hash=good["hash"])))
    forged = check(task, phantoms, results_dir=tmp_path)
    assert not forged.ok and forged.split["stored"] == "DOES NOT VERIFY"
    assert "field 'hash'" in forged.render() and "does not verify" in forged.render()
    with pytest.raises(BenchError, match="field 'hash'.*does not verify"):
        prepare_task(task, phantoms, SOURCE, hashes=hashes, manifest=manifest)
    # only a hash (no lists) is not a manifest either
    manifest.write_text(json.dumps({"hash": good["hash"]}))
    assert "field 'train' must be a list" in check(task, phantoms, results_dir=tmp_path).render()
    manifest.write_text("{not json")
    assert "is unreadable" in check(task, phantoms, results_dir=tmp_path).render()


# ------------------------------------------------------------------------------ bad label files


def edit_csv(path: Path, change, sep=","):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    change(frame)
    frame.to_csv(path, index=False, sep=sep)


def fails_with(task, root, *needles):
    report = check(task, root)
    assert not report.ok
    text = report.render()
    for needle in needles:
        assert needle in text, text
    assert text.splitlines()[1] == "UNUSABLE:" or "result: UNUSABLE" in text
    return text


def test_missing_column_is_named_with_its_file(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "adni", tmp_path)
    edit_csv(folder / "ADNIMERGE.csv", lambda f: f.drop(columns=["DX"], inplace=True))
    fails_with(task_on("neurodegen_cls"), tmp_path, "lacks the column(s) 'DX'", "ADNIMERGE.csv")


def test_unknown_label_code(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "abide1", tmp_path)
    edit_csv(folder / "Phenotypic_V1_0b.csv", lambda f: f.loc.__setitem__((3, "DX_GROUP"), "3"))
    fails_with(task_on("neurodev_cls"), tmp_path, "unknown code '3'", "'DX_GROUP'", "line 5",
               "1 (ASD), 2 (control)")


def test_unknown_cdr_code_in_oasis(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "oasis1", tmp_path)
    edit_csv(folder / "oasis_cross-sectional.csv", lambda f: f.loc.__setitem__((0, "CDR"), "7"))
    fails_with(task_on("neurodegen_cls", "oasis1"), tmp_path, "unknown code '7'", "'CDR'", "0.5")


def test_unparseable_age_and_date(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "bids", tmp_path / "a")
    edit_csv(folder / "participants.tsv", lambda f: f.loc.__setitem__((0, "Age"), "twelve"), sep="\t")
    fails_with(task_on("brain_age", "bids"), tmp_path / "a", "cannot parse age 'twelve'", "'Age'",
               "participants.tsv (line 2)")
    folder = copy_dataset(phantoms, "adni", tmp_path / "b")
    edit_csv(folder / "ADNIMERGE.csv", lambda f: f.loc.__setitem__((1, "EXAMDATE"), "2005-13-45"))
    fails_with(task_on("neurodegen_cls"), tmp_path / "b", "cannot parse date '2005-13-45'", "'EXAMDATE'")


def test_wrong_folder_tree_shows_the_expected_one(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "upenn_gbm", tmp_path)
    (folder / "images_structural").rename(folder / "images")
    fails_with(task_on("survival_cox"), tmp_path, "missing image folder", "images_structural",
               "expected layout:", "UPENN-GBM-00001_11_T1GD.nii.gz")
    fails_with(task_on("idh_status"), tmp_path, "neither the UCSF-PDGM/ folder", "UCSF-PDGM-metadata_v5.csv")


# ------------------------------------------------------------------------------ bad images


def _first_image(folder: Path) -> Path:
    return sorted(folder.rglob("*_T1w.nii.gz"))[0]


@pytest.mark.parametrize("headers_only", [False, True])
def test_truncated_nifti_is_named(phantoms, tmp_path, headers_only):  # noqa: F811
    folder = copy_dataset(phantoms, "bids", tmp_path)
    image = _first_image(folder)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 2 // 3])
    text = fails_with(task_on("brain_age", "bids"), tmp_path, str(image)) if not headers_only else None
    report = check(task_on("brain_age", "bids"), tmp_path, headers_only=headers_only)
    assert not report.ok and [f.where.split(": ")[1] for f in report.errors] == [str(image)]
    assert "truncated" in report.errors[0].message
    if text is not None:
        assert "cannot read image" in text


def test_a_damaged_gzip_stream_is_named_by_the_full_check(phantoms, tmp_path):  # noqa: F811
    """One flipped byte mid-stream keeps every length right (the header check passes it); the
    full check inflates the whole stream, whose CRC no longer matches, and names the file."""
    folder = copy_dataset(phantoms, "bids", tmp_path)
    image = _first_image(folder)
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x55
    image.write_bytes(bytes(data))
    assert check(task_on("brain_age", "bids"), tmp_path, headers_only=True).ok
    text = fails_with(task_on("brain_age", "bids"), tmp_path, str(image), "damaged")
    assert "download it again" in text


def test_implausible_geometry_is_an_error(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "bids", tmp_path)
    images = [p for p in sorted(folder.rglob("*_T1w.nii.gz")) if "pixar002" not in p.name]  # 002: age n/a
    nib.save(nib.Nifti1Image(random_brain(1).astype(np.int16), np.diag([25.0, 25.0, 25.0, 1.0])), str(images[0]))
    nib.save(nib.Nifti1Image(np.ones((40, 40), np.int16), np.eye(4)), str(images[1]))
    affine = np.eye(4)
    affine[:3, :3] = [[1, 0, 0], [1, 0, 0], [0, 0, 1]]  # two axes along x: no orientation
    header = nib.Nifti1Header()
    header.set_sform(affine, code=1)  # what a broken converter writes
    nib.save(nib.Nifti1Image(random_brain(2).astype(np.int16), None, header=header), str(images[2]))
    report = check(task_on("brain_age", "bids"), tmp_path)
    messages = {f.where.split(": ")[1]: f.message for f in report.errors}
    assert "implausible voxel size (25.0, 25.0, 25.0)" in messages[str(images[0])]
    assert "expected a 3D volume, got shape (40, 40)" in messages[str(images[1])]
    assert "degenerate affine" in messages[str(images[2])]
    assert not report.ok


def test_mixed_orientation_is_a_warning(phantoms, tmp_path):  # noqa: F811
    folder = copy_dataset(phantoms, "bids", tmp_path)
    image = _first_image(folder)
    img = nib.load(str(image))
    flipped = nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-2.0, 2.0, 2.0, 1.0]))
    nib.save(flipped, str(image))
    report = check(task_on("brain_age", "bids"), tmp_path)
    assert report.ok and report.orientations.keys() == {"RAS", "LAS"}
    assert any("mixed orientations" in f.message for f in report.findings)


def _store_as(path: Path, codes: str) -> None:
    """Rewrite one file as the same scan stored in another axis order (e.g. PIR, sagittal)."""
    img = nib.load(str(path))
    current = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    other = img.as_reoriented(nib.orientations.ornt_transform(current, target))
    nib.save(nib.Nifti1Image(np.asarray(other.dataobj), other.affine), str(path))


def test_a_sagittally_stored_cohort_is_reported_reoriented(phantoms, tmp_path):  # noqa: F811
    """IXI T1 scans are acquired sagittally: stored PIR, the last axis is left-right. The check
    says they are reoriented to RAS (as preprocessing does), instead of a silent OK on a cohort
    that would be sliced sagittally."""
    folder = copy_dataset(phantoms, "ixi", tmp_path)
    images = sorted(folder.rglob("*-T1.nii.gz"))
    for image in images:
        _store_as(image, "PIR")
    report = check(task_on("brain_age", "ixi"), tmp_path)
    assert report.ok, report.render()
    n = report.images_checked
    assert report.orientations == {"PIR": n} and report.reoriented == {"PIR": n}
    text = report.render()
    assert f"orientations: PIR {n}" in text
    assert f"reoriented to RAS before slicing (last axis not axial, e.g. stored sagittally): PIR {n}" in text
    assert "mixed orientations" not in text  # all end up RAS
    # half sagittal, half as the phantoms are (RAS): both sliced axially, in RAS: no warning
    for image in images[::2]:
        _store_as(image, "RAS")
    mixed = check(task_on("brain_age", "ixi"), tmp_path)
    assert mixed.ok and set(mixed.orientations) == {"PIR", "RAS"}
    assert not any("mixed orientations" in f.message for f in mixed.findings)


def _brats_subject(folder: Path, number: str) -> tuple[Path, list[Path]]:
    case = folder / f"BraTS2021_{number}"
    seg = case / f"BraTS2021_{number}_seg.nii.gz"
    return seg, sorted(p for p in case.glob("*.nii.gz") if p != seg)


@pytest.mark.parametrize("headers_only", [False, True])
def test_label_maps_get_the_runs_checks_naming_every_subject(phantoms, tmp_path, capsys,  # noqa: F811
                                                             headers_only):
    """A seg affine that differs from its images' (left-right flipped) and a label 3 under
    BraTS 2021 naming: the run refuses both, so the check lists both (label values need the
    voxels: not with --headers-only)."""
    from brainbench.segmentation.labels import validate_label_maps

    folder = copy_dataset(phantoms, "brats2021", tmp_path)
    cases = sorted(p.name.removeprefix("BraTS2021_") for p in folder.glob("BraTS2021_*"))
    flipped, relabelled = cases[1], cases[3]
    seg, _ = _brats_subject(folder, flipped)
    img = nib.load(str(seg))
    affine = img.affine.copy()
    affine[0, 0] = -affine[0, 0]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header), str(seg))
    seg, _ = _brats_subject(folder, relabelled)
    img = nib.load(str(seg))
    data = np.asarray(img.dataobj)
    assert (data == 4).any()
    nib.save(nib.Nifti1Image(np.where(data == 4, 3, data).astype(data.dtype), img.affine, img.header), str(seg))

    task = task_on("tumor_seg")
    report = check(task, tmp_path, headers_only=headers_only)
    errors = {f.where: f.message for f in report.errors}
    expected = {f"BraTS2021_{flipped}"} | (set() if headers_only else {f"BraTS2021_{relabelled}"})
    assert set(errors) == expected, report.render()
    assert "different affines" in errors[f"BraTS2021_{flipped}"]
    if not headers_only:
        assert "label values [3]" in errors[f"BraTS2021_{relabelled}"]
        assert "brats2021" in errors[f"BraTS2021_{relabelled}"]
    assert not report.ok and "result: UNUSABLE" in report.render()
    # the run's refusal (the same check) names both subjects, not only the first
    with pytest.raises(BenchError) as refused:
        validate_label_maps(load_samples(task, tmp_path).samples, task.target)
    assert f"subject BraTS2021_{flipped}:" in str(refused.value)
    assert f"subject BraTS2021_{relabelled}:" in str(refused.value)
    if headers_only:
        return
    # and the run itself (fraction 1: every label map is read) before any forward pass: exit 2
    # naming both, nothing stored
    results = tmp_path.parent / f"{tmp_path.name}_results"
    assert main(["run", "--model", "random", "--profile", "tiny", "--tasks", "tumor_seg",
                 "--seeds", "0", "--fraction", "1", "--data", str(tmp_path), "--results", str(results),
                 "--cache", str(tmp_path.parent / f"{tmp_path.name}_cache"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 label maps cannot be used" in err and "Traceback" not in err
    assert f"subject BraTS2021_{flipped}:" in err and f"subject BraTS2021_{relabelled}:" in err
    from brainbench.store import ResultStore

    db = results / "results.db"
    assert not db.exists() or ResultStore(f"sqlite:///{db}").frame().empty


def test_an_upper_case_gz_name_is_read_as_gzip(phantoms, tmp_path):  # noqa: F811
    copy_dataset(phantoms, "ixi", tmp_path)
    task = task_on("brain_age", "ixi")
    image = load_samples(task, tmp_path).image_paths()[0]
    upper = image.with_name(image.name.replace(".nii.gz", ".NII.GZ"))
    image.rename(upper)
    assert upper in load_samples(task, tmp_path).image_paths()  # the task reads it
    assert length_problem(upper) is None
    for headers_only in (False, True):
        report = check(task, tmp_path, headers_only=headers_only)
        assert report.ok and not report.findings, report.render()


def test_length_check_without_decompressing(tmp_path):
    good = write_nifti(tmp_path / "a.nii.gz", random_brain(0))
    assert length_problem(good) is None
    raw = tmp_path / "b.nii"
    raw.write_bytes(gzip.decompress(good.read_bytes()))
    assert length_problem(raw) is None
    raw.write_bytes(raw.read_bytes()[:-1000])
    assert "truncated" in length_problem(raw)
    assert image_info(tmp_path / "gone.nii.gz")[1] == [("error", "missing file")]


# ------------------------------------------------------------------------------ command line


def test_cli_exit_codes(phantoms, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BRAINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BRAINBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    assert main(["data-check", "--task", "brain_age", "--dataset", "bids", "--data", str(phantoms),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "task brain_age on bids" in out and "result: OK" in out
    assert "brain_age@bids.json" in out  # the manifest a run would write
    folder = copy_dataset(phantoms, "bids", tmp_path / "bad")
    os.remove(folder / "participants.tsv")
    assert main(["data-check", "--task", "brain_age", "--dataset", "bids", "--data",
                 str(tmp_path / "bad"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "UNUSABLE" in captured.out and "data check failed: brain_age" in captured.err
