"""Imported results files are verified, never trusted: each forgery is refused naming the
field that did not verify, nothing is written, and the honest round trip records what an
import could not check (shown as UNVERIFIED on the leaderboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.site import build_site
from brainbench.leaderboard.tables import stats_table
from brainbench.pipeline import manifest_path
from brainbench.results_io import (VERIFICATION_KEY, export_results, import_results,
                                   unverified_fields)
from brainbench.splits import Split
from brainbench.store import Cell, ResultStore
from brainbench.taskspec import get_task
from tests.test_stats import build_store

TASKS = ("idh_status", "brain_age", "survival_cox")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgery")
    store = build_store(root / "source" / "results.db", backbones=("strong", "rand"), tasks=TASKS)
    paths = export_results(store, root / "export")
    return store, {p.name: p for p in paths}


def _target(tmp_path: Path, name: str = "target") -> ResultStore:
    return ResultStore(f"sqlite:///{tmp_path / name / 'results.db'}")


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(data))  # json writes inf as Infinity, as a hand edit would
    return path


def _refused(tmp_path, source: Path, change, match: str, store: ResultStore | None = None):
    data = json.loads(source.read_text())
    change(data)
    target = store or _target(tmp_path)
    before = len(target.frame())
    with pytest.raises(BenchError, match=match) as info:
        import_results(target, _write(tmp_path, data))
    assert len(target.frame()) == before  # nothing half-imported
    return str(info.value)


def _recompute_id(cell_item: dict) -> None:
    cell = dict(cell_item["cell"])
    cell["fraction"] = float(cell["fraction"])
    cell_item["cell_id"] = Cell(**cell).cell_id


def test_weights_status_flip_is_refused(exported, tmp_path):
    _, files = exported
    source = files["rand__brain_age.json"]

    def flip(data):
        for item in data["cells"]:
            item["cell"]["weights_status"] = "pretrained"

    message = _refused(tmp_path, source, flip, r"field 'weights_status' does not verify")
    assert "cells[0]" in message and "random-init" in message

    # a thorough forger also rewrites the weights id and the cell id: the sha256 the store
    # already records as random-init gives it away
    target = _target(tmp_path, "known")
    import_results(target, source)

    def flip_all(data):
        for item in data["cells"]:
            item["cell"]["weights_status"] = "pretrained"
            item["cell"]["weights_id"] = item["cell"]["weights_id"].replace("random-init",
                                                                            "pretrained")
            _recompute_id(item)

    _refused(tmp_path, source, flip_all, r"field 'weights_status' does not verify.*recorded "
                                         r"as random-init", store=target)

    def one_flipped(data):  # the file itself says the sha is random-init elsewhere
        flip_all({"cells": data["cells"][:1]})

    _refused(tmp_path, source, one_flipped, "recorded as random-init")


def test_random_by_definition_backbone_cannot_claim_pretrained(exported, tmp_path):
    _, files = exported

    def rename(data):
        data["backbone"] = "random"
        for item in data["cells"]:
            item["cell"].update(backbone="random", weights_status="pretrained",
                                weights_id=item["cell"]["weights_id"].replace("random-init",
                                                                              "pretrained"))
            _recompute_id(item)

    _refused(tmp_path, files["rand__brain_age.json"], rename,
             "backbone 'random' is random-init by definition")


@pytest.mark.parametrize("backbone", ["random2d", "random3d"])
def test_every_random_by_definition_backbone_cannot_claim_pretrained(exported, tmp_path,
                                                                     backbone):
    _, files = exported

    def rename(data):
        data["backbone"] = backbone
        for item in data["cells"]:
            item["cell"].update(backbone=backbone, weights_status="pretrained",
                                weights_id=item["cell"]["weights_id"].replace("random-init",
                                                                              "pretrained"))
            _recompute_id(item)

    _refused(tmp_path, files["rand__brain_age.json"], rename,
             f"backbone '{backbone}' is random-init by definition")


def _scored(data: dict, shift: float) -> None:
    """Move every regression prediction by `shift` and rewrite the metrics to match them: a
    forgery no metric check can see (the predictions themselves are the claim)."""
    from brainbench.kinds import get_kind

    kind = get_kind("regression")
    for item in data["cells"]:
        rows = sorted(item["predictions"], key=lambda p: p["sample_id"])
        for p in item["predictions"]:
            p["prediction"] = p["target"] + shift
        item["metrics"] = {k: float(v) for k, v in kind.test_metrics(
            kind.target_array([p["target"] for p in rows]),
            np.asarray([p["target"] + shift for p in rows], dtype=float)).items()}


def test_an_import_never_replaces_a_stored_outcome(exported, tmp_path):
    """A store's own cells outrank copies: re-importing its own export keeps them as they are
    (no import record is added), and a file with the same cells but other predictions (with
    metrics to match) is refused naming the conflict, the store unchanged."""
    import sqlite3

    source, files = exported
    copy = tmp_path / "own" / "results.db"
    copy.parent.mkdir()
    with sqlite3.connect(source.url.removeprefix("sqlite:///")) as a, sqlite3.connect(copy) as b:
        a.backup(b)  # the write-ahead log too
    store = ResultStore(f"sqlite:///{copy}")
    before = store.frame().sort_values(["cell_id", "metric"]).reset_index(drop=True)
    report = import_results(store, files["rand__brain_age.json"])
    assert report.kept == report.cells > 0 and report.replaced == 0
    after = store.frame().sort_values(["cell_id", "metric"]).reset_index(drop=True)
    assert after.equals(before)  # hyperparameters carry no import record: still computed here

    data = json.loads(files["rand__brain_age.json"].read_text())
    _scored(data, 0.1)
    message = _refused(tmp_path, files["rand__brain_age.json"], lambda d: d.update(data),
                       r"is already in .* \(computed in this store, .*\) with other metrics, "
                       r"predictions: an import never replaces a stored outcome", store=store)
    assert "rand, brain_age" in message
    assert store.frame().sort_values(["cell_id", "metric"]).reset_index(drop=True).equals(before)

    # into a store that holds the cells from an earlier import: the same rule
    target = _target(tmp_path, "imported")
    import_results(target, files["rand__brain_age.json"])
    assert import_results(target, files["rand__brain_age.json"]).replaced == report.cells
    _refused(tmp_path, files["rand__brain_age.json"], lambda d: d.update(data),
             r"\(imported, .*\) with other metrics, predictions", store=target)


def test_empty_predictions_are_refused_naming_the_cell(exported, tmp_path):
    _, files = exported
    message = _refused(tmp_path, files["strong__brain_age.json"],
                       lambda d: d["cells"][2].update(predictions=[]), "has no predictions")
    assert "cells[2]" in message and "strong, brain_age" in message


@pytest.mark.parametrize("value, match", [
    (float("inf"), r"field 'metrics.mae' is inf; expected a finite number"),
    (float("-inf"), r"field 'metrics.mae' is -inf"),
    ("Infinity", r"field metrics.mae must be a finite number or null, got 'Infinity'"),
    ("NaN", r"must be a finite number or null, got 'NaN'"),
])
def test_non_finite_metrics_are_refused(exported, tmp_path, value, match):
    _, files = exported
    _refused(tmp_path, files["strong__brain_age.json"],
             lambda d: d["cells"][0]["metrics"].update(mae=value), match)


def test_infinite_prediction_is_refused(exported, tmp_path):
    _, files = exported
    _refused(tmp_path, files["strong__brain_age.json"],
             lambda d: d["cells"][0]["predictions"][4].update(prediction=float("inf")),
             r"predictions\[4\]: field 'prediction' holds an infinite number")


@pytest.mark.parametrize("name, task, metric", [
    ("strong__brain_age.json", "brain_age", "r2"),  # not a bootstrap metric: still recomputed
    ("strong__brain_age.json", "brain_age", "pearson_r"),
    ("strong__brain_age.json", "brain_age", "mae"),
    ("strong__idh_status.json", "idh_status", "balanced_accuracy"),
    ("strong__idh_status.json", "idh_status", "auc"),
    ("strong__survival_cox.json", "survival_cox", "c_harrell"),
])
def test_edited_metric_value_is_refused(exported, tmp_path, name, task, metric):
    _, files = exported

    def edit(data):
        metrics = data["cells"][1]["metrics"]
        metrics[metric] = round(metrics[metric] * 0.9 + 0.01, 4)

    _refused(tmp_path, files[name], edit,
             rf"field metrics\.{metric} does not verify: {metric}=.* but the predictions give")


def test_invented_metric_is_refused(exported, tmp_path):
    _, files = exported
    _refused(tmp_path, files["strong__idh_status.json"],
             lambda d: d["cells"][0]["metrics"].update(sensitivity=0.99),
             r"metrics\.sensitivity'\] are not metrics of a classification task")


def test_edited_n_test_is_refused(exported, tmp_path):
    _, files = exported
    _refused(tmp_path, files["strong__brain_age.json"],
             lambda d: d["cells"][0]["cell"].update(n_test=39),
             r"field 'n_test' does not verify: 40 predictions but n_test=39")


def _write_manifest(results_dir: Path, task_id: str) -> str:
    spec = get_task(task_id)
    split = Split(task_id, spec.dataset, spec.split_salt, 0.2,
                  tuple(f"sub-{i:03d}" for i in range(40, 140)),
                  tuple(f"sub-{i:03d}" for i in range(40)))
    path = manifest_path(results_dir, "phantom:test", spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split.to_manifest()))
    return split.hash


def test_split_hash_is_checked_against_the_manifest(exported, tmp_path):
    _, files = exported
    source = files["strong__brain_age.json"]
    target = _target(tmp_path)
    real = _write_manifest(tmp_path / "target", "brain_age")
    data = json.loads(source.read_text())
    for item in data["cells"]:
        item["cell"]["split_hash"] = real  # the honest file: results of the manifest's split
    honest = tmp_path / "honest.json"
    honest.write_text(json.dumps(data))
    import_results(target, honest)
    cells = target.cells(task="brain_age")
    assert cells and all("split_hash" not in unverified_fields(c.cell.hyperparameters)
                         for c in cells)
    assert all("split_hash" in c.cell.hyperparameters[VERIFICATION_KEY]["verified"]
               for c in cells)
    # the same results claiming another split
    forged = _refused(tmp_path, honest,
                      lambda d: d["cells"][3]["cell"].update(split_hash="ab" * 32),
                      r"cells\[3\]\.cell: field 'split_hash' does not verify", store=target)
    assert "abababababab" in forged and real[:12] in forged
    # n_train at fraction 1 below the manifest's training people
    full = next(i for i, item in enumerate(data["cells"]) if item["cell"]["fraction"] == 1.0)
    _refused(tmp_path, honest, lambda d: d["cells"][full]["cell"].update(n_train=3),
             r"field 'n_train' does not verify", store=target)
    # a manifest edited by hand is not a reference either
    manifest = manifest_path(tmp_path / "target", "phantom:test", get_task("brain_age"))
    stored = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(stored, test=stored["test"][1:])))
    _refused(tmp_path, honest, lambda d: None, r"field 'hash'.*does not verify", store=target)


def test_honest_round_trip_records_what_could_not_be_verified(exported, tmp_path):
    store, files = exported
    target = _target(tmp_path)
    for path in files.values():
        import_results(target, path)
    # metrics and predictions arrive unchanged
    cols = ["cell_id", "metric", "value", "created_at"]
    a = store.frame()[cols].sort_values(cols[:2]).reset_index(drop=True)
    b = target.frame()[cols].sort_values(cols[:2]).reset_index(drop=True)
    assert a.equals(b)
    by_task = {c.cell.task: c.cell for c in target.cells(backbone="strong")}
    regression = by_task["brain_age"].hyperparameters[VERIFICATION_KEY]
    assert {"metrics.mae", "metrics.rmse", "metrics.r2", "metrics.pearson_r"} <= set(
        regression["verified"])
    assert set(regression["unverified"]) == {"n_train", "subset_hash", "split_hash",
                                             "weights_sha256", "test_samples"}
    survival = unverified_fields(by_task["survival_cox"].hyperparameters)
    assert "metrics.c_harrell" not in survival and "metrics.c_uno" in survival
    assert by_task["brain_age"].hyperparameters["C"] == 1.0  # the real ones are kept
    # a claim of verification in the file is never trusted: re-export, forge, re-import
    again = export_results(target, tmp_path / "again", ["strong"], ["brain_age"])[0]
    data = json.loads(again.read_text())
    for item in data["cells"]:
        item["cell"]["hyperparameters"][VERIFICATION_KEY] = {"verified": ["everything"],
                                                             "unverified": {}}
    fresh = _target(tmp_path, "fresh")
    import_results(fresh, _write(tmp_path, data))
    assert all(unverified_fields(c.cell.hyperparameters) for c in fresh.cells())

    # the leaderboard marks imported rows; rows computed here are not marked
    analysis = load_analysis(target, models=["strong", "rand"], tasks=["brain_age"], n_boot=20)
    assert all(e.is_unverified for e in analysis.entries)
    text = stats_table(analysis, 1.0, "markdown")
    assert "[unverified]" in text and "UNVERIFIED = imported results" in text
    index = build_site(analysis, tmp_path / "site")
    assert "UNVERIFIED" in index.read_text()
    task_page = (tmp_path / "site" / "task-brain_age.html").read_text()
    assert "subset_hash" in task_page
    local = load_analysis(store, models=["strong"], tasks=["brain_age"], n_boot=20)
    assert not any(e.is_unverified for e in local.entries)
    assert "UNVERIFIED" not in stats_table(local, 1.0, "markdown")


# ------------------------------------------- n_train / subset_hash against the local cohort

@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """One real tiny run (intensity control, brain_age, fraction 0.5, seeds 0 and 1) on the
    phantom cohort in its cache, exported: the cohort is present for imports using that cache."""
    from brainbench.cli import main

    root = tmp_path_factory.mktemp("subset")
    assert main(["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
                 "--fraction", "0.5", "--seeds", "0,1", "--cache", str(root / "cache"),
                 "--results", str(root / "source"), "--no-progress"]) == 0
    source = ResultStore(f"sqlite:///{root / 'source' / 'results.db'}")
    return root / "cache", export_results(source, root / "export")[0]


def _import(path: Path, results: Path, cache: Path) -> int:
    from brainbench.cli import main

    return main(["import", str(path), "--results", str(results), "--cache", str(cache)])


def test_n_train_and_subset_hash_verify_against_the_present_cohort(computed, tmp_path):
    cache, exported_file = computed
    assert _import(exported_file, tmp_path / "r", cache) == 0
    cells = _target(tmp_path, "r").cells()
    assert len(cells) == 2
    for c in cells:
        record = c.cell.hyperparameters[VERIFICATION_KEY]
        assert {"n_train", "subset_hash", "split_hash", "test_samples"} <= set(
            record["verified"])
        assert not unverified_fields(c.cell.hyperparameters)


def _refused_by_cli(capsys, tmp_path, computed, change, *needles) -> str:
    """A forged copy of the computed file, imported with the cohort present: exit 2, the
    message names the field, nothing is written (no results.db is even created)."""
    cache, exported_file = computed
    data = json.loads(exported_file.read_text())
    change(data["cells"][1])
    forged = _write(tmp_path, data)
    assert _import(forged, tmp_path / "r", cache) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(forged) in err
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "r").exists()
    return err


def test_n_test_verifies_against_the_recomputed_test_split(computed, tmp_path, capsys):
    def drop_one(item):  # one test subject fewer, n_test and metrics to match
        item["predictions"].pop()
        item["cell"]["n_test"] -= 1
        _rescore(item)

    honest = len(json.loads(computed[1].read_text())["cells"][1]["predictions"])
    _refused_by_cli(capsys, tmp_path, computed, drop_one,
                    "cells[1].cell: field 'n_test' does not verify",
                    f"the file says {honest - 1} but the test split recomputed from the ixi "
                    f"cohort", f"has {honest} samples")


def test_prediction_ids_must_be_the_recomputed_test_samples(computed, tmp_path, capsys):
    def rename(item):  # a subject swapped for an invented one: same count, same metrics
        item["predictions"][0]["sample_id"] = "sub-invented"
        _rescore(item)

    _refused_by_cli(capsys, tmp_path, computed, rename,
                          "cells[1]: field 'predictions' does not verify",
                          "1 not in the test split ['sub-invented']",
                          "1 test sample(s) without a prediction")
    prepared = _prepared_brain_age(computed[0])
    train_id = next(s.id for s in prepared.samples
                    if s.group not in set(prepared.split.test_groups))

    def swap_in_a_training_subject(item):
        item["predictions"][0]["sample_id"] = train_id
        _rescore(item)

    _refused_by_cli(capsys, tmp_path, computed, swap_in_a_training_subject,
                    f"1 not in the test split ['{train_id}']")


def test_each_test_sample_must_be_its_cohort_person(computed, tmp_path, capsys):
    """Persons decide what the two-level bootstrap resamples: a forged grouping would narrow
    the intervals. With the cohort present each one is checked, and a file without them
    gets the cohort's grouping."""
    def own_person(item):
        item["predictions"][2]["person"] = "somebody-else"

    _refused_by_cli(capsys, tmp_path, computed, own_person,
                    "cells[1].predictions[2]: field 'person' does not verify",
                    "'somebody-else'")
    cache, exported_file = computed
    data = json.loads(exported_file.read_text())
    expected = {p["sample_id"]: p["person"] for p in data["cells"][0]["predictions"]}
    assert expected
    for item in data["cells"]:
        for p in item["predictions"]:
            del p["person"]
    assert _import(_write(tmp_path, data), tmp_path / "r", cache) == 0
    for cell in _target(tmp_path, "r").cells(with_predictions=True):
        assert dict(cell.persons) == expected


