"""Lightweight probe heads on frozen features, fitted on the label-fraction subset ONLY.

Features are fixed numpy arrays (n x d, d ~ 768, n from 2 to a few hundred). Every head is a
scikit-learn / scikit-survival pipeline whose single hyperparameter is chosen by an inner
resampling of the training subset (never the test split), then refitted on the whole subset.
What was chosen, and how, is recorded in `ProbeFit` so the runner can store it next to the
metric rows; when the subset is too small for inner CV a fixed, documented fallback is used and
`ProbeFit.selection` says so.

Heads (all linear in the features):

- classification: StandardScaler -> LogisticRegression (lbfgs, multinomial for K > 2). C from
  `CLASSIFICATION_C_GRID` by inner stratified K-fold CV, K = min(5, smallest class count),
  maximising ROC AUC (macro one-vs-rest for K > 2). Smallest class count < 2: C = 1.0.
- regression: StandardScaler -> RidgeCV, alpha from `REGRESSION_ALPHA_GRID` by efficient
  leave-one-out; ``target_transform="log1p"`` fits log1p(y) and predicts expm1 (within the training range). n < 3:
  alpha = 1.0.
- survival: StandardScaler -> PCA -> ridge-penalised Cox (see `CoxSurvivalProbe` for why).

Randomness comes only from ``seed`` (the inner fold assignment); the solvers are deterministic,
so the same input and seed give identical predictions.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar, runtime_checkable

import numpy as np

from brainbench.errors import BenchError

__all__ = [
    "CLASSIFICATION_C_GRID",
    "COX_ALPHA_GRID",
    "COX_MAX_COMPONENTS",
    "REGRESSION_ALPHA_GRID",
    "CoxSurvivalProbe",
    "LinearClassificationProbe",
    "Probe",
    "ProbeFit",
    "RidgeRegressionProbe",
    "make_probe",
]

#: Inverse L2 strength of the logistic head (on standardised features); 7 values, 1e-4..1e2.
CLASSIFICATION_C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
FALLBACK_C = 1.0
#: Ridge strength of the regression head; efficient LOO makes a long grid cheap.
REGRESSION_ALPHA_GRID: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 15))
FALLBACK_ALPHA = 1.0
#: Ridge strength of the Cox head (sksurv's penalty 0.5 * alpha * ||beta||^2).
COX_ALPHA_GRID: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 5, 7))
FALLBACK_COX_ALPHA = 100.0  # mid-grid; what inner CV typically picks at n ~ 100 here
COX_MAX_COMPONENTS = 32
MAX_FOLDS = 5

T = TypeVar("T")


@dataclass(frozen=True)
class ProbeFit:
    """What the runner stores next to the metric rows."""

    head: str  # "linear"
    hyperparameters: dict = field(default_factory=dict)  # chosen C / alpha (+ PCA components)
    selection: str = ""  # how they were chosen, or which fallback was used and why
    n_train: int = 0


@runtime_checkable
class Probe(Protocol):
    """Estimator-like head: ``fit`` on the training subset, ``predict`` on any split.

    predict returns class probabilities (n, K) in ``classes_`` order, regression values (n,),
    or survival risk scores (n,) where higher means an earlier event.
    """

    fit_info: ProbeFit

    def fit(self, X: Any, y: Any) -> "Probe": ...

    def predict(self, X: Any) -> np.ndarray: ...


# --------------------------------------------------------------------------- shared checks


def _check_features(X: Any, *, n_features: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise BenchError("features must be a numeric (n, d) array") from None
    if array.ndim != 2:
        raise BenchError(f"features must be a 2-D (n, d) array, got shape {array.shape}")
    if n_features is not None and array.shape[1] != n_features:
        raise BenchError(
            f"features have {array.shape[1]} columns but the probe was fitted on {n_features}"
        )
    bad_rows = ~np.isfinite(array).all(axis=1)
    if bad_rows.any():
        raise BenchError(
            f"features have non-finite values (NaN or inf) in {int(bad_rows.sum())} row(s), "
            f"first at row {int(np.flatnonzero(bad_rows)[0])}"
        )
    return array


def _check_training(X: Any, n_labels: int, what: str) -> np.ndarray:
    array = _check_features(X)
    if array.shape[0] != n_labels:
        raise BenchError(f"{array.shape[0]} feature rows but {n_labels} {what} labels")
    if array.shape[0] == 0:
        raise BenchError(f"cannot fit a {what} probe on an empty training subset")
    if array.shape[0] == 1:
        raise BenchError(
            f"cannot fit a {what} probe on a single training sample; "
            "use a larger label fraction"
        )
    return array


def _single_threaded_blas(method: Callable[..., T]) -> Callable[..., T]:
    """Run a fit/predict with one BLAS thread.

    The matrices here are tiny (n <= ~500, d ~ 768). Multi-threaded OpenBLAS on a 2-core
    machine that is also busy with something else spin-waits: a fit measured 5-20x slower
    than single-threaded. One thread is also bitwise reproducible across machines.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


