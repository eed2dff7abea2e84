"""Datasets are recognised by their files, whatever their folders are called (issue #14 item 7)."""

from __future__ import annotations

import shutil

import pytest

from brainbench.cli import main
from brainbench.datasets import ADAPTERS, load_cohort
from brainbench.datasets.locations import data_locations, recognise
from brainbench.errors import BenchError
from brainbench.phantoms.layouts import FOLDERS

from .phantom_cohorts import phantoms  # noqa: F401  (fixture)

BRATS_DOWNLOAD = "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BRAINBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("BRAINBENCH_CONFIG", raising=False)
    for name in ADAPTERS.names():
        monkeypatch.delenv("BRAINBENCH_DATA_" + name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_as(phantoms, dataset, dest):  # noqa: F811
    """A copy of one phantom dataset at ``dest`` (a folder name of our choosing)."""
    shutil.copytree(phantoms / FOLDERS[dataset], dest)
    return dest


def data_check(task, data, *extra):
    return main(["data-check", "--task", task, "--data", str(data), "--headers-only", "--no-progress",
                 *extra])


def test_brats_download_found_as_its_own_folder_and_from_its_parent(phantoms, env, capsys):  # noqa: F811
    folder = copy_as(phantoms, "brats2021", env / "downloads" / BRATS_DOWNLOAD)
    assert data_check("sequence_cls", folder) == 0
    assert "result: OK" in capsys.readouterr().out
    assert data_check("sequence_cls", folder.parent) == 0
    assert "result: OK" in capsys.readouterr().out
    # two levels down: downloads/ holding the extracted archive's folder holding the cases
    assert data_locations(env, env={}, config_file=None).path_for("brats2021") == folder


def test_two_datasets_side_by_side_under_odd_names(phantoms, env, capsys):  # noqa: F811
    brats = copy_as(phantoms, "brats2021", env / "data" / "brats_training")
    ixi = copy_as(phantoms, "ixi", env / "data" / "IXI-download-2023")
    loc = data_locations(env / "data", env={}, config_file=None)
    assert loc.present("brats2021") and loc.present("ixi") and not loc.present("adni")
    assert loc.path_for("brats2021") == brats and loc.path_for("ixi") == ixi
    assert data_check("sequence_cls", env / "data") == 0
    assert data_check("brain_age", env / "data") == 0
    assert capsys.readouterr().out.count("result: OK") == 2


def test_every_phantom_dataset_recognised_under_another_name(phantoms, tmp_path):  # noqa: F811
    for name in ADAPTERS.names():
        copy_as(phantoms, name, tmp_path / f"download_{name}")
    found, _ = recognise(tmp_path)
    assert found == {name: tmp_path / f"download_{name}" for name in ADAPTERS.names()}
    for name, folder in found.items():  # and the adapter reads the folder it was found in
        assert load_cohort(name, folder).subjects


def test_named_layout_needs_no_search(phantoms):  # noqa: F811
    loc = data_locations(phantoms, env={}, config_file=None)
    assert loc.searched == () and loc.found == {}
    assert all(loc.present(n) and loc.path_for(n) == phantoms for n in ADAPTERS.names())


def test_unrelated_folder_names_what_and_where(env, capsys):
    unrelated = env / "holiday_photos"
    (unrelated / "2021" / "summer").mkdir(parents=True)
    (unrelated / "notes.txt").write_text("nothing to see")
    assert data_check("sequence_cls", unrelated) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"no dataset recognised in {unrelated}" in err
    assert str(unrelated / "2021") in err and str(unrelated / "2021" / "summer") in err  # where
    assert "BraTS2021_?????/BraTS2021_?????_t1.nii*" in err and "ADNIMERGE.csv" in err  # what
    with pytest.raises(BenchError, match="Phenotypic_V1_0b.csv"):
        data_locations(unrelated, env={}, config_file=None).present("abide1")


def test_search_depth_is_bounded(phantoms, tmp_path):  # noqa: F811
    copy_as(phantoms, "ixi", tmp_path / "a" / "b" / "c" / "ixi")
    loc = data_locations(tmp_path, env={}, config_file=None)
    assert loc.found == {}
    assert all(len(p.relative_to(tmp_path).parts) <= 2 for p in loc.searched)
    with pytest.raises(BenchError, match=r"searched 3 folder\(s\)"):
        loc.present("ixi")


def test_label_file_only_is_recognised_and_the_adapter_says_what_is_missing(tmp_path):
    folder = tmp_path / "adni_export"
    folder.mkdir()
    (folder / "ADNIMERGE.csv").write_text("RID,PTID,VISCODE\n")
    loc = data_locations(tmp_path, env={}, config_file=None)
    assert loc.path_for("adni") == folder
    with pytest.raises(BenchError) as exc:
        load_cohort("adni", loc.path_for("adni"))
    assert "ADNIMERGE.csv" in str(exc.value) or "images" in str(exc.value)


def test_a_dataset_missing_beside_others_says_where_the_run_looked(phantoms, env, capsys):  # noqa: F811
    root = env / "downloads"
    copy_as(phantoms, "ixi", root / "my_ixi_copy")
    code = main(["run", "--tasks", "idh_status", "--data", str(root), "--profile", "tiny",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "ucsf_pdgm (expected folder UCSF-PDGM/)" in err
    assert str(root / "my_ixi_copy") in err and "UCSF-PDGM-metadata_v5.csv" in err
    assert data_check("idh_status", root) == 2
    out = capsys.readouterr().out
    assert "not checked, no data: idh_status" in out and "UCSF-PDGM-metadata_v5.csv" in out
