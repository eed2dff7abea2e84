"""Statistics from stored predictions, checked against scikit-learn / scikit-survival and
hand computations; `build_store` (real cells in a temporary store) is shared with the other
leaderboard tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, roc_auc_score
from sksurv.metrics import concordance_index_censored

from brainbench import stats
from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import load_analysis
from brainbench.metrics import compute_metrics
from brainbench.store import Cell, ResultStore
from brainbench.taskspec import get_task

N_TEST = 40
FRACTIONS = (0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
TASKS = ("idh_status", "neurodegen_cls", "brain_age", "survival_cox")
# signal strength per backbone: "strong" should beat the reference "base"; "twin" makes the
# same predictions as "base"; "rand" is a random-init entry
QUALITY = {"base": 1.0, "strong": 3.0, "twin": 1.0, "rand": 0.2}
STATUS = {"rand": "random-init"}


def _h(text: str) -> int:
    """A hash that is stable across processes (str hashes are salted per process)."""
    return zlib.crc32(text.encode())


def _truth(task: str, rng: np.random.Generator):
    spec = get_task(task)
    if spec.target.kind == "classification":
        classes = sorted(spec.target.classes)
        labels = [classes[i % len(classes)] for i in range(N_TEST)]
        return labels, np.array([classes.index(v) for v in labels])
    if spec.target.kind == "regression":
        age = rng.uniform(20, 80, N_TEST)
        return age.tolist(), age
    time = rng.exponential(500, N_TEST).round()
    event = rng.random(N_TEST) < 0.7
    return [[float(t), bool(ev)] for t, ev in zip(time, event)], (time, event)


def _prediction(task: str, latent, quality: float, rng: np.random.Generator):
    kind = get_task(task).target.kind
    if kind == "classification":
        k = int(latent.max()) + 1
        logits = rng.normal(0, 1, (N_TEST, k))
        logits[np.arange(N_TEST), latent] += quality
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return proba
    if kind == "regression":
        return latent + rng.normal(0, 20 / quality, N_TEST)
    time, _ = latent
    return -np.log(time + 1) * quality + rng.normal(0, 2, N_TEST)


def synthetic_cell(backbone: str, task: str, fraction: float, seed: int, **changes) -> Cell:
    status = STATUS.get(backbone, "pretrained")
    sha = format(_h(backbone) % 16**12, "012x").ljust(64, "0")
    spec = get_task(task)
    base = dict(backbone=backbone, weights_id=f"{status}:{sha[:16]}", weights_status=status,
                weights_sha256=sha, task=task, dataset=spec.dataset, data_source="phantom:test",
                profile="tiny", head="linear", fraction=fraction, seed=seed,
                n_train=max(2, int(100 * fraction)), n_test=N_TEST, hyperparameters={"C": 1.0},
                selection="test", code_version="0.1.0+gtest", config_hash="c" * 64,
                split_hash=f"split-{task}".ljust(64, "0"), subset_hash="u" * 64,
                cache_key="k" * 64)
    base.update(changes)
    return Cell(**base)


def write_synthetic(store: ResultStore, backbone: str, task: str, quality: float,
                    fractions=FRACTIONS, seeds=SEEDS, noise_seed: int | None = None) -> None:
    """Real cells: metrics computed by brainbench.metrics from the stored predictions."""
    spec = get_task(task)
    truth_rng = np.random.default_rng(_h(task) % 2**32)
    stored, latent = _truth(task, truth_rng)
    ids = [f"sub-{i:03d}" for i in range(N_TEST)]
    for fraction in fractions:
        for seed in seeds:
            key = noise_seed if noise_seed is not None else _h(backbone) % 1000
            rng = np.random.default_rng([key, seed, int(fraction * 100), len(task)])
            pred = _prediction(task, latent, quality * (0.4 + fraction), rng)
            kind = spec.target.kind
            if kind == "classification":
                metrics = compute_metrics(kind, np.array(stored), pred,
                                          classes=sorted(spec.target.classes))
                rows = [p.tolist() for p in pred]
            elif kind == "regression":
                metrics = compute_metrics(kind, latent, pred)
                rows = pred.tolist()
            else:
                train = (np.array([100.0, 200, 300, 400]), np.array([True, False, True, True]))
                metrics = compute_metrics(kind, latent, pred,
                                          train_target=(train, np.array([0.1, 0.2, 0.3, 0.4])))
                rows = pred.tolist()
            store.write_cell(synthetic_cell(backbone, task, fraction, seed), metrics,
                             list(zip(ids, stored, rows)))


def build_store(path: Path, backbones=("base", "strong", "twin", "rand"),
                tasks=TASKS) -> ResultStore:
    store = ResultStore(f"sqlite:///{path}")
    for backbone in backbones:
        for task in tasks:
            noise = _h("base") % 1000 if backbone == "twin" else None
            write_synthetic(store, backbone, task, QUALITY.get(backbone, 1.0), noise_seed=noise)
    return store


# --------------------------------------------------------------------------- metric parity


def test_scorers_match_sklearn_and_sksurv_on_resamples():
    rng = np.random.default_rng(0)
    n = 30
    idx = np.vstack([np.arange(n), rng.integers(0, n, (20, n))])  # identity + resamples
    # binary AUC with tied scores
    y = np.array(["a", "b"] * (n // 2))
    proba = rng.random((n, 2)).round(1)
    scorer = stats.make_scorer("classification", "auc", y.tolist(), proba.tolist())
    got = scorer(idx)
    for row, value in zip(idx, got):
        yy = y[row] == "b"
        expected = roc_auc_score(yy, proba[row, 1]) if 0 < yy.sum() < n else np.nan
        np.testing.assert_allclose(value, expected, equal_nan=True)
    # a NaN score (a negative's or a positive's) makes its resample's AUC NaN, never a number
    # over the other scores
    for i in (0, 1):
        single = proba.copy()
        single[i, 1] = np.nan
        got_nan = stats.make_scorer("classification", "auc", y.tolist(), single.tolist())(idx)
        assert np.isnan(got_nan[[(i in row) for row in idx]]).all()
        assert np.isfinite(got_nan[[(i not in row) and len(set(y[row])) == 2
                                    for row in idx]]).all()
    # 3 classes: macro one-vs-rest
    y3 = np.array(["AD", "CN", "MCI"] * (n // 3))
    p3 = rng.dirichlet([1, 1, 1], n)
    got3 = stats.make_scorer("classification", "auc", y3.tolist(), p3.tolist())(idx)
    for row, value in zip(idx, got3):
        if len(set(y3[row])) == 3:
            expected = roc_auc_score(y3[row], p3[row], multi_class="ovr", average="macro",
                                     labels=["AD", "CN", "MCI"])
            assert value == pytest.approx(expected, abs=1e-12)
    # regression
    target, pred = rng.normal(50, 10, n), rng.normal(50, 10, n)
    for metric, fn in (("mae", mean_absolute_error),
                       ("rmse", lambda a, b: np.sqrt(mean_squared_error(a, b)))):
        got_r = stats.make_scorer("regression", metric, target.tolist(), pred.tolist())(idx)
        np.testing.assert_allclose(got_r, [fn(target[r], pred[r]) for r in idx])
    # survival: tied times, tied risks, censoring
    time = rng.integers(1, 10, n).astype(float)
    event = rng.random(n) < 0.6
    risk = rng.integers(0, 5, n).astype(float)
    got_c = stats.make_scorer("survival", "c_harrell",
                              [[t, bool(e)] for t, e in zip(time, event)], risk.tolist())(idx)
    for row, value in zip(idx, got_c):
        expected = concordance_index_censored(event[row], time[row], risk[row])[0]
        assert value == pytest.approx(expected, abs=1e-12)


def test_shuffled_scores_each_permutation_of_the_predictions_against_fixed_labels():
    """The chance row's scores, every permutation at once, against scikit-learn / sksurv
    scoring each permuted prediction vector on its own."""
    rng = np.random.default_rng(1)
    n = 24
    perms = np.stack([rng.permutation(n) for _ in range(15)])
    y = np.array(["a", "b"] * (n // 2))
    proba = rng.random((n, 2)).round(1)  # tied scores
    got = stats.make_scorer("classification", "auc", y.tolist(), proba.tolist()).shuffled(perms)
    np.testing.assert_allclose(got, [roc_auc_score(y == "b", proba[p, 1]) for p in perms])
    y3 = np.array(["AD", "CN", "MCI"] * (n // 3))
    p3 = rng.dirichlet([1, 1, 1], n)
    got3 = stats.make_scorer("classification", "auc", y3.tolist(), p3.tolist()).shuffled(perms)
    np.testing.assert_allclose(got3, [roc_auc_score(y3, p3[p], multi_class="ovr",
                                                    average="macro") for p in perms])
    target, pred = rng.normal(50, 10, n), rng.normal(50, 10, n)
    for metric, fn in (("mae", mean_absolute_error),
                       ("rmse", lambda a, b: np.sqrt(mean_squared_error(a, b)))):
        got_r = stats.make_scorer("regression", metric, target.tolist(),
                                  pred.tolist()).shuffled(perms)
        np.testing.assert_allclose(got_r, [fn(target, pred[p]) for p in perms])
    time = rng.integers(1, 10, n).astype(float)
    event = rng.random(n) < 0.6
    risk = rng.normal(0, 1, n)
    got_c = stats.make_scorer("survival", "c_harrell",
                              [[t, bool(e)] for t, e in zip(time, event)],
                              risk.tolist()).shuffled(perms)
    np.testing.assert_allclose(
        got_c, [concordance_index_censored(event, time, risk[p])[0] for p in perms])


def test_class_order_is_the_probe_order_and_ambiguity_is_an_error():
    assert stats.class_order(["wildtype", "mutant"], 2) == ["mutant", "wildtype"]
    assert stats.class_order(["CN", "AD"], 3, ("CN", "MCI", "AD")) == ["AD", "CN", "MCI"]
    with pytest.raises(BenchError, match="cannot tell which column"):
        stats.class_order(["CN", "AD"], 3)


# --------------------------------------------------------------------------- hand computations


def test_bootstrap_replicates_by_hand():
    # errors are 1, 3, 5: MAE of rows [0,0,0], [0,1,2], [2,2,1] = 1, 3, 13/3
    scorer = stats.make_scorer("regression", "mae", [0.0, 0.0, 0.0], [1.0, -3.0, 5.0])
    idx = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 1]])
    np.testing.assert_allclose(scorer(idx), [1.0, 3.0, 13 / 3])
    assert scorer.point() == pytest.approx(3.0)
    # the draw is seeded and keyed: same key same draw, another key another draw
    a = stats.bootstrap_indices(5, 10, seed=0, key="t")
    assert (a == stats.bootstrap_indices(5, 10, seed=0, key="t")).all()
    assert (a != stats.bootstrap_indices(5, 10, seed=0, key="u")).any()
    assert stats.percentile_interval(np.array([1.0, np.nan, 2, 3, 4, 5]), 0.5) == (2.0, 4.0)


def test_paired_bootstrap_p_value_by_hand():
    reps_a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    reps_b = np.array([0.0, 0.0, 0.0, 4.5, 0.0])
    test = stats.paired_bootstrap(2.0, 1.0, reps_a, reps_b)
    # finite differences 1, 2, 3, -0.5: one <= 0, three >= 0 -> p = 2 * (1 + 1) / (4 + 1)
    assert test.p_value == pytest.approx(0.8) and test.n_valid == 4
    assert test.difference == 1.0
    assert stats.paired_bootstrap(0, 0, np.ones(99), np.zeros(99)).p_value == pytest.approx(0.02)


def test_holm_by_hand():
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.2, float("nan"), 0.6])
    assert out[0] == pytest.approx(0.4) and np.isnan(out[1]) and out[2] == pytest.approx(0.6)


def test_label_efficiency_by_hand():
    f = [0.01, 0.1, 1.0]
    # linear in log10 f from 0.5 to 0.9: average = 0.7; flat curve: itself
    assert stats.normalised_log_auc(f, np.array([0.5, 0.7, 0.9])) == pytest.approx(0.7)
    assert stats.normalised_log_auc(f, np.array([0.8, 0.8, 0.8])) == pytest.approx(0.8)
    # 95% of 0.9 = 0.855: reached at 0.1 by 0.86, not at 0.01
    assert stats.fraction_to_reach(f, np.array([0.5, 0.86, 0.9]), "higher")[0] == 0.1
    # errors: full MAE 5 -> needs <= 5/0.95 = 5.263
    assert stats.fraction_to_reach(f, np.array([5.2, 9, 5]), "lower")[0] == 0.01
    assert stats.fraction_to_reach(f, np.array([5.3, 9, 5]), "lower")[0] == 1.0
    np.testing.assert_allclose(stats.ranks(np.array([[0.7, 0.9, 0.7]]), "higher"),
                               [[2.5, 1, 2.5]])


# --------------------------------------------------------------------------- from a real store


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    store = build_store(tmp_path_factory.mktemp("stats") / "r.db")
    return load_analysis(store, models=["base", "strong", "twin", "rand"], n_boot=300, seed=0)


@pytest.fixture(scope="module")
def people_only(tmp_path_factory):
    """The same store analysed with the first release's resampling (heads held fixed)."""
    store = build_store(tmp_path_factory.mktemp("stats_people") / "r.db")
    return load_analysis(store, models=["base", "strong", "twin", "rand"], n_boot=300, seed=0,
                         resampling="people")


