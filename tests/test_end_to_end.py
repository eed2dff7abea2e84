"""One honest end-to-end run: tiny phantom cohorts, the real BrainDINO architecture, every
endpoint (tumour segmentation included), results stored, a warm rerun served from the caches."""

import json
from pathlib import Path

import numpy as np
import pytest

from brainbench.cli import main
from brainbench.profiles import PROFILES
from brainbench.runner import RunConfig, run
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import all_tasks

pytestmark = pytest.mark.slow

READY = sorted(t.id for t in all_tasks() if t.status == "ready")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def config(workspace: Path, **changes) -> RunConfig:
    base = dict(model="braindino", fractions=(0.5,), seeds=(0, 1), profile=PROFILES.get("tiny"),
                cache_dir=workspace / "cache", results_dir=workspace / "results", progress=False)
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def cold(workspace):
    return run(config(workspace))


def test_cold_run_scores_every_ready_endpoint(cold, workspace):
    assert sorted({c.task for c in cold.cells}) == READY
    assert all(c.computed for c in cold.cells) and len(cold.cells) == 2 * len(READY)
    assert cold.pending == []
    assert cold.extraction.computed > 0 and cold.extraction.forward_calls > 0
    frame = ResultStore(default_url(workspace / "results")).frame()
    assert set(frame.weights_status) == {"random-init"}
    for task in all_tasks():
        if task.status != "ready":
            continue
        rows = frame[(frame.task == task.id) & (frame.metric == task.primary_metric)]
        assert len(rows) == 2 and np.isfinite(rows.value).all(), task.id
        manifest = json.loads(next((workspace / "results" / "splits").rglob(
            f"{task.id}.json")).read_text())
        assert set(rows.split_hash) == {manifest["hash"]}
        assert not set(manifest["train"]) & set(manifest["test"])


def test_warm_rerun_skips_stored_cells(cold, workspace):
    warm = run(config(workspace))
    assert not any(c.computed for c in warm.cells)
    assert warm.extraction.forward_calls == 0


def test_forced_rerun_refits_from_cache_with_identical_results(cold, workspace):
    store = ResultStore(default_url(workspace / "results"))
    before = store.frame().set_index(["cell_id", "metric"]).value
    forced = run(config(workspace, force=True))
    assert all(c.computed for c in forced.cells)
    assert forced.extraction.forward_calls == 0  # every volume came from the feature cache
    assert forced.extraction.cached == forced.extraction.volumes > 0
    after = store.frame().set_index(["cell_id", "metric"]).value
    assert len(after) == len(before)
    np.testing.assert_allclose(after.loc[before.index].values, before.values, equal_nan=True)


def test_cli_prints_the_table_marked_random_init(cold, workspace, monkeypatch, capsys):
    monkeypatch.setenv("BRAINBENCH_CACHE", str(workspace / "cache"))
    monkeypatch.setenv("BRAINBENCH_RESULTS", str(workspace / "results"))
    assert main(["run", "--profile", "tiny", "--fraction", "0.5", "--seeds", "0,1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "braindino [RANDOM-INIT]" in out and "RANDOM-INIT = " in out
    assert f"0 computed, {2 * len(READY)} already stored" in out
    for task in READY + ["tumor_seg"]:
        assert task in out