def _fmt(value: float) -> str:
    return f"{value:g}"


class _FittedMixin:
    _fit_info: ProbeFit | None = None
    _n_features: int | None = None

    def _not_fitted(self) -> Exception:
        from sklearn.exceptions import NotFittedError  # an AttributeError and a ValueError

        return NotFittedError(f"{type(self).__name__} is not fitted; call fit(X, y) first")

    @property
    def fit_info(self) -> ProbeFit:
        if self._fit_info is None:
            raise self._not_fitted()
        return self._fit_info

    def _features_for_predict(self, X: Any) -> np.ndarray:
        if self._fit_info is None:
            raise self._not_fitted()
        return _check_features(X, n_features=self._n_features)


# --------------------------------------------------------------------------- classification


class LinearClassificationProbe(_FittedMixin):
    """StandardScaler + L2 logistic regression; C by inner stratified CV on ROC AUC."""

    def __init__(self, seed: int, c_grid: tuple[float, ...] = CLASSIFICATION_C_GRID) -> None:
        self.seed = int(seed)
        self.c_grid = tuple(c_grid)
        self.classes_: np.ndarray | None = None
        self._model: Any = None

    @staticmethod
    def _pipeline(C: float) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            StandardScaler(), LogisticRegression(C=C, solver="lbfgs", max_iter=5000, tol=1e-4)
        )

    @_single_threaded_blas
    def fit(self, X: Any, y: Any) -> "LinearClassificationProbe":
        from sklearn.model_selection import GridSearchCV, StratifiedKFold

        labels = np.asarray(y)
        if labels.ndim != 1:
            raise BenchError(f"classification labels must be 1-D, got shape {labels.shape}")
        features = _check_training(X, labels.shape[0], "classification")
        classes, counts = np.unique(labels, return_counts=True)
        if classes.shape[0] < 2:
            found = [c.item() if hasattr(c, "item") else c for c in classes]
            raise BenchError(
                f"classification training subset has only one class {found} "
                f"({features.shape[0]} samples); a probe needs at least 2 classes"
            )
        smallest = int(counts.min())
        if smallest < 2:
            singles = [str(c) for c, k in zip(classes, counts) if k < 2]
            model = self._pipeline(FALLBACK_C).fit(features, labels)
            chosen = FALLBACK_C
            selection = (
                f"fallback: fixed C={_fmt(FALLBACK_C)} (only 1 sample in class(es) "
                f"{', '.join(singles)}; inner CV needs >= 2 per class)"
            )
        else:
            n_folds = min(MAX_FOLDS, smallest)
            scoring = "roc_auc" if classes.shape[0] == 2 else "roc_auc_ovr"
            search = GridSearchCV(
                self._pipeline(FALLBACK_C),
                {"logisticregression__C": list(self.c_grid)},
                scoring=scoring,
                cv=StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.seed),
                refit=True,
                error_score="raise",
            )
            search.fit(features, labels)
            model = search.best_estimator_
            chosen = float(search.best_params_["logisticregression__C"])
            auc_name = "ROC AUC" if classes.shape[0] == 2 else "macro one-vs-rest ROC AUC"
            selection = (
                f"inner stratified {n_folds}-fold CV on the training subset maximising {auc_name} "
                f"(mean {search.best_score_:.3f}) over C in "
                f"{{{', '.join(_fmt(c) for c in self.c_grid)}}}; refit on the full subset"
            )
        self._model = model
        self.classes_ = np.asarray(model.classes_)
        self._n_features = features.shape[1]
        self._fit_info = ProbeFit(
            head="linear",
            hyperparameters={"C": chosen},
            selection=selection,
            n_train=int(features.shape[0]),
        )
        return self

    @_single_threaded_blas
    def predict(self, X: Any) -> np.ndarray:
        """Class probabilities (n, K), columns in ``classes_`` order."""
        features = self._features_for_predict(X)
        return np.asarray(self._model.predict_proba(features), dtype=np.float64)


