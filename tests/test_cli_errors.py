"""Environment failures end in a message naming the file and exit code 2, never a traceback;
headers that promise more than the file holds are refused before anything is allocated.
Damaged stores and caches, crashes and concurrent writers: tests/test_fault_injection.py."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import pytest

import brainbench.cli as cli
from brainbench.cli import main
from brainbench.datacheck import length_problem
from brainbench.errors import BenchError
from brainbench.leakage import HashCache, voxel_hash
from brainbench.pipeline import manifest_path
from brainbench.preprocess import load_volume, read_voxels
from brainbench.results_io import export_results
from brainbench.taskspec import get_task
from tests.helpers import random_brain, write_nifti
from tests.test_stats import build_store


def _fails(capsys, argv, *needles):
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code == 2, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("clierr")
    store = build_store(root / "src" / "results.db", backbones=("strong",), tasks=("brain_age",))
    return export_results(store, root / "export")[0]


# --------------------------------------------------------------------------- store, folders


def test_results_folder_that_is_a_file(tmp_path, capsys, results_file):
    folder = tmp_path / "results"
    folder.write_text("a file")
    _fails(capsys, ["import", str(results_file), "--results", str(folder)], str(folder),
           "is a file, expected a folder")


def test_read_only_results_folder(tmp_path, capsys, results_file, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    # root ignores permission bits: report the folder as read-only the way os.access would
    real = cli.os.access
    monkeypatch.setattr(cli.os, "access",
                        lambda p, mode: False if Path(p) == folder else real(p, mode))
    _fails(capsys, ["import", str(results_file), "--results", str(folder)], str(folder),
           "is read-only")


def test_a_write_failing_deep_inside_names_the_file(tmp_path, capsys, results_file,
                                                    monkeypatch):
    import brainbench.results_io as results_io

    def denied(*_args, **_kw):
        raise PermissionError(13, "Permission denied", str(tmp_path / "export" / "x.json"))

    monkeypatch.setattr(results_io, "write_json_atomic", denied)
    db = f"sqlite:///{results_file.parent.parent / 'src' / 'results.db'}"
    _fails(capsys, ["export", "--db", db, "--out", str(tmp_path / "export")],
           str(tmp_path / "export" / "x.json"), "Permission denied")


def test_cache_folder_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "cache"
    afile.write_text("x")
    _fails(capsys, ["run", "--model", "random", "--cache", str(afile / "sub"),
                    "--results", str(tmp_path / "r")], str(afile), "is a file")
    ro = tmp_path / "ro-cache"
    ro.mkdir()
    real = cli.os.access
    monkeypatch.setattr(cli.os, "access",
                        lambda p, mode: False if Path(p) == ro else real(p, mode))
    _fails(capsys, ["run", "--model", "random", "--cache", str(ro),
                    "--results", str(tmp_path / "r")], str(ro), "read-only")


@pytest.mark.parametrize("seeds", ["99999999999999999999", "-1", "0,4294967296"])
def test_oversized_or_negative_seed(tmp_path, capsys, seeds):
    _fails(capsys, ["run", "--model", "random", "--seeds", seeds, "--results",
                    str(tmp_path / "r"), "--cache", str(tmp_path / "c")],
           f"SEEDS='{seeds}'", "out of range", "4294967295")


def test_malformed_split_manifest_on_import(tmp_path, capsys, results_file):
    manifest = manifest_path(tmp_path, "phantom:test", get_task("brain_age"))
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"train": [')
    _fails(capsys, ["import", str(results_file), "--results", str(tmp_path)], str(manifest),
           "unreadable")


# --------------------------------------------------------------------------- caches


def test_unwritable_hash_cache_names_the_file(tmp_path):
    brain = write_nifti(tmp_path / "a.nii.gz", random_brain(0))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    cache = HashCache(blocker / "hashes.json")
    with pytest.raises(BenchError, match="cannot write the voxel hash cache"):
        cache.hashes([brain])


# --------------------------------------------------------------------------- read bounds


def _huge_header(tmp_path: Path, name: str) -> Path:
    """A small real NIfTI whose header then claims 4000 x 4000 x 4000 int16 (128 GB)."""
    src = write_nifti(tmp_path / "src.nii", random_brain(1))
    raw = bytearray(src.read_bytes())
    raw[42:48] = struct.pack("<3h", 4000, 4000, 4000)  # dim[1..3]
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_header_promising_more_than_the_file_fails_fast(tmp_path, name):
    path = _huge_header(tmp_path, name)
    started = time.perf_counter()
    for reader in (read_voxels, load_volume, voxel_hash):
        with pytest.raises(BenchError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message and "128000000" in message  # the header's size
        assert str(path.stat().st_size) in message  # the bytes on disk
    assert time.perf_counter() - started < 5  # nothing was decompressed or allocated
    assert length_problem(path) is not None


def test_truncated_gzip_is_refused_before_reading(tmp_path):
    src = write_nifti(tmp_path / "ok.nii.gz", random_brain(2))
    assert read_voxels(src).shape == (24, 28, 20) and length_problem(src) is None
    cut = tmp_path / "cut.nii.gz"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2] + data[-8:])  # a stream whose trailer says more
    with pytest.raises(BenchError, match=f"cannot read image {cut}"):
        read_voxels(cut)


def test_results_into_a_closed_pipe_end_quietly_and_a_bad_split_is_named(tmp_path, capsys):
    import shutil
    import subprocess
    import sys

    fixture = Path(__file__).parent / "fixtures" / "store_v1" / "results.db"
    shutil.copy(fixture, tmp_path / "results.db")  # opening migrates: never the fixture itself
    # the reader (`true`) is gone before the table is written: the write meets a closed pipe
    command = f"{sys.executable} -m brainbench.cli results --results {tmp_path} | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                          text=True, timeout=300)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr

    assert main(["results", "--results", str(tmp_path), "--split", "by-scanner"]) == 2
    assert "SPLIT='by-scanner' (--split): expected one of site-held-out" in capsys.readouterr().err
