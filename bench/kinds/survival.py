"""Survival: (time, event) targets, Harrell's C for selection; Harrell / Uno C and the
log-rank test (split at the TRAINING median risk) on test."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import numpy as np

from brainbench.kinds.base import MIN_INNER, VALIDATION_SHARE, InnerSplit, TaskKind


def survival_arrays(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """(event bool, time float) from a structured survival array or (time, event) pairs."""
    from brainbench.metrics import as_survival_array

    structured = as_survival_array(y, "survival labels")
    return structured["event"].astype(bool), structured["time"].astype(np.float64)


class SurvivalKind(TaskKind):
    name = "survival"
    bootstrap_metrics = ("c_harrell",)
    validation_metric = "Harrell C"

    def target_array(self, values: Sequence[Any]) -> np.ndarray:
        from sksurv.util import Surv

        values = list(values)
        return Surv.from_arrays(event=[bool(v[1]) for v in values],
                                time=[float(v[0]) for v in values])

    def inner_split(self, y: Any, seed: int, groups: Any = None) -> InnerSplit:
        from brainbench.heads.folds import check_groups, hold_out

        n = len(y)
        if n < MIN_INNER:
            return f"only {n} training subjects (an inner split needs >= {MIN_INNER})"
        event, _ = survival_arrays(y)
        if event.sum() < 4:
            return f"only {int(event.sum())} event(s) (an inner split needs >= 4)"
        return hold_out(n, VALIDATION_SHARE, seed, strata=event,
                        groups=check_groups(groups, n, "the inner split"))

    def validation_score(self, classes: Sequence[Any], y_val: Any,
                         prediction: np.ndarray) -> float:
        from sksurv.metrics import concordance_index_censored

        prediction = np.asarray(prediction, dtype=float).reshape(-1)
        if not np.isfinite(prediction).all():
            return float("nan")
        event, time = survival_arrays(y_val)
        try:
            return float(concordance_index_censored(event, time, prediction)[0])
        except ValueError:  # no comparable pairs
            return float("nan")

    def needs_train_predictions(self) -> bool:
        return True  # Uno's C and the log-rank cut use the training subset

    def fit_reference(self, y_train: Any, train_prediction: Any) -> dict[str, Any]:
        from brainbench.stats import survival_reference

        event, time = survival_arrays(y_train)
        return survival_reference(time, event, np.asarray(train_prediction, dtype=float))

    def test_metrics(self, y_test: Any, prediction: Any, *, classes: Sequence[Any] = (),
                     train_target: Any = None) -> dict[str, float]:
        from brainbench.metrics import survival_metrics

        return survival_metrics(y_test, prediction, train_target)

    def _scorer(self, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                classes: Sequence[str]) -> Any:
        from brainbench.stats import survival_scorer

        return survival_scorer(metric, targets, predictions, classes)

    def summary(self, description: str, values: Sequence[Any]) -> str:
        events = sum(1 for v in values if v[1])
        times = [v[0] for v in values]
        return (f"{events} events, {len(values) - events} censored; time median "
                f"{statistics.median(times):.0f} days")
