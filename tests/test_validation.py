"""One image validation for `data check` and `run`: what the check rejects the run refuses,
naming the file, before any forward pass; voxel statistics ride on the voxel-hash read and are
cached beside the hash."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainbench.datacheck import check_task
from brainbench.errors import BenchError
from brainbench.leakage import HashCache
from brainbench.pipeline import load_samples, prepare_task
from brainbench.preprocess import load_volume, voxel_stats
from brainbench.profiles import PROFILES
from brainbench.runconfig import RunConfig, RunReport
from brainbench.runner import run_task
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import get_task
from brainbench.validation import validate_images, voxel_problems

from .helpers import TinyBackbone, random_brain
from .phantom_cohorts import copy_dataset, phantoms  # noqa: F401  (fixture)

SOURCE = "real:test"
TASK = get_task("brain_age")  # IXI


def save(path: Path, data: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])
                             if affine is None else affine), str(path))


def save_with_sform(path: Path, data: np.ndarray, sform: np.ndarray) -> None:
    """A file whose (only) orientation is ``sform``, as some converters write a broken one."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header.set_zooms((2.0, 2.0, 2.0))
    header.set_sform(sform, code=2)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(data.astype(np.float32), None, header=header), str(path))


def brain() -> np.ndarray:
    return random_brain(7).astype(np.float32)


