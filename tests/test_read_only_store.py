"""An archived store on a read-only file system is read (SQLite opened immutable: a WAL store
cannot write its -shm file there), and never written: a store that would need migrating says
to copy it somewhere writable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import brainbench.store as store_module
from brainbench.cli import main
from brainbench.store import ResultStore
from tests.test_stats import build_store

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store_v1" / "results.db"


def _read_only(monkeypatch, folder: Path) -> None:
    """root ignores permission bits: report the folder and its files read-only as os.access
    would on a read-only mount."""
    real = os.access
    monkeypatch.setattr(store_module.os, "access", lambda p, mode: False if (
        mode & os.W_OK and Path(p).resolve().is_relative_to(folder.resolve())) else real(p, mode))


def test_a_store_in_a_read_only_folder_is_read_as_is(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "archive"
    build_store(folder / "results.db", backbones=("base",), tasks=("brain_age",)).close()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _read_only(monkeypatch, folder)
    store = ResultStore(f"sqlite:///{folder / 'results.db'}", create=False)
    assert store.read_only and "immutable=1" in str(store.engine.url)
    assert len(store.cells()) == 9  # 3 fractions x 3 seeds
    store.close()
    capsys.readouterr()
    assert main(["results", "--results", str(folder)]) == 0
    assert "brain_age" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written


def test_a_read_only_store_that_needs_migrating_says_to_copy_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(FIXTURE_V1, folder / "results.db")
    before = (folder / "results.db").read_bytes()
    _read_only(monkeypatch, folder)
    assert main(["results", "--results", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is in a read-only folder and needs migrating" in err and "Traceback" not in err
    assert (folder / "results.db").read_bytes() == before
