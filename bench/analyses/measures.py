"""The numbers of the analyses: grouped linear probes with person-level intervals, linear CKA
and kNN retrieval agreement.

Probes are scored out of fold: scikit-learn's StratifiedGroupKFold keeps every person (all of
their patches, slices and visits) inside one fold, so a probe never scores a person it was fit
on. Intervals resample people (`brainbench.stats.person_bootstrap`), the unit the data are
independent in. Every probe is also run on labels shuffled across items: the same probe on
features that carry no information about those labels, which shows where chance is on exactly
these data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from brainbench import stats
from brainbench.errors import BenchError

N_SPLITS = 5
MIN_PEOPLE = 2  # classes held by fewer people are left out (named in the details)
PROBE_C = 1.0  # inverse L2 strength of the logistic probes (features are standardised)


@dataclass(frozen=True)
class ProbeScore:
    """A probe's out-of-fold metric with its person-bootstrap 95% interval and chance level."""

    metric: str
    value: float
    lower: float | None
    upper: float | None
    chance: float
    shuffled: float  # the same probe on shuffled labels
    details: dict[str, Any] = field(default_factory=dict)


def _folds(labels: np.ndarray, groups: np.ndarray, seed: int
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    people = len(set(groups))
    # each class needs people on both sides of a split
    per_class = min(len(set(groups[labels == c])) for c in np.unique(labels))
    n_splits = min(N_SPLITS, people, per_class)
    if n_splits < 2:
        raise BenchError(f"a grouped probe needs at least 2 people per class; got {people} "
                         f"people and {per_class} in the smallest class")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def out_of_fold(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) out-of-fold class probabilities of a standardised logistic probe and its class
    order; classes balanced so rare tissue classes count as much as common ones.

    BLAS runs single-threaded here: on a shared 2-core machine its threads only contend, and
    the fits took ~25x longer with them (measured, load average 7-12).
    """
    from threadpoolctl import threadpool_limits

    classes = np.unique(labels)
    proba = np.zeros((len(labels), len(classes)))
    with threadpool_limits(1):
        _fit_folds(features, labels, groups, seed, classes, proba)
    return proba, classes


def _fit_folds(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int,
               classes: np.ndarray, proba: np.ndarray) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for train, test in _folds(labels, groups, seed):
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=PROBE_C, class_weight="balanced", max_iter=2000))
        model.fit(features[train], labels[train])
        columns = np.searchsorted(classes, model.classes_)
        proba[np.ix_(test, columns)] = model.predict_proba(features[test])


def _balanced_accuracy_rows(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Row-wise balanced accuracy (sklearn's definition: mean recall over the classes present)."""
    idx = np.atleast_2d(idx)
    yy, pp = y[idx], pred[idx]
    recalls = []
    for c in np.unique(y):
        member = yy == c
        n = member.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(n > 0, (member & (pp == c)).sum(axis=1) / n, np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def _interval(resample: stats.PersonResample, scorer) -> tuple[float | None, float | None]:
    low, high = stats.percentile_interval(resample.score(scorer))
    return (None, None) if low != low else (low, high)


def classify(features: np.ndarray, labels: Sequence[str], persons: Sequence[str], *,
             metric: str, seed: int = 0, n_boot: int = 1000, key: str = "",
             min_items: int = 1) -> ProbeScore:
    """Grouped probe of ``labels`` from ``features``: ``balanced_accuracy`` (chance 1/K) or,
    for two classes, ``auc`` (chance 0.5; the positive class is the last in sorted order).

    Classes held by fewer than MIN_PEOPLE people or ``min_items`` items are left out (named in
    the details): a handful of patches gives a score, and a shuffled control, of pure noise.
    """
    features = np.asarray(features, dtype=np.float64)
    y = np.asarray([str(v) for v in labels])
    groups = np.asarray([str(p) for p in persons])
    if features.ndim != 2 or len(features) != len(y) or len(y) != len(groups):
        raise BenchError(f"probe inputs disagree: features {features.shape}, {len(y)} labels, "
                         f"{len(groups)} persons")
    people = {c: len(set(groups[y == c])) for c in np.unique(y)}
    dropped = {str(c): f"{n} people, {int((y == c).sum())} items" for c, n in people.items()
               if n < MIN_PEOPLE or (y == c).sum() < min_items}
    if dropped:  # a class seen in one person cannot be scored out of fold by person
        keep = ~np.isin(y, list(dropped))
        features, y, groups = features[keep], y[keep], groups[keep]
    classes = np.unique(y)
    if len(classes) < 2:
        raise BenchError(f"a probe needs at least two classes held by >= {MIN_PEOPLE} people "
                         f"and >= {min_items} items each, got {[str(c) for c in classes]} "
                         f"(dropped: {dropped})")
    if metric == "auc" and len(classes) != 2:
        raise BenchError(f"auc needs exactly two classes, got {list(classes)}")
    proba, order = out_of_fold(features, y, groups, seed)
    shuffled_y = np.random.default_rng([seed, 1]).permutation(y)
    shuffled_proba, _ = out_of_fold(features, shuffled_y, groups, seed)
    resample = stats.person_bootstrap(list(groups), n_boot, seed, f"analysis|{key}")
    if metric == "auc":
        scorer = stats.classification_scorer("auc", list(y), proba)
        shuffled = stats.classification_scorer("auc", list(shuffled_y), shuffled_proba).point()
        value, chance = scorer.point(), 0.5
    elif metric == "balanced_accuracy":
        index = {c: i for i, c in enumerate(order)}
        codes = np.array([index[v] for v in y])
        pred = proba.argmax(axis=1)

        def scorer(idx: np.ndarray) -> np.ndarray:
            return _balanced_accuracy_rows(codes, pred, idx)

        value = float(scorer(np.arange(len(y)))[0])
        shuffled_codes = np.array([index[v] for v in shuffled_y])
        shuffled = float(_balanced_accuracy_rows(shuffled_codes, shuffled_proba.argmax(axis=1),
                                                 np.arange(len(y)))[0])
        chance = 1.0 / len(classes)
    else:
        raise BenchError(f"unknown probe metric {metric!r}; expected 'auc' or "
                         "'balanced_accuracy'")
    lower, upper = _interval(resample, scorer)
    counts = {str(c): int((y == c).sum()) for c in classes}
    return ProbeScore(metric, float(value), lower, upper, chance, float(shuffled), {
        "n_items": int(len(y)), "n_people": int(resample.n_people), "classes": counts,
        "folds": len(_folds(y, groups, seed)), "probe": f"StandardScaler + LogisticRegression"
        f"(C={PROBE_C}, class_weight=balanced), StratifiedGroupKFold by person",
        "n_boot": n_boot, "seed": seed, "dropped_classes": dropped})


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two (n, d) representations of the same n items:
    HSIC of the centred linear kernels, normalised; 1 = same up to rotation and scale."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise BenchError(f"CKA needs the same >= 2 items in both representations, got "
                         f"{a.shape[0]} and {b.shape[0]}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    ka, kb = a @ a.T, b @ b.T
    denominator = np.linalg.norm(ka) * np.linalg.norm(kb)
    if denominator == 0:
        raise BenchError("CKA is undefined for a representation that is constant over the items")
    return float(np.sum(ka * kb) / denominator)


def knn_agreement(a: np.ndarray, b: np.ndarray, k: int = 5) -> tuple[float, float, int]:
    """Mean overlap |N_a(i) & N_b(i)| / k of each item's k nearest neighbours (cosine, itself
    excluded) in two representations; returns (agreement, chance k / (n - 1), k used)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(a)
    if n != len(b) or n < 3:
        raise BenchError(f"kNN agreement needs the same >= 3 items in both representations, "
                         f"got {len(a)} and {len(b)}")
    k = min(k, n - 2)

    def neighbours(x: np.ndarray) -> list[set[int]]:
        index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x)
        found = index.kneighbors(x, return_distance=False)
        return [set(row[row != i][:k].tolist()) for i, row in enumerate(found)]

    na, nb = neighbours(np.asarray(a, float)), neighbours(np.asarray(b, float))
    return float(np.mean([len(x & y) / k for x, y in zip(na, nb)])), k / (n - 1), k
