"""The Ray executor on a real local Ray cluster (2 CPUs): it stores exactly what the local
executor stores for the same features, a worker killed mid-extraction is restarted and its
shard retried, a driver killed mid-run resumes without recomputing finished volumes or cells,
and a sweep through Ray into PostgreSQL matches the local one. Without Ray installed,
`--executor ray` is a clear error.

The backbone is a small fixed conv net written as a Python backbone file, so Ray workers
build it from the shared filesystem exactly as they would a submitted one; it logs each
forward call's process id and sleeps when told to, which lets a test kill a worker mid-shard.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brainbench.cli import main
from brainbench.features import FeatureCache
from brainbench.profiles import PROFILES
from brainbench.runner import RunConfig, run
from brainbench.store import ResultStore, default_url

from .phantom_cohorts import phantoms  # noqa: F401  (fixture)
from .test_postgres_store import pg_url, rows, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

TASKS = ("brain_age", "idh_status")
CELLS = 8  # 2 tasks x 2 fractions x 2 seeds

BACKBONE = '''
import os, time
from pathlib import Path
import torch
from brainbench.backbone import Backbone, InputContract, WeightsInfo

HERE = Path(__file__).parent


class RayTestConv(Backbone):
    """A fixed random conv encoder; logs its pid per forward call, sleeps per file 'delay'."""

    name = "ray-test-conv"

    def __init__(self, image_size=None, num_slices=None):
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        size = image_size or 32
        self.contract = InputContract("2d", 3, (size, size), num_slices or 4, "robust_zscore",
                                      ("cls", "patch_mean"), 8)
        self.weights = WeightsInfo("random-init", "fixed conv, seed 0", "0" * 64)  # no file

    def embed(self, batch):
        with (HERE / "pids.log").open("a") as log:
            log.write(f"{os.getpid()}\\n")
        delay = HERE / "delay"
        if delay.exists():
            time.sleep(float(delay.read_text()))
        with torch.inference_mode():
            grid = self.conv(batch).flatten(2)
        return {"cls": grid.amax(dim=2), "patch_mean": grid.mean(dim=2)}

    def architecture(self):
        return {"model": "ray-test-conv", "dim": 8}

    def parameter_count(self):
        return sum(p.numel() for p in self.conv.parameters())
'''


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray instance with 2 CPUs and a small object store."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but Ray is not importable: .ci/run installs the project with "
                        "its [cluster] extra", pytrace=False)
        pytest.skip("Ray is not installed: pip install -e '.[cluster]' to test the Ray executor")
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 1024**2,
             include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray_backbone") / "ray_test_conv.py"
    path.write_text(BACKBONE)
    return path


def config(phantoms: Path, backbone_file: Path, cache: Path, results: Path,  # noqa: F811
           **kwargs) -> RunConfig:
    return RunConfig(model=str(backbone_file), fractions=(0.5, 1.0), seeds=(0, 1),
                     profile=PROFILES.get("tiny"), cache_dir=cache, results_dir=results,
                     tasks=TASKS, data_dir=phantoms, progress=False, workers=0, **kwargs)


@pytest.fixture(scope="module")
def ray_reference(ray_cluster, phantoms, backbone_file, tmp_path_factory):  # noqa: F811
    """One sweep through the Ray executor: features extracted by Ray workers into a fresh
    cache, cells computed as Ray tasks, stored in SQLite."""
    root = tmp_path_factory.mktemp("ray_reference")
    report = run(config(phantoms, backbone_file, root / "cache", root / "results",
                        executor="ray"))
    return root, report


def test_ray_and_local_executors_store_identical_results(ray_reference, phantoms,  # noqa: F811
                                                         backbone_file, tmp_path):
    root, report = ray_reference
    assert len(report.cells) == CELLS and all(c.computed for c in report.cells)
    ext = report.extraction
    assert ext.computed == ext.volumes > 0 and ext.cached == 0 and ext.forward_calls > 0
    # the local executor on the cache the Ray workers wrote: every row, prediction and
    # person identical (identity, provenance, metric values), and nothing re-encoded
    local = run(config(phantoms, backbone_file, root / "cache", tmp_path / "local"))
    assert local.extraction.computed == 0 and local.extraction.cached == ext.volumes
    ray_store = ResultStore(default_url(root / "results"))
    local_store = ResultStore(default_url(tmp_path / "local"))
    assert rows(ray_store) == rows(local_store) and len(rows(ray_store)) > CELLS
    ids = sorted(c.cell_id for c in report.cells)
    assert sorted(c.cell_id for c in local.cells) == ids
    assert ray_store.predictions(ids) == local_store.predictions(ids)
    assert ray_store.persons(ids) == local_store.persons(ids)
    # and the features themselves: Ray workers (one torch thread) vs this process
    fresh = run(config(phantoms, backbone_file, tmp_path / "cache", tmp_path / "fresh"))
    assert fresh.extraction.computed == ext.volumes
    entries = sorted((root / "cache" / "features").rglob("*.npz"))
    assert len(entries) == ext.volumes
    for entry in entries:
        ours = FeatureCache(tmp_path / "cache" / "features").load(entry.stem)
        theirs = FeatureCache(root / "cache" / "features").load(entry.stem)
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def _pids(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_a_worker_killed_mid_extraction_is_restarted_and_nothing_is_lost(
        ray_reference, phantoms, backbone_file, tmp_path):  # noqa: F811
    log, delay = backbone_file.parent / "pids.log", backbone_file.parent / "delay"
    log.unlink(missing_ok=True)
    delay.write_text("0.3")  # each forward call sleeps: the kill lands inside a shard
    cache = tmp_path / "cache"
    killed: list[int] = []
    seen: set[int] = set()  # processes that had encoded when the kill came

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _pids(log) and any((cache / "features").rglob("*.npz")):
                seen.update(_pids(log))
                killed.append(_pids(log)[0])
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    try:
        report = run(config(phantoms, backbone_file, cache, tmp_path / "results",
                            executor="ray"))
    finally:
        delay.unlink()
        killer.join(5)
    assert killed, "no worker was seen encoding"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # that worker is gone ...
    # ... and a process that had not encoded before (its actor, restarted) took over
    assert set(_pids(log)) - seen, "no worker started after the kill"
    # every cell stored once, every row present, identical to the undisturbed Ray sweep
    assert len(report.cells) == CELLS and all(c.computed for c in report.cells)
    store = ResultStore(default_url(tmp_path / "results"))
    frame = store.frame()
    assert not frame.duplicated(["cell_id", "metric"]).any()
    assert rows(store) == rows(ResultStore(default_url(ray_reference[0] / "results")))
    # and every volume is in the cache: a rerun encodes nothing and computes nothing
    again = run(config(phantoms, backbone_file, cache, tmp_path / "results", executor="ray"))
    assert again.extraction.computed == 0 and not any(c.computed for c in again.cells)


def _stored_cells(db: Path) -> int:
    """Cells in the SQLite store now (a light poll: no engine, no schema check)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(DISTINCT cell_id) FROM results").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_a_killed_driver_resumes_without_recomputing_volumes_or_cells(
        ray_cluster, ray_reference, phantoms, backbone_file, tmp_path):  # noqa: F811
    cache, results = tmp_path / "cache", tmp_path / "results"
    command = [sys.executable, "-m", "brainbench.cli", "run", "--executor", "ray",
               "--ray-address", ray_cluster, "--model", str(backbone_file), "--profile", "tiny",
               "--tasks", ",".join(TASKS), "--fraction", "0.5,1", "--seeds", "0,1",
               "--data", str(phantoms), "--cache", str(cache), "--results", str(results),
               "--workers", "0", "--no-progress"]
    env = {**os.environ, "BRAINBENCH_RAY_CELLS_PER_TASK": "1"}  # one cell per Ray task
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    db = results / "results.db"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            if _stored_cells(db):
                break
            time.sleep(0.01)
        assert driver.poll() is None, f"the driver ended before it was killed: {driver.stderr.read()}"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(30)
    before = ResultStore(default_url(results)).frame()
    stored = set(before.cell_id)
    assert 0 < len(stored) < CELLS, f"kill after the first cells, before the last: {len(stored)}"
    volumes = sorted((cache / "features").rglob("*.npz"))
    mtimes = {p: p.stat().st_mtime_ns for p in volumes}

    report = run(config(phantoms, backbone_file, cache, results, executor="ray"))
    assert report.extraction.computed == 0, "finished volumes were encoded again"
    assert {p: p.stat().st_mtime_ns for p in volumes} == mtimes
    assert {c.cell_id for c in report.cells if not c.computed} == stored
    assert len([c for c in report.cells if c.computed]) == CELLS - len(stored)
    after = ResultStore(default_url(results)).frame()
    assert not after.duplicated(["cell_id", "metric"]).any()
    kept = after[after.cell_id.isin(stored)].sort_values(["cell_id", "metric"])
    old = before.sort_values(["cell_id", "metric"])
    assert kept.created_at.tolist() == old.created_at.tolist()  # not rewritten
    reference = ResultStore(default_url(ray_reference[0] / "results"))
    assert rows(ResultStore(default_url(results))) == rows(reference)