def test_edited_target_with_recomputed_metrics_is_refused(computed, tmp_path, capsys):
    """Targets edited to flatter the predictions (metrics rewritten to match) are the cohort's
    labels no more."""
    def flatter(item):
        for p in item["predictions"]:
            p["target"] = round(p["prediction"] + 0.5, 3)
        _rescore(item)

    _refused_by_cli(capsys, tmp_path, computed, flatter,
                    "field 'target' does not verify: the file says")


def _rescore(item: dict) -> None:
    """A thorough forger's last step: the brain_age metrics recomputed from the edited
    predictions, so that they verify (checked here) and only the test samples can give the
    forgery away."""
    from brainbench.kinds import get_kind
    from brainbench.results_io import _check_metrics

    kind = get_kind(get_task("brain_age").kind)
    rows = sorted(item["predictions"], key=lambda p: p["sample_id"])
    item["metrics"] = {k: float(v) for k, v in kind.test_metrics(
        kind.target_array([p["target"] for p in rows]),
        np.asarray([p["prediction"] for p in rows], dtype=float), classes=()).items()}
    cell = Cell(**dict(item["cell"], fraction=float(item["cell"]["fraction"])))
    _check_metrics(cell, item["metrics"], item["predictions"], "forged")


def _prepared_brain_age(cache: Path):
    """The brain_age task prepared on the tiny phantom cohort in `cache`, as the import does."""
    from brainbench.leakage import HashCache
    from brainbench.pipeline import prepare_task

    [root] = (cache / "phantoms").iterdir()
    return prepare_task(get_task("brain_age"), root, f"phantom:{root.name}",
                        hash_cache=HashCache(cache / "voxel_hashes.json"))