# --------------------------------------------------------------------------- regression


class RidgeRegressionProbe(_FittedMixin):
    """StandardScaler + ridge; alpha by efficient leave-one-out (RidgeCV) on the subset."""

    def __init__(
        self,
        seed: int,
        target_transform: str | None = None,
        alpha_grid: tuple[float, ...] = REGRESSION_ALPHA_GRID,
    ) -> None:
        if target_transform not in (None, "log1p"):
            raise BenchError(
                f"unknown target_transform {target_transform!r}; valid: None, 'log1p'"
            )
        self.seed = int(seed)  # unused: leave-one-out has no randomness; kept for the API
        self.target_transform = target_transform
        self.alpha_grid = tuple(alpha_grid)
        self._model: Any = None

    @_single_threaded_blas
    def fit(self, X: Any, y: Any) -> "RidgeRegressionProbe":
        from sklearn.linear_model import Ridge, RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        try:
            target = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError):
            raise BenchError("regression labels must be numeric") from None
        if target.ndim != 1:
            raise BenchError(f"regression labels must be 1-D, got shape {target.shape}")
        features = _check_training(X, target.shape[0], "regression")
        if not np.isfinite(target).all():
            raise BenchError("regression labels contain NaN or inf")
        if self.target_transform == "log1p":
            if (target <= -1).any():
                raise BenchError("target_transform='log1p' needs labels > -1")
            target = np.log1p(target)
        # expm1 turns a modest extrapolation on the log scale into an absurd one (a few
        # subjects at 1-10%: 7,553 days for a 28-day stroke); predictions stay within the
        # training targets' range, a bound learnt from the training subset only
        self._log_range = (float(target.min()), float(target.max()))
        transform_note = ("; fitted on log1p(y), predicts expm1, clipped to the training range"
                          if self.target_transform else "")

        n = features.shape[0]
        if n < 3:
            model = make_pipeline(StandardScaler(), Ridge(alpha=FALLBACK_ALPHA))
            model.fit(features, target)
            chosen = FALLBACK_ALPHA
            selection = (
                f"fallback: fixed alpha={_fmt(FALLBACK_ALPHA)} (only {n} training samples; "
                f"leave-one-out needs >= 3){transform_note}"
            )
        else:
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alpha_grid))
            model.fit(features, target)
            chosen = float(model[-1].alpha_)
            edge = ""
            if chosen in (self.alpha_grid[0], self.alpha_grid[-1]):
                edge = " (chosen alpha is at the edge of the grid)"
            selection = (
                "efficient leave-one-out (RidgeCV) on the training subset minimising squared "
                f"error over alpha in {{{', '.join(_fmt(a) for a in self.alpha_grid)}}}"
                f"{edge}{transform_note}"
            )
        self._model = model
        self._n_features = features.shape[1]
        hyper: dict[str, Any] = {"alpha": chosen}
        if self.target_transform:
            hyper["target_transform"] = self.target_transform
        self._fit_info = ProbeFit(
            head="linear", hyperparameters=hyper, selection=selection, n_train=int(n)
        )
        return self

    @_single_threaded_blas
    def predict(self, X: Any) -> np.ndarray:
        """Predicted values (n,) in the target's own units."""
        features = self._features_for_predict(X)
        pred = np.asarray(self._model.predict(features), dtype=np.float64)
        if self.target_transform == "log1p":
            pred = np.expm1(np.clip(pred, *self._log_range))
        return pred


# --------------------------------------------------------------------------- survival


def _survival_arrays(y: Any) -> tuple[np.ndarray, np.ndarray]:
    from brainbench.metrics import as_survival_array

    structured = as_survival_array(y, "survival labels")
    return structured["event"].astype(bool), structured["time"].astype(np.float64)


