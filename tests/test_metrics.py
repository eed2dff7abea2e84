"""brainbench.metrics against independent computations (brute force, scipy, textbook formulas)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sksurv.util import Surv

from brainbench.errors import BenchError
from brainbench.metrics import (
    PRIMARY_METRIC,
    PRIMARY_METRIC_DIRECTION,
    SurvivalReference,
    as_survival_array,
    compute_metrics,
)

# --------------------------------------------------------------------------- brute-force references


def pairwise_auc(pos_scores, neg_scores) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by enumerating every pair."""
    total = 0.0
    for p, n in itertools.product(pos_scores, neg_scores):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos_scores) * len(neg_scores))


def brute_force_concordance(time, event, risk, weights=None, tau=math.inf) -> float:
    """Harrell's C (weights None) or Uno's weighted C, enumerating ordered pairs.

    Pair (i, j) is comparable when i had an event and either t_i < t_j, or t_i == t_j and j
    is censored; tied event times are not comparable. Concordant when risk_i > risk_j,
    half credit for tied risks. Uno: index case i weighted by 1/G(t_i)^2, only t_i < tau.
    """
    num = den = 0.0
    n = len(time)
    for i in range(n):
        if not event[i] or time[i] >= tau:
            continue
        w = 1.0 if weights is None else weights[i]
        for j in range(n):
            if i == j:
                continue
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                den += w
                num += w * (1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0)
    return num / den


def censoring_km(train_time, train_event, t) -> float:
    """Kaplan-Meier estimate of P(C > t) on training data (censoring is the 'event')."""
    g = 1.0
    for s in np.unique(train_time[~train_event]):
        if s > t:
            break
        at_risk = np.sum(train_time >= s)
        censored = np.sum((train_time == s) & ~train_event)
        g *= 1.0 - censored / at_risk
    return g


def logrank_by_hand(time, event, group) -> tuple[float, float]:
    """Two-group log-rank chi-square and p from the textbook O - E and hypergeometric variance."""
    o_minus_e = var = 0.0
    for t in np.unique(time[event]):
        at_risk = time >= t
        n = at_risk.sum()
        n1 = (at_risk & group).sum()
        d = ((time == t) & event).sum()
        d1 = ((time == t) & event & group).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    chisq = o_minus_e**2 / var
    return chisq, float(stats.chi2.sf(chisq, df=1))


# --------------------------------------------------------------------------- classification


def test_binary_auc_equals_mann_whitney_and_pairwise_count():
    y = np.array(["ctl", "asd", "ctl", "asd", "ctl", "asd", "asd", "ctl"])
    p_asd = np.array([0.1, 0.8, 0.4, 0.4, 0.35, 0.9, 0.2, 0.6])  # one tie across classes
    classes = ["ctl", "asd"]  # positive = last class
    proba = np.column_stack([1 - p_asd, p_asd])
    m = compute_metrics("classification", y, proba, classes=classes)

    pos, neg = p_asd[y == "asd"], p_asd[y == "ctl"]
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert m["auc"] == pytest.approx(u / (len(pos) * len(neg)))
    assert m["auc"] == pytest.approx(pairwise_auc(pos, neg))

    y_hat = np.where(p_asd > 0.5, "asd", "ctl")
    recalls = [np.mean(y_hat[y == c] == c) for c in classes]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert m["accuracy"] == pytest.approx(np.mean(y_hat == y))


def test_binary_auc_uses_column_order_given_by_classes():
    y = np.array([0, 1, 0, 1, 1, 0])
    p1 = np.array([0.2, 0.7, 0.6, 0.9, 0.4, 0.1])
    forward = compute_metrics("classification", y, np.column_stack([1 - p1, p1]), classes=[0, 1])
    swapped = compute_metrics("classification", y, np.column_stack([p1, 1 - p1]), classes=[1, 0])
    assert forward == pytest.approx(swapped)
    assert forward["auc"] == pytest.approx(pairwise_auc(p1[y == 1], p1[y == 0]))