@pytest.mark.parametrize("field_name", ["n_train", "subset_hash"])
def test_forged_training_subset_is_refused_naming_the_field(computed, tmp_path, capsys,
                                                            field_name):
    cache, exported_file = computed
    data = json.loads(exported_file.read_text())
    cell = data["cells"][1]["cell"]
    honest = cell[field_name]
    cell[field_name] = honest + 1 if field_name == "n_train" else "ab" * 32
    before = dict(cell, **{field_name: honest})
    assert Cell(**before).cell_id == Cell(**cell).cell_id  # the cell id does not cover it
    forged = _write(tmp_path, data)
    target = _target(tmp_path, "r")
    assert _import(forged, tmp_path / "r", cache) == 2
    err = capsys.readouterr().err
    assert f"cells[1].cell: field '{field_name}' does not verify" in err and str(forged) in err
    assert "Traceback" not in err and "recomputed from the ixi cohort" in err
    if field_name == "n_train":
        assert f"the file says {honest + 1} but" in err and f"has {honest} samples" in err
    else:
        assert f"is {honest[:12]}..." in err
    assert target.frame().empty  # nothing written


def test_without_the_cohort_the_subset_stays_unverified_saying_where_it_looked(computed,
                                                                               tmp_path):
    _, exported_file = computed
    data = json.loads(exported_file.read_text())
    data["cells"][0]["cell"]["n_train"] += 1  # not checkable here: imported, marked unverified
    assert _import(_write(tmp_path, data), tmp_path / "r", tmp_path / "elsewhere") == 0
    for c in _target(tmp_path, "r").cells():
        missing = unverified_fields(c.cell.hyperparameters)
        assert set(missing) >= {"n_train", "subset_hash"}
        assert str(tmp_path / "elsewhere" / "phantoms") in missing["n_train"]
        assert "not found in the cache folder" in missing["subset_hash"]