def test_two_level_replicates_match_independent_computation(analysis, people_only):
    """Default resampling: per replicate, the seeds drawn with replacement (one draw shared by
    every backbone), their deviations widened by sqrt(k/(k-1)), on the same people."""
    entry = {e.backbone: e for e in analysis.entries}["strong"]
    records = analysis.records(entry, "idh_status", 0.3)
    ids = records[0].sample_ids
    idx = stats.bootstrap_indices(N_TEST, 300, 0, "idh_status|" + "|".join(ids))
    per_seed = np.stack([r.scorer(idx) for r in records])  # (k, B)
    k = per_seed.shape[0]
    draws = stats.bootstrap_indices(k, 300, 0, f"seeds|idh_status|{0.3!r}|{k}")
    centre = np.nanmean(per_seed, axis=0)
    widened = centre + (per_seed - centre) * np.sqrt(k / (k - 1))
    expected = np.clip([np.nanmean(widened[draws[b], b]) for b in range(300)], 0, 1)
    np.testing.assert_allclose(analysis.replicates(entry, "idh_status", 0.3), expected)
    # the seeds' spread widens the interval around the same mean
    both, fixed = analysis.summary(entry, "idh_status", 0.3), people_only.summary(
        entry, "idh_status", 0.3)
    assert both.mean == fixed.mean
    assert both.ci_high - both.ci_low > fixed.ci_high - fixed.ci_low