def test_multiclass_auc_is_macro_one_vs_rest_of_pairwise_counts():
    rng = np.random.default_rng(3)
    classes = ["T1", "T2", "FLAIR"]
    y = np.array(classes * 7)
    logits = rng.standard_normal((21, 3)) + 1.5 * (y[:, None] == np.array(classes)[None, :])
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = compute_metrics("classification", y, proba, classes=classes)

    per_class = [
        pairwise_auc(proba[y == c, k], proba[y != c, k]) for k, c in enumerate(classes)
    ]
    assert m["auc"] == pytest.approx(np.mean(per_class))
    y_hat = np.array(classes)[proba.argmax(axis=1)]
    assert m["balanced_accuracy"] == pytest.approx(
        np.mean([np.mean(y_hat[y == c] == c) for c in classes])
    )
    assert m["accuracy"] == pytest.approx(np.mean(y_hat == y))


def test_missing_class_in_test_names_the_class():
    y = np.array(["CN", "AD", "CN", "AD"])
    proba = np.full((4, 3), 1 / 3)
    with pytest.raises(BenchError, match="MCI"):
        compute_metrics("classification", y, proba, classes=["AD", "CN", "MCI"])


def test_classification_input_errors():
    y = np.array(["a", "b", "a"])
    with pytest.raises(BenchError, match="not among the classes"):
        compute_metrics("classification", np.array(["a", "c", "b"]), np.full((3, 2), 0.5),
                        classes=["a", "b"])
    with pytest.raises(BenchError, match="columns"):
        compute_metrics("classification", y, np.full((3, 3), 1 / 3), classes=["a", "b"])
    with pytest.raises(BenchError, match="2 test labels|predictions"):
        compute_metrics("classification", y, np.full((2, 2), 0.5), classes=["a", "b"])
    with pytest.raises(BenchError, match="probability matrix"):
        compute_metrics("classification", y, np.array([0.1, 0.2, 0.3]), classes=["a", "b"])


# --------------------------------------------------------------------------- regression


def test_regression_metrics_by_hand():
    y = np.array([30.0, 45.0, 61.0, 72.0, 50.0])
    p = np.array([35.0, 40.0, 60.0, 80.0, 49.0])
    m = compute_metrics("regression", y, p)
    err = p - y
    assert m["mae"] == pytest.approx((5 + 5 + 1 + 8 + 1) / 5)
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)))
    assert m["pearson_r"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["r2"] == pytest.approx(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2))