def test_precision_is_part_of_the_cell_and_checked(exported, tmp_path):
    _, files = exported
    _refused(tmp_path, files["strong__brain_age.json"],
             lambda d: d["cells"][0]["cell"].update(precision="fp16"),
             r"field precision is 'fp16'; expected one of fp32, bf16")

    def relabel(d):  # claim bf16 for an fp32 cell, keeping the id: the id no longer matches
        d["cells"][0]["cell"].update(precision="bf16")

    _refused(tmp_path, files["strong__brain_age.json"], relabel, r"cell_id .* does not match")


# ------------------------------------------------------------- import-bundle: the same checks

def _bundle(tmp_path: Path, results: dict) -> Path:
    """A submission bundle (as `brainbench submit` writes one) holding one results file."""
    from brainbench.submission.bundle import BUNDLE_FORMAT, BUNDLE_SCHEMA, MANIFEST, flags_for

    bundle = tmp_path / "bundle"
    (bundle / "results").mkdir(parents=True)
    (bundle / "results" / "intensity__brain_age.json").write_text(json.dumps(results))
    statuses = {item["cell"]["weights_status"] for item in results["cells"]}
    (bundle / MANIFEST).write_text(json.dumps({
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA, "name": results["backbone"],
        "flags": flags_for(statuses.pop(), ["brain_age"], ["brain_age"]),
        "weights": {"sha256": results["cells"][0]["cell"]["weights_sha256"]},
        "run": {"tasks_all": ["brain_age"]}, "results": ["results/intensity__brain_age.json"],
        "validation": {"ok": True, "checks": [{"name": "load", "ok": True, "detail": ""}]}}))
    return bundle


