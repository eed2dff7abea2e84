"""Statistics on stored per-subject test predictions: bootstrap scores, paired tests, Holm.

Everything is computed from the predictions the runner stored, so intervals and tests can be
redone (with more replicates, another seed, another reference) without refitting a probe.

Bootstrap replicates resample TEST SUBJECTS with replacement. A task's resampling indices
depend only on (bootstrap seed, task, test subjects), so every backbone on that task sees the
same resamples: a difference of two backbones' replicates is a paired bootstrap, and ranks
computed per replicate give a rank interval.

The primary metrics are scored here in vectorised form (one row of indices per replicate),
because thousands of replicates per cell make per-call library overhead dominate. They follow
the library definitions exactly and the tests check them against scikit-learn and
scikit-survival on the same predictions:
- auc: binary ROC AUC (last class positive) via the Mann-Whitney statistic with mid-ranks;
  K > 2 classes: the unweighted mean of one-vs-rest AUCs (= sklearn's ``multi_class="ovr",
  average="macro"``).
- mae / rmse: as sklearn.
- c_harrell: sksurv's ``concordance_index_censored`` (pair (i, j) comparable when i had the
  event and t_j > t_i, or t_j == t_i with j censored; risk ties within 1e-8 count one half).
- c_uno: sksurv's ``concordance_index_ipcw``: Harrell's pairs, each index case i weighted by
  1 / G(t_i)^2 with G the censoring survival of the training subset (zero at or beyond tau).
  G depends on t_i alone, so it is computed once per cell and every replicate is a weighted
  Harrell C.
- logrank_p: sksurv's ``compare_survival`` for the two risk groups (cut at the training
  subset's median risk): observed minus expected deaths of the low group over its
  hypergeometric variance, chi-square with 1 df; replicates as counts of each person drawn.
Uno's C and the log-rank p need what each survival cell stores at fit time (training
survival data, tau, risk cut: `survival_reference`); cells stored before that have none.

A resample where the metric is undefined (an AUC resample without one of the classes, a
C-index resample without a comparable pair) yields NaN and is left out of percentiles.

McNemar (supplementary, classification only): the exact test on the discordant pairs of two
classifiers' hard predictions (argmax of the stored probabilities) on the same test subjects,
per seed, summarised over seeds. The paired bootstrap of the primary metric stays the primary
test; McNemar asks the simpler question "do they get different subjects right?".
`mcnemar_cells` runs it on two cells of a results store.

Pure statistics: stored values are read only through `ResultStore` methods; the leaderboard
builds on this module, never the other way round.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from brainbench.errors import BenchError
from brainbench.kinds import KINDS, get_kind
from brainbench.metrics import LOGRANK_MIN_VARIANCE

#: Metrics that can be recomputed from stored predictions, per kind (declared by each kind).
BOOTSTRAP_METRICS: dict[str, tuple[str, ...]] = {
    name: KINDS.get(name).bootstrap_metrics for name in KINDS.names()
    if KINDS.get(name).bootstrap_metrics}


# --------------------------------------------------------------------------- resampling


def bootstrap_indices(n: int, n_boot: int, seed: int, key: str) -> np.ndarray:
    """(n_boot, n) subject indices; the same (n, n_boot, seed, key) always gives the same draw."""
    if n < 1:
        raise BenchError("cannot bootstrap an empty test split")
    if n_boot < 1:
        raise BenchError(f"the number of bootstrap replicates must be >= 1, got {n_boot}")
    salt = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = np.random.default_rng([int(seed), salt])
    return rng.integers(0, n, size=(n_boot, n))


#: How the statistics resample: people only (each cell's fitted head fixed, the first
#: release's method), or a two-level bootstrap over training subsets (seeds) and people.
RESAMPLING = ("people", "people+seeds")
DEFAULT_RESAMPLING = "people+seeds"


@dataclass(frozen=True)
class PersonResample:
    """Bootstrap draws of a test split that resample PEOPLE: each draw takes persons with
    replacement and every sample of a drawn person (ADNI visits, the sequences of one BraTS
    subject). ``rows`` is a (B, n) matrix when every person has one sample (then the draw is
    exactly `bootstrap_indices` over samples), else a list of B index arrays."""

    rows: Any
    n_people: int

    def score(self, scorer: Any) -> np.ndarray:
        """(B,) metric of `scorer` on each draw (draws of equal size scored together)."""
        if isinstance(self.rows, np.ndarray):
            return scorer(self.rows)
        out = np.empty(len(self.rows))
        lengths = np.array([len(r) for r in self.rows])
        for length in np.unique(lengths):
            where = np.flatnonzero(lengths == length)
            out[where] = scorer(np.stack([self.rows[i] for i in where]))
        return out


def person_bootstrap(persons: Sequence[str], n_boot: int, seed: int, key: str) -> PersonResample:
    """Resample people, not samples: `persons[i]` is the person of test sample i."""
    order = list(dict.fromkeys(persons))
    if len(order) == len(persons):
        return PersonResample(bootstrap_indices(len(persons), n_boot, seed, key), len(order))
    members: dict[str, list[int]] = {p: [] for p in order}
    for i, person in enumerate(persons):
        members[person].append(i)
    drawn = bootstrap_indices(len(order), n_boot, seed, key)
    groups = [np.asarray(members[p], dtype=np.int64) for p in order]
    return PersonResample([np.concatenate([groups[j] for j in row]) for row in drawn],
                          len(order))


def seed_draws(n_seeds: int, n_boot: int, seed: int, key: str) -> np.ndarray:
    """(B, n_seeds) seed positions drawn with replacement: the outer level of the two-level
    bootstrap (training subsets vary as much as test people do). Same key, same draw, so
    backbones compared on the same seeds are resampled together (paired)."""
    return bootstrap_indices(n_seeds, n_boot, seed, f"seeds|{key}")


def two_level(per_seed: np.ndarray, draws: np.ndarray | None,
              bounds: tuple[float, float] = (-np.inf, np.inf)) -> np.ndarray:
    """(B,) replicates from (k, B) per-seed replicates: the mean over the seeds drawn for each
    replicate (``draws`` None: over every seed, the people-only bootstrap).

    Resampling k seeds underestimates their spread by (k - 1) / k (the plug-in variance), so
    each replicate's seed deviations are scaled by sqrt(k / (k - 1)) first (and the result
    kept within the metric's ``bounds``); with 5 seeds this holds interval coverage at
    0.92-0.97 in the simulation of scripts/stats_simulation.py.
    """
    per_seed = np.asarray(per_seed, dtype=float)
    k = per_seed.shape[0]
    if k == 1:
        return per_seed[0]
    with warnings.catch_warnings():  # a resample undefined for every seed stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmean(per_seed, axis=0)
        if draws is None:
            return centre
        widened = centre + (per_seed - centre) * np.sqrt(k / (k - 1))
        picked = widened[draws.T, np.arange(per_seed.shape[1])[None, :]]  # (k, B)
        return np.clip(np.nanmean(picked, axis=0), *bounds)


#: z_{1-alpha/2} + z_{power} for alpha 0.05 (two-sided) and power 0.8.
MDD_FACTOR = 1.959964 + 0.841621


def minimum_detectable_difference(differences: np.ndarray) -> float:
    """Smallest true difference a paired test at alpha 0.05 detects with power 0.8, from the
    bootstrap replicates of a difference (normal approximation: 2.80 x its standard error).
    NaN when it cannot be estimated: fewer than 3 finite replicates, or replicates that do not
    vary (a metric at its bound on every resample, e.g. AUC 1.0), whose spread of 0 would claim
    that any difference at all is detectable."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 3 or d.min() == d.max():  # exact: np.std of equal values may be 1e-17
        return float("nan")
    return float(MDD_FACTOR * np.std(d, ddof=1))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when none is finite)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- metrics


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC of (B, n) boolean labels and scores (Mann-Whitney with mid-ranks).

    Mid-ranks from pandas (already loaded for the store), not scipy.stats: importing that
    costs ~0.5-0.8 s that a warm `make bench`, which checks every cell's stored AUC, would
    pay; the ranks are the same numbers (integers and halves, exact in float). A row holding a
    NaN score is NaN, as scipy's default NaN policy made it."""
    import pandas as pd

    ranks = pd.DataFrame(scores).rank(axis=1, method="average").to_numpy()
    ranks = np.where(np.isnan(scores).any(axis=1, keepdims=True), np.nan, ranks)
    n_pos = positive.sum(axis=1)
    n_neg = positive.shape[1] - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _auc(labels: np.ndarray, proba: np.ndarray, idx: np.ndarray,
         prediction_idx: np.ndarray | None = None) -> np.ndarray:
    """Row-wise (macro one-vs-rest) AUC of labels[idx] against proba[prediction_idx] (default:
    the same rows)."""
    y = labels[idx]
    rows = idx if prediction_idx is None else prediction_idx
    k = proba.shape[1]
    if k == 2:
        return _binary_auc(y == 1, proba[:, 1][rows])
    per_class = [_binary_auc(y == c, proba[:, c][rows]) for c in range(k)]
    return np.mean(per_class, axis=0)  # NaN when any class is absent from the resample


