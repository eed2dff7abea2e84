"""Imported results files are verified, never trusted: each forgery is refused naming the
field that did not verify, nothing is written, and the honest round trip records what an
import could not check (shown as UNVERIFIED on the leaderboard)."""

from __future__ import annotations

import json
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
        "run": {"tasks_all": ["brain_age"]}, "results": ["results/intensity__brain_age.json"]}))
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