def test_import_bundle_verifies_the_training_subset_against_the_cohort(computed, tmp_path,
                                                                       capsys):
    from brainbench.cli import main

    cache, exported_file = computed
    data = json.loads(exported_file.read_text())
    data["cells"][0]["cell"]["n_train"] += 1
    forged = _bundle(tmp_path / "forged", data)
    argv = ["import-bundle", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "subs")]
    assert main(argv + [str(forged), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "cells[0].cell: field 'n_train' does not verify" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "subs").exists()

    honest = _bundle(tmp_path / "honest", json.loads(exported_file.read_text()))
    assert main(argv + [str(honest), "--cache", str(cache)]) == 0
    cells = _target(tmp_path, "r").cells()
    assert len(cells) == 2 and (tmp_path / "subs" / "intensity" / "submission.json").exists()
    for c in cells:
        assert {"n_train", "subset_hash", "test_samples"} <= set(
            c.cell.hyperparameters[VERIFICATION_KEY]["verified"])
    # without the cohort the same bundle imports, its subset marked unverified
    assert main(argv + [str(honest), "--cache", str(tmp_path / "elsewhere"),
                        "--results", str(tmp_path / "r2")]) == 0
    assert all("n_train" in unverified_fields(c.cell.hyperparameters)
               for c in _target(tmp_path, "r2").cells())


def test_a_relabelled_profile_is_refused_by_its_phantom_cohort(computed, tmp_path):
    """A tiny-profile cell relabelled ``cpu`` (cell id recomputed) would sit among the cpu
    results: the phantom cohort its data_source names is the tiny one, so it is refused."""
    _, exported_file = computed
    source = json.loads(exported_file.read_text())["cells"][0]["cell"]["data_source"]
    assert source.startswith("phantom:")

    def relabel(d):
        for item in d["cells"]:
            item["cell"]["profile"] = "cpu"
            _recompute_id(item)

    message = _refused(tmp_path, exported_file, relabel,
                       r"field 'profile' does not verify: profile 'cpu' generates the phantom "
                       r"cohort \.\.\.-seed0-n80")
    assert source in message

    def unknown(d):
        d["cells"][0]["cell"]["profile"] = "huge"
        _recompute_id(d["cells"][0])

    _refused(tmp_path, exported_file, unknown,
             r"field 'profile': unknown profile 'huge'; valid names")


def _manifest_bundle(root: Path, results: dict, **run) -> Path:
    """A bundle whose manifest describes its run as `brainbench submit` writes it (profile,
    data source, fractions, seeds, tasks run, split hashes, weights status)."""
    from brainbench.submission.bundle import MANIFEST

    bundle = _bundle(root, results)
    manifest = json.loads((bundle / MANIFEST).read_text())
    cells = [item["cell"] for item in results["cells"]]
    manifest["weights"]["status"] = cells[0]["weights_status"]
    manifest["backbone"] = {"kind": "name", "file": None, "file_sha256": None}
    manifest["run"].update({"profile": cells[0]["profile"],
                            "data_source": cells[0]["data_source"],
                            "fractions": sorted({c["fraction"] for c in cells}),
                            "seeds": sorted({c["seed"] for c in cells}),
                            "tasks_run": ["brain_age"],
                            "split_hashes": {"brain_age": cells[0]["split_hash"]}, **run})
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    return bundle


def _edit_manifest(bundle: Path, change) -> Path:
    from brainbench.submission.bundle import MANIFEST

    manifest = json.loads((bundle / MANIFEST).read_text())
    change(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    return bundle


def _bundle_refused(tmp_path, capsys, bundles: list[Path], match: str) -> str:
    from brainbench.cli import main

    argv = ["import-bundle", *map(str, bundles), "--results", str(tmp_path / "r"),
            "--out", str(tmp_path / "subs")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "subs").exists()
    return err


def test_a_bundle_name_cannot_leave_the_submissions_folder(computed, tmp_path, capsys):
    _, exported_file = computed
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    for name in ("../victim", str(victim), ".hidden", "a/b"):
        data = json.loads(exported_file.read_text())
        data["backbone"] = name
        for item in data["cells"]:
            item["cell"]["backbone"] = name
            _recompute_id(item)
        bundle = _manifest_bundle(tmp_path / f"b{abs(hash(name))}", data)
        _bundle_refused(tmp_path, capsys, [bundle], r"field 'name' is .*expected 1-64 letters")
        assert (victim / "keep.txt").read_text() == "mine"


def test_a_submitted_file_cannot_take_a_built_in_name_or_change_after_the_run(computed, tmp_path,
                                                                              capsys):
    _, exported_file = computed
    data = json.loads(exported_file.read_text())

    def as_card(m):
        m["backbone"] = {"kind": "card", "file": "card.toml", "file_sha256": "0" * 64}

    bundle = _edit_manifest(_manifest_bundle(tmp_path / "builtin", data), as_card)
    _bundle_refused(tmp_path, capsys, [bundle], r"field 'name' 'intensity' is a built-in "
                                                r"backbone, but the bundle holds a card")
    from brainbench.submission import bundle as bundles

    # a card bundle of its own name whose card was edited after its run
    renamed = json.loads(exported_file.read_text())
    renamed["backbone"] = "mine"
    for item in renamed["cells"]:
        item["cell"]["backbone"] = "mine"
        _recompute_id(item)
    own = _manifest_bundle(tmp_path / "own", renamed)
    (own / "card.toml").write_text('name = "mine"\n')
    sha = bundles.sha256_file(own / "card.toml")
    _edit_manifest(own, lambda m: m.update(backbone={"kind": "card", "file": "card.toml",
                                                     "file_sha256": sha}))
    (own / "card.toml").write_text('name = "mine"\narchitecture = "resnet50"\n')
    _bundle_refused(tmp_path, capsys, [own], r"field 'backbone.file_sha256' does not verify")


@pytest.mark.parametrize("change, match", [
    (lambda m: m["run"].update(seeds=[0, 1, 2]),
     r"holds seeds \[0, 1\] but the run's seeds are \[0, 1, 2\]"),
    (lambda m: m["run"].update(tasks_run=["brain_age", "idh_status"]),
     r"run.tasks_run \['brain_age', 'idh_status'\] but the bundle holds results for "
     r"\['brain_age'\]"),
    (lambda m: m["weights"].update(status="pretrained"),
     r"field 'weights.status' is 'pretrained' but its results say \['control'\]"),
    (lambda m: m["run"].update(profile="cpu"), r"a cell has profile 'tiny' but the manifest's "
                                               r"run.profile is 'cpu'"),
    (lambda m: m["run"].update(fractions=[0.01]), r"a cell at fraction 0.5, which the "
                                                  r"manifest's run.fractions \[0.01\]"),
    (lambda m: m["run"]["split_hashes"].update(brain_age="f" * 64),
     r"split_hash is not the manifest's run.split_hashes"),
    (lambda m: m.update(weights="pretrained"), r"field 'weights' must be an object"),
    (lambda m: m["weights"].pop("sha256"), r"field 'weights.sha256' must be a string, got None"),
    (lambda m: m["run"].pop("tasks_all"), r"field 'run.tasks_all' must be an array"),
    (lambda m: m["run"].update(cells=99), r"run.cells is 99 but its results hold 2 cell"),
    (lambda m: m["validation"].update(ok=False), r"the backbone failed validation \(ok False"),
    (lambda m: m["validation"]["checks"][0].update(ok=False),
     r"failed validation .*failed checks \['load'\]"),
    (lambda m: m.pop("validation"), r"field 'validation' must hold the validation report"),
    (lambda m: m["validation"].update(checks=[]), r"field 'validation' must hold"),
])
def test_the_manifest_must_describe_its_results(computed, tmp_path, capsys, change, match):
    _, exported_file = computed
    bundle = _manifest_bundle(tmp_path / "b", json.loads(exported_file.read_text()))
    _bundle_refused(tmp_path, capsys, [_edit_manifest(bundle, change)], match)


def test_a_dropped_seed_is_refused_and_the_honest_bundle_imports(computed, tmp_path, capsys):
    from brainbench.cli import main

    _, exported_file = computed
    data = json.loads(exported_file.read_text())
    honest = _manifest_bundle(tmp_path / "honest", data)
    dropped = dict(data, cells=[c for c in data["cells"] if c["cell"]["seed"] != 1])
    forged = _manifest_bundle(tmp_path / "forged", dropped, seeds=[0, 1])
    _bundle_refused(tmp_path, capsys, [forged], r"holds seeds \[0\] but the run's seeds are "
                                                r"\[0, 1\]; a seed was dropped")
    # two bundles in one import: all or none
    _bundle_refused(tmp_path, capsys, [honest, forged], r"a seed was dropped")
    assert main(["import-bundle", str(honest), "--results", str(tmp_path / "r"),
                 "--out", str(tmp_path / "subs")]) == 0
    assert len(_target(tmp_path, "r").cells()) == 2


def test_only_what_was_verified_reaches_the_submissions_folder(computed, tmp_path, capsys):
    """An unlisted results file or a linked one is refused; other files a bundle carries are
    not copied, and SUMMARY.md is written afresh from the importing store."""
    from brainbench.cli import main

    _, exported_file = computed
    data = json.loads(exported_file.read_text())
    unlisted = _manifest_bundle(tmp_path / "unlisted", data)
    (unlisted / "results" / "other.json").write_text("{}")
    _bundle_refused(tmp_path, capsys, [unlisted], r"results/ holds file\(s\) the manifest does "
                                                  r"not list: \['results/other.json'\]")
    linked = _manifest_bundle(tmp_path / "linked", data)
    real = linked / "results" / "intensity__brain_age.json"
    moved = tmp_path / "elsewhere.json"
    real.rename(moved)
    real.symlink_to(moved)
    _bundle_refused(tmp_path, capsys, [linked], r"intensity__brain_age.json is a link")

    honest = _manifest_bundle(tmp_path / "honest", data)
    (honest / "evil.html").write_text("<script>")
    (honest / "passwd").symlink_to("/etc/passwd")
    (honest / "SUMMARY.md").write_text("MAE 0.001, best in class")
    assert main(["import-bundle", str(honest), "--results", str(tmp_path / "r"),
                 "--out", str(tmp_path / "subs")]) == 0
    placed = tmp_path / "subs" / "intensity"
    assert sorted(str(p.relative_to(placed)) for p in placed.rglob("*") if p.is_file()) == [
        "SUMMARY.md", "results/intensity__brain_age.json", "submission.json"]
    summary = (placed / "SUMMARY.md").read_text()
    assert "best in class" not in summary and "# Submission `intensity`" in summary
    assert "brain_age" in summary