def test_summary_matches_independent_computation(people_only):
    analysis = people_only
    entry = {e.backbone: e for e in analysis.entries}["strong"]
    store_values, replicate_rows = [], []
    ids = None
    for seed in SEEDS:
        record = analysis.cells[(entry, "idh_status", 0.3, seed)]
        store_values.append(record.value)
        ids = record.sample_ids
    summary = analysis.summary(entry, "idh_status", 0.3)
    assert summary.mean == pytest.approx(np.mean(store_values))
    assert summary.sd == pytest.approx(np.std(store_values, ddof=1))
    assert summary.n_seeds == 3
    # replicate = mean over seeds of sklearn's AUC on the same resampled subjects
    idx = stats.bootstrap_indices(N_TEST, 300, 0, "idh_status|" + "|".join(ids))
    for seed in SEEDS:
        scorer = analysis.cells[(entry, "idh_status", 0.3, seed)].scorer
        replicate_rows.append([roc_auc_score(scorer.y[r] == 1, scorer.prediction[r, 1])
                               if 0 < (scorer.y[r] == 1).sum() < N_TEST else np.nan
                               for r in idx])
    expected = np.nanmean(replicate_rows, axis=0)
    np.testing.assert_allclose(analysis.replicates(entry, "idh_status", 0.3), expected)
    assert (summary.ci_low, summary.ci_high) == pytest.approx(
        tuple(np.percentile(expected[np.isfinite(expected)], [2.5, 97.5])))
    assert summary.ci_low < summary.mean < summary.ci_high


