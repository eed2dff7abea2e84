"""Store schema versions: a store of the first release opens (migrated, every row kept, the same
table printed), a newer or damaged store is refused clearly and left unchanged, and export ->
import through the store writes identical rows."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.results_io import export_results, import_results
from brainbench.store import MIGRATIONS, STORE_SCHEMA, ResultStore

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
RESULT_ROWS, CELLS, PREDICTIONS = 142, 38, 256


@pytest.fixture
def v1_copy(tmp_path) -> Path:
    path = tmp_path / "v1" / "results.db"
    path.parent.mkdir()
    shutil.copy(FIXTURE / "results.db", path)
    return path


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def tables(path: Path) -> set[str]:
    return {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def indexes(path: Path) -> set[str]:
    return {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_fixture_is_a_first_release_store():
    assert tables(FIXTURE / "results.db") == {"results", "predictions"}
    assert STORE_SCHEMA == 5 and len(MIGRATIONS) == STORE_SCHEMA - 1


def test_v1_store_migrates_and_keeps_every_row(v1_copy):
    before_results = rows(v1_copy, "SELECT * FROM results ORDER BY id")
    before_preds = rows(v1_copy, "SELECT * FROM predictions ORDER BY id")
    store = ResultStore(url(v1_copy))
    assert store.schema_version == STORE_SCHEMA
    assert rows(v1_copy, "SELECT name, version FROM brainbench_schema") == [("store",
                                                                            STORE_SCHEMA)]
    assert "ux_results_cell_metric" in indexes(v1_copy)  # the 1 -> 2 step
    # the 3 -> 4 step adds results.precision, NULL (= fp32, all the first release ran) and
    # the analyses table; the 4 -> 5 step results.split, NULL (= the standard split)
    assert rows(v1_copy, "SELECT * FROM results ORDER BY id") == [
        (*row, None, None) for row in before_results]
    assert "analyses" in tables(v1_copy)
    # the 2 -> 3 step adds predictions.person, NULL (unknown) for every earlier prediction
    assert rows(v1_copy, "SELECT * FROM predictions ORDER BY id") == [
        (*row, None) for row in before_preds]
    frame = store.frame()
    assert len(frame) == RESULT_ROWS and frame["cell_id"].nunique() == CELLS
    cells = store.cells(with_predictions=True)
    assert len(cells) == CELLS
    for item in cells:  # the identity hash of the first release is the current one
        assert item.cell.cell_id == item.cell_id and item.cell.precision == "fp32"
        assert item.cell.split == ""
    assert sum(len(item.predictions) for item in cells) == PREDICTIONS
    preds = store.predictions(frame["cell_id"])
    assert sum(map(len, preds.values())) == PREDICTIONS
    # a current store opens without writing anything
    stamped = v1_copy.read_bytes()
    assert ResultStore(url(v1_copy)).schema_version == STORE_SCHEMA
    assert v1_copy.read_bytes() == stamped


def _table(v1_copy: Path, tmp_path: Path, capsys, *options: str) -> list[str]:
    code = main(["table", "--fraction", "0.5", "--profile", "tiny", "--db", url(v1_copy),
                 "--out", str(tmp_path / "reports"), *options])
    out = capsys.readouterr().out
    assert code == 0
    return [line for line in out.splitlines() if not line.startswith("written: ")]


def test_table_of_a_v1_store_is_what_the_first_release_printed(v1_copy, tmp_path, capsys):
    """With the first release's resampling (people only, heads fixed), every table row -
    means, intervals, marks, ranks, McNemar - is what it printed; the notes say more now
    (the resampling, the minimum detectable difference, the per-sample fallback)."""
    printed = _table(v1_copy, tmp_path, capsys, "--resample", "people")
    expected = (FIXTURE / "table_f0.5.md").read_text().splitlines()

    def cells(lines):
        return [[c.strip().strip("*").strip() for c in line.strip("|").split("|")]
                for line in lines if line.startswith("|") and not line.startswith("|--")]

    now, then = cells(printed), cells(expected)
    # the chance row (shuffled labels) is new: one per table, every probe task filled in
    chance = [row for row in now if row[0] == "chance (shuffled labels)"]
    assert len(chance) == 1 and chance[0][1] == "CONTROL"
    assert sum(c.startswith("0.") for c in chance[0][3:9]) >= 5
    now = [row for row in now if row[0] != "chance (shuffled labels)"]
    assert len(now) == len(then) and now[0] == then[0]
    for row_now, row_then in zip(now, then):
        for column, (a, b) in enumerate(zip(row_now, row_then)):
            if then[0][column] == "tumor_seg dice_wt ↑" and b not in ("–", ""):
                # segmentation now stores per-subject scores: the same mean, with an interval
                assert a.startswith(b.split(" ")[0] + " [") or a == b, (a, b)
            else:
                assert a == b, (then[0][column], a, b)
    assert {line for line in expected if not line.startswith("|")} - set(printed) <= {
        # the notes that were reworded, nothing else
        line for line in expected if "subject-level bootstrap interval" in line
        or "on the same test subjects, Holm" in line or "dice_wt cannot be recomputed" in line
        or line.startswith("- Survival intervals")}
    notes = "\n".join(printed)
    assert "Minimum detectable difference" in notes and "resampled per sample" in notes


def test_two_level_bootstrap_widens_intervals_and_keeps_the_means(v1_copy, tmp_path, capsys):
    people = _table(v1_copy, tmp_path, capsys, "--resample", "people")
    both = _table(v1_copy, tmp_path, capsys)  # default: seeds and people
    assert "two-level bootstrap over training subsets (seeds) and test people" in "\n".join(both)
    rows_p = [line for line in people if line.startswith("| braindino {linear}")]
    rows_b = [line for line in both if line.startswith("| braindino {linear}")]
    assert rows_p != rows_b
    import re

    def cells(line):
        return re.findall(r"([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", line)

    pairs = list(zip(cells(rows_p[0]), cells(rows_b[0])))
    assert len(pairs) >= 7 and all(m1 == m2 for (m1, *_), (m2, *_) in pairs)  # same means
    width = [sum(float(hi) - float(lo) for _, lo, hi in side) for side in zip(*pairs)]
    assert width[1] > width[0]  # seed variation widens the intervals


def test_newer_store_is_refused_and_left_alone(v1_copy, capsys):
    ResultStore(url(v1_copy))
    with sqlite3.connect(v1_copy) as conn:
        conn.execute("UPDATE brainbench_schema SET version = ?", (STORE_SCHEMA + 1,))
    before = v1_copy.read_bytes()
    with pytest.raises(BenchError, match=rf"store schema version {STORE_SCHEMA + 1}.*"
                                         rf"reads versions 1 to {STORE_SCHEMA}.*Upgrade "
                                         "brainbench.*new results folder"):
        ResultStore(url(v1_copy))
    assert v1_copy.read_bytes() == before
    # through the CLI: a one-line error, no traceback
    assert main(["table", "--db", url(v1_copy), "--out", str(v1_copy.parent)]) != 0
    assert "error: results store" in capsys.readouterr().err


def test_store_lacking_a_column_is_refused(v1_copy, tmp_path):
    with sqlite3.connect(v1_copy) as conn:
        conn.execute("ALTER TABLE results DROP COLUMN split_hash")
    with pytest.raises(BenchError, match="table 'results' lacks column.*split_hash.*store "
                                         "schema 1.*new results folder"):
        ResultStore(url(v1_copy))
    assert tables(v1_copy) == {"results", "predictions"}  # not stamped
    # a current store damaged the same way
    current = tmp_path / "current.db"
    ResultStore(url(current))
    with sqlite3.connect(current) as conn:
        conn.execute("ALTER TABLE predictions DROP COLUMN target")
    with pytest.raises(BenchError, match=f"table 'predictions' lacks column.*target.*store "
                                         f"schema {STORE_SCHEMA}"):
        ResultStore(url(current))


def test_foreign_or_damaged_stores_are_refused(tmp_path):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, score REAL)")
    with pytest.raises(BenchError, match="lacks column.*backbone.*cell_id"):
        ResultStore(url(foreign))
    half = tmp_path / "half.db"
    ResultStore(url(half))
    with sqlite3.connect(half) as conn:
        conn.execute("DELETE FROM brainbench_schema")
    with pytest.raises(BenchError, match="instead of one version row"):
        ResultStore(url(half))


def test_failed_migration_leaves_the_store_unchanged(v1_copy):
    """The 1 -> 2 step refuses a store with a doubled (cell, metric) row; the version table it
    would have created and the index are rolled back with it (transactional DDL on SQLite)."""
    with sqlite3.connect(v1_copy) as conn:
        conn.execute("INSERT INTO results SELECT NULL, cell_id, backbone, weights_id, "
                     "weights_status, weights_sha256, task, dataset, data_source, profile, "
                     "head, fraction, seed, metric, value, n_train, n_test, hyperparameters, "
                     "selection, code_version, config_hash, split_hash, subset_hash, cache_key, "
                     "created_at FROM results WHERE id = 1")
    before = v1_copy.read_bytes()
    with pytest.raises(BenchError, match="cannot migrate store schema 1 to 2.*same metric "
                                         "twice.*nothing was changed"):
        ResultStore(url(v1_copy))
    assert v1_copy.read_bytes() == before
    assert tables(v1_copy) == {"results", "predictions"}
    assert "ux_results_cell_metric" not in indexes(v1_copy)


def test_export_import_round_trip_writes_identical_rows(v1_copy, tmp_path):
    source = ResultStore(url(v1_copy))
    paths = export_results(source, tmp_path / "export")
    assert len(paths) == len(set(zip(source.frame().backbone, source.frame().task)))
    target_db = tmp_path / "copy" / "results.db"
    target = ResultStore(url(target_db))
    reports = [import_results(target, p) for p in paths]
    assert sum(r.cells for r in reports) == CELLS and not any(r.replaced for r in reports)
    columns = ("cell_id, backbone, weights_id, weights_status, weights_sha256, task, dataset, "
               "data_source, profile, head, fraction, seed, metric, value, n_train, n_test, "
               "hyperparameters, selection, code_version, config_hash, split_hash, "
               "subset_hash, cache_key, created_at")
    results_sql = f"SELECT {columns} FROM results ORDER BY cell_id, metric"
    preds_sql = ("SELECT cell_id, sample_id, target, prediction FROM predictions "
                 "ORDER BY cell_id, id")
    # an import records what it could verify under hyperparameters["import_verification"]
    # (brainbench.results_io); everything else is identical
    def without_verification(table):
        out = []
        for row in table:
            hyper = json.loads(row[16])
            assert hyper.pop("import_verification", None) is not None or table is source_rows
            out.append((*row[:16], json.dumps(hyper, sort_keys=True), *row[17:]))
        return out

    source_rows = rows(v1_copy, results_sql)
    assert without_verification(rows(target_db, results_sql)) == without_verification(
        source_rows)

    def decoded(path):  # the results file sorts JSON object keys (segmentation predictions)
        return [(c, s, json.loads(t), json.loads(p)) for c, s, t, p in rows(path, preds_sql)]

    assert decoded(target_db) == decoded(v1_copy)
    assert len(decoded(target_db)) == PREDICTIONS
    # importing again replaces every cell with the same rows
    again = [import_results(target, p) for p in paths]
    assert sum(r.replaced for r in again) == CELLS
    assert without_verification(rows(target_db, results_sql)) == without_verification(
        source_rows)
