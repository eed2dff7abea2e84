"""Leakage guards: voxel hashes, duplicate merging, and no person or image on both sides of a split."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainbench.datasets import load_cohort
from brainbench.errors import BenchError
from brainbench.leakage import (HashCache, assert_no_leakage, find_duplicates, merge_duplicate_groups,
                                voxel_hash)
from brainbench.runner import resolve_tasks
from brainbench.splits import fraction_subset, make_split
from brainbench.taskspec import Sample, build_samples

from .helpers import random_brain, write_nifti
from .phantom_cohorts import copy_dataset, phantoms  # noqa: F401  (fixture)


# ------------------------------------------------------------------------------------ hashes


def test_voxel_hash_follows_voxels_not_file_bytes(tmp_path):
    data = random_brain(0)
    a = write_nifti(tmp_path / "a.nii.gz", data)
    b = write_nifti(tmp_path / "copy.nii", data, spacing=1.0)  # other format, other header
    c = write_nifti(tmp_path / "c.nii.gz", data + (data > 0))
    assert a.read_bytes() != b.read_bytes()
    assert voxel_hash(a) == voxel_hash(b)
    assert voxel_hash(a) != voxel_hash(c)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(data.reshape(data.shape[0], -1, 1).astype(np.int16), np.eye(4)), str(flat))
    assert voxel_hash(flat) != voxel_hash(a)  # same values, other shape


def test_hash_cache_reads_each_file_version_once(tmp_path):
    paths = [write_nifti(tmp_path / f"{i}.nii.gz", random_brain(i)) for i in range(3)]
    store = tmp_path / "cache" / "hashes.json"
    first = HashCache(store)
    hashes = first.hashes(paths)
    assert first.computed == 3 and store.is_file()
    again = HashCache(store)
    assert again.hashes(paths) == hashes and again.computed == 0
    write_nifti(paths[1], random_brain(9))  # new content: new size/mtime, hashed again
    third = HashCache(store)
    changed = third.hashes(paths)
    assert third.computed == 1 and changed[paths[1]] != hashes[paths[1]]
    assert changed[paths[1]] == voxel_hash(paths[1])


def test_hash_cache_names_unreadable_files(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", random_brain(1))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    hashes, errors = HashCache(None).try_hashes([good, bad, tmp_path / "gone.nii.gz"])
    assert set(hashes) == {good}
    assert "bad.nii.gz" in errors[bad] and "truncated" in errors[bad]
    assert "not found" in errors[tmp_path / "gone.nii.gz"]
    with pytest.raises(BenchError, match="bad.nii.gz"):
        HashCache(None).hashes([good, bad])


# ------------------------------------------------------------------------------------ merging


def _sample(sid: str, group: str, *paths: str, label: str = "a") -> Sample:
    return Sample(sid, group, tuple(("t1", Path(p)) for p in paths), label, label, label)


def test_merge_joins_chains_and_leaves_clean_cohorts_alone():
    samples = [_sample("s1", "p1", "x1"), _sample("s2", "p2", "x2"), _sample("s3", "p3", "x3"),
               _sample("s4", "p4", "x4")]
    clean = {Path(f"x{i}"): f"h{i}" for i in range(1, 5)}
    merged, notes = merge_duplicate_groups(samples, clean)
    assert merged == samples and notes == []
    chained = {**clean, Path("x2"): "h1", Path("x3"): "h1"}  # p1 ~ p2 ~ p3 by content
    merged, notes = merge_duplicate_groups(samples, chained)
    assert [s.group for s in merged] == ["p1", "p1", "p1", "p4"]
    assert len(notes) == 1 and "s2" in notes[0] and "p1, p2, p3" in notes[0]


def test_duplicates_never_straddle_the_split():
    """Forty people, each of the first ten shares an image with a later person: before the
    merge some pair straddles the split, after it none does."""
    samples = [_sample(f"s{i:02d}", f"p{i:02d}", f"img{i:02d}", label="ab"[i % 2]) for i in range(40)]
    hashes = {Path(f"img{i:02d}"): f"h{i if i >= 10 else i + 20}" for i in range(40)}
    hashes.update({Path(f"img{i:02d}"): f"h{i}" for i in range(20, 30)})
    pairs = [(f"p{i:02d}", f"p{i + 20:02d}") for i in range(10)]
    raw = make_split("t", "d", samples, "salt", 0.3)
    assert any((a in raw.test_groups) != (b in raw.test_groups) for a, b in pairs)
    with pytest.raises(BenchError, match="image hash on both sides"):
        assert_no_leakage("t", samples, raw.test_groups, hashes)
    merged, notes = merge_duplicate_groups(samples, hashes)
    assert len(notes) == 10
    split = make_split("t", "d", merged, "salt", 0.3)
    assert_no_leakage("t", merged, split.test_groups, hashes)
    side = {s.id: s.group in set(split.test_groups) for s in merged}
    assert all(side[f"s{i:02d}"] == side[f"s{i + 20:02d}"] for i in range(10))


# ------------------------------------------------------------------------------------ phantoms


def _truth_person(root: Path, dataset: str) -> dict[str, str]:
    """Generator truth: image path (and scan folder, where one folder holds one scan) -> person."""
    truth = pd.read_csv(root / "_truth" / f"{dataset}.csv", dtype=str).dropna(subset=["image"])
    person = dict(zip(truth["image"], truth["subject_id"]))
    folders = pd.Series([str(Path(i).parent) for i in truth["image"]])
    unique = folders[~folders.duplicated(keep=False)]
    person.update({folders[i]: truth["subject_id"].iloc[i] for i in unique.index})
    return person


def every_task_variant():
    return [t.on_dataset(d) for t in resolve_tasks(None) for d in t.datasets]


@pytest.mark.parametrize("task", every_task_variant(), ids=lambda t: f"{t.id}@{t.dataset}")
def test_no_person_or_image_on_both_sides_of_any_task(phantoms, task):  # noqa: F811
    """Proof on every task and dataset: ids, people (from the generator's own truth, not the
    adapter's grouping) and voxel hashes of the test split never occur in the training pool,
    nor in any label-fraction subset."""
    cohort = load_cohort(task.dataset, phantoms)
    samples, _ = build_samples(task, cohort)
    hashes = HashCache(None).hashes([p for s in samples for _, p in s.images])
    samples, _ = merge_duplicate_groups(samples, hashes)
    split = make_split(task.id, task.dataset, samples, task.split_salt, task.test_fraction,
                       require_all_labels=task.target.kind not in ("regression", "segmentation"))
    test_groups = set(split.test_groups)
    train = [s for s in samples if s.group not in test_groups]
    test = [s for s in samples if s.group in test_groups]
    assert train and test
    person = _truth_person(phantoms, task.dataset)
    folder = cohort.root

    def who(path):
        rel = Path(path).relative_to(folder)
        return person.get(str(rel), person.get(str(rel.parent)))

    def people(group):
        found = {s.id: {who(p) for _, p in s.images} for s in group}
        assert all(None not in v for v in found.values()), found  # every image has a known person
        return set().union(*found.values())

    def image_hashes(group):
        return {hashes[Path(p)] for s in group for _, p in s.images}

    assert not {s.id for s in train} & {s.id for s in test}
    assert people(test) and not people(train) & people(test)
    assert not image_hashes(train) & image_hashes(test)
    for seed in task.seeds[:2]:
        subset = set(fraction_subset(split, samples, 0.5, seed, task.min_per_stratum))
        assert subset <= set(split.train_groups)


def test_copied_scan_under_a_new_id_is_merged_by_the_runner_path(phantoms, tmp_path):  # noqa: F811
    """A BIDS participant whose T1w is a byte copy of another's: reported, and on one side."""
    folder = copy_dataset(phantoms, "bids", tmp_path)
    rows = list(csv.DictReader(open(folder / "participants.tsv"), delimiter="\t"))
    clone = dict(rows[0], participant_id="sub-pixar099")
    with open(folder / "participants.tsv", "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n").writerow(clone)
    (folder / "sub-pixar099" / "anat").mkdir(parents=True)
    shutil.copy(folder / "sub-pixar001" / "anat" / "sub-pixar001_T1w.nii.gz",
                folder / "sub-pixar099" / "anat" / "sub-pixar099_T1w.nii.gz")
    task = resolve_tasks(["brain_age"], ["bids"])[0]
    samples, _ = build_samples(task, load_cohort("bids", tmp_path))
    hashes = HashCache(None).hashes([p for s in samples for _, p in s.images])
    dups = find_duplicates(samples, hashes)
    assert [tuple(sid for sid, _ in d.images) for d in dups] == [("sub-pixar001", "sub-pixar099")]
    merged, notes = merge_duplicate_groups(samples, hashes)
    groups = {s.id: s.group for s in merged}
    assert groups["sub-pixar001"] == groups["sub-pixar099"] == "sub-pixar001"
    assert "sub-pixar099" in notes[0]


@pytest.fixture(scope="module")
def tiny_model() -> str:
    from brainbench.backbone import BACKBONES, register_backbone

    from .helpers import TinyBackbone

    name = "tiny-leakage-test"
    if name not in BACKBONES:
        register_backbone(name)(lambda **_: TinyBackbone())
    return name


def test_runner_merges_copies_and_runs_only_datasets_present(phantoms, tmp_path, tiny_model):  # noqa: F811
    """DATA holding one BIDS study with a copied scan: `DATASET=bids` runs brain_age on it, the
    copy is reported and both people land on one side of the recorded split."""
    import json

    from brainbench.profiles import PROFILES
    from brainbench.runner import RunConfig, run

    folder = copy_dataset(phantoms, "bids", tmp_path / "data")
    (folder / "sub-pixar003" / "anat" / "sub-pixar003_T1w.nii.gz").write_bytes(
        (folder / "sub-pixar001" / "anat" / "sub-pixar001_T1w.nii.gz").read_bytes())
    config = RunConfig(model=tiny_model, fractions=(1.0,), seeds=(0,), profile=PROFILES.get("tiny"),
                       cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                       data_dir=tmp_path / "data", datasets=("bids",), progress=False)
    report = run(config)
    assert [(c.task, c.computed) for c in report.cells] == [("brain_age", True)]
    assert any("identical voxel data" in n and "sub-pixar003" in n for n in report.notes)
    manifest = json.loads(next((tmp_path / "results" / "splits").rglob("brain_age@bids.json")).read_text())
    assert "sub-pixar003" not in manifest["train"] + manifest["test"]  # merged into sub-pixar001
    assert (tmp_path / "cache" / "voxel_hashes.json").is_file()
    with pytest.raises(BenchError, match=r"not found under DATA.*ixi \(expected folder IXI/\)"):
        run(RunConfig(**{**config.__dict__, "datasets": None, "tasks": ("brain_age",)}))
