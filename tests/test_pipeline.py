"""One task pipeline: run and data check prepare a task the same way, cells are planned once,
evaluators are looked up from the task kind, and one extractor honours the batch cap."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainbench.datacheck import check_task
from brainbench.evaluators import EVALUATORS, make_evaluator
from brainbench.features import (ExtractionStats, FeatureCache, PatchTokenCache, TokenRequest,
                                 extract_features, extract_patch_tokens)
from brainbench.kinds import KINDS, get_kind
from brainbench.leakage import HashCache
from brainbench.pipeline import manifest_path, plan_cells, prepare_task
from brainbench.profiles import PROFILES
from brainbench.runconfig import RunConfig, RunReport
from brainbench.runner import run_task
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import all_tasks, get_task

from .helpers import TinyBackbone
from .phantom_cohorts import phantoms  # noqa: F401  (fixture)

SOURCE = "phantom:test"
TINY = PROFILES.get("tiny")


class PatchTiny(TinyBackbone):
    """TinyBackbone with a patch grid and a batch cap; records every forward call's size."""

    max_batch = 3

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def embed(self, batch):
        self.sizes.append(batch.shape[0])
        return super().embed(batch)

    def num_patch_layers(self) -> int:
        return 1

    def patch_tokens(self, batch, layers):
        self.sizes.append(batch.shape[0])
        with torch.inference_mode():
            grid = self.conv(batch)
        return [grid for _ in layers]


def test_every_task_kind_is_a_registered_object_with_an_evaluator():
    for task in all_tasks():
        kind = get_kind(task.kind)
        assert kind.name == task.kind
        assert kind.evaluator in EVALUATORS
    assert {"classification", "regression", "survival", "segmentation"} <= set(KINDS.names())
    assert make_evaluator("probe").name == "probe"
    assert make_evaluator("segmentation").name == "segmentation"


@pytest.mark.parametrize("task_id", ["brain_age", "neurodegen_cls", "survival_cox", "tumor_seg"])
def test_run_and_data_check_prepare_the_same_split(phantoms, tmp_path, task_id):  # noqa: F811
    task = get_task(task_id)
    manifest = manifest_path(tmp_path, SOURCE, task)
    prepared = prepare_task(task, phantoms, SOURCE, hash_cache=HashCache(tmp_path / "h.json"),
                            manifest=manifest)
    assert json.loads(manifest.read_text())["hash"] == prepared.split.hash
    assert set(prepared.split.test_groups) == {s.group for s in prepared.test}
    report = check_task(task, phantoms, data_source=SOURCE, results_dir=tmp_path,
                        hash_cache=HashCache(tmp_path / "h.json"))
    assert report.ok, report.render()
    assert report.split["hash"] == prepared.split.hash and report.split["stored"] == "matches"


