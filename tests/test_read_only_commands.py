"""The commands that only read results never make a store: an empty database, a database of
another program or a mistyped --db path is an error (exit 2) and the file is left byte for
byte as it was (they used to write brainbench's schema into it, or create a new file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from brainbench.cli import main

READERS = [["results"], ["table", "--out"], ["curves", "--out"], ["leaderboard", "--out"],
           ["export", "--out"]]


def _argv(command: list[str], tmp_path: Path, *store: str) -> list[str]:
    out = [str(tmp_path / "out")] if command[-1] == "--out" else []
    return [*command, *out, *store]


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("create table foo (x integer)")
        conn.execute("insert into foo values (1)")
    conn.close()


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("make, needle", [(_empty, "holds no tables (an empty database)"),
                                          (_foreign, "only tables of another program (foo)")])
def test_a_reader_leaves_a_database_that_is_not_a_store_as_it_was(tmp_path, capsys, command,
                                                                  make, needle):
    folder = tmp_path / "results"
    folder.mkdir()
    db = folder / "results.db"
    make(db)
    before = db.read_bytes()
    assert main(_argv(command, tmp_path, "--results", str(folder))) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert needle in text and "Traceback" not in text, text
    assert db.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["results.db"]  # no -wal / -shm either


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_a_reader_given_a_missing_sqlite_file_creates_nothing(tmp_path, capsys, command):
    missing = tmp_path / "typo" / "results.db"
    assert main(_argv(command, tmp_path, "--db", f"sqlite:///{missing}")) == 2
    text = capsys.readouterr().err
    assert f"no results store at {missing}" in text and "Traceback" not in text
    assert not (tmp_path / "typo").exists()