def _draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) how often each of n subjects appears in each row of resampling indices."""
    rows = idx.shape[0]
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(float)


def _harrell(time: np.ndarray, event: np.ndarray, risk: np.ndarray, idx: np.ndarray,
             tied_tol: float = 1e-8, weights: np.ndarray | None = None) -> np.ndarray:
    """Row-wise concordance of resampled survival data; `weights` (per subject, applied to the
    index case i of each pair) turns Harrell's C into the IPCW form of Uno's C.

    A draw is a multiset of the n subjects: two copies of one subject are never comparable
    (equal time, equal event status), so a draw's pair sums are c' M c with c its counts and
    M the subjects' pair matrix, one matrix product for every draw. With unit weights the
    sums are of halves and integers, so the result is exact.
    """
    n = time.shape[0]
    later = time[None, :] > time[:, None]
    comparable = event[:, None] & (later | ((time[None, :] == time[:, None]) & ~event[None, :]))
    diff = risk[None, :] - risk[:, None]  # r_j - r_i: concordant when negative
    credit = np.where(np.abs(diff) <= tied_tol, 0.5, (diff < 0).astype(float))
    counts = _draw_counts(idx, n)
    pair_matrix = comparable.astype(float)
    has_pairs = ((counts @ pair_matrix) * counts).sum(axis=1) > 0
    undefined = np.zeros(idx.shape[0], dtype=bool)
    if weights is not None:
        unusable = np.isnan(weights)  # sksurv raises when such a subject is drawn
        undefined = (counts[:, unusable] > 0).any(axis=1)
        pair_matrix = pair_matrix * np.where(unusable, 0.0, weights)[:, None]
    pairs = ((counts @ pair_matrix) * counts).sum(axis=1)
    agree = ((counts @ (pair_matrix * credit)) * counts).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(has_pairs & (pairs > 0) & ~undefined, agree / pairs, np.nan)


def _uno_weights(time: np.ndarray, event: np.ndarray, reference: Mapping[str, Any]) -> np.ndarray:
    """Per test subject, sksurv's squared IPCW weight: 1 / G(t)^2 for events before tau (G: the
    training subset's censoring survival), 0 otherwise; NaN where G(t) is 0 (sksurv raises,
    so every replicate holding that subject is undefined)."""
    from sksurv.nonparametric import CensoringDistributionEstimator
    from sksurv.util import Surv

    train = np.asarray(reference["train"], dtype=float)
    censoring = CensoringDistributionEstimator().fit(
        Surv.from_arrays(event=train[:, 1].astype(bool), time=train[:, 0]))
    inside = event & (time < reference["tau"])
    weights = np.zeros(time.shape[0])
    if inside.any():
        g = censoring.predict_proba(time[inside])
        with np.errstate(divide="ignore"):
            weights[inside] = np.where(g > 0, 1.0 / np.square(g), np.nan)
    return weights


def _logrank_p(time: np.ndarray, event: np.ndarray, high: np.ndarray,
               idx: np.ndarray) -> np.ndarray:
    """Row-wise two-group log-rank p of resampled subjects (NaN where a draw holds one group
    or the variance is 0: `LOGRANK_MIN_VARIANCE`). Each replicate is the count of each subject drawn."""
    from scipy.stats import chi2

    n = time.shape[0]
    counts = _draw_counts(idx, n)  # (B, n)
    times = np.unique(time[event])
    at_risk = (time[:, None] >= times[None, :]).astype(float)  # (n, K)
    dies = ((time[:, None] == times[None, :]) & event[:, None]).astype(float)
    low = (~high).astype(float)[:, None]
    total, deaths = counts @ at_risk, counts @ dies  # (B, K)
    low_risk, low_deaths = counts @ (at_risk * low), counts @ (dies * low)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, low_risk / total, 0.0)
        spread = np.where(total > 1, deaths * (total - deaths) / (total - 1), 0.0)
        observed_minus_expected = (low_deaths - deaths * share).sum(axis=1)
        variance = (spread * share * (1 - share)).sum(axis=1)
        statistic = observed_minus_expected ** 2 / variance
    groups = (counts @ high.astype(float) > 0) & (counts @ low[:, 0] > 0)
    return np.where(groups & (variance > LOGRANK_MIN_VARIANCE), chi2.sf(statistic, 1), np.nan)


def survival_reference(train_time: Sequence[float], train_event: Sequence[bool],
                       train_risk: Sequence[float]) -> dict[str, Any]:
    """What Uno's C and the log-rank p of a cell need besides its test predictions, stored
    with the cell at fit time so both get intervals like Harrell's C: the training subset's
    (time, event) pairs (the censoring distribution), its longest follow-up (Uno's tau) and
    the median training risk (the log-rank cut)."""
    return {"train": [[float(t), bool(e)] for t, e in zip(train_time, train_event)],
            "tau": float(np.max(train_time)), "risk_cut": float(np.median(train_risk))}


def _survival_secondary(scorer: "Scorer", idx: np.ndarray) -> np.ndarray:
    """Uno's C or the log-rank p of each row of resampled test indices (NaN where a draw
    leaves it undefined, e.g. no comparable pair or one risk group). Vectorised like the
    primary metrics; tests check both against sksurv on the same draws."""
    if not scorer.reference:
        raise BenchError(f"{scorer.metric} needs the training reference stored at fit time; "
                         "this cell has none (stored before it was recorded)")
    time, event = scorer.y
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=bool)
    if scorer.metric == "c_uno":
        return _harrell(time, event, scorer.prediction, idx,
                        weights=_uno_weights(time, event, scorer.reference))
    return _logrank_p(time, event, scorer.prediction > scorer.reference["risk_cut"], idx)


@dataclass(frozen=True)
class Scorer:
    """One cell's test predictions, ready to be scored on any rows of resampling indices."""

    kind: str
    metric: str
    y: Any  # class indices (classification), values (regression), (time, event) (survival)
    prediction: np.ndarray
    #: what a metric needs beyond the test split, stored at fit time (survival's Uno's C and
    #: log-rank p: the training subset's survival data, its follow-up and risk cut)
    reference: Mapping[str, Any] | None = None

    @property
    def n(self) -> int:
        return int(self.prediction.shape[0])

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.atleast_2d(idx)
        if self.kind == "classification":
            return _auc(self.y, self.prediction, idx)
        if self.kind == "mean":  # a per-subject score averaged (segmentation Dice / HD95)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmean(self.prediction[idx], axis=1)
        if self.kind == "regression":
            return self._regression_error(self.prediction[idx] - self.y[idx])
        time, event = self.y
        if self.metric in ("c_uno", "logrank_p"):
            return _survival_secondary(self, idx)
        return _harrell(time, event, self.prediction, idx)

    def point(self) -> float:
        return float(self(np.arange(self.n))[0])

    def shuffled(self, perms: np.ndarray) -> np.ndarray:
        """(P,) the metric with the predictions reordered by each row of `perms` against the
        labels in place: the labels permuted across samples (the chance row). Classification
        and regression score every row in one array operation; a survival pair matrix depends
        on the order, so it is scored row by row."""
        perms = np.atleast_2d(perms)
        if self.kind == "classification":
            everyone = np.broadcast_to(np.arange(self.n), perms.shape)
            return _auc(self.y, self.prediction, everyone, perms)
        if self.kind == "regression":
            return self._regression_error(self.prediction[perms] - self.y[None, :])
        everyone = np.arange(self.n)[None, :]
        return np.array([replace(self, prediction=self.prediction[perm])(everyone)[0]
                         for perm in perms])

    def _regression_error(self, err: np.ndarray) -> np.ndarray:
        if self.metric == "mae":
            return np.abs(err).mean(axis=1)
        return np.sqrt((err ** 2).mean(axis=1))

    def hard(self) -> np.ndarray:
        """Classification: the predicted class index per subject (argmax of the stored
        probabilities, columns in the probe's sorted class order; ties go to the first)."""
        if self.kind != "classification":
            raise BenchError(f"hard predictions exist for classification only, not {self.kind}")
        return np.argmax(self.prediction, axis=1)


