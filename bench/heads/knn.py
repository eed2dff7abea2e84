"""`knn`: cosine k-nearest neighbours on L2-normalised frozen features.

The frozen-feature probe of the paper: nothing is trained, so it measures the geometry of the
embedding itself. k comes from `K_GRID` by inner cross-validation on the training subset
(never the test split), maximising the task kind's validation score (the one every selection
step uses: ROC AUC, -MAE in the target's units, Harrell's C); with too few samples a fixed,
documented fallback applies.

- classification: class probabilities = share of the k neighbours per class (uniform votes).
- regression: mean of the neighbours' targets (on log1p scale when the task asks for it).
- survival: the neighbours' Nelson-Aalen cumulative hazard summed over the training event
  times (the "expected mortality" risk score random survival forests use); higher = earlier.

McNemar tests of stored cells (`mcnemar_cells`, `mcnemar_exact`) live in brainbench.stats.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from brainbench.heads.base import Head, Monitor, register_head
from brainbench.heads.folds import check_groups, grouped, kfold, smallest_class
from brainbench.heads.linear import MAX_FOLDS
from brainbench.heads.validation import check_features, check_n_train, check_targets
from brainbench.kinds import get_kind, probe_kinds

__all__ = ["KNNHead"]

K_GRID: tuple[int, ...] = (1, 3, 5, 10, 20, 50)
FALLBACK_K = 5


def l2_normalise(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


@register_head("knn")
class KNNHead(Head):
    kinds = probe_kinds()

    def __init__(self, kind: str, *, seed: int, params: Mapping[str, Any] | None = None,
                 target_transform: str | None = None, k_grid: Sequence[int] = K_GRID) -> None:
        super().__init__(kind, seed=seed, params=params, target_transform=target_transform)
        self.k_grid = tuple(int(k) for k in self.params.get("k_grid", k_grid))

    # ----------------------------------------------------------------- core predictor
    def _predict_with(self, Xtr: np.ndarray, ytr: Any, Xq: np.ndarray, k: int,
                      exclude_self: bool = False) -> np.ndarray:
        k = max(1, min(k, Xtr.shape[0] - int(exclude_self)))
        sim = Xq @ Xtr.T  # cosine similarity of unit vectors
        if exclude_self:
            np.fill_diagonal(sim, -np.inf)
        # stable ordering: ties broken by training index
        idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        if self.kind == "classification":
            index = ytr  # integer class indices
            counts = np.zeros((Xq.shape[0], len(self.classes_)))
            for j in range(k):
                counts[np.arange(Xq.shape[0]), index[idx[:, j]]] += 1
            return counts / k
        if self.kind == "regression":
            return ytr[idx].mean(axis=1)
        event, time = ytr
        t_nb, e_nb = time[idx], event[idx]  # (q, k)
        grid = np.unique(time[event])
        at_risk = (t_nb[:, :, None] >= grid[None, None, :]).sum(axis=1)
        deaths = ((t_nb[:, :, None] == grid[None, None, :]) & e_nb[:, :, None]).sum(axis=1)
        hazard = np.where(at_risk > 0, deaths / np.maximum(at_risk, 1), 0.0)
        return np.cumsum(hazard, axis=1).sum(axis=1)

    def _labels(self, y: Any, n: int) -> tuple[Any, Any]:
        """(what the neighbours average, what validation scores against)."""
        checked = check_targets(self.kind, y, n, self.who)
        if self.kind == "classification":
            self.classes_ = checked.classes
            return checked.index, checked.index
        if self.kind == "regression":
            return self._fit_target(checked), checked  # log1p scale, target units
        event, time = checked
        return (event, time), (time, event)  # scored as a (time, event) pair

    def _score(self, y_val: Any, pred: np.ndarray) -> float:
        """The kind's validation score; NaN where a fold cannot be scored."""
        if self.kind == "classification":
            if len(np.unique(y_val)) < 2:
                return float("nan")
            classes: Any = np.arange(len(self.classes_))  # labels are class indices here
        else:
            classes = ()
            if self.kind == "regression":
                pred = self._predict_target(pred)  # -MAE in the target's units
        try:
            return get_kind(self.kind).validation_score(classes, y_val, pred)
        except ValueError:
            return float("nan")

    def _folds(self, y: Any, n: int, groups: np.ndarray | None = None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str] | None:
        """Inner folds (person-grouped when a person has several rows) and how they read."""
        by = "person-grouped " if grouped(groups) else ""
        if self.kind == "classification":
            smallest = smallest_class(y, groups)
            if smallest < 2:
                return None
            folds = kfold(n, min(MAX_FOLDS, smallest), self.seed, strata=y, groups=groups,
                          require_all=grouped(groups))
            return (folds, f"{by}stratified {len(folds)}-fold") if len(folds) >= 2 else None
        if self.kind == "survival":
            n_events = int(y[0].sum())
            if n_events < 4:
                return None
            folds = kfold(n, min(MAX_FOLDS, n_events // 2), self.seed, strata=y[0],
                          groups=groups)
            return ((folds, f"{by}{len(folds)}-fold stratified on event") if len(folds) >= 2
                    else None)
        people = len(np.unique(groups)) if grouped(groups) else n
        if people < 4:
            return None
        folds = kfold(n, min(MAX_FOLDS, people // 2), self.seed, groups=groups)
        return (folds, f"{by}{len(folds)}-fold") if len(folds) >= 2 else None

    @staticmethod
    def _take(y: Any, idx: np.ndarray) -> Any:
        return (y[0][idx], y[1][idx]) if isinstance(y, tuple) else y[idx]

    def fit(self, X: Any, y: Any, monitor: Monitor | None = None,
            groups: Any = None) -> "KNNHead":
        features = l2_normalise(check_features(X))
        n = features.shape[0]
        check_n_train(n, n, self.who)
        labels, scored = self._labels(y, n)
        plan = self._folds(labels, n, check_groups(groups, n, self.who))
        grid = [k for k in self.k_grid if k < n] or [1]
        if plan is None:
            chosen = min(FALLBACK_K, n - 1)
            selection = (f"fallback: fixed k={chosen} (min({FALLBACK_K}, n-1); too few samples "
                         "per class / events for inner CV)")
        else:
            folds, how = plan
            means = []
            for k in grid:
                scores = [self._score(self._take(scored, va),
                                      self._predict_with(features[tr], self._take(labels, tr),
                                                         features[va], k))
                          for tr, va in folds]
                finite = [s for s in scores if not math.isnan(s)]
                means.append(np.mean(finite) if finite else -np.inf)
            best = int(np.argmax(means))  # ties: the smallest k first in the grid
            chosen = grid[best]
            if not np.isfinite(means[best]):
                chosen = min(FALLBACK_K, n - 1)
                selection = f"fallback: fixed k={chosen} (no inner fold could be scored)"
            else:
                metric = get_kind(self.kind).validation_metric
                selection = (f"inner {how} CV on the training subset maximising {metric} "
                             f"(mean {means[best]:.3f}) over k in "
                             f"{{{', '.join(map(str, grid))}}}; "
                             "cosine similarity on L2-normalised features")
        self._train = (features, labels)
        self._k = int(chosen)
        self._record_fit({"k": self._k, "metric": "cosine"}, selection, n)
        self._report_once(monitor)
        return self

    def predict(self, X: Any) -> np.ndarray:
        self.check_is_fitted()
        features, labels = self._train
        query = l2_normalise(check_features(X, sample_shape=features.shape[1:]))
        pred = self._predict_with(features, labels, query, self._k)
        if self.kind == "regression":
            pred = self._predict_target(pred)
        return np.asarray(pred, dtype=np.float64)
