"""Classification: class labels, ROC AUC for selection, AUC / balanced accuracy on test."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from brainbench.kinds.base import MIN_INNER, VALIDATION_SHARE, InnerSplit, TaskKind


class ClassificationKind(TaskKind):
    name = "classification"
    bootstrap_metrics = ("auc",)
    validation_metric = "ROC AUC"

    def target_array(self, values: Sequence[Any]) -> np.ndarray:
        return np.asarray(list(values), dtype=object).astype(str)

    def inner_split(self, y: Any, seed: int, groups: Any = None) -> InnerSplit:
        from brainbench.heads.folds import check_groups, hold_out

        n = len(y)
        if n < MIN_INNER:
            return f"only {n} training subjects (an inner split needs >= {MIN_INNER})"
        classes, counts = np.unique(np.asarray(y), return_counts=True)
        if counts.min() < 2:
            return (f"class(es) {[str(c) for c, k in zip(classes, counts) if k < 2]} have a "
                    "single training subject (an inner split needs >= 2 per class)")
        n_val = max(len(classes), int(round(VALIDATION_SHARE * n)))
        return hold_out(n, VALIDATION_SHARE, seed, strata=np.asarray(y), n_val=n_val,
                        groups=check_groups(groups, n, "the inner split"))

    def validation_score(self, classes: Sequence[Any], y_val: Any,
                         prediction: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        if not np.isfinite(prediction).all():
            return float("nan")
        classes = list(classes)
        if len(classes) == 2:
            return float(roc_auc_score(np.asarray(y_val) == classes[1], prediction[:, 1]))
        return float(roc_auc_score(np.asarray(y_val), prediction, multi_class="ovr",
                                   labels=classes))

    def test_metrics(self, y_test: Any, prediction: Any, *, classes: Sequence[Any] = (),
                     train_target: Any = None) -> dict[str, float]:
        from brainbench.metrics import classification_metrics

        return classification_metrics(y_test, prediction, classes)

    def _scorer(self, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                classes: Sequence[str]) -> Any:
        from brainbench.stats import classification_scorer

        return classification_scorer(metric, targets, predictions, classes)