def test_paired_comparisons_find_real_differences_only(analysis):
    assert analysis.reference.backbone == "base"
    comparisons = analysis.comparisons(1.0)
    by = {(e.backbone, t): c for (e, t), c in comparisons.items()}
    for task in TASKS:
        assert by[("strong", task)].verdict == "win", task
        assert by[("base", task)].verdict == "ref"
        twin = by[("twin", task)]  # identical predictions: difference exactly 0, p = 1
        assert twin.verdict == "ns" and twin.test.difference == 0 and twin.p_holm == 1.0
    raw = [by[("strong", t)].test.p_value for t in TASKS]
    assert [by[("strong", t)].p_holm for t in TASKS] == pytest.approx(stats.holm(raw))
    assert by[("rand", "brain_age")].verdict == "loss"


def test_efficiency_and_ranks(analysis):
    entries = {e.backbone: e for e in analysis.entries}
    eff = analysis.efficiency(entries["strong"], "brain_age")
    means = [analysis.summary(entries["strong"], "brain_age", f).mean for f in FRACTIONS]
    assert eff.nauc == pytest.approx(float(stats.normalised_log_auc(FRACTIONS, np.array(means))))
    assert eff.nauc_ci[0] <= eff.nauc <= eff.nauc_ci[1]
    assert eff.f95 in FRACTIONS and eff.f95_ci[0] <= eff.f95_ci[1]
    ranks = analysis.mean_ranks(1.0)
    assert ranks[entries["strong"]].mean_rank == 1.0
    assert ranks[entries["rand"]].mean_rank == 4.0
    assert ranks[entries["strong"]].ci[0] >= 1.0 and ranks[entries["rand"]].ci[1] <= 4.0
    assert sum(r.mean_rank for r in ranks.values()) == pytest.approx(10.0)
    assert analysis.headline_fraction() == 1.0


