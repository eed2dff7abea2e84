"""Fault injection: what a crash, a second process, a broken disk or a dishonest submitter
does to the caches and the store. Each fault class, and what must hold after it:

1. kill -9 (SIGKILL: no handler, no cleanup runs) during feature extraction, in the middle of
   writing a cache entry: only complete entries are hits; the rerun computes only the rest.
2. kill -9 inside a store transaction: the cell being written is absent (no partial rows),
   the store is intact and takes the cell on the rerun.
3. kill -9 during an optuna search: the trials finished before the kill are kept, the trial
   left RUNNING is failed by its heartbeat (or, killed before its first heartbeat, by its
   age), and the resumed search runs only the missing trials, so the budget N still means N.
4. Concurrent writers: two processes writing one SQLite store, a writer blocked by another's
   long lock, a lock outlasting every retry, two runs of one cell sharing one search budget.
5. Corrupt files: a store that is not a database or has damaged pages, malformed voxel-hash
   caches, feature-cache entries of the wrong shape, dtype, names or content.
6. Forged imports refused by the CLI leave the results folder exactly as it was (no store is
   created); the field-by-field forgeries are in tests/test_import_forgery.py.

The killed processes kill themselves at the injection point (``os.kill(os.getpid(),
SIGKILL)``), so the fault lands at the same place on every run.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

import brainbench.store as store_module
from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.features import FeatureCache, extract_features
from brainbench.leakage import HashCache, voxel_hash
from brainbench.search import fit_protocol
from brainbench.store import ResultStore
from tests.helpers import TinyBackbone, random_brain, write_nifti
from tests.test_cli_errors import _fails, results_file  # noqa: F401 - a fixture
from tests.test_protocols import fast, signal_data
from tests.test_store import cell

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second run would be


def _killed(target, *args) -> None:
    """Run `target(*args)` in a fresh process that must die of SIGKILL (exit code -9)."""
    process = SPAWN.Process(target=target, args=args)
    process.start()
    process.join(180)
    assert process.exitcode == -signal.SIGKILL, f"exit code {process.exitcode}"


def _kill_me() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------ 1. kill during extraction

def _volumes(root: Path) -> list[Path]:
    return [write_nifti(root / f"v{i}.nii.gz", random_brain(i)) for i in range(5)]


def extract_then_die_in_third_write(cache_dir: str, image_dir: str) -> None:  # spawned
    real = np.savez
    saves = []

    def savez(handle, **tokens):
        saves.append(1)
        if len(saves) == 3:  # half an entry on disk, then the kill
            handle.write(b"PK\x03\x04 half an npz")
            handle.flush()
            _kill_me()
        real(handle, **tokens)

    np.savez = savez
    extract_features(TinyBackbone(slices=4), _volumes(Path(image_dir)),
                     FeatureCache(Path(cache_dir)), batch_size=4, progress=False, workers=0)


def test_kill_during_extraction_leaves_only_complete_entries(tmp_path):
    volumes = _volumes(tmp_path / "img")
    _killed(extract_then_die_in_third_write, str(tmp_path / "cache"), str(tmp_path / "img"))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len([p for p in files if not p.name.startswith(".")]) == 2  # the finished volumes
    assert [p for p in files if p.name.endswith(".tmp.npz")]  # the kill left its temp file

    resumed = TinyBackbone(slices=4)
    warm, stats = extract_features(resumed, volumes, FeatureCache(tmp_path / "cache"),
                                   batch_size=4, progress=False, workers=0)
    assert (stats.cached, stats.computed, resumed.calls) == (2, 3, 3)
    clean, _ = extract_features(TinyBackbone(slices=4), volumes, FeatureCache(tmp_path / "b"),
                                batch_size=4, progress=False, workers=0)
    for path in volumes:
        np.testing.assert_array_equal(warm[path]["cls"], clean[path]["cls"])


# --------------------------------------------------------------- 2. kill inside a transaction

def write_then_die_mid_transaction(url: str) -> None:  # spawned
    from sqlalchemy import event

    store = ResultStore(url)
    for seed in range(3):
        store.write_cell(cell(seed=seed), {"mae": 1.0, "pearson_r": 0.5},
                         [(f"s{j}", 30.0 + j, 31.0 + j) for j in range(10)])

    def after(_conn, _cursor, statement, *_rest):
        if statement.lstrip().upper().startswith("INSERT"):
            _kill_me()  # the first row of the fourth cell is written, the rest is not

    event.listen(store.engine, "after_cursor_execute", after)
    store.write_cell(cell(seed=3), {"mae": 2.0, "pearson_r": 0.6},
                     [(f"s{j}", 30.0 + j, 31.0 + j) for j in range(10)])


def test_kill_inside_a_store_transaction_writes_nothing_of_that_cell(tmp_path):
    path = tmp_path / "r.db"
    _killed(write_then_die_mid_transaction, f"sqlite:///{path}")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = ResultStore(f"sqlite:///{path}")
    assert [store.has_cell(cell(seed=s).cell_id) for s in range(4)] == [True] * 3 + [False]
    assert len(store.frame()) == 3 * 2
    assert not store.predictions([cell(seed=3).cell_id]).get(cell(seed=3).cell_id)
    store.write_cell(cell(seed=3), {"mae": 2.0}, [("s0", 1.0, 2.0)])  # the rerun stores it
    assert store.has_cell(cell(seed=3).cell_id)


# --------------------------------------------------------------------- 3. kill during search

SEARCH_TRIALS = 6


def search_then_die_in_fourth_trial(url: str) -> None:  # spawned
    import brainbench.search as search

    real, calls = search.make_head, []

    def make_head(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # trial 4 is RUNNING in the study when the process dies
            _kill_me()
        return real(*args, **kwargs)

    search.make_head = make_head
    X, y = signal_data(60, seed=3)
    fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=SEARCH_TRIALS,
                 storage_url=url, study_name="brainbench-killed")


def test_kill_during_a_search_resumes_only_the_missing_trials(tmp_path, monkeypatch):
    import brainbench.search as search

    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    _killed(search_then_die_in_fourth_trial, url)
    states = [t.state for t in optuna.load_study(study_name="brainbench-killed",
                                                 storage=url).trials]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert sum(s in finished for s in states) == 3
    assert states.count(optuna.trial.TrialState.RUNNING) == 1

    real_storage, fits = search.optuna_storage, []

    def quick_heartbeat(storage_url):  # the 60 s grace period, shortened for the test
        storage = real_storage(storage_url)
        storage.grace_period = 1
        return storage

    monkeypatch.setattr(search, "optuna_storage", quick_heartbeat)
    real_head = search.make_head
    monkeypatch.setattr(search, "make_head", lambda *a, **k: fits.append(1) or real_head(*a, **k))
    time.sleep(2.5)  # past the 1 s grace: SQLite's clock for heartbeats has 1 s resolution
    X, y = signal_data(60, seed=3)
    fitted = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=SEARCH_TRIALS,
                          storage_url=url, study_name="brainbench-killed")
    assert len(fits) == 3 + 1  # the three missing trials and the refit, nothing redone
    trials = optuna.load_study(study_name="brainbench-killed", storage=url).trials
    assert sum(t.state in finished for t in trials) == SEARCH_TRIALS
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 1  # the killed one
    assert fitted.info.hyperparameters["trials"] == SEARCH_TRIALS


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_killed_before_its_first_heartbeat_frees_its_budget_slot(tmp_path, monkeypatch):
    """Optuna writes a trial's first heartbeat from a thread; a run killed before it leaves a
    RUNNING trial with no heartbeat, which optuna itself never fails."""
    import brainbench.search as search

    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    real_storage = search.optuna_storage

    def quick_heartbeat(storage_url):
        storage = real_storage(storage_url)
        storage.grace_period = 1
        return storage

    study = optuna.create_study(storage=quick_heartbeat(url), study_name="orphaned",
                                direction="maximize")
    study.ask()  # the trial row a killed run leaves: RUNNING, never beaten
    monkeypatch.setattr(search, "optuna_storage", quick_heartbeat)
    X, y = signal_data(60, seed=3)
    trials_of = lambda: optuna.load_study(study_name="orphaned", storage=url).trials  # noqa: E731
    fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=2,
                 storage_url=url, study_name="orphaned")  # within the grace: left alone
    assert [t.state for t in trials_of()].count(optuna.trial.TrialState.RUNNING) == 1
    time.sleep(1.5)  # datetime_start is Python's clock, to the microsecond
    fitted = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=3,
                          storage_url=url, study_name="orphaned")
    states = [t.state for t in trials_of()]
    assert states[0] == optuna.trial.TrialState.FAIL
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert sum(s in finished for s in states) == 3  # the full budget, none held by the orphan
    assert fitted.info.hyperparameters["trials"] == 3


# ------------------------------------------------------------------- 4. concurrent writers

CELLS_PER_WRITER = 15


def write_many(url: str, offset: int) -> None:  # spawned
    store = ResultStore(url)
    for i in range(CELLS_PER_WRITER):
        store.write_cell(cell(seed=offset + i), {"mae": float(i), "pearson_r": 0.5},
                         [(f"s{j}", 30.0 + j, 31.0 + j) for j in range(20)])


def test_two_processes_write_one_sqlite_store_and_every_row_is_there(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    workers = [SPAWN.Process(target=write_many, args=(url, offset)) for offset in (0, 1000)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    store = ResultStore(url)
    for offset in (0, 1000):
        for i in range(CELLS_PER_WRITER):
            assert store.has_cell(cell(seed=offset + i).cell_id)
    assert len(store.frame()) == 2 * 2 * CELLS_PER_WRITER  # two metrics per cell
    with sqlite3.connect(tmp_path / "r.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def hold_write_lock(path, seconds: float, started: threading.Event) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")  # the write lock, as a long transaction holds it
    started.set()
    time.sleep(seconds)
    raw.execute("ROLLBACK")
    raw.close()


def locked_store(path, seconds: float) -> tuple[ResultStore, threading.Thread]:
    """A store at ``path`` whose write lock another connection holds for ``seconds``."""
    store = ResultStore(f"sqlite:///{path}")
    started = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(path, seconds, started))
    holder.start()
    started.wait(10)
    return store, holder


def test_a_writer_waits_out_a_six_second_lock(tmp_path):
    store, holder = locked_store(tmp_path / "r.db", 6.0)
    begun = time.perf_counter()
    store.write_cell(cell(), {"mae": 1.0}, [("s1", 1.0, 2.0)])
    waited = time.perf_counter() - begun
    holder.join()
    assert waited > 4.0  # it really waited for the lock ...
    assert store.has_cell(cell().cell_id)  # ... and then stored the cell


def test_a_lock_that_outlasts_every_retry_is_a_bench_error_and_stores_nothing(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(store_module, "SQLITE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store_module, "_WRITE_ATTEMPTS", 2)
    monkeypatch.setattr(store_module, "_WRITE_BACKOFF_S", 0.05)
    store, holder = locked_store(tmp_path / "r.db", 3.0)
    with pytest.raises(BenchError, match=r"stayed locked by another process.*not stored"):
        store.write_cell(cell(seed=5), {"mae": 1.0}, [])
    holder.join()
    assert not store.has_cell(cell(seed=5).cell_id)


def test_two_runs_of_one_cell_share_the_study_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    X, y = signal_data(60, seed=3)
    trials, errors = 6, []

    def run() -> None:
        try:
            fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=trials,
                         storage_url=url, study_name="brainbench-shared")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    study = optuna.load_study(study_name="brainbench-shared", storage=url)
    scored = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                     optuna.trial.TrialState.PRUNED)]
    assert len(scored) == trials  # N means N across both runs
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    # a later run of the same cell finds the budget spent and runs nothing
    before = len(study.trials)
    fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=trials,
                 storage_url=url, study_name="brainbench-shared")
    assert len(optuna.load_study(study_name="brainbench-shared", storage=url).trials) == before


def test_an_unrelated_cell_keeps_its_own_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    X, y = signal_data(60, seed=3)
    for name, n in (("brainbench-a", 2), ("brainbench-b", 3)):
        fitted = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=n,
                              storage_url=url, study_name=name)
        assert sum(fitted.trials.get(s, 0) for s in ("complete", "pruned")) == n


# ------------------------------------------------------------------------ 5. corrupt files

def test_corrupt_store_file(tmp_path, capsys, results_file):
    (tmp_path / "results.db").write_bytes(b"this is not an sqlite database" * 40)
    _fails(capsys, ["results", "--results", str(tmp_path)], str(tmp_path / "results.db"),
           "file is not a database")
    _fails(capsys, ["import", str(results_file), "--results", str(tmp_path)],
           str(tmp_path / "results.db"))


@pytest.mark.parametrize("damaged", ["all but the first page", "the last pages"])
def test_store_with_damaged_pages(tmp_path, capsys, results_file, damaged):
    source = tmp_path / "src"
    assert main(["import", str(results_file), "--results", str(source)]) == 0
    capsys.readouterr()
    with sqlite3.connect(source / "results.db") as raw:  # everything into the main file
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray((source / "results.db").read_bytes())
    page = 4096
    assert len(data) > 3 * page
    start = page if damaged == "all but the first page" else len(data) - 2 * page
    data[start:] = np.random.default_rng(0).bytes(len(data) - start)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "results.db").write_bytes(bytes(data))
    # the first damage is met on opening; the second only where predictions are read
    _fails(capsys, ["results", "--results", str(folder)] if start == page else
           ["export", "--results", str(folder), "--out", str(tmp_path / "out")],
           "results store", str(folder / "results.db") if start == page else "malformed")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_malformed_hash_cache_is_rebuilt_with_a_note(tmp_path, caplog):
    brain = write_nifti(tmp_path / "a.nii.gz", random_brain(0))
    for content in ("{not json", "[1, 2]", json.dumps({"schema": 2, "entries": [1]}),
                    json.dumps({"schema": 2, "entries": {"k": 5}})):
        path = tmp_path / "hashes.json"
        path.write_text(content)
        with caplog.at_level(logging.WARNING, logger="brainbench"):
            cache = HashCache(path)
        assert cache.entries == {} and str(path) in caplog.text
        caplog.clear()
        assert cache.hashes([brain])[brain] == voxel_hash(brain)
        assert json.loads(path.read_text())["schema"] == 2  # rewritten whole
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(BenchError, match=f"{folder} is a folder"):
        HashCache(folder)


def test_bad_feature_cache_entry_is_a_logged_miss(tmp_path, caplog):
    contract = SimpleNamespace(tokens=("cls", "patch_mean"), feature_dim=8)
    cache = FeatureCache(tmp_path)
    good = {"cls": np.ones((4, 8), np.float32), "patch_mean": np.zeros((4, 8), np.float32)}
    cache.save("ab" * 32, good)
    assert set(cache.load("ab" * 32, contract)) == {"cls", "patch_mean"}
    bad_entries = {
        "wrong shape": {"cls": np.ones((4, 7), np.float32), "patch_mean": np.ones((4, 7))},
        "wrong names": {"cls": np.ones((4, 8), np.float32)},
        "non-finite": {"cls": np.full((4, 8), np.nan, np.float32),
                       "patch_mean": np.ones((4, 8), np.float32)},
        "integer dtype": {"cls": np.ones((4, 8), np.int64),
                          "patch_mean": np.ones((4, 8), np.float32)},
        "item counts": {"cls": np.ones((4, 8), np.float32),
                        "patch_mean": np.ones((3, 8), np.float32)},
    }
    for i, (what, tokens) in enumerate(bad_entries.items()):
        key = f"{i:02d}" * 32
        cache.save(key, tokens)
        with caplog.at_level(logging.WARNING, logger="brainbench"):
            assert cache.load(key, contract) is None, what
        assert str(cache.path(key)) in caplog.text and "recomputing" in caplog.text, what
        caplog.clear()
    junk = cache.path("cd" * 32)
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="brainbench"):
        assert cache.load("cd" * 32, contract) is None
    assert str(junk) in caplog.text


# ----------------------------------------------------------------------- 6. forged imports

def _forged(tmp_path: Path, source: Path) -> Path:
    data = json.loads(source.read_text())
    data["cells"][0]["metrics"]["mae"] += 1.0
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(data))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The folder's files and contents; SQLite's -shm index changes on every read."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")}


def test_a_refused_import_leaves_the_results_folder_as_it_was(tmp_path, capsys, results_file):
    forged = _forged(tmp_path, results_file)
    needle = "cells[0]: field metrics.mae does not verify"
    _fails(capsys, ["import", str(forged), "--results", str(tmp_path / "new")], needle)
    assert not (tmp_path / "new").exists()  # not even the folder
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, ["import", str(results_file), str(forged), "--results", str(empty)], needle)
    assert list(empty.iterdir()) == []  # no results.db, although the first file was good
    used = tmp_path / "used"
    assert main(["import", str(results_file), "--results", str(used)]) == 0
    # the command closed its connections: SQLite folded its write-ahead log into the file
    # then, not at some later garbage collection that would rewrite the file's bytes
    assert not (used / "results.db-wal").exists()
    before = _snapshot(used)
    _fails(capsys, ["import", str(forged), "--results", str(used)], needle)
    assert _snapshot(used) == before