def test_a_sweep_through_ray_into_postgresql_matches_the_local_executor(
        ray_reference, pg_url, phantoms, backbone_file, tmp_path):  # noqa: F811
    root, _ = ray_reference  # its cache: the features Ray workers extracted
    report = run(config(phantoms, backbone_file, root / "cache", tmp_path / "results",
                        executor="ray", db_url=pg_url))
    assert len(report.cells) == CELLS and all(c.computed for c in report.cells)
    local = run(config(phantoms, backbone_file, root / "cache", tmp_path / "local"))
    assert local.extraction.computed == 0
    pg, lite = ResultStore(pg_url), ResultStore(default_url(tmp_path / "local"))
    assert pg.engine.dialect.name == "postgresql"
    assert rows(pg) == rows(lite) == rows(ResultStore(default_url(root / "results")))
    ids = sorted(c.cell_id for c in report.cells)
    assert pg.predictions(ids) == lite.predictions(ids)
    # a rerun through Ray finds every cell on the server and computes nothing
    assert not any(c.computed for c in run(config(
        phantoms, backbone_file, root / "cache", tmp_path / "results", executor="ray",
        db_url=pg_url)).cells)


# ---------------------------------------------------------------- errors (no cluster needed)

def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
            "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results"),
            "--no-progress", *extra]


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(_argv(tmp_path, "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray" in err and "pip install 'brainbench[cluster]'" in err
    assert "Traceback" not in err and not (tmp_path / "cache").exists()  # nothing started


def test_unknown_executor_and_a_ray_address_without_ray_are_refused(tmp_path, capsys):
    assert main(_argv(tmp_path, "--executor", "dask")) == 2
    assert "--executor 'dask': expected one of local, ray" in capsys.readouterr().err
    assert main(_argv(tmp_path, "--ray-address", "127.0.0.1:6379")) == 2
    assert "pass --executor ray" in capsys.readouterr().err


def test_cells_per_ray_task_must_be_a_positive_whole_number(monkeypatch):
    from brainbench.errors import BenchError
    from brainbench.executors.ray_executor import CELLS_ENV, _groups

    monkeypatch.setenv(CELLS_ENV, "3")
    assert [len(g) for g in _groups(list(range(8)), cpus=2)] == [3, 3, 2]
    monkeypatch.delenv(CELLS_ENV)
    assert [len(g) for g in _groups(list(range(8)), cpus=2)] == [4, 4]  # spread over CPUs
    for bad in ("0", "two"):
        monkeypatch.setenv(CELLS_ENV, bad)
        with pytest.raises(BenchError, match=f"{CELLS_ENV}='{bad}': expected a whole number"):
            _groups(list(range(8)), cpus=2)


def test_a_worker_whose_backbone_differs_from_the_drivers_stops_with_both_identities(
        ray_cluster):
    import ray

    from brainbench.errors import BenchError
    from brainbench.executors.ray_executor import Encoder, RayExecutor, identity_digest

    from .helpers import TinyBackbone

    driver = TinyBackbone(seed=1)  # what the driver built; the worker builds seed 0
    executor = RayExecutor()  # joins the running instance, and leaves it running
    actor = ray.remote(Encoder).options(num_cpus=1).remote(TinyBackbone(seed=0),
                                                           identity_digest(driver), False)
    with pytest.raises(BenchError, match="with another identity than the driver's") as error:
        executor._get(actor.pid.remote())
    assert identity_digest(driver)[:12] in str(error.value)
    assert identity_digest(TinyBackbone(seed=0))[:12] in str(error.value)
    executor.close()
    assert ray.is_initialized()
