"""`knn`: cosine k-nearest neighbours on L2-normalised frozen features, plus exact McNemar tests.

The frozen-feature probe of the paper: nothing is trained, so it measures the geometry of the
embedding itself. k comes from `K_GRID` by inner cross-validation on the training subset
(never the test split); with too few samples a fixed, documented fallback applies.

- classification: class probabilities = share of the k neighbours per class (uniform votes).
- regression: mean of the neighbours' targets (on log1p scale when the task asks for it).
- survival: the neighbours' Nelson-Aalen cumulative hazard summed over the training event
  times (the "expected mortality" risk score random survival forests use); higher = earlier.

McNemar: `mcnemar_cells` compares two stored cells' hard predictions on the same test subjects
with the exact binomial test on the discordant pairs. The test itself (`mcnemar_exact`,
`mcnemar_between`) lives in brainbench.leaderboard.stats, which the leaderboard also uses; it
is re-exported here.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from brainbench.errors import BenchError
from brainbench.leaderboard.stats import McNemarResult, mcnemar_between, mcnemar_exact
from brainbench.probes import MAX_FOLDS, ProbeFit, _check_features, _survival_arrays

__all__ = ["KNNHead", "McNemarResult", "mcnemar_between", "mcnemar_cells", "mcnemar_exact"]

K_GRID: tuple[int, ...] = (1, 3, 5, 10, 20, 50)
FALLBACK_K = 5


def l2_normalise(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


class KNNHead:
    head_name = "knn"

    def __init__(self, kind: str, *, seed: int, target_transform: str | None = None,
                 k_grid: Sequence[int] = K_GRID) -> None:
        if kind not in ("classification", "regression", "survival"):
            raise BenchError(f"no knn head for task kind {kind!r}")
        if target_transform not in (None, "log1p"):
            raise BenchError(f"unknown target_transform {target_transform!r}; valid: None, 'log1p'")
        self.kind = kind
        self.seed = int(seed)
        self.target_transform = target_transform
        self.k_grid = tuple(int(k) for k in k_grid)
        self.classes_: np.ndarray | None = None
        self._fit_info: ProbeFit | None = None

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

    def _labels(self, y: Any, n: int) -> Any:
        if self.kind == "classification":
            labels = np.asarray(y)
            if labels.shape != (n,):
                raise BenchError(f"{n} feature rows but labels shaped {labels.shape}")
            self.classes_, index = np.unique(labels, return_inverse=True)
            if len(self.classes_) < 2:
                raise BenchError(f"classification training subset has only one class "
                                 f"{list(self.classes_)}")
            return index
        if self.kind == "regression":
            target = np.asarray(y, dtype=np.float64)
            if target.shape != (n,) or not np.isfinite(target).all():
                raise BenchError(f"regression labels must be {n} finite numbers")
            return np.log1p(target) if self.target_transform == "log1p" else target
        event, time = _survival_arrays(y)
        if event.shape[0] != n or not event.any():
            raise BenchError("survival labels must match the features and contain an event")
        return event, time

    def _score(self, y_val: Any, pred: np.ndarray) -> float:
        if self.kind == "classification":
            from sklearn.metrics import roc_auc_score

            present = np.unique(y_val)
            if len(present) < 2:
                return float("nan")
            if len(self.classes_) == 2:
                return float(roc_auc_score(y_val == 1, pred[:, 1]))
            try:
                return float(roc_auc_score(y_val, pred, multi_class="ovr",
                                           labels=np.arange(len(self.classes_))))
            except ValueError:
                return float("nan")
        if self.kind == "regression":
            return -float(np.mean((y_val - pred) ** 2))
        from sksurv.metrics import concordance_index_censored

        event, time = y_val
        try:
            return float(concordance_index_censored(event, time, pred)[0])
        except ValueError:
            return float("nan")

    def _folds(self, y: Any, n: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str] | None:
        from sklearn.model_selection import KFold, StratifiedKFold

        if self.kind == "classification":
            smallest = int(np.bincount(y).min())
            if smallest < 2:
                return None
            n_folds = min(MAX_FOLDS, smallest)
            cv = StratifiedKFold(n_folds, shuffle=True, random_state=self.seed)
            return list(cv.split(np.zeros(n), y)), f"stratified {n_folds}-fold"
        if self.kind == "survival":
            n_events = int(y[0].sum())
            if n_events < 4:
                return None
            n_folds = min(MAX_FOLDS, n_events // 2)
            cv = StratifiedKFold(n_folds, shuffle=True, random_state=self.seed)
            return list(cv.split(np.zeros(n), y[0])), f"{n_folds}-fold stratified on event"
        if n < 4:
            return None
        n_folds = min(MAX_FOLDS, n // 2)
        return list(KFold(n_folds, shuffle=True, random_state=self.seed).split(np.zeros(n))), \
            f"{n_folds}-fold"

    @staticmethod
    def _take(y: Any, idx: np.ndarray) -> Any:
        return (y[0][idx], y[1][idx]) if isinstance(y, tuple) else y[idx]

    def fit(self, X: Any, y: Any) -> "KNNHead":
        features = l2_normalise(_check_features(X))
        n = features.shape[0]
        if n < 2:
            raise BenchError(f"cannot fit a knn head on {n} training sample(s)")
        labels = self._labels(y, n)
        plan = self._folds(labels, n)
        grid = [k for k in self.k_grid if k < n] or [1]
        if plan is None:
            chosen = min(FALLBACK_K, n - 1)
            selection = (f"fallback: fixed k={chosen} (min({FALLBACK_K}, n-1); too few samples "
                         "per class / events for inner CV)")
        else:
            folds, how = plan
            means = []
            for k in grid:
                scores = [self._score(self._take(labels, va),
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
                selection = (f"inner {how} CV on the training subset over k in "
                             f"{{{', '.join(map(str, grid))}}} (mean score {means[best]:.3f}); "
                             "cosine similarity on L2-normalised features")
        self._train = (features, labels)
        self._k = int(chosen)
        hyper: dict[str, Any] = {"k": self._k, "metric": "cosine"}
        if self.target_transform:
            hyper["target_transform"] = self.target_transform
        self._fit_info = ProbeFit(head="knn", hyperparameters=hyper, selection=selection,
                                  n_train=int(n))
        return self

    @property
    def fit_info(self) -> ProbeFit:
        if self._fit_info is None:
            raise BenchError("KNNHead is not fitted; call fit(X, y) first")
        return self._fit_info

    def set_fit_info(self, info: ProbeFit) -> None:
        self._fit_info = info

    def predict(self, X: Any) -> np.ndarray:
        if self._fit_info is None:
            raise BenchError("KNNHead is not fitted; call fit(X, y) first")
        features, labels = self._train
        query = l2_normalise(_check_features(X, n_features=features.shape[1]))
        pred = self._predict_with(features, labels, query, self._k)
        if self.kind == "regression" and self.target_transform == "log1p":
            pred = np.expm1(pred)
        return np.asarray(pred, dtype=np.float64)


# --------------------------------------------------------------------------- McNemar


def mcnemar_cells(store: Any, cell_a: str, cell_b: str) -> McNemarResult:
    """McNemar between two stored classification cells (same task, same test split).

    Stored predictions are probability vectors in sorted-class order (every head's
    ``classes_`` is np.unique of the training labels, and the fixed split puts every class in
    each subset), so the hard label is the argmax over the sorted test labels.
    """
    import json

    from sqlalchemy import select

    from brainbench.store import predictions_table

    def load(cell: str) -> dict[str, tuple[Any, Any]]:
        with store.engine.connect() as conn:
            rows = conn.execute(select(predictions_table.c.sample_id, predictions_table.c.target,
                                       predictions_table.c.prediction)
                                .where(predictions_table.c.cell_id == cell)).all()
        if not rows:
            raise BenchError(f"no stored predictions for cell {cell} in {store.url}")
        return {r.sample_id: (json.loads(r.target), json.loads(r.prediction)) for r in rows}

    a, b = load(cell_a), load(cell_b)
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
