"""What a table's notes state. The minimum detectable difference: never 0 when the
reference's bootstrap replicates do not vary (a metric at its bound on every resample claimed
that any difference was detectable), one figure where a range's ends round alike. The feature
precision: which columns differ from a backbone's main precision."""

from __future__ import annotations

import numpy as np
import pytest

from brainbench import stats
from brainbench.leaderboard.analysis import Analysis, load_analysis
from brainbench.leaderboard.tables import (NOT_ESTIMABLE, detectable_note, detectable_text,
                                           stats_table_notes)
from brainbench.taskspec import get_task
from tests.test_stats import build_store


def test_constant_replicates_have_no_minimum_detectable_difference():
    rng = np.random.default_rng(0)
    varied = rng.normal(0, 0.05, 400)
    assert stats.minimum_detectable_difference(varied) == pytest.approx(
        stats.MDD_FACTOR * np.std(varied, ddof=1))
    for constant in (np.zeros(400), np.full(400, 0.25), np.array([0.1, 0.1, 0.1, np.nan])):
        assert np.isnan(stats.minimum_detectable_difference(constant))
    assert np.isnan(stats.minimum_detectable_difference(np.array([0.1, 0.2])))  # too few
    assert detectable_text(float("nan"), 5) == f"{NOT_ESTIMABLE} (5 test people)"
    assert detectable_text(float("inf"), 5) == "none within its range (5 test people)"


@pytest.fixture()
def store(tmp_path):
    return build_store(tmp_path / "r.db", backbones=("base", "strong"),
                       tasks=("idh_status", "brain_age"))


def test_a_reference_at_its_bound_is_stated_as_not_estimable(store, monkeypatch):
    analysis = load_analysis(store, n_boot=50)
    real = Analysis.replicates

    def at_the_ceiling(self, entry, task, fraction):  # AUC 1.0 on every resample
        reps = real(self, entry, task, fraction)
        return np.ones_like(reps) if task == "idh_status" else reps

    monkeypatch.setattr(Analysis, "replicates", at_the_ceiling)
    found = analysis.detectable_differences(1.0)
    assert np.isnan(found["idh_status"][0]) and np.isfinite(found["brain_age"][0])
    notes = " ".join(stats_table_notes(analysis, 1.0))
    assert f"idh_status auc {NOT_ESTIMABLE}" in notes
    assert "idh_status auc 0 " not in notes


def test_a_range_whose_ends_round_alike_is_one_figure(store, monkeypatch):
    by_fraction = {0.1: 12.31, 0.3: 12.34, 1.0: 12.33}
    monkeypatch.setattr(Analysis, "detectable_differences",
                        lambda self, fraction: {"brain_age": (by_fraction[fraction], 10)})
    frame = store.frame(task="brain_age")
    note = detectable_note(store, frame, [get_task("brain_age")])
    assert "brain_age mae 12.3 (10 test people)" in note, note
    by_fraction[1.0] = 14.0
    note = detectable_note(store, frame, [get_task("brain_age")])
    assert "brain_age mae 12.3-14 (10 test people)" in note, note
    by_fraction[1.0] = float("nan")
    note = detectable_note(store, frame, [get_task("brain_age")])
    assert f"brain_age mae 12.3 ({NOT_ESTIMABLE} at some fractions)" in note, note


def test_the_precision_note_names_the_columns_whose_precision_differs(tmp_path):
    """Under PRECISION=auto a task's precision rule runs some columns fp32 beside bf16 ones:
    the table says which, not just "bf16+fp32" per backbone."""
    import sqlite3

    path = tmp_path / "r.db"
    build_store(path, backbones=("base", "strong"), tasks=("idh_status", "brain_age",
                                                         "survival_cox"))
    with sqlite3.connect(path) as conn:
        conn.execute("update results set precision = 'bf16' where task != 'idh_status'")
    conn.close()
    from brainbench.store import ResultStore

    analysis = load_analysis(ResultStore(f"sqlite:///{path}"), n_boot=20)
    note = next(n for n in stats_table_notes(analysis, 1.0) if n.startswith("Feature precision"))
    for name in ("base", "strong"):
        assert f"{name} bf16 (fp32 for idh_status)" in note, note


def test_an_extra_fp32_run_keeps_the_rule_fp32_columns_in_the_main_row(tmp_path):
    """PRECISION=auto ran brain_age and survival_cox bf16 and idh_status fp32 (its precision
    rule); then brain_age was run again in fp32. The backbone splits into a bf16 and an fp32
    row, and the idh_status fp32 cells stay in the bf16 (main) row too instead of leaving it
    a gap; survival_cox (bf16 only) is never shown as fp32."""
    from dataclasses import replace

    from brainbench.store import ResultStore, StoredCell

    store = build_store(tmp_path / "r.db", backbones=("base", "strong"),
                        tasks=("idh_status", "brain_age", "survival_cox"))
    cells = store.cells(with_predictions=True, backbone="base")
    store.write_cells([StoredCell(replace(c.cell, precision="bf16"), c.metrics, c.predictions)
                       for c in cells if c.cell.task in ("brain_age", "survival_cox")])
    fp32_cox = [c.cell_id for c in cells if c.cell.task == "survival_cox"]
    with store.engine.begin() as conn:
        from sqlalchemy import text

        for table in ("results", "predictions"):
            conn.execute(text(f"delete from {table} where cell_id in "
                              f"({','.join(repr(i) for i in fp32_cox)})"))
    analysis = load_analysis(store, n_boot=20)
    rows = {e.display: e for e in analysis.entries}
    bf16 = next(e for name, e in rows.items() if name.startswith("base") and "bf16" in name)
    fp32 = next(e for name, e in rows.items() if name.startswith("base") and "fp32" in name)
    for fraction in (0.1, 1.0):
        assert analysis.has(bf16, "idh_status", fraction)  # auto's rule-fp32 cells, kept
        assert analysis.has(fp32, "idh_status", fraction)
        assert analysis.has(bf16, "survival_cox", fraction)
        assert not analysis.has(fp32, "survival_cox", fraction)  # bf16 never stands in
        for entry, precision in ((bf16, "bf16"), (fp32, "fp32")):
            assert {r.provenance["precision"]
                    for r in analysis.records(entry, "brain_age", fraction)} == {precision}
        assert {r.provenance["precision"]
                for r in analysis.records(bf16, "idh_status", fraction)} == {"fp32"}
    note = next(n for n in stats_table_notes(analysis, 1.0) if n.startswith("Feature precision"))
    assert f"{bf16.display} bf16 (fp32 for idh_status)" in note, note