def class_order(labels: Sequence[str], n_columns: int, declared: Sequence[str] = ()) -> list[str]:
    """The probe's column order: sorted training classes (sklearn's ``classes_``).

    The test split holds every class (the runner requires it), so the sorted test labels are
    the columns when their count matches; otherwise the task's declared classes, sorted.
    """
    present = sorted(set(labels))
    if len(present) == n_columns:
        return present
    if len(declared) == n_columns and set(present) <= set(declared):
        return sorted(declared)
    raise BenchError(f"stored predictions have {n_columns} probability columns but the test "
                     f"labels hold classes {present} (declared {list(declared)}): cannot tell "
                     "which column is which class")


def _check_aligned(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
    if len(targets) != len(predictions) or not len(targets):
        raise BenchError(f"{len(targets)} stored targets but {len(predictions)} predictions")


def classification_scorer(metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                          classes: Sequence[str] = ()) -> Scorer:
    """Stored class labels and (n, K) probability vectors (columns in sorted class order)."""
    _check_aligned(targets, predictions)
    proba = np.asarray(predictions, dtype=float)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise BenchError(f"classification predictions must be (n, K>=2) probabilities, got "
                         f"shape {proba.shape}")
    order = class_order([str(t) for t in targets], proba.shape[1], classes)
    index = {c: i for i, c in enumerate(order)}
    return Scorer("classification", metric, np.array([index[str(t)] for t in targets]), proba)


def regression_scorer(metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                      classes: Sequence[str] = ()) -> Scorer:
    """Stored target values and predicted values (``classes`` is ignored)."""
    _check_aligned(targets, predictions)
    return Scorer("regression", metric, np.asarray(targets, dtype=float),
                  np.asarray(predictions, dtype=float).reshape(-1))


def survival_scorer(metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                    classes: Sequence[str] = ()) -> Scorer:
    """Stored [time, event] pairs and risk scores (higher = earlier event; ``classes`` is
    ignored)."""
    _check_aligned(targets, predictions)
    pairs = np.asarray(targets, dtype=float)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise BenchError("survival targets must be stored as [time, event] pairs")
    return Scorer("survival", metric, (pairs[:, 0], pairs[:, 1].astype(bool)),
                  np.asarray(predictions, dtype=float).reshape(-1))


def subject_mean_scorer(metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                        classes: Sequence[str] = ()) -> Scorer:
    """Scorer of a metric stored per subject (each prediction a {metric: value} record, as
    the segmentation evaluator stores them): the mean over the resampled subjects."""
    try:
        values = np.array([float(p[metric]) for p in predictions], dtype=float)
    except (KeyError, TypeError, ValueError):
        raise BenchError(f"stored predictions do not hold a per-subject {metric!r} value") from None
    return Scorer("mean", metric, None, values)


def make_scorer(kind: str, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                classes: Sequence[str] = ()) -> Scorer:
    """A Scorer from stored JSON values; the task kind picks the builder above."""
    return get_kind(kind).scorer(metric, targets, predictions, classes)


# --------------------------------------------------------------------------- tests


@dataclass(frozen=True)
class PairedTest:
    """Backbone minus reference on the same test subjects (positive = larger metric)."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_valid: int


def paired_bootstrap(point_a: float, point_b: float, reps_a: np.ndarray,
                     reps_b: np.ndarray, level: float = 0.95) -> PairedTest:
    """Two-sided paired bootstrap test of a - b from replicates drawn on the same resamples.

    p = min(1, 2 * min(#(d <= 0) + 1, #(d >= 0) + 1) / (B + 1)) over finite replicates d:
    the percentile-interval inversion, with the +1 that keeps p above zero.
    """
    d = np.asarray(reps_a, dtype=float) - np.asarray(reps_b, dtype=float)
    d = d[np.isfinite(d)]
    low, high = percentile_interval(d, level)
    if d.size == 0:
        return PairedTest(point_a - point_b, low, high, float("nan"), 0)
    tail = min((d <= 0).sum(), (d >= 0).sum())
    p = min(1.0, 2 * (tail + 1) / (d.size + 1))
    return PairedTest(point_a - point_b, low, high, float(p), int(d.size))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def shuffled_labels(scorers: Sequence[Scorer], n_perm: int, seed: int, key: str) -> np.ndarray:
    """(n_perm,) the seed-mean metric with each cell's predictions scored against test labels
    permuted across its samples: what a table's numbers are when there is no signal (the
    chance row). Permutation j is the same for every seed's cell of one test split."""
    if not scorers:
        raise BenchError("no cells to score against shuffled labels")
    salt = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = np.random.default_rng([int(seed), salt])
    n = scorers[0].n
    perms = np.stack([rng.permutation(n) for _ in range(n_perm)])
    # permuting the predictions against fixed labels = permuting the labels
    out = np.stack([scorer.shuffled(perms) for scorer in scorers])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(out, axis=0)


# --------------------------------------------------------------------------- curves and ranks


def normalised_log_auc(fractions: Sequence[float], scores: np.ndarray) -> np.ndarray:
    """Area under score vs log10(fraction), divided by the log-fraction span.

    That is the curve's average score over log-fraction, in the metric's own units (so the
    metric's direction applies). ``scores`` is (..., n_fractions); fractions ascending.
    """
    x = np.log10(np.asarray(fractions, dtype=float))
    if x.size < 2:
        raise BenchError("label efficiency needs at least two label fractions")
    return np.trapezoid(scores, x, axis=-1) / (x[-1] - x[0])


def fraction_to_reach(fractions: Sequence[float], scores: np.ndarray, direction: str,
                      share: float = 0.95) -> np.ndarray:
    """Smallest fraction whose score reaches ``share`` of the largest fraction's score.

    higher-is-better: score >= share * full; lower-is-better (errors): score <= full / share.
    """
    f = np.asarray(fractions, dtype=float)
    s = np.atleast_2d(scores)
    full = s[:, -1:]
    ok = s >= share * full if direction == "higher" else s <= full / share
    first = np.argmax(ok, axis=1)
    out = np.where(ok.any(axis=1) & np.isfinite(full[:, 0]), f[first], np.nan)
    return out if np.ndim(scores) > 1 else out[:1]


def ranks(scores: np.ndarray, direction: str) -> np.ndarray:
    """Ranks along the last axis, 1 = best, ties share the average rank."""
    signed = -np.asarray(scores, dtype=float) if direction == "higher" else np.asarray(scores)
    from scipy.stats import rankdata

    return rankdata(signed, axis=-1, method="average")


# --------------------------------------------------------------------------- McNemar


@dataclass(frozen=True)
class McNemarResult:
    n: int  # paired test subjects
    only_a_correct: int  # b
    only_b_correct: int  # c
    accuracy_a: float
    accuracy_b: float
    p_value: float  # exact two-sided binomial test of b vs c (p = 0.5)


def mcnemar_exact(y_true: Sequence[Any], pred_a: Sequence[Any],
                  pred_b: Sequence[Any]) -> McNemarResult:
    """Exact McNemar test of two classifiers' hard predictions on the same subjects: b of the
    b + c discordant subjects against Binomial(b + c, 1/2), two-sided (scipy's binomtest)."""
    from scipy.stats import binomtest

    truth, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    if not truth.shape == a.shape == b.shape or truth.ndim != 1:
        raise BenchError(f"McNemar needs three aligned 1-D arrays, got shapes {truth.shape}, "
                         f"{a.shape}, {b.shape}")
    if truth.size == 0:
        raise BenchError("McNemar needs at least one paired test subject")
    right_a, right_b = a == truth, b == truth
    only_a = int((right_a & ~right_b).sum())
    only_b = int((right_b & ~right_a).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemarResult(int(truth.size), only_a, only_b, float(right_a.mean()),
                         float(right_b.mean()), p)


def mcnemar_between(predictions_a: Mapping[str, Any], predictions_b: Mapping[str, Any],
                    truth: Mapping[str, Any]) -> McNemarResult:
    """McNemar on two {subject id: hard label} maps; both must cover the same test subjects."""
    ids_a, ids_b = set(predictions_a), set(predictions_b)
    if ids_a != ids_b:
        raise BenchError(f"McNemar compares the same test subjects, but {len(ids_a ^ ids_b)} "
                         f"subject(s) are in only one set (e.g. {sorted(ids_a ^ ids_b)[:3]})")
    missing = sorted(ids_a - set(truth))
    if missing:
        raise BenchError(f"no true label for test subject(s) {missing[:3]}")
    ids = sorted(ids_a)
    return mcnemar_exact([truth[i] for i in ids], [predictions_a[i] for i in ids],
                         [predictions_b[i] for i in ids])


@dataclass(frozen=True)
class McNemarSummary:
    """McNemar of A vs B over seeds (seed s of A against seed s of B: the same label subset)."""

    only_a_correct: int  # summed over seeds
    only_b_correct: int
    median_p: float
    significant: int  # seeds with p < alpha
    n_seeds: int
    alpha: float
    per_seed: tuple[McNemarResult, ...]

    def text(self) -> str:
        return (f"{self.only_a_correct} / {self.only_b_correct}, median p={self.median_p:.3g}, "
                f"{self.significant}/{self.n_seeds} seeds p<{self.alpha:g}")


def mcnemar_over_seeds(results: Sequence[McNemarResult], alpha: float = 0.05) -> McNemarSummary:
    if not results:
        raise BenchError("McNemar over seeds needs at least one seed")
    p = np.array([r.p_value for r in results], dtype=float)
    return McNemarSummary(sum(r.only_a_correct for r in results),
                          sum(r.only_b_correct for r in results), float(np.median(p)),
                          int((p < alpha).sum()), len(results), alpha, tuple(results))


def mcnemar_cells(store: Any, cell_a: str, cell_b: str) -> McNemarResult:
    """McNemar between two stored classification cells (same task, same test split).

    ``store`` is a `brainbench.store.ResultStore`. Stored predictions are probability vectors
    in sorted-class order (every head's ``classes_`` is np.unique of the training labels, and
    the fixed split puts every class in each subset), so the hard label is the argmax over the
    sorted test labels.
    """
    stored = store.predictions([cell_a, cell_b])
    for cell in (cell_a, cell_b):
        if not stored.get(cell):
            raise BenchError(f"no stored predictions for cell {cell} in {store.url}")
    a = {sid: (t, p) for sid, t, p in stored[cell_a]}
    b = {sid: (t, p) for sid, t, p in stored[cell_b]}
    classes = sorted({str(t) for t, _ in a.values()})

    def hard(rows: dict[str, tuple[Any, Any]], cell: str) -> dict[str, str]:
        out = {}
        for sid, (_, prob) in rows.items():
            if not isinstance(prob, list) or len(prob) != len(classes):
                raise BenchError(f"cell {cell}: prediction for {sid} is not a probability vector "
                                 f"over the {len(classes)} classes {classes}; McNemar needs a "
                                 "classification cell")
            out[sid] = classes[int(np.argmax(prob))]
        return out

    return mcnemar_between(hard(a, cell_a), hard(b, cell_b),
                           {sid: str(t) for sid, (t, _) in a.items()})