def with_inf(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data.flat[[3, 50, 400]] = [np.inf, -np.inf, np.nan]
    return data


DAMAGE = {  # name -> (write the file, what the message says)
    "zero affine": (lambda p: save_with_sform(p, brain(), np.zeros((4, 4))),
                    "degenerate affine"),
    "singular affine": (lambda p: save_with_sform(p, brain(), np.diag([2.0, 0.0, 2.0, 1.0])),
                        "degenerate affine"),
    "all NaN": (lambda p: save(p, np.full((24, 28, 20), np.nan)), "no finite voxels"),
    "all zero": (lambda p: save(p, np.zeros((24, 28, 20))), "empty volume"),
    "constant": (lambda p: save(p, np.full((24, 28, 20), 7.0)), "constant volume"),
}


@pytest.fixture()
def cohort(phantoms, tmp_path):  # noqa: F811
    """A private IXI copy and the image file of its third sample (to damage)."""
    copy_dataset(phantoms, "ixi", tmp_path / "data")
    root = tmp_path / "data"
    victim = Path(load_samples(TASK, root).samples[2].images[0][1])
    return root, victim


def run_once(root: Path, tmp_path: Path, backbone: TinyBackbone) -> RunReport:
    config = RunConfig(model="tiny", fractions=(1.0,), seeds=(0,), profile=PROFILES.get("tiny"),
                       cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                       progress=False)
    store = ResultStore(default_url(tmp_path / "results"))
    report = RunReport("tiny", "pretrained", "test", SOURCE, store.url)
    run_task(TASK, backbone, root, SOURCE, store, config, report)
    return report


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_check_and_run_refuse_the_same_file_before_any_forward_pass(cohort, tmp_path, damage):
    root, victim = cohort
    write, needle = DAMAGE[damage]
    victim.unlink()
    write(victim)
    report = check_task(TASK, root, data_source=SOURCE, hash_cache=HashCache(None))
    assert not report.ok
    hits = [f for f in report.errors if str(victim) in f.where]
    assert hits and needle in hits[0].message, report.render()
    assert f"{victim}" in report.render()

    backbone = TinyBackbone()
    with pytest.raises(BenchError) as info:
        run_once(root, tmp_path, backbone)
    message = str(info.value)
    assert str(victim) in message and needle in message and "nothing was computed" in message
    assert backbone.calls == 0  # refused before any forward pass
    assert not (tmp_path / "results" / "splits").exists() or not any(
        (tmp_path / "results" / "splits").rglob("*.json"))  # no manifest written either


def test_a_few_inf_voxels_are_a_counted_warning_in_check_and_run(cohort, tmp_path, caplog):
    root, victim = cohort
    data = np.asarray(nib.load(str(victim)).dataobj, dtype=np.float32)
    victim.unlink()
    save(victim, with_inf(data))
    report = check_task(TASK, root, data_source=SOURCE, hash_cache=HashCache(None))
    assert report.ok, report.render()
    warned = [f for f in report.findings if f.level == "warning" and str(victim) in f.where]
    assert warned and f"3 of {data.size} voxels" in warned[0].message
    assert "NaN/inf" in report.render()
    with caplog.at_level(logging.WARNING, logger="brainbench"):
        prepared = prepare_task(TASK, root, SOURCE, hash_cache=HashCache(tmp_path / "h.json"))
    assert any(str(victim) in r.getMessage() and f"3 of {data.size} voxels" in r.getMessage()
               for r in caplog.records)
    assert len(prepared.samples) == report.n_samples  # the file is used, its 3 voxels zeroed
    assert np.isfinite(load_volume(victim)).all()


def test_the_check_lists_every_bad_file_and_the_run_names_them_all(cohort, tmp_path):
    root, victim = cohort
    others = [Path(s.images[0][1]) for s in load_samples(TASK, root).samples[3:5]]
    for path in [victim, *others]:
        path.unlink()
        save(path, np.zeros((24, 28, 20)))
    report = check_task(TASK, root, data_source=SOURCE, hash_cache=HashCache(None))
    assert {p for p in [victim, *others] if any(str(p) in f.where for f in report.errors)} \
        == {victim, *others}
    with pytest.raises(BenchError, match="3 image file") as info:
        prepare_task(TASK, root, SOURCE, hash_cache=HashCache(None))
    assert all(str(p) in str(info.value) for p in [victim, *others])


def test_statistics_are_cached_beside_the_hash_and_old_entries_are_read_again(cohort, tmp_path):
    root, victim = cohort
    victim.unlink()
    save(victim, np.full((24, 28, 20), 3.0))
    loaded = load_samples(TASK, root)
    cache_file = tmp_path / "hashes.json"
    first = HashCache(cache_file)
    with pytest.raises(BenchError, match="constant volume"):
        validate_images(loaded, first)
    assert first.computed == len(loaded.image_paths())
    stored = json.loads(cache_file.read_text())["entries"]
    assert all(set(v) == {"hash", "stats"} for v in stored.values())
    # warm: nothing is read, the same refusal
    warm = HashCache(cache_file)
    with pytest.raises(BenchError, match="constant volume"):
        validate_images(loaded, warm)
    assert warm.computed == 0
    # an older cache (hash only) keeps its hashes but is read once more for the statistics
    cache_file.write_text(json.dumps({"schema": 2, "entries": {k: v["hash"]
                                                               for k, v in stored.items()}}))
    old = HashCache(cache_file)
    with pytest.raises(BenchError, match="constant volume"):
        validate_images(loaded, old)
    assert old.computed == len(loaded.image_paths())
    assert json.loads(cache_file.read_text())["entries"] == stored  # same hashes, stats added
    # stats that are not statistics are read again, not trusted
    forged = {k: {"hash": v["hash"], "stats": {"n": -1}} for k, v in stored.items()}
    cache_file.write_text(json.dumps({"schema": 2, "entries": forged}))
    again = HashCache(cache_file)
    with pytest.raises(BenchError, match="constant volume"):
        validate_images(loaded, again)
    assert again.computed == len(loaded.image_paths())


def test_headers_that_passed_are_cached_so_a_warm_rerun_opens_none(cohort, tmp_path,
                                                                    monkeypatch):
    import brainbench.validation as validation

    root, victim = cohort
    loaded = load_samples(TASK, root)
    files = set(map(Path, loaded.image_paths()))
    cache_file = tmp_path / "hashes.json"
    validate_images(loaded, HashCache(cache_file))
    assert len(json.loads(cache_file.read_text())["headers"]) == len(files)

    opened: list[Path] = []
    real_read = validation.read_header
    monkeypatch.setattr(validation, "read_header",
                        lambda path: opened.append(Path(path)) or real_read(path))
    warm = HashCache(cache_file)
    hashes = validate_images(loaded, warm)
    assert opened == [] and warm.computed == 0 and set(hashes) == files

    # a changed file is a new version: its header is read again and judged (and, failing,
    # not cached)
    victim.unlink()
    save_with_sform(victim, brain(), np.zeros((4, 4)))
    with pytest.raises(BenchError, match="degenerate affine"):
        validate_images(loaded, HashCache(cache_file))
    assert opened == [victim] and HashCache(cache_file).header(victim) is None

    # passing again, it is cached; the rules run on cached facts every time, and an entry of
    # the wrong form is read again
    save(victim, brain())
    opened.clear()
    validate_images(loaded, HashCache(cache_file))
    assert opened == [victim] and HashCache(cache_file).header(victim) is not None
    stored = json.loads(cache_file.read_text())
    key = next(k for k, v in stored["headers"].items()
               if k.startswith(f"{victim.resolve()}|") and v == HashCache(cache_file).header(victim))
    stored["headers"][key] = {**stored["headers"][key], "shape": [4, 4, 4]}
    cache_file.write_text(json.dumps(stored))
    with pytest.raises(BenchError, match="implausible shape"):
        validate_images(loaded, HashCache(cache_file))
    stored["headers"][key] = {"shape": "not a shape"}
    cache_file.write_text(json.dumps(stored))
    opened.clear()
    validate_images(loaded, HashCache(cache_file))
    assert opened == [victim]


def test_a_cache_that_cannot_be_written_only_costs_the_header_reads(cohort, tmp_path,
                                                                   monkeypatch, caplog):
    import brainbench.splits as splits

    root, _ = cohort
    loaded = load_samples(TASK, root)
    cache_file = tmp_path / "hashes.json"
    validate_images(loaded, HashCache(cache_file))
    stored = json.loads(cache_file.read_text())
    cache_file.write_text(json.dumps({**stored, "headers": {}}))  # hashes cached, no headers

    def read_only(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(splits, "write_json_atomic", read_only)
    with caplog.at_level(logging.WARNING, logger="brainbench"):
        hashes = validate_images(loaded, HashCache(cache_file))
    assert set(hashes) == set(map(Path, loaded.image_paths()))
    assert any("image headers will be read again" in r.getMessage() for r in caplog.records)
    assert json.loads(cache_file.read_text())["headers"] == {}


def test_voxel_statistics_and_their_verdicts():
    data = brain()
    stats = voxel_stats(data)
    assert stats["n"] == data.size and stats["nonfinite"] == 0
    assert stats["nonzero"] == int(np.count_nonzero(data)) and stats["min"] < stats["max"]
    assert voxel_problems(stats) == []
    assert voxel_problems(voxel_stats(with_inf(data))) == [
        ("warning", f"3 of {data.size} voxels ({100 * 3 / data.size:.2g}%) are NaN/inf; "
                    "they are treated as background (0)")]
    mask = (data != 0).astype(np.float32)  # one value in every nonzero voxel: nothing to scale
    assert voxel_problems(voxel_stats(mask))[0][1].startswith("constant volume")
    nan_zero = np.where(data != 0, np.nan, 0).astype(np.float32)
    assert [lv for lv, _ in voxel_problems(voxel_stats(nan_zero))] == ["warning", "error"]
