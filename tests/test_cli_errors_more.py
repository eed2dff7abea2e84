"""Bad command-line input: exit code 2, a message naming the option, file or value and what was
expected, no traceback, and nothing created (no results.db, no output folder, no phantom root).
The first part: tests/test_cli_errors.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.results_io import export_results
from tests.test_cli_errors import _fails
from tests.test_stats import build_store


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A results folder holding a store (two backbones, brain_age; fractions 0.1, 0.3, 1)
    and one exported results file."""
    root = tmp_path_factory.mktemp("cli_more")
    store = build_store(root / "results" / "results.db", backbones=("base", "strong"),
                        tasks=("brain_age",))
    exported = export_results(store, root / "export", ["strong"])[0]
    store.close()  # the write-ahead log folded in now, not at a later garbage collection
    return root / "results", exported


def _names(folder: Path) -> set[str]:
    """The folder's files, SQLite's transient -wal/-shm files aside: whether they exist
    depends on whether some connection is still open, not on what was written."""
    return {p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))}


def _untouched(folder: Path, before: set[str]) -> None:
    assert _names(folder) == before


# --------------------------------------------------------------------------- 1, 4: bootstrap


@pytest.mark.parametrize("command", ["table", "curves", "leaderboard"])
def test_negative_bootstrap_seed(stored, tmp_path, capsys, command):
    results, _ = stored
    before = _names(results)
    _fails(capsys, [command, "--results", str(results), "--out", str(tmp_path / "out"),
                    "--bootstrap-seed", "-1"], "--bootstrap-seed -1", "expected an integer >= 0")
    _fails(capsys, [command, "--results", str(results), "--out", str(tmp_path / "out"),
                    "--bootstrap", "0"], "BOOTSTRAP=0 (--bootstrap)", "expected an integer >= 1")
    assert not (tmp_path / "out").exists()
    _untouched(results, before)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_analyze_bootstrap_below_one_stops_before_anything(tmp_path, capsys, value):
    _fails(capsys, ["analyze", "--model", "random", "--profile", "tiny", "--bootstrap", value,
                    "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c")],
           f"BOOTSTRAP={value} (--bootstrap)", "expected an integer >= 1")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- 2: phantoms


@pytest.mark.parametrize("argv, needle", [
    (["--n", "-1"], "--n -1: expected an integer >= 1"),
    (["--n", "0"], "--n 0: expected an integer >= 1"),
    (["--workers", "-1"], "--workers -1: expected an integer >= 1"),
    (["--workers", "0"], "--workers 0: expected an integer >= 1"),
])
def test_phantoms_sizes_and_workers(tmp_path, capsys, argv, needle):
    _fails(capsys, ["phantoms", "--profile", "tiny", "--root", str(tmp_path / "ph"), *argv],
           needle)
    assert not (tmp_path / "ph").exists()


def test_phantoms_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "ph").write_text("a file")
    _fails(capsys, ["phantoms", "--profile", "tiny", "--n", "2", "--root", str(tmp_path / "ph")],
           f"phantom folder (--root / BRAINBENCH_CACHE) {tmp_path / 'ph'}", "is a file")


# --------------------------------------------------------------------------- 3: oracle


def test_oracle_root_that_is_no_cohort(tmp_path, capsys):
    _fails(capsys, ["oracle", str(tmp_path / "nope")], f"ROOT={tmp_path / 'nope'}",
           "no such folder", "_truth/<dataset>.csv")
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["oracle", str(tmp_path / "afile")], "is a file", "_truth/<dataset>.csv")
    _fails(capsys, ["oracle", str(tmp_path)], f"ROOT={tmp_path} is not a phantom cohort")
    truth = tmp_path / "c" / "_truth"
    truth.mkdir(parents=True)
    (truth / "ixi.csv").write_text("a,b\n1,2\n")
    _fails(capsys, ["oracle", str(truth)], "looks like the truth folder itself")


def test_oracle_truth_table_missing_columns(tmp_path, capsys):
    truth = tmp_path / "_truth"
    truth.mkdir()
    (truth / "ixi.csv").write_text("subject_id,has_image,age,gm_fraction\nIXI002,1,40,0.4\n")
    _fails(capsys, ["oracle", str(tmp_path)], str(truth / "ixi.csv"),
           "'ventricle_ml', 'wmh_ml' missing")
    (truth / "ixi.csv").write_text("")
    _fails(capsys, ["oracle", str(tmp_path)], f"cannot read phantom truth table {truth}")


def test_oracle_backbone_names_the_truth_file_and_column(tmp_path):
    from brainbench.backbone import create_backbone

    from .helpers import random_brain, write_nifti

    image = write_nifti(tmp_path / "IXI" / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz",
                        random_brain(0))
    (tmp_path / "_truth").mkdir()
    (tmp_path / "_truth" / "ixi.csv").write_text(
        "subject_id,has_image,age,gm_fraction,ventricle_ml,wmh_ml\nIXI002,1,40,0.4,20,1\n")
    with pytest.raises(BenchError) as info:  # every column is there but 'image'
        create_backbone("oracle").encode_file(image)
    assert str(tmp_path / "_truth" / "ixi.csv") in str(info.value)
    assert "'image' missing" in str(info.value)


