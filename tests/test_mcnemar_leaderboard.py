"""McNemar in the leaderboard: exact test per seed between each backbone and the reference on
classification tasks, summarised per task in the stats tables, the CLI and the site."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from brainbench import stats
from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import load_analysis, mcnemar_records
from brainbench.leaderboard.site import build_site
from brainbench.leaderboard.tables import stats_table
from brainbench.metrics import compute_metrics
from brainbench.store import Cell, ResultStore
from brainbench.taskspec import get_task

N = 24
FRACTION = 0.5


def write_cls(store: ResultStore, backbone: str, task: str, seed: int, correct,
              ids=None, wrong_shift: int = 1) -> None:
    """A real classification cell: subject i is predicted right iff correct[i] (the true class
    gets the most probability), otherwise the class `wrong_shift` further on does."""
    spec = get_task(task)
    classes = sorted(spec.target.classes)
    k = len(classes)
    ids = ids or [f"sub-{i:03d}" for i in range(N)]
    truth = [i % k for i in range(N)]
    rng = np.random.default_rng([seed, len(backbone)])
    proba = np.full((N, k), 0.1 / max(k - 1, 1)) + rng.uniform(0, 0.01, (N, k))
    for i, ok in enumerate(correct):
        proba[i, truth[i] if ok else (truth[i] + wrong_shift) % k] = 0.8 + rng.uniform(0, .1)
    proba /= proba.sum(1, keepdims=True)
    labels = [classes[t] for t in truth]
    cell = Cell(backbone=backbone, weights_id=f"pretrained:{backbone}", weights_status="pretrained",
                weights_sha256="f" * 64, task=task, dataset=spec.dataset, data_source="phantom:t",
                profile="tiny", head="linear", fraction=FRACTION, seed=seed, n_train=10,
                n_test=N, hyperparameters={"C": 1.0}, selection="inner CV",
                code_version="0.1.0+gtest", config_hash="c" * 64, split_hash="s" * 64,
                subset_hash=f"u{seed}".ljust(64, "0"), cache_key="k" * 64)
    store.write_cell(cell, compute_metrics("classification", np.array(labels), proba,
                                           classes=classes),
                     list(zip(ids, labels, proba.tolist())))


def pattern(both: int, only_row: int, only_ref: int, neither: int):
    """(row correct, reference correct) per subject for the given counts (sum N)."""
    assert both + only_row + only_ref + neither == N
    row = [True] * both + [True] * only_row + [False] * only_ref + [False] * neither
    ref = [True] * both + [False] * only_row + [True] * only_ref + [False] * neither
    return row, ref


# seed -> (both, only row, only reference, neither): b, c = (1, 6), (0, 0), (0, 8)
DESIGN = {0: (14, 1, 6, 3), 1: (20, 0, 0, 4), 2: (12, 0, 8, 4)}


@pytest.fixture()
def store(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for seed, counts in DESIGN.items():
        row, ref = pattern(*counts)
        write_cls(store, "ref", "idh_status", seed, ref)
        write_cls(store, "other", "idh_status", seed, row)
        write_cls(store, "<script>", "idh_status", seed, ref)  # same right/wrong as ref
    return store


def test_exact_p_by_hand_and_one_implementation():
    truth = np.ones(10, dtype=int)
    a = np.array([1] + [0] * 6 + [1] * 3)  # right alone on subject 0
    b = np.array([0] + [1] * 6 + [1] * 3)  # right alone on subjects 1-6
    result = stats.mcnemar_exact(truth, a, b)
    by_hand = 2 * sum(comb(7, i) for i in range(2)) / 2 ** 7  # two-sided, b=1 of 7 discordant
    assert (result.only_a_correct, result.only_b_correct) == (1, 6)
    assert by_hand == 0.125 and result.p_value == pytest.approx(by_hand, abs=1e-12)
    from brainbench.heads import knn
    from brainbench.leaderboard import analysis

    assert analysis.stats is stats  # one implementation, in brainbench.stats
    assert not hasattr(knn, "mcnemar_exact") and not hasattr(knn, "mcnemar_cells")


def test_leaderboard_mcnemar_per_task_and_seed(store, tmp_path):
    analysis = load_analysis(store, reference="ref", n_boot=50)
    results = analysis.mcnemar(FRACTION)
    other = next(e for e in analysis.entries if e.backbone == "other")
    twin = next(e for e in analysis.entries if e.backbone == "<script>")
    m = results[(other, "idh_status")]
    assert m.seeds == (0, 1, 2)
    assert [(r.only_a_correct, r.only_b_correct) for r in m.summary.per_seed] == \
        [(1, 6), (0, 0), (0, 8)]
    p = [r.p_value for r in m.summary.per_seed]
    assert p[0] == pytest.approx(0.125) and p[1] == 1.0 and p[2] == pytest.approx(2 / 2 ** 8)
    s = m.summary
    assert (s.only_a_correct, s.only_b_correct, s.significant, s.n_seeds) == (1, 14, 1, 3)
    assert s.median_p == pytest.approx(0.125)
    assert results[(twin, "idh_status")].summary.only_a_correct == 0
    assert not any(k[0] == analysis.reference for k in results)

    text = "1 / 14, median p=0.125, 1/3 seeds p<0.05"
    markdown = stats_table(analysis, FRACTION, "markdown")
    assert "McNemar (supplementary" in markdown and text in markdown
    assert "&lt;script&gt;" in markdown and "<script>" not in markdown
    latex = stats_table(analysis, FRACTION, "latex")
    assert r"1 / 14, median p=0.125, 1/3 seeds p\textless{}0.05" in latex
    assert "<script>" not in latex

    index = build_site(analysis, tmp_path / "site")
    page = index.read_text()
    assert "McNemar (supplementary" in page and "1 / 14" in page
    assert "median p=0.125, 1/3 seeds p&lt;0.05" in page
    assert page.count("<script>") == 1  # ours; the backbone named <script> is text
    task_page = (tmp_path / "site" / "task-idh_status.html").read_text()
    assert "fraction 0.5" in task_page and "median p=0.125" in task_page


def test_cli_table_prints_mcnemar(store, tmp_path, capsys):
    assert main(["table", "--db", store.url, "--reference", "ref", "--bootstrap", "50",
                 "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "1 / 14, median p=0.125, 1/3 seeds p<0.05" in out
    assert "p\\textless{}0.05" in (tmp_path / "rep" / "table_f0.5.tex").read_text()


def test_multiclass_hard_prediction_is_the_most_probable_class(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    rng = np.random.default_rng(0)
    row_ok, ref_ok = rng.random(N) < 0.7, rng.random(N) < 0.5
    write_cls(store, "ref", "neurodegen_cls", 0, ref_ok, wrong_shift=2)
    write_cls(store, "other", "neurodegen_cls", 0, row_ok, wrong_shift=1)
    analysis = load_analysis(store, reference="ref", n_boot=20)
    [(key, m)] = analysis.mcnemar(FRACTION).items()
    assert key[0].backbone == "other"
    assert m.summary.only_a_correct == int((row_ok & ~ref_ok).sum())
    assert m.summary.only_b_correct == int((ref_ok & ~row_ok).sum())
    assert m.summary.per_seed[0].accuracy_a == pytest.approx(row_ok.mean())


def test_regression_no_reference_and_missing_seeds(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for seed in (0, 1, 2):
        write_cls(store, "ref", "idh_status", seed, [True] * N)
    for seed in (0, 2):
        write_cls(store, "other", "idh_status", seed, [True] * (N - 2) + [False] * 2)
    analysis = load_analysis(store, reference="ref", n_boot=20)
    [m] = analysis.mcnemar(FRACTION).values()
    assert m.seeds == (0, 2) and m.summary.only_b_correct == 4  # seed 1: no pair
    alone = load_analysis(store, models=["ref"], n_boot=20)
    assert alone.reference is None and alone.mcnemar(FRACTION) == {}
    assert "McNemar" not in stats_table(alone, FRACTION, "markdown")


def test_different_test_subjects_are_refused_with_a_note(store, tmp_path):
    for seed, counts in DESIGN.items():
        write_cls(store, "moved", "idh_status", seed, pattern(*counts)[0],
                  ids=[f"other-{i:03d}" for i in range(N)])
    analysis = load_analysis(store, reference="ref", n_boot=20)
    moved = next(e for e in analysis.entries if e.backbone == "moved")
    assert (moved, "idh_status") not in analysis.mcnemar(FRACTION)
    note = next(n for n in analysis.notes if "no McNemar test of moved" in n)
    assert "different test subjects" in note and "other-000" in note
    with pytest.raises(BenchError, match="different test subjects"):
        mcnemar_records(analysis.records(moved, "idh_status", FRACTION)[0],
                        analysis.records(analysis.reference, "idh_status", FRACTION)[0])
    assert "no McNemar test of moved" in stats_table(analysis, FRACTION, "markdown")
