"""`linear`: the default probe heads on frozen features, fitted on the label-fraction subset ONLY.

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
  leave-one-out (squared error: RidgeCV's closed form; kept so stored linear results stay
  valid); ``target_transform="log1p"`` uses the shared `Log1pTransform`. n < 3: alpha = 1.0.
- survival: StandardScaler -> PCA -> ridge-penalised Cox (see `CoxSurvivalProbe` for why).

Randomness comes only from ``seed`` (the inner fold assignment); the solvers are deterministic,
so the same input and seed give identical predictions.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from brainbench.errors import BenchError
from brainbench.heads.base import Head, Monitor, make_target_transform, register_head
from brainbench.heads.folds import check_groups, grouped, kfold, smallest_class
from brainbench.heads.validation import (
    check_features,
    classification_targets,
    regression_targets,
    survival_targets,
)

__all__ = [
    "CLASSIFICATION_C_GRID",
    "COX_ALPHA_GRID",
    "COX_MAX_COMPONENTS",
    "REGRESSION_ALPHA_GRID",
    "CoxSurvivalProbe",
    "LinearClassificationProbe",
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


class _LinearHead(Head):
    """What the three linear heads share: one kind each, grids as constructor arguments."""

    _model: Any = None
    _n_features: int | None = None

    @classmethod
    def from_params(cls, kind: str, *, seed: int, params: Mapping[str, Any] | None = None,
                    target_transform: str | None = None) -> "_LinearHead":
        make_target_transform(target_transform, kind)  # its clear error, not a TypeError
        accepted = set(inspect.signature(cls).parameters) - {"seed", "target_transform"}
        own = {k: v for k, v in (params or {}).items() if k in accepted}  # the grids
        extra = {"target_transform": target_transform} if target_transform else {}
        return cls(seed=seed, **own, **extra)  # type: ignore[call-arg]

    def _features_for_predict(self, X: Any) -> np.ndarray:
        self.check_is_fitted()
        return check_features(X, sample_shape=(self._n_features,))

    def _training_features(self, X: Any) -> np.ndarray:
        return check_features(X)


# --------------------------------------------------------------------------- classification


@register_head("linear", kinds=("classification",))
class LinearClassificationProbe(_LinearHead):
    """StandardScaler + L2 logistic regression; C by inner stratified CV on ROC AUC."""

    def __init__(self, seed: int, c_grid: tuple[float, ...] = CLASSIFICATION_C_GRID) -> None:
        super().__init__("classification", seed=seed)
        self.c_grid = tuple(c_grid)

    @staticmethod
    def _pipeline(C: float) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            StandardScaler(), LogisticRegression(C=C, solver="lbfgs", max_iter=5000, tol=1e-4)
        )

    @_single_threaded_blas
    def fit(self, X: Any, y: Any, monitor: Monitor | None = None,
            groups: Any = None) -> "LinearClassificationProbe":
        from sklearn.model_selection import GridSearchCV

        features = self._training_features(X)
        targets = classification_targets(y, features.shape[0], self.who)
        labels, classes, counts = targets.labels, targets.classes, targets.counts
        people = check_groups(groups, features.shape[0], self.who)
        smallest = smallest_class(labels, people)
        folds = (kfold(len(labels), min(MAX_FOLDS, smallest), self.seed, strata=labels,
                       groups=people, require_all=grouped(people)) if smallest >= 2 else [])
        if len(folds) < 2:
            singles = [str(c) for c, k in zip(classes, counts) if k < 2]
            model = self._pipeline(FALLBACK_C).fit(features, labels)
            chosen = FALLBACK_C
            selection = (
                f"fallback: fixed C={_fmt(FALLBACK_C)} (only 1 sample in class(es) "
                f"{', '.join(singles)}; inner CV needs >= 2 per class)" if singles else
                f"fallback: fixed C={_fmt(FALLBACK_C)} (fewer than 2 person-grouped inner "
                "folds keep every class on both sides)"
            )
        else:
            n_folds = len(folds)
            scoring = "roc_auc" if classes.shape[0] == 2 else "roc_auc_ovr"
            search = GridSearchCV(
                self._pipeline(FALLBACK_C),
                {"logisticregression__C": list(self.c_grid)},
                scoring=scoring,
                cv=folds,
                refit=True,
                error_score="raise",
            )
            search.fit(features, labels)
            model = search.best_estimator_
            chosen = float(search.best_params_["logisticregression__C"])
            auc_name = "ROC AUC" if classes.shape[0] == 2 else "macro one-vs-rest ROC AUC"
            how = "person-grouped stratified" if grouped(people) else "stratified"
            selection = (
                f"inner {how} {n_folds}-fold CV on the training subset maximising {auc_name} "
                f"(mean {search.best_score_:.3f}) over C in "
                f"{{{', '.join(_fmt(c) for c in self.c_grid)}}}; refit on the full subset"
            )
        self._model = model
        self.classes_ = np.asarray(model.classes_)
        self._n_features = features.shape[1]
        self._record_fit({"C": chosen}, selection, features.shape[0])
        self._report_once(monitor)
        return self

    @_single_threaded_blas
    def predict(self, X: Any) -> np.ndarray:
        """Class probabilities (n, K), columns in ``classes_`` order."""
        features = self._features_for_predict(X)
        return np.asarray(self._model.predict_proba(features), dtype=np.float64)


# --------------------------------------------------------------------------- regression


@register_head("linear", kinds=("regression",))
class RidgeRegressionProbe(_LinearHead):
    """StandardScaler + ridge; alpha by efficient leave-one-out (RidgeCV) on the subset."""

    def __init__(
        self,
        seed: int,
        target_transform: str | None = None,
        alpha_grid: tuple[float, ...] = REGRESSION_ALPHA_GRID,
    ) -> None:
        # seed is unused (leave-one-out has no randomness); kept for the API
        super().__init__("regression", seed=seed, target_transform=target_transform)
        self.alpha_grid = tuple(alpha_grid)

    @_single_threaded_blas
    def fit(self, X: Any, y: Any, monitor: Monitor | None = None,
            groups: Any = None) -> "RidgeRegressionProbe":
        from sklearn.linear_model import Ridge, RidgeCV
        from sklearn.model_selection import GridSearchCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        features = self._training_features(X)
        target = self._fit_target(regression_targets(y, features.shape[0], self.who))
        transform_note = f"; {self.transform_.note}" if self.transform_ else ""
        people = check_groups(groups, features.shape[0], self.who)

        n = features.shape[0]
        folds = kfold(n, MAX_FOLDS, self.seed, groups=people) if grouped(people) else []
        if grouped(people) and len(folds) >= 2:
            # leave-one-out would leave a person's other samples in training: K-fold over
            # people instead, same grid and loss
            search = GridSearchCV(make_pipeline(StandardScaler(), Ridge(alpha=FALLBACK_ALPHA)),
                                  {"ridge__alpha": list(self.alpha_grid)},
                                  scoring="neg_mean_squared_error", cv=folds, refit=True,
                                  error_score="raise").fit(features, target)
            model = search.best_estimator_
            chosen = float(search.best_params_["ridge__alpha"])
            selection = (
                f"inner person-grouped {len(folds)}-fold CV on the training subset minimising "
                f"squared error over alpha in {{{', '.join(_fmt(a) for a in self.alpha_grid)}}}"
                f"; refit on the full subset{transform_note}"
            )
        elif n < 3 or grouped(people):
            model = make_pipeline(StandardScaler(), Ridge(alpha=FALLBACK_ALPHA))
            model.fit(features, target)
            chosen = FALLBACK_ALPHA
            selection = (
                f"fallback: fixed alpha={_fmt(FALLBACK_ALPHA)} (only {n} training samples; "
                f"leave-one-out needs >= 3){transform_note}" if not grouped(people) else
                f"fallback: fixed alpha={_fmt(FALLBACK_ALPHA)} (fewer than 2 people for a "
                f"person-grouped inner CV){transform_note}"
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
        self._record_fit({"alpha": chosen}, selection, n)
        self._report_once(monitor)
        return self

    @_single_threaded_blas
    def predict(self, X: Any) -> np.ndarray:
        """Predicted values (n,) in the target's own units."""
        features = self._features_for_predict(X)
        return self._predict_target(np.asarray(self._model.predict(features), dtype=np.float64))


