"""Results store: atomic cells with provenance, skip-by-identity, and honest tables."""

from dataclasses import replace

import numpy as np
import pytest

from brainbench.store import Cell, ResultStore
from brainbench.taskspec import get_task
from brainbench.leaderboard.tables import comparison_table


def cell(**changes) -> Cell:
    base = Cell(backbone="braindino", weights_id="random-init:abc", weights_status="random-init",
                weights_sha256="abc", task="brain_age", dataset="ixi", data_source="phantom:x",
                profile="cpu", head="linear", fraction=0.1, seed=0, n_train=8, n_test=16,
                hyperparameters={"alpha": 1.0}, selection="inner LOO", code_version="0.1.0",
                config_hash="c" * 64, split_hash="s" * 64, subset_hash="u" * 64,
                cache_key="k" * 64)
    return replace(base, **changes)


def test_cell_identity_ignores_provenance_but_not_setting():
    assert cell().cell_id == cell(code_version="0.2.0", cache_key="z" * 64).cell_id
    assert cell().cell_id != cell(seed=1).cell_id
    assert cell().cell_id != cell(weights_id="pretrained:def").cell_id
    assert cell().cell_id != cell(config_hash="d" * 64).cell_id


def test_write_is_atomic_and_replaces(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    c = cell()
    assert not store.has_cell(c.cell_id)
    store.write_cell(c, {"mae": 5.0, "pearson_r": 0.5}, [("s1", 30.0, 35.0), ("s2", 40.0, 38.0)])
    assert store.has_cell(c.cell_id)
    frame = store.frame()
    assert sorted(frame.metric) == ["mae", "pearson_r"]
    assert set(frame.split_hash) == {"s" * 64} and set(frame.weights_status) == {"random-init"}
    store.write_cell(c, {"mae": 4.0, "pearson_r": 0.6}, [])
    assert sorted(store.frame().value) == [0.6, 4.0]

    class Boom(dict):
        def items(self):
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        store.write_cell(cell(seed=3), Boom(), [])
    assert not store.has_cell(cell(seed=3).cell_id)


def test_table_marks_random_init_and_aggregates_over_seeds(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for seed, mae in enumerate([4.0, 6.0]):
        store.write_cell(cell(seed=seed), {"mae": mae, "pearson_r": 0.5}, [])
    store.write_cell(cell(backbone="other", weights_status="pretrained",
                          weights_id="pretrained:0123456789"), {"mae": 3.0}, [])
    text = comparison_table(store.frame(), [get_task("brain_age")])
    assert "braindino [RANDOM-INIT]" in text and "RANDOM-INIT = " in text
    assert "5.000 ± 1.414 (k=2)" in text
    assert "other (01234567)" in text and "3.000 (k=1)" in text
    assert "8 / 16" in text
    assert "†" not in text
    store.write_cell(cell(seed=2, selection="fallback: fixed alpha=1 (only 2 training samples)"),
                     {"mae": 5.0, "pearson_r": 0.5}, [])
    flagged = comparison_table(store.frame(), [get_task("brain_age")])
    assert "(k=3) †1" in flagged and "fixed-default fallback" in flagged
    pending = comparison_table(store.frame(), [get_task("brain_age")],
                               pending=[get_task("tumor_seg")])
    assert "PENDING" in pending and "tumor_seg" in pending


def test_write_cells_is_one_transaction_and_keeps_timestamps(tmp_path):
    from brainbench.errors import BenchError
    from brainbench.store import StoredCell

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    first, second = cell(seed=0), cell(seed=1)
    store.write_cells([StoredCell(first, {"mae": 1.0, "pearson_r": float("nan")},
                                  [("s1", 30.0, 31.0)], "2024-01-02T03:04:05+00:00"),
                       StoredCell(second, {"mae": 2.0}, [("s1", 30.0, 32.0)])])
    frame = store.frame(seed=0)
    assert set(frame.created_at) == {"2024-01-02T03:04:05+00:00"}
    assert frame.set_index("metric").value.isna()["pearson_r"]  # NaN is stored as NULL
    assert store.predictions([first.cell_id, second.cell_id, "unknown"]) == {
        first.cell_id: [("s1", 30.0, 31.0)], second.cell_id: [("s1", 30.0, 32.0)]}
    stored = store.cells(with_predictions=True, seed=[0, 1])
    assert [s.cell for s in stored] == sorted([first, second], key=lambda c: c.cell_id)
    assert {s.cell_id: s.metrics for s in stored}[first.cell_id] == {"mae": 1.0,
                                                                     "pearson_r": None}
    # a database error in the second cell leaves the first one as it was
    with pytest.raises(BenchError, match="writing cell.*failed.*nothing of this write"):
        store.write_cells([StoredCell(first, {"mae": 9.0}, []),
                           StoredCell(cell(seed=2), {"mae": 3.0}, [(None, 1.0, 2.0)])])
    assert list(store.frame(seed=0, metric="mae").value) == [1.0]
    assert not store.has_cell(cell(seed=2).cell_id)
    with pytest.raises(BenchError, match="no metrics to store"):
        store.write_cell(cell(seed=4), {}, [])
    with pytest.raises(BenchError, match="no column 'nope'"):
        store.frame(nope=1)


def test_a_server_password_is_hidden_where_the_store_url_is_shown():
    from brainbench.store import shown_url

    assert shown_url("postgresql+psycopg://bench:s3cret@db.lab:5432/brainbench") == \
        "postgresql+psycopg://bench:***@db.lab:5432/brainbench"
    assert shown_url("sqlite:////tmp/results/results.db") == "sqlite:////tmp/results/results.db"


def test_precision_is_part_of_a_cells_identity_and_kept_by_the_store(tmp_path):
    """fp32 cells keep the identities earlier stores hold; a bf16 cell of the same settings is
    another cell, and the store returns each with its precision."""
    from dataclasses import replace as _replace

    from brainbench.store import Cell, ResultStore, StoredCell

    fp32 = Cell(backbone="b", weights_id="w", weights_status="random-init", weights_sha256="",
                task="brain_age", dataset="ixi", data_source="phantom:x", profile="tiny",
                head="linear", fraction=0.5, seed=0, n_train=4, n_test=2, hyperparameters={},
                selection="", code_version="c", config_hash="h", split_hash="s",
                subset_hash="u", cache_key="k")
    bf16 = _replace(fp32, precision="bf16")
    assert fp32.precision == "fp32" and fp32.cell_id != bf16.cell_id
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.write_cells([StoredCell(fp32, {"mae": 1.0}), StoredCell(bf16, {"mae": 2.0})])
    got = {c.cell.precision: (c.cell_id, c.metrics["mae"]) for c in store.cells()}
    assert got == {"fp32": (fp32.cell_id, 1.0), "bf16": (bf16.cell_id, 2.0)}
    assert set(store.frame()["precision"]) == {"fp32", "bf16"}


def _two_precisions(tmp_path, bf16_fractions=(0.1,)):
    """brain_age seeds 0-1 in fp32 (mae 4, 6) and in bf16 (mae 10, 12) at fraction 0.1, and
    bf16 cells at any further ``bf16_fractions``; predictions match each stored mae."""
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for precision, maes, fractions in (("fp32", (4.0, 6.0), (0.1,)),
                                       ("bf16", (10.0, 12.0), bf16_fractions)):
        for fraction in fractions:
            for seed, mae in enumerate(maes):
                predictions = [("s1", 30.0, 30.0 + mae), ("s2", 40.0, 40.0 - mae)]
                store.write_cell(cell(seed=seed, precision=precision, fraction=fraction),
                                 {"mae": mae}, predictions, persons={"s1": "p1", "s2": "p2"})
    return store


def test_tables_never_pool_bf16_and_fp32_cells(tmp_path):
    """Both precisions of one setting: a column (results) and an entry (statistics) each,
    every one with its own seeds' mean, the precision named."""
    from brainbench.leaderboard.analysis import load_analysis

    store = _two_precisions(tmp_path)
    text = comparison_table(store.frame(), [get_task("brain_age")])
    header = text.splitlines()[0]
    assert "braindino [RANDOM-INIT] (abc) bf16" in header
    assert "braindino [RANDOM-INIT] (abc) fp32" in header
    assert "5.000 ± 1.414 (k=2)" in text and "11.000 ± 1.414 (k=2)" in text
    assert "8.000" not in text  # the pooled mean of all four cells
    analysis = load_analysis(store, n_boot=20)
    by_label = {e.label: analysis.summary(e, "brain_age", 0.1) for e in analysis.entries}
    assert {label: (s.mean, s.n_seeds) for label, s in by_label.items()} == \
        {"braindino bf16": (11.0, 2), "braindino fp32": (5.0, 2)}


def test_one_precision_per_task_and_fraction_keeps_one_column_and_names_the_exceptions(tmp_path):
    """PRECISION=auto may run one task's fraction in fp32 by its precision rule: nothing is
    pooled there, so one column, and the note says where the precision differs."""
    store = _two_precisions(tmp_path, bf16_fractions=(0.5, 1.0))
    text = comparison_table(store.frame(), [get_task("brain_age")])
    header = text.splitlines()[0]
    assert "braindino [RANDOM-INIT] (abc)" in header and "bf16" not in header
    assert "braindino [RANDOM-INIT] (abc): bf16 (fp32 for brain_age at 0.1)" in text


def test_results_table_keeps_profiles_apart_and_shows_the_latest_cell_of_a_setting(tmp_path):
    """`make results` over a store holding two profiles: a row each (their own seeds and sizes),
    never one pooled mean; a re-run under a new config replaces the older cell of its seed,
    every metric of it, as the statistics tables do."""
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for seed, mae in enumerate([4.0, 6.0]):
        store.write_cell(cell(seed=seed), {"mae": mae, "pearson_r": 0.1}, [])
        store.write_cell(cell(seed=seed, profile="paper", n_train=80, n_test=160),
                         {"mae": mae + 10}, [])
    store.write_cell(cell(seed=0, config_hash="z" * 64), {"mae": 100.0}, [])  # a re-run
    lines = comparison_table(store.frame(), [get_task("brain_age")]).splitlines()
    assert lines[0].split()[:3] == ["task", "dataset", "profile"]
    rows = {tuple(line.split()[2:4]): line for line in lines[2:] if line.startswith("brain_age")}
    assert "53.000 ± 66.468 (k=2)" in rows[("cpu", "mae")] and "8 / 16" in rows[("cpu", "mae")]
    assert "0.100 (k=1)" in rows[("cpu", "pearson_r")]  # the re-run stored no pearson_r
    assert "15.000 ± 1.414 (k=2)" in rows[("paper", "mae")]
    assert "80 / 160" in rows[("paper", "mae")]


def test_the_site_names_each_rows_precision_and_reproduces_it(tmp_path):
    """The leaderboard site: a row per precision, the legend names them, every cell's
    provenance row shows its precision and its reproduce command asks for it (PRECISION=auto
    may choose the other one on another machine)."""
    from brainbench.leaderboard.analysis import load_analysis
    from brainbench.leaderboard.site import build_site, reproduce_command

    analysis = load_analysis(_two_precisions(tmp_path), n_boot=20)
    page = build_site(analysis, tmp_path / "site").read_text()
    assert "braindino bf16" in page and "braindino fp32" in page
    assert "braindino bf16 [random-init] bf16" in page  # the legend's precision note
    task_page = (tmp_path / "site" / "task-brain_age.html").read_text()
    assert "<th>precision</th>" in task_page and "<td>bf16</td>" in task_page
    for (entry, *_), record in analysis.cells.items():
        assert f"PRECISION={entry.precision}" in reproduce_command(record)


def test_the_results_table_says_what_difference_it_can_detect(tmp_path, capsys):
    """`make results` (and the table `make bench` prints) ends with the minimum detectable
    difference of `make table`'s paired test, the same figure, per task."""
    from brainbench.cli import main
    from brainbench.leaderboard.analysis import load_analysis

    store = ResultStore(f"sqlite:///{tmp_path / 'results.db'}")
    rng = np.random.default_rng(0)
    for seed in range(3):
        targets = rng.uniform(20, 80, 12)
        predictions = [(f"s{i}", float(t), float(t + rng.normal(0, 5))) for i, t in
                       enumerate(targets)]
        mae = float(np.mean([abs(p - t) for _, t, p in predictions]))
        store.write_cell(cell(seed=seed), {"mae": mae}, predictions,
                         persons={f"s{i}": f"p{i}" for i in range(12)})
    assert main(["results", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = load_analysis(store).detectable_difference("brain_age", 0.1)
    assert f"brain_age mae {expected:.3g} (12 test people)" in out
    assert "Minimum detectable difference of the paired test" in out
