"""Concurrent local runs: two processes writing one SQLite store both finish with every row,
a writer waits out another's long lock (and a lock that never ends is a BenchError, not a
traceback), and two runs of one cell share one optuna study without exceeding its budget."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import optuna
import pytest

import brainbench.store as store_module
from brainbench.errors import BenchError
from brainbench.search import fit_protocol
from brainbench.store import ResultStore

from .test_protocols import fast, signal_data
from .test_store import cell

CELLS_PER_WRITER = 15


def write_many(url: str, offset: int) -> None:  # runs in a spawned process
    store = ResultStore(url)
    for i in range(CELLS_PER_WRITER):
        store.write_cell(cell(seed=offset + i), {"mae": float(i), "pearson_r": 0.5},
                         [(f"s{j}", 30.0 + j, 31.0 + j) for j in range(20)])


def test_two_processes_write_one_sqlite_store_and_every_row_is_there(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_many, args=(url, offset)) for offset in (0, 1000)]
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


def test_a_writer_waits_out_a_six_second_lock(tmp_path):
    path = tmp_path / "r.db"
    store = ResultStore(f"sqlite:///{path}")
    started = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(path, 6.0, started))
    holder.start()
    started.wait(10)
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
    path = tmp_path / "r.db"
    store = ResultStore(f"sqlite:///{path}")
    started = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(path, 3.0, started))
    holder.start()
    started.wait(10)
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