def test_inconsistent_store_is_refused(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    store.write_cell(synthetic_cell("base", "brain_age", 1.0, 0), {"mae": 3.0},
                     [("a", 10.0, 12.0), ("b", 20.0, 20.0)])  # MAE is really 1
    with pytest.raises(BenchError, match="stored mae=3 but its stored predictions give 1"):
        load_analysis(store)
    store.write_cell(synthetic_cell("base", "brain_age", 1.0, 0), {"mae": 1.0}, [])
    with pytest.raises(BenchError, match="no stored test predictions"):
        load_analysis(store)
    with pytest.raises(BenchError, match="no results for backbone"):
        load_analysis(store, models=["nope"])


def test_segmentation_gets_intervals_and_tests_from_per_subject_scores(tmp_path):
    store = build_store(tmp_path / "r.db", backbones=("base", "strong"), tasks=("brain_age",))
    seg = get_task("tumor_seg")
    rng = np.random.default_rng(0)
    subjects = [f"BraTS2021_{i:05d}" for i in range(N_TEST)]
    for backbone, dice in (("base", 0.6), ("strong", 0.7)):
        for seed in (0, 1):
            scores = np.clip(dice + 0.01 * seed + 0.05 * rng.standard_normal(N_TEST), 0, 1)
            per_subject = [{"dice_wt": float(v), "hd95_wt": 10.0} for v in scores]
            store.write_cell(synthetic_cell(backbone, seg.id, 1.0, seed),
                             {"dice_wt": float(scores.mean()), "hd95_wt": 10.0},
                             [(sid, f"{sid}_seg.nii.gz (brats2021)", p)
                              for sid, p in zip(subjects, per_subject)])
    analysis = load_analysis(store, n_boot=200)
    strong = {e.backbone: e for e in analysis.entries}["strong"]
    summary = analysis.summary(strong, seg.id, 1.0)
    assert summary.ci_low < summary.mean < summary.ci_high <= 1.0
    assert analysis.comparisons(1.0)[(strong, seg.id)].verdict == "win"
    assert analysis.mean_ranks(1.0)[strong].n_tasks == 2


def test_a_cell_without_stored_predictions_is_refused_clearly(tmp_path):
    store = build_store(tmp_path / "r.db", backbones=("base",), tasks=("brain_age",))
    seg = get_task("tumor_seg")
    store.write_cell(synthetic_cell("base", seg.id, 1.0, 0), {seg.primary_metric: 0.6}, [])
    with pytest.raises(BenchError, match="has no stored test predictions; re-run it with FORCE"):
        load_analysis(store, n_boot=50)
