"""Orientation: a volume is sliced axially whatever axis order it is stored in.

A volume stored axial-last (RAS, LAS, LPS: every phantom cohort, BraTS) is used as stored, bit
for bit and under its first-release cache key; one stored sagittally or coronally (PIR, as IXI
T1 scans are acquired) is reoriented to RAS before z-score and resize, on every path (decode
workers, ``PREPROCESS=device``), its label maps with the identical transform, and under a cache
key of its own. Also: gzip is recognised in an upper-case name (``.NII.GZ``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainbench.errors import BenchError
from brainbench.features import FeatureCache, _on_device, _Volumes, extract_features
from brainbench.preprocess import (image_sha256, load_volume, read_voxels, size_problem,
                                   volume_to_input)
from brainbench.segmentation import labels as seg_labels  # check_label_maps: new here
from brainbench.segmentation.labels import read_regions
from brainbench.targets import SegLabel, SegmentationTarget
from brainbench.weights import sha256_file
from tests.helpers import TinyBackbone, random_brain

SHAPE = (24, 28, 20)
ZOOMS = (1.0, 2.0, 3.0)  # anisotropic: a permutation that forgot the spacing would show


def brain(seed: int = 0) -> np.ndarray:
    """An asymmetric brain-like volume (a flip or transpose of it is another volume)."""
    data = random_brain(seed, SHAPE)
    data[:6] *= 1.5  # left-right, anterior-posterior and inferior-superior differ
    data[:, :5] += 80 * (data[:, :5] != 0)
    data[:, :, -4:] *= 0.5
    return data.astype(np.int16)


def ras_affine() -> np.ndarray:
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = [-20.0, -30.0, -25.0]
    return affine


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def stored_as(image: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same scan (same world coordinates) stored in another axis order."""
    target = nib.orientations.axcodes2ornt(tuple(codes))
    current = nib.orientations.io_orientation(image.affine)
    return image.as_reoriented(nib.orientations.ornt_transform(current, target))


@pytest.fixture()
def scans(tmp_path: Path) -> dict[str, Path]:
    """One scan in RAS and as stored PIR (sagittal), PSR (coronal), LAS and LPS (axial)."""
    ras = nib.Nifti1Image(brain(), ras_affine())
    out = {"RAS": save(tmp_path / "ras.nii.gz", np.asarray(ras.dataobj), ras.affine)}
    for codes in ("PIR", "PSR", "LAS", "LPS"):
        other = stored_as(ras, codes)
        assert "".join(nib.aff2axcodes(other.affine)) == codes
        out[codes] = save(tmp_path / f"{codes.lower()}.nii.gz", np.asarray(other.dataobj),
                          other.affine)
    return out


def test_a_sagittal_or_coronal_volume_is_reoriented_to_the_axial_ras_one(scans):
    ras = load_volume(scans["RAS"])
    for codes in ("PIR", "PSR"):
        stored = read_voxels(scans[codes])
        assert stored.shape != ras.shape  # stored in another axis order
        volume = load_volume(scans[codes])
        assert volume.shape == ras.shape and np.array_equal(volume, ras)
        assert volume.flags.f_contiguous  # the memory order nibabel hands out


def test_axial_last_volumes_are_used_exactly_as_stored(scans):
    """RAS, LAS, LPS: no reorientation (the reference protocol, and every phantom cohort:
    their features and cache keys stay those of the first release)."""
    for codes in ("RAS", "LAS", "LPS"):
        stored = read_voxels(scans[codes])
        volume = load_volume(scans[codes])
        assert np.array_equal(volume, stored) and volume.flags.f_contiguous
        assert image_sha256(scans[codes]) == sha256_file(scans[codes])  # plain sha256: old key
    assert not np.array_equal(load_volume(scans["LAS"]), load_volume(scans["RAS"]))


def test_features_of_a_reoriented_file_are_the_ras_ones_under_a_key_of_their_own(tmp_path,
                                                                                 scans):
    cache = FeatureCache(tmp_path / "cache")
    backbone = TinyBackbone(slices=6)
    paths = [scans["RAS"], scans["PIR"], scans["PSR"]]
    features, stats = extract_features(backbone, paths, cache, progress=False, workers=0)
    assert stats.computed == 3  # three files, three entries
    for codes in ("PIR", "PSR"):
        for name in ("cls", "patch_mean"):
            np.testing.assert_array_equal(features[scans[codes]][name],
                                          features[scans["RAS"]][name])
    # the key a reoriented file had before reorientation existed (its plain sha256) is not
    # the one it has now: features it had then (sagittal slices) are never served for it
    for codes in ("PIR", "PSR"):
        old = cache.key(backbone, sha256_file(scans[codes]))
        assert old != cache.key(backbone, image_sha256(scans[codes]))
        assert image_sha256(scans[codes]) != image_sha256(scans["RAS"])
    assert cache.key(backbone, image_sha256(scans["RAS"])) == \
        cache.key(backbone, sha256_file(scans["RAS"]))