def test_planned_cells_are_nested_and_carry_their_identity(phantoms, tmp_path):  # noqa: F811
    task = get_task("neurodegen_cls")
    prepared = prepare_task(task, phantoms, SOURCE, hash_cache=HashCache(None))
    backbone = TinyBackbone()
    cells = plan_cells(prepared, backbone, TINY, head="linear", config_hash="c" * 64,
                       fractions=(0.25, 0.5, 1.0), seeds=(0, 1))
    assert [(c.cell.fraction, c.cell.seed) for c in cells] == [
        (0.25, 0), (0.25, 1), (0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    by = {(c.cell.fraction, c.cell.seed): set(c.groups) for c in cells}
    for seed in (0, 1):
        assert by[(0.25, seed)] <= by[(0.5, seed)] <= by[(1.0, seed)]
    assert by[(1.0, 0)] == set(prepared.split.train_groups)
    assert not set().union(*by.values()) & set(prepared.split.test_groups)
    assert len({c.cell.cell_id for c in cells}) == len(cells)
    assert all(c.cell.n_train == len(prepared.members(c.groups)) for c in cells)
    assert all(c.cell.split_hash == prepared.split.hash for c in cells)


def test_one_extractor_honours_the_batch_cap_for_vectors_and_patch_tokens(phantoms, tmp_path):  # noqa: F811
    backbone = PatchTiny()
    prepared = prepare_task(get_task("brain_age"), phantoms, SOURCE, hash_cache=HashCache(None))
    paths = [p for s in prepared.samples[:3] for _, p in s.images]
    tokens, stats = extract_features(backbone, paths, FeatureCache(tmp_path / "f"),
                                     batch_size=16, progress=False)
    n_slices = backbone.contract.num_slices
    assert stats.items_encoded == len(paths) * n_slices and set(tokens) == set(paths)
    assert max(backbone.sizes) == 3  # capped, and batches are packed across volumes
    assert sum(backbone.sizes) == len(paths) * n_slices
    backbone.sizes.clear()
    requests = [TokenRequest(Path(p), (0, 2)) for p in paths]
    cache = PatchTokenCache(tmp_path / "p")
    keys, stats = extract_patch_tokens(backbone, requests, [0], cache, batch_size=16,
                                       progress=False)
    assert max(backbone.sizes) == 3 and sum(backbone.sizes) == 2 * len(paths)
    grids = cache.load_sample(keys, requests[:1], [0])
    assert grids[0].shape[0] == 2 and grids[0].dtype == np.float16
    backbone.sizes.clear()
    extract_patch_tokens(backbone, requests, [0], cache, batch_size=16, progress=False)
    assert backbone.sizes == []  # warm: served from the cache


def test_run_task_plans_then_skips_stored_cells(phantoms, tmp_path):  # noqa: F811
    backbone = TinyBackbone()
    config = RunConfig(model="tiny", fractions=(0.5, 1.0), seeds=(0,), profile=TINY,
                       cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                       progress=False)
    store = ResultStore(default_url(tmp_path / "results"))
    task = get_task("brain_age")

    def once() -> RunReport:
        report = RunReport("tiny", "pretrained", "test", SOURCE, store.url)
        run_task(task, backbone, phantoms, SOURCE, store, config, report)
        return report

    first, second = once(), once()
    assert [c.computed for c in first.cells] == [True, True]
    assert [c.computed for c in second.cells] == [False, False]
    assert [c.cell_id for c in first.cells] == [c.cell_id for c in second.cells]
    assert second.extraction.forward_calls == 0
    forced = RunReport("tiny", "pretrained", "test", SOURCE, store.url)
    run_task(task, backbone, phantoms, SOURCE, store, dataclasses.replace(config, force=True),
             forced)
    assert all(c.computed for c in forced.cells)
    frame = store.frame(task="brain_age")
    assert frame.cell_id.nunique() == 2  # --force replaced the cells, it did not duplicate them


def test_a_new_task_kind_is_one_module_and_runs_on_existing_heads(phantoms, tmp_path):  # noqa: F811
    """A kind defined here (as a new module would define it) runs through the whole pipeline:
    the fixed split, the planner, the probe evaluator with every probe head of its family,
    the store. Nothing else changes."""
    from brainbench.kinds.regression import RegressionKind

    class DecadeKind(RegressionKind):
        name = "decade_regression_test"
        bootstrap_metrics = ()

        def test_metrics(self, y_test, prediction, *, classes=(), train_target=None):
            error = np.abs(np.asarray(y_test) - np.asarray(prediction)) / 10
            return {"median_decade_error": float(np.median(error))}

    KINDS.register(DecadeKind.name, DecadeKind())
    try:
        task = dataclasses.replace(get_task("brain_age"), id="brain_decade_test",
                                   kind=DecadeKind.name, primary_metric="median_decade_error",
                                   secondary_metrics=())
        assert get_kind(task.kind).family == "regression"
        store = ResultStore(default_url(tmp_path / "results"))
        for protocol in ("linear", "knn"):
            config = RunConfig(model="tiny", fractions=(1.0,), seeds=(0,), profile=TINY,
                               cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                               progress=False, protocol=protocol)
            report = RunReport("tiny", "pretrained", "test", SOURCE, store.url)
            run_task(task, TinyBackbone(), phantoms, SOURCE, store, config, report)
            assert [c.computed for c in report.cells] == [True]
        frame = store.frame(task="brain_decade_test")
        assert set(frame.metric) == {"median_decade_error"} and set(frame["head"]) == {"linear", "knn"}
        assert (frame.value >= 0).all()
    finally:
        KINDS.unregister(DecadeKind.name)
