"""Regression: continuous targets, -MAE for selection, MAE / Pearson r / R^2 on test."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import numpy as np

from brainbench.kinds.base import TaskKind


class RegressionKind(TaskKind):
    name = "regression"
    # bins only balance the split; an empty bin on one side leaves every metric defined
    require_all_labels = False
    bootstrap_metrics = ("mae", "rmse")
    validation_metric = "-MAE"

    def target_array(self, values: Sequence[Any]) -> np.ndarray:
        return np.asarray(list(values), dtype=np.float64)

    def validation_score(self, classes: Sequence[Any], y_val: Any,
                         prediction: np.ndarray) -> float:
        """Minus the mean absolute error in the target's units (the test metric's sign-flip)."""
        prediction = np.asarray(prediction, dtype=float).reshape(-1)
        if not np.isfinite(prediction).all():
            return float("nan")
        return -float(np.mean(np.abs(np.asarray(y_val, dtype=float) - prediction)))

    def test_metrics(self, y_test: Any, prediction: Any, *, classes: Sequence[Any] = (),
                     train_target: Any = None) -> dict[str, float]:
        from brainbench.metrics import regression_metrics

        return regression_metrics(y_test, prediction)

    def _scorer(self, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                classes: Sequence[str]) -> Any:
        from brainbench.stats import regression_scorer

        return regression_scorer(metric, targets, predictions, classes)

    def summary(self, description: str, values: Sequence[Any], unit: str = "") -> str:
        numbers = [float(v) for v in values]
        return (f"{description}: min {min(numbers):.3g}, median {statistics.median(numbers):.3g}, "
                f"max {max(numbers):.3g} {unit}")