@pytest.fixture(scope="module")
def tiny_ixi(tmp_path_factory):
    """The tiny profile's IXI phantom cohort (only IXI), in a cache folder of its own."""
    from brainbench.phantoms import generate_phantoms
    from brainbench.profiles import PROFILES

    tiny = PROFILES.get("tiny")
    cache = tmp_path_factory.mktemp("tiny_cache")
    generate_phantoms(cache / "phantoms" / tiny.phantom_tag(), tiny.phantom_people(["ixi"]),
                      seed=tiny.phantom_seed, datasets=["ixi"], workers=2, progress=False)
    return cache / "phantoms" / tiny.phantom_tag()


def _private_cache(tiny_ixi: Path, tmp_path: Path) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    shutil.copytree(tiny_ixi, cache / "phantoms" / tiny_ixi.name)
    return cache, cache / "phantoms" / tiny_ixi.name


@pytest.mark.slow
def test_run_oracle_with_a_bad_truth_table(tiny_ixi, tmp_path, capsys):
    import pandas as pd

    cache, cohort = _private_cache(tiny_ixi, tmp_path)
    table = cohort / "_truth" / "ixi.csv"
    pd.read_csv(table).drop(columns=["image", "wmh_ml"]).to_csv(table, index=False)
    _fails(capsys, ["run", "--model", "oracle", "--profile", "tiny", "--tasks", "brain_age",
                    "--cache", str(cache), "--results", str(tmp_path / "r"), "--no-progress"],
           str(table), "'image', 'wmh_ml' missing")


@pytest.mark.slow
def test_run_with_a_manifest_that_is_no_object_regenerates(tiny_ixi, tmp_path, capsys,
                                                           caplog):
    """A `_phantom.json` holding `[]` is a damaged record of a cache: like an unreadable one it
    counts as none, with a warning naming it, and the cohort is generated again, the same
    bytes."""
    cache, cohort = _private_cache(tiny_ixi, tmp_path)
    (cohort / "_phantom.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        code = main(["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
                     "--seeds", "0", "--cache", str(cache), "--results", str(tmp_path / "r"),
                     "--no-progress"])
    text = capsys.readouterr().err
    assert code == 0 and "Traceback" not in text, text
    assert f"phantom manifest {cohort / '_phantom.json'} is malformed" in caplog.text
    assert "expected a JSON object" in caplog.text
    assert json.loads((cohort / "_phantom.json").read_text())["sizes"] == {"ixi": 24}
    for path in (tiny_ixi / "IXI").rglob("*"):
        if path.is_file():
            assert (cohort / path.relative_to(tiny_ixi)).read_bytes() == path.read_bytes()


def test_manifest_of_the_wrong_shape_is_no_record(tmp_path, caplog):
    from brainbench.phantoms.generate import _read_manifest
    from brainbench.phantoms.truth_maps import scan_spec

    for text, needle in [("[]", "expected a JSON object"), ('{"sizes": []}', "'sizes'"),
                         ('{"sizes": {"ixi": "x"}}', "'sizes'"), ('{"seed": "0"}', "'seed'"),
                         ('{"datasets": {"ixi": 1}}', "'datasets'"), ("{", "unreadable")]:
        (tmp_path / "_phantom.json").write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert _read_manifest(tmp_path) == {}
        assert needle in caplog.text and str(tmp_path / "_phantom.json") in caplog.text
        assert scan_spec(tmp_path / "IXI" / "IXI-T1" / "IXI002-Guys-0828-T1.nii.gz") is None
    (tmp_path / "_phantom.json").unlink()
    caplog.clear()
    assert _read_manifest(tmp_path) == {} and not caplog.text  # none yet: nothing to say


# --------------------------------------------------------------------------- 5: fractions


@pytest.mark.parametrize("value, needle", [
    ("2", "FRACTION=2.0 is outside (0, 1]"),
    ("0", "FRACTION=0.0 is outside (0, 1]"),
    ("0.5,1", "the leaderboard has one headline fraction"),
    ("0.5", "no results at fraction 0.5"),
])
def test_leaderboard_fraction(stored, tmp_path, capsys, value, needle):
    results, _ = stored
    _fails(capsys, ["leaderboard", "--results", str(results), "--out", str(tmp_path / "site"),
                    "--bootstrap", "20", "--fraction", value], needle)
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("command", ["table", "curves", "results"])
def test_fraction_out_of_range_is_named_first(stored, tmp_path, capsys, command):
    results, _ = stored
    out = [] if command == "results" else ["--out", str(tmp_path / "out")]
    _fails(capsys, [command, "--results", str(results), *out, "--fraction", "0"],
           "FRACTION=0.0 is outside (0, 1]")
    _fails(capsys, [command, "--results", str(results), *out, "--fraction", "0.1,1.5"],
           "FRACTION=1.5 is outside (0, 1]")
    _fails(capsys, [command, "--results", str(results), *out, "--fraction", ""],
           "FRACTION='' (--fraction): no fraction named")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 6: --format