def test_same_voxels_under_another_affine_do_not_share_features(tmp_path):
    """Identity is not the voxels alone: the same array stored with a sagittal affine is
    another volume (other slices), with another key and other features."""
    data = brain(3)
    axial = save(tmp_path / "a.nii.gz", data, ras_affine())
    sagittal_affine = stored_as(nib.Nifti1Image(data, ras_affine()), "PIR").affine
    sagittal = save(tmp_path / "b.nii.gz", data, sagittal_affine)
    assert np.array_equal(read_voxels(axial), read_voxels(sagittal))  # the voxel hash agrees
    cache = FeatureCache(tmp_path / "cache")
    features, stats = extract_features(TinyBackbone(slices=6), [axial, sagittal], cache,
                                       progress=False, workers=0)
    assert stats.computed == 2
    assert not np.array_equal(features[axial]["cls"], features[sagittal]["cls"])


@pytest.mark.parametrize("decode_workers", [0, 1])
def test_device_preprocessing_reorients_identically(tmp_path, scans, decode_workers):
    """PREPROCESS=device: the decode workers hand the reoriented volume; the device's input is
    bit for bit that of the workers path, and the features those of the RAS file."""
    contract = TinyBackbone(slices=6).contract
    paths = [scans["RAS"], scans["PIR"], scans["PSR"], scans["LPS"]]
    dataset = _Volumes([(p, p.name) for p in paths], contract, decode_only=True)
    decoded = [dataset[i] for i in range(len(dataset))]
    on_device = dict(_on_device(iter(decoded), contract, "cpu"))
    in_workers = {p.name: _Volumes([(p, p.name)], contract)[0][1] for p in paths}
    for path in paths:
        assert torch.equal(on_device[path.name], in_workers[path.name]), path.name
        expected = volume_to_input(load_volume(path), contract, contiguous=False)
        assert torch.equal(in_workers[path.name], expected)
    assert torch.equal(on_device["pir.nii.gz"], on_device["ras.nii.gz"])

    device = TinyBackbone(slices=6)
    device.preprocess_on, device.device = "device", "cpu"
    features, _ = extract_features(device, paths[:2], FeatureCache(tmp_path / "d"),
                                   progress=False, workers=decode_workers)
    workers, _ = extract_features(TinyBackbone(slices=6), paths[:2],
                                  FeatureCache(tmp_path / "w"), progress=False,
                                  workers=decode_workers)
    for path in paths[:2]:
        np.testing.assert_array_equal(features[path]["cls"], workers[path]["cls"])
    np.testing.assert_array_equal(features[scans["PIR"]]["cls"], features[scans["RAS"]]["cls"])


# ------------------------------------------------------------------------------ label maps


def labels_of(data: np.ndarray) -> np.ndarray:
    labels = np.zeros(SHAPE, np.int16)
    labels[3:9, 4:12, 2:8] = 2
    labels[4:7, 5:9, 3:6] = 1
    labels[5, 6, 4] = 4
    return labels


TARGET = SegmentationTarget()


def test_label_maps_get_the_images_transform_and_spacing(tmp_path, scans):
    ras_image = nib.load(str(scans["RAS"]))
    seg = nib.Nifti1Image(labels_of(brain()), ras_image.affine)
    ras_seg = save(tmp_path / "seg_ras.nii.gz", np.asarray(seg.dataobj), seg.affine)
    truth = read_regions("R", SegLabel(ras_seg, "brats2021"), {"t1": scans["RAS"]}, TARGET)
    assert truth.spacing == ZOOMS
    for codes in ("PIR", "PSR"):
        other = stored_as(seg, codes)
        path = save(tmp_path / f"seg_{codes}.nii.gz", np.asarray(other.dataobj), other.affine)
        regions = read_regions(codes, SegLabel(path, "brats2021"), {"t1": scans[codes]}, TARGET)
        assert regions.masks.shape == truth.masks.shape == (3, *SHAPE)
        assert np.array_equal(regions.masks, truth.masks)  # on the grid the tokens are on
        assert regions.spacing == ZOOMS  # HD95 in mm along the reoriented axes
        # the mask overlays the volume the backbone sees, voxel for voxel
        volume = load_volume(scans[codes])
        assert np.array_equal(volume[regions.masks[0]], load_volume(scans["RAS"])[truth.masks[0]])


