"""Reading .nii.gz volumes through ISA-L (brainbench.preprocess._inflated_voxels): the same
voxels as nibabel's own reader, bit for bit; a damaged stream refused where nibabel would
read garbage; a missing file named as missing."""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from brainbench import preprocess
from brainbench.errors import BenchError
from brainbench.preprocess import load_volume, read_voxels

pytest.importorskip("isal")


def _nibabel_voxels(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _volume(rng, dtype) -> np.ndarray:
    data = rng.normal(300, 120, size=(23, 19, 11))
    data[:4] = 0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    return data.astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("nifti", [nib.Nifti1Image, nib.Nifti2Image])
def test_isal_reads_the_voxels_nibabel_reads(tmp_path, dtype, scaled, nifti):
    rng = np.random.default_rng(7)
    img = nifti(_volume(rng, dtype), np.diag([1.2, 1.0, 3.0, 1.0]))
    if scaled:
        img.header.set_slope_inter(0.37, -12.5)
    path = tmp_path / "scan.nii.gz"
    nib.save(img, str(path))
    ours = read_voxels(path)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, _nibabel_voxels(path))
    assert ours.flags.f_contiguous  # the memory order later steps expect (see reorient)


def test_the_isal_path_is_the_one_taken(tmp_path, monkeypatch):
    """Without ISA-L the nibabel reader runs: the two give identical volumes, and with ISA-L
    installed nibabel's array proxy of the file on disk is never read."""
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(_volume(np.random.default_rng(1), np.int16), np.eye(4)), str(path))
    read = []
    original = nib.arrayproxy.ArrayProxy.__array__

    def spy(self, *args, **kwargs):
        read.append(str(getattr(self, "file_like", "")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", spy)
    with_isal = load_volume(path)
    assert read and all(name != str(path) for name in read)  # inflated in memory
    monkeypatch.setattr(preprocess, "_igzip", None)
    read.clear()
    without = load_volume(path)
    assert read == [str(path)]
    assert np.array_equal(with_isal, without)


def test_a_damaged_stream_is_refused_where_nibabel_would_read_garbage(tmp_path):
    """A flipped byte inside the deflate data (a damaged download) keeps every length right:
    nibabel reads exactly the bytes the header asks for and never reaches the CRC, so it
    hands back wrong voxels without a word; the whole-stream inflate checks the CRC."""
    img = nib.Nifti1Image(_volume(np.random.default_rng(4), np.int16), np.eye(4))
    raw = bytearray(gzip.compress(img.to_bytes(), mtime=0))
    raw[len(raw) // 2] ^= 0x55
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(bytes(raw))
    try:
        unchecked = _nibabel_voxels(path)
    except (zlib.error, OSError, EOFError):
        unchecked = None  # this zlib noticed the damage itself
    assert unchecked is None or not np.array_equal(unchecked, np.asarray(img.dataobj))
    with pytest.raises(BenchError, match=r"broken\.nii\.gz.*damaged.*CRC"):
        read_voxels(path)
    with pytest.raises(BenchError, match=r"broken\.nii\.gz"):
        load_volume(path)


def test_a_missing_file_is_named_as_missing(tmp_path):
    path = tmp_path / "gone.nii.gz"
    nib.save(nib.Nifti1Image(_volume(np.random.default_rng(5), np.int16), np.eye(4)), str(path))
    img = nib.load(str(path))
    path.unlink()
    with pytest.raises(FileNotFoundError):
        preprocess._inflated_voxels(path, img)
    with pytest.raises(BenchError, match="image file not found"):
        read_voxels(path)