class CoxSurvivalProbe(_FittedMixin):
    """StandardScaler -> PCA(min(n-1, 32) components) -> ridge-penalised Cox (sksurv).

    Why this head (rather than `CoxnetSurvivalAnalysis` on all 768 features):

    - It is a plain ridge Cox model, the survival analogue of the ridge/logistic heads. A
      ridge-penalised Cox solution lies in the span of the (centred) training rows, so
      projecting onto their principal subspace (at most n-1 dimensions) loses nothing;
      truncating to the leading 32 components adds a mild, well-understood low-rank
      regularisation. PCA without whitening is an orthonormal projection, so the penalty on the
      component scores is the ridge penalty on the standardised features in that subspace.
      Coxnet needs l1_ratio > 0, i.e. always does some feature selection, and its alpha path
      depends on an ``alpha_min_ratio`` heuristic.
    - Robust and deterministic at every subset size: with <= 32 dimensions,
      `CoxPHSurvivalAnalysis` runs Newton-Raphson on a strictly convex objective (alpha > 0),
      which converges in a few steps; PCA uses the exact SVD.
    - Fast enough: measured here at n=100, d=768 (one BLAS thread) the whole fit, inner CV
      included, takes ~0.35 s. The scaler and PCA are fitted once per inner fold (they do
      not depend on alpha), on that fold's training rows only, and finally on the whole
      training subset. For reference, an inner-CV Coxnet (l1_ratio 0.01) took ~0.3 s and
      reached the same held-out C on the synthetic benchmark (0.783 vs 0.782, 4 seeds), so
      the choice is about simplicity and robustness, not accuracy.

    alpha is chosen by inner K-fold CV stratified on the event indicator, K = min(5,
    n_events // 2) so every held-out fold has >= 2 events, maximising the mean Harrell C over
    held-out folds (ties -> the largest alpha). With fewer than 4 events (K < 2) the fixed
    `FALLBACK_COX_ALPHA` is used and recorded.
    """

    def __init__(
        self,
        seed: int,
        alpha_grid: tuple[float, ...] = COX_ALPHA_GRID,
        max_components: int = COX_MAX_COMPONENTS,
    ) -> None:
        self.seed = int(seed)
        self.alpha_grid = tuple(alpha_grid)
        self.max_components = int(max_components)
        self._model: Any = None

    def _reducer(self, n: int, d: int) -> Any:
        """StandardScaler -> PCA; fitted on training rows only (inner fold or full subset)."""
        from sklearn.decomposition import PCA
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        n_components = max(1, min(n - 1, d, self.max_components))
        return make_pipeline(StandardScaler(), PCA(n_components=n_components, svd_solver="full"))

    @staticmethod
    def _cox(alpha: float, Z: np.ndarray, y: np.ndarray, *, quiet: bool) -> Any:
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        cox = CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow", n_iter=100)
        if quiet:
            # Inside the inner CV a tiny alpha on a separable fold may stop at n_iter; its
            # held-out C still ranks that alpha honestly, so the warning is noise there.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return cox.fit(Z, y)
        with warnings.catch_warnings():
            # fit() also builds sksurv's Breslow baseline survival, exp(-cumulative hazard),
            # which overflows when a weakly penalised fit has extreme linear predictors. We
            # score with the linear predictor only (C-index, log-rank split), never with that
            # baseline, so its overflow says nothing about our results; other warnings
            # (convergence) still surface.
            warnings.filterwarnings("ignore", message="overflow encountered in exp",
                                    category=RuntimeWarning)
            return cox.fit(Z, y)

    def _inner_cv(
        self, X: np.ndarray, y: np.ndarray, event: np.ndarray, n_folds: int
    ) -> tuple[float, float]:
        """(best alpha, its mean held-out Harrell C); NaNs when no fold could be scored."""
        from sklearn.model_selection import KFold, StratifiedKFold
        from sksurv.metrics import concordance_index_censored

        n_censored = int((~event).sum())
        if n_censored >= n_folds:
            splitter: Any = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.seed)
            folds = list(splitter.split(X, event))
        else:  # (almost) no censoring: stratifying on a constant is meaningless
            splitter = KFold(n_splits=n_folds, shuffle=True, random_state=self.seed)
            folds = list(splitter.split(X))

        scores: list[list[float]] = [[] for _ in self.alpha_grid]
        for train_idx, test_idx in folds:
            if not event[train_idx].any():
                continue
            # The reduction does not depend on alpha: fit it once per fold.
            reducer = self._reducer(len(train_idx), X.shape[1]).fit(X[train_idx])
            Z_train, Z_test = reducer.transform(X[train_idx]), reducer.transform(X[test_idx])
            for k, alpha in enumerate(self.alpha_grid):
                cox = self._cox(alpha, Z_train, y[train_idx], quiet=True)
                try:
                    c = concordance_index_censored(
                        event[test_idx], y["time"][test_idx], cox.predict(Z_test)
                    )[0]
                except ValueError:  # no comparable pair in this held-out fold
                    continue
                scores[k].append(float(c))
        means = np.array([np.mean(s) if s else np.nan for s in scores])
        if np.isnan(means).all():
            return float("nan"), float("nan")
        # On ties prefer the stronger penalty (the largest alpha), as GridSearchCV's
        # first-best rule does for the logistic head's smallest C.
        best = len(means) - 1 - int(np.nanargmax(means[::-1]))
        return self.alpha_grid[best], float(means[best])

    @_single_threaded_blas
    def fit(self, X: Any, y: Any) -> "CoxSurvivalProbe":
        from sksurv.util import Surv

        event, time = _survival_arrays(y)
        features = _check_training(X, event.shape[0], "survival")
        n_events = int(event.sum())
        if n_events == 0:
            raise BenchError(
                f"survival training subset ({features.shape[0]} subjects) has no events; "
                "a Cox model needs at least one"
            )
        structured = Surv.from_arrays(event=event, time=time)
        n, d = features.shape
        n_folds = min(MAX_FOLDS, n_events // 2)
        chosen: float = FALLBACK_COX_ALPHA
        selection = ""
        if n_folds >= 2:
            best_alpha, best_score = self._inner_cv(features, structured, event, n_folds)
            if not math.isnan(best_alpha):
                chosen = float(best_alpha)
                selection = (
                    f"inner {n_folds}-fold CV stratified on event on the training subset "
                    f"maximising held-out Harrell C (mean {best_score:.3f}) over alpha in "
                    f"{{{', '.join(_fmt(a) for a in self.alpha_grid)}}}; refit on the full subset"
                )
            else:
                selection = (
                    f"fallback: fixed alpha={_fmt(FALLBACK_COX_ALPHA)} (no inner fold had a "
                    "comparable pair)"
                )
        else:
            selection = (
                f"fallback: fixed alpha={_fmt(FALLBACK_COX_ALPHA)} (only {n_events} event(s); "
                "inner CV needs >= 2 events per fold in >= 2 folds)"
            )
        reducer = self._reducer(n, d).fit(features)
        cox = self._cox(chosen, reducer.transform(features), structured, quiet=False)
        self._model = (reducer, cox)
        n_components = int(reducer[-1].n_components_)
        self._n_features = d
        self._fit_info = ProbeFit(
            head="linear",
            hyperparameters={"alpha": chosen, "pca_components": n_components},
            selection=selection,
            n_train=int(n),
        )
        return self

    @_single_threaded_blas
    def predict(self, X: Any) -> np.ndarray:
        """Risk scores (n,): the Cox linear predictor; higher means an earlier event."""
        features = self._features_for_predict(X)
        reducer, cox = self._model
        return np.asarray(cox.predict(reducer.transform(features)), dtype=np.float64)


# --------------------------------------------------------------------------- factory


def make_probe(kind: str, *, seed: int, target_transform: str | None = None) -> Probe:
    """A fresh, unfitted probe head for a task kind."""
    if target_transform is not None and kind != "regression":
        raise BenchError(
            f"target_transform={target_transform!r} only applies to regression, not {kind!r}"
        )
    if kind == "classification":
        return LinearClassificationProbe(seed=seed)
    if kind == "regression":
        return RidgeRegressionProbe(seed=seed, target_transform=target_transform)
    if kind == "survival":
        return CoxSurvivalProbe(seed=seed)
    raise BenchError(
        f"no probe head for task kind {kind!r}; valid kinds: classification, regression, survival"
    )