def _subject(tmp_path: Path, name: str, labels: np.ndarray, seg_affine: np.ndarray
             ) -> tuple[str, SegLabel, dict[str, Path]]:
    image = save(tmp_path / name / "t1.nii.gz", brain(), ras_affine())
    seg = save(tmp_path / name / "seg.nii.gz", labels, seg_affine)
    return name, SegLabel(seg, "brats2021"), {"t1": image}


class _Sample:
    def __init__(self, sid, label, images):
        self.id, self.target, self.images = sid, label, tuple(images.items())


def test_the_run_refuses_naming_every_bad_label_map(tmp_path):
    flipped = ras_affine() @ np.diag([-1.0, 1.0, 1.0, 1.0])  # left-right flipped seg affine
    flipped[0, 3] += (SHAPE[0] - 1) * ZOOMS[0]
    good = labels_of(brain())
    samples = [_Sample(*_subject(tmp_path, "S0", good, ras_affine())),
               _Sample(*_subject(tmp_path, "S7", good, flipped)),
               _Sample(*_subject(tmp_path, "S10", np.where(good == 4, 3, good), ras_affine())),
               _Sample(*_subject(tmp_path, "S11", good, ras_affine()))]
    check_label_maps, validate_label_maps = (seg_labels.check_label_maps,
                                             seg_labels.validate_label_maps)
    problems = check_label_maps(samples, TARGET)
    assert sorted(problems) == ["S10", "S7"]
    assert "different affines" in problems["S7"]
    assert "label values [3]" in problems["S10"] and "brats2021" in problems["S10"]
    with pytest.raises(BenchError) as refused:
        validate_label_maps(samples, TARGET)
    text = str(refused.value)
    assert "2 label maps cannot be used" in text
    assert "subject S7:" in text and "subject S10:" in text
    assert problems["S10"] in text and problems["S7"] in text  # the data check's words
    # the per-subject read names the same problem
    with pytest.raises(BenchError, match="subject S7: .*different affines"):
        read_regions("S7", samples[1].target, dict(samples[1].images), TARGET)
    assert check_label_maps(samples, TARGET, voxels=False) == {"S7": problems["S7"]}
    validate_label_maps([samples[0], samples[3]], TARGET)  # good maps pass


# ------------------------------------------------------------------------------ gzip names


def test_gzip_is_recognised_in_an_upper_case_name(tmp_path, scans):
    upper = tmp_path / "IXI002-Guys-0482-T1.NII.GZ"
    shutil.copy(scans["RAS"], upper)
    assert size_problem(upper) is None
    assert np.array_equal(read_voxels(upper), read_voxels(scans["RAS"]))
    assert np.array_equal(load_volume(upper), load_volume(scans["RAS"]))
    cut = tmp_path / "CUT.NII.GZ"
    cut.write_bytes(upper.read_bytes()[:-64])
    assert "truncated" in (size_problem(cut) or "")


def test_maps_read_for_overlays_get_the_volumes_orientation(scans):
    from brainbench.preprocess import read_reoriented

    for codes in ("RAS", "PIR", "PSR", "LAS"):
        assert np.array_equal(read_reoriented(scans[codes]), load_volume(scans[codes]))
    assert np.array_equal(read_reoriented(scans["LAS"]), read_voxels(scans["LAS"]))


def test_a_collected_set_of_problems_is_refused_naming_each_subject():
    seg_labels.refuse_label_maps({})
    with pytest.raises(BenchError, match=r"^subject A: bad$"):
        seg_labels.refuse_label_maps({"A": "bad"})
    many = {f"S{i}": "bad" for i in range(12)}
    with pytest.raises(BenchError) as refused:
        seg_labels.refuse_label_maps(many)
    text = str(refused.value)
    assert text.startswith("12 label maps cannot be used")
    assert all(f"subject S{i}: bad" in text for i in range(10)) and "... and 2 more: S10, S11" in text