def test_results_unknown_format(stored, capsys):
    results, _ = stored
    text = _fails(capsys, ["results", "--results", str(results), "--format", "nope"],
                  "FORMAT='nope' (--format)", "github", "latex")
    assert "brain_age" not in text  # no table printed after all
    assert main(["results", "--results", str(results), "--format", "github"]) == 0


# --------------------------------------------------------------------------- 7: empty lists


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", ","], "TASKS=',' (--tasks): no task named; expected a comma list such as "
                       "brain_age,idh_status"),
    (["--tasks", ""], "TASKS='' (--tasks): no task named"),
    (["--seeds", ","], "SEEDS=',' (--seeds): no seed named"),
    (["--fraction", ""], "FRACTION='' (--fraction): no fraction named"),
    (["--fraction", " , "], "FRACTION=' , ' (--fraction): no fraction named"),
    (["--dataset", ","], "DATASET=',' (--dataset): no dataset named"),
])
def test_run_explicitly_empty_list(tmp_path, capsys, argv, needle):
    _fails(capsys, ["run", "--model", "random", "--profile", "tiny", *argv,
                    "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c")], needle)
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_stats_and_export_explicitly_empty_lists(stored, tmp_path, capsys):
    results, _ = stored
    for command in ("table", "export", "results"):
        out = [] if command == "results" else ["--out", str(tmp_path / "out")]
        _fails(capsys, [command, "--results", str(results), *out, "--models", ","],
               "MODELS=',' (--models): no backbone named")
        _fails(capsys, [command, "--results", str(results), *out, "--tasks", ""],
               "TASKS='' (--tasks): no task named")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 8: --data


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_import_data_that_is_no_folder(stored, tmp_path, capsys, kind):
    _, results_file = stored
    data = tmp_path / "data"
    if kind == "file":
        data.write_text("x")
    _fails(capsys, ["import", str(results_file), "--data", str(data),
                    "--results", str(tmp_path / "r")], f"DATA={data} is not a folder (--data)")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _fails(capsys, ["import-bundle", str(bundle), "--data", str(data),
                    "--results", str(tmp_path / "r"), "--out", str(tmp_path / "subs")],
           f"DATA={data} is not a folder (--data)")
    assert not (tmp_path / "r").exists() and not (tmp_path / "subs").exists()


def test_import_cache_that_is_a_file(stored, tmp_path, capsys):
    _, results_file = stored
    (tmp_path / "cache").write_text("x")
    for argv in (["import", str(results_file)], ["import-bundle", str(tmp_path)]):
        _fails(capsys, [*argv, "--cache", str(tmp_path / "cache"),
                        "--results", str(tmp_path / "r")],
               f"cache folder (--cache / BRAINBENCH_CACHE) {tmp_path / 'cache'}", "is a file")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- 9: --out


def test_submit_out_that_is_a_file_stops_before_the_run(tmp_path, capsys):
    (tmp_path / "subs").write_text("a file")
    _fails(capsys, ["submit", "random", "--profile", "tiny", "--tasks", "brain_age",
                    "--out", str(tmp_path / "subs"), "--results", str(tmp_path / "r"),
                    "--cache", str(tmp_path / "c")],
           f"bundle folder (--out / BRAINBENCH_SUBMISSIONS) {tmp_path / 'subs'}", "is a file")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_import_bundle_out_that_is_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "subs").write_text("a file")
    monkeypatch.setenv("BRAINBENCH_SUBMISSIONS", str(tmp_path / "subs"))
    _fails(capsys, ["import-bundle", str(tmp_path), "--results", str(tmp_path / "r")],
           f"bundle folder (--out / BRAINBENCH_SUBMISSIONS) {tmp_path / 'subs'}", "is a file")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["table", "curves", "leaderboard", "export"])
def test_stats_out_that_is_a_file(stored, tmp_path, capsys, command):
    results, _ = stored
    (tmp_path / "out").write_text("a file")
    _fails(capsys, [command, "--results", str(results), "--out", str(tmp_path / "out")],
           f"output folder (--out{' / BRAINBENCH_SITE' if command == 'leaderboard' else ''}) "
           f"{tmp_path / 'out'}", "is a file")


# --------------------------------------------------------------------------- 10: read commands


@pytest.mark.parametrize("command", ["results", "table", "curves", "leaderboard", "export"])
def test_results_folder_that_is_a_file_or_holds_no_store(tmp_path, capsys, monkeypatch,
                                                         command):
    afile = tmp_path / "results"
    afile.write_text("a file")
    monkeypatch.setenv("BRAINBENCH_RESULTS", str(afile))
    _fails(capsys, [command], f"results folder (--results / BRAINBENCH_RESULTS) {afile}",
           "is a file, expected a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, [command, "--results", str(empty)], f"{empty}: no results store there",
           "results.db is missing")
    assert list(empty.iterdir()) == []  # no empty results.db, no output folder
    _fails(capsys, [command, "--results", str(tmp_path / "absent")], "no results store there")
    assert not (tmp_path / "absent").exists()