# --------------------------------------------------------------------------- survival


@register_head("linear", kinds=("survival",))
class CoxSurvivalProbe(_LinearHead):
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
        super().__init__("survival", seed=seed)
        self.alpha_grid = tuple(alpha_grid)
        self.max_components = int(max_components)

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
        self, X: np.ndarray, y: np.ndarray, event: np.ndarray, n_folds: int,
        groups: np.ndarray | None = None,
    ) -> tuple[float, float]:
        """(best alpha, its mean held-out Harrell C); NaNs when no fold could be scored."""
        from sksurv.metrics import concordance_index_censored

        n_censored = int((~event).sum())
        # (almost) no censoring: stratifying on a constant is meaningless
        folds = kfold(len(event), n_folds, self.seed, groups=groups,
                      strata=event if n_censored >= n_folds else None)

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
    def fit(self, X: Any, y: Any, monitor: Monitor | None = None,
            groups: Any = None) -> "CoxSurvivalProbe":
        from sksurv.util import Surv

        features = self._training_features(X)
        event, time = survival_targets(y, features.shape[0], self.who)
        people = check_groups(groups, features.shape[0], self.who)
        n_events = int(event.sum())
        structured = Surv.from_arrays(event=event, time=time)
        n, d = features.shape
        n_folds = min(MAX_FOLDS, n_events // 2)
        chosen: float = FALLBACK_COX_ALPHA
        selection = ""
        if n_folds >= 2:
            best_alpha, best_score = self._inner_cv(features, structured, event, n_folds,
                                                    people)
            if not math.isnan(best_alpha):
                chosen = float(best_alpha)
                how = " person-grouped" if grouped(people) else ""
                selection = (
                    f"inner{how} {n_folds}-fold CV stratified on event on the training subset "
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
        self._record_fit({"alpha": chosen, "pca_components": n_components}, selection, n)
        self._report_once(monitor)
        return self

    @_single_threaded_blas
    def predict(self, X: Any) -> np.ndarray:
        """Risk scores (n,): the Cox linear predictor; higher means an earlier event."""
        features = self._features_for_predict(X)
        reducer, cox = self._model
        return np.asarray(cox.predict(reducer.transform(features)), dtype=np.float64)


# --------------------------------------------------------------------------- factory


def make_probe(kind: str, *, seed: int, target_transform: str | None = None) -> Head:
    """A fresh, unfitted linear probe head for a probe task kind."""
    from brainbench.heads import make_head
    from brainbench.kinds import probe_kinds

    if kind not in probe_kinds():
        raise BenchError(f"no probe head for task kind {kind!r}; valid kinds: "
                         f"{', '.join(probe_kinds())}")
    return make_head("linear", kind, seed=seed, target_transform=target_transform)