def test_regression_constant_prediction_gives_nan_r_without_warnings():
    y = np.array([1.0, 2.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics("regression", y, np.full(3, 2.0))
    assert math.isnan(m["pearson_r"])
    assert m["mae"] == pytest.approx(1.0)
    assert np.isfinite(m["r2"])


def test_regression_rejects_nonfinite_and_length_mismatch():
    with pytest.raises(BenchError, match="non-finite"):
        compute_metrics("regression", [1.0, 2.0], [1.0, np.nan])
    with pytest.raises(BenchError, match="predictions"):
        compute_metrics("regression", [1.0, 2.0], [1.0])
    with pytest.raises(BenchError, match="empty"):
        compute_metrics("regression", [], [])


# --------------------------------------------------------------------------- survival

# Tiny test set with tied times (event/event and event/censored), censoring and tied risks.
TEST_TIME = np.array([2.0, 3.0, 3.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0, 12.0])
TEST_EVENT = np.array([True, True, True, False, False, True, True, False, True, False])
TEST_RISK = np.array([2.0, 1.5, 0.3, 1.5, 0.9, 1.0, 0.2, 0.1, 0.4, -0.5])
# Training data with censoring, no tied times; longest training time 10 < longest test time 12.
TRAIN_TIME = np.array([1.0, 2.5, 3.5, 4.0, 4.5, 5.5, 6.5, 7.5, 8.5, 10.0])
TRAIN_EVENT = np.array([True, False, True, True, False, True, False, True, True, False])
TRAIN_RISK = np.array([1.8, 0.1, 1.2, 0.9, 0.4, 0.8, 0.0, 0.3, 0.2, -0.1])


def _survival_metrics(**overrides):
    kw = dict(
        y=Surv.from_arrays(TEST_EVENT, TEST_TIME),
        risk=TEST_RISK,
        train=(Surv.from_arrays(TRAIN_EVENT, TRAIN_TIME), TRAIN_RISK),
    )
    kw.update(overrides)
    return compute_metrics("survival", kw["y"], kw["risk"], train_target=kw["train"])


def test_harrell_c_equals_brute_force_pair_count():
    m = _survival_metrics()
    assert m["c_harrell"] == pytest.approx(brute_force_concordance(TEST_TIME, TEST_EVENT, TEST_RISK))
    assert m["n_events"] == TEST_EVENT.sum()


def test_uno_c_equals_brute_force_ipcw_with_truncation_at_training_follow_up():
    m = _survival_metrics()  # a test time (12) exceeds the training follow-up (10): no crash
    tau = TRAIN_TIME.max()
    weights = np.array(
        [1.0 / censoring_km(TRAIN_TIME, TRAIN_EVENT, t) ** 2 if e and t < tau else 0.0
         for t, e in zip(TEST_TIME, TEST_EVENT)]
    )
    expected = brute_force_concordance(TEST_TIME, TEST_EVENT, TEST_RISK, weights, tau=tau)
    assert m["c_uno"] == pytest.approx(expected)
    assert m["c_uno"] != pytest.approx(m["c_harrell"])  # censoring weights matter here


def test_uno_c_equals_harrell_c_without_training_censoring():
    train = (Surv.from_arrays(np.ones(10, bool), TRAIN_TIME + 5.0), TRAIN_RISK)  # G == 1
    m = _survival_metrics(train=train)
    assert m["c_uno"] == pytest.approx(m["c_harrell"])


def test_logrank_uses_training_median_cut_and_matches_textbook_test():
    m = _survival_metrics()
    cut = np.median(TRAIN_RISK)  # 0.35; the TEST median (0.65) would move 0.4 to "low"
    assert np.median(TEST_RISK) != cut
    high = TEST_RISK > cut
    _, p = logrank_by_hand(TEST_TIME, TEST_EVENT, high)
    assert m["logrank_p"] == pytest.approx(p)
    # and the cut really is the training one: a different training median changes the groups
    shifted = _survival_metrics(train=(Surv.from_arrays(TRAIN_EVENT, TRAIN_TIME), TRAIN_RISK + 0.6))
    _, p_shifted = logrank_by_hand(TEST_TIME, TEST_EVENT, TEST_RISK > cut + 0.6)
    assert shifted["logrank_p"] == pytest.approx(p_shifted)
    assert shifted["logrank_p"] != pytest.approx(m["logrank_p"])


def test_logrank_with_an_empty_group_is_nan_not_a_crash():
    m = _survival_metrics(train=(Surv.from_arrays(TRAIN_EVENT, TRAIN_TIME), TRAIN_RISK + 100.0))
    assert math.isnan(m["logrank_p"])
    assert np.isfinite(m["c_harrell"])


def test_time_event_pair_equals_structured_array():
    structured = _survival_metrics()
    pair = _survival_metrics(
        y=(TEST_TIME, TEST_EVENT.astype(int)),
        train=SurvivalReference(y=(TRAIN_TIME, TRAIN_EVENT), risk=TRAIN_RISK),
    )
    assert pair == pytest.approx(structured, nan_ok=True)


def test_survival_errors():
    with pytest.raises(BenchError, match="no events"):
        _survival_metrics(y=Surv.from_arrays(np.zeros(10, bool), TEST_TIME))
    with pytest.raises(BenchError, match="train_target"):
        compute_metrics("survival", Surv.from_arrays(TEST_EVENT, TEST_TIME), TEST_RISK)
    with pytest.raises(BenchError, match="swapped"):
        as_survival_array((TEST_EVENT, TEST_TIME))
    with pytest.raises(BenchError, match="training risk"):
        _survival_metrics(train=(Surv.from_arrays(TRAIN_EVENT, TRAIN_TIME), TRAIN_RISK[:3]))


# --------------------------------------------------------------------------- dispatch


def test_unknown_kind_is_a_bench_error():
    with pytest.raises(BenchError, match="segmentation"):
        compute_metrics("segmentation", [1], [1])


def test_every_returned_metric_has_a_direction():
    names = set()
    names |= set(compute_metrics("classification", [0, 1], [[0.6, 0.4], [0.3, 0.7]], classes=[0, 1]))
    names |= set(compute_metrics("regression", [1.0, 2.0], [1.5, 2.5]))
    names |= set(_survival_metrics())
    assert names <= set(PRIMARY_METRIC_DIRECTION)
    assert set(PRIMARY_METRIC_DIRECTION.values()) <= {"higher", "lower"}
    assert set(PRIMARY_METRIC.values()) <= names
