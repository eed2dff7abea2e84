"""What a task kind owns: its target arrays, inner split, validation score, metrics, scorers.

A kind is a registered object (like a timm model entry), so the engine never switches on a
kind's name: the pipeline asks the task's kind. A new kind is one module in this package that
subclasses `TaskKind` and registers an instance (plus its import in ``__init__``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np

#: Share of the training subset an inner validation split holds out (searched protocols).
VALIDATION_SHARE = 0.25
#: Subjects below which an inner split leaves too little on either side.
MIN_INNER = 8

InnerSplit = tuple[np.ndarray, np.ndarray] | str  # (train_idx, val_idx), or why none exists


class TaskKind(ABC):
    """Behaviour shared by every task of one kind (classification, regression, ...)."""

    #: registry name; equals ``TaskSpec.kind`` of the tasks of this kind
    name: ClassVar[str]
    #: which evaluator scores its cells (see brainbench.evaluators)
    evaluator: ClassVar[str] = "probe"
    #: what a head predicts for it: "classification" (class probabilities), "regression"
    #: (values) or "survival" (risk scores); a new kind with a built-in family runs on every
    #: head of that family (heads are built for the family, see brainbench.heads.make_head)
    family: ClassVar[str] = ""
    #: the fixed split must put every label stratum on both sides (else metrics are undefined)
    require_all_labels: ClassVar[bool] = True
    #: metrics that can be recomputed from stored per-subject predictions (bootstrap, import)
    bootstrap_metrics: ClassVar[tuple[str, ...]] = ()
    #: how the validation score reads in selection texts ("ROC AUC", "-MAE", ...)
    validation_metric: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "family", "") and "name" in cls.__dict__:
            cls.family = cls.name  # a new root kind is its own family; subclasses inherit it

    @abstractmethod
    def target_array(self, values: Sequence[Any]) -> Any:
        """Stack per-sample labels into what heads and metrics take."""

    def inner_split(self, y: Any, seed: int, groups: Any = None) -> InnerSplit:
        """(train_idx, val_idx) inside the training subset for a searched protocol; whole
        people on each side when ``groups`` (the person of each row) repeats."""
        from brainbench.heads.folds import check_groups, hold_out

        n = len(y)
        if n < MIN_INNER:
            return f"only {n} training subjects (an inner split needs >= {MIN_INNER})"
        return hold_out(n, VALIDATION_SHARE, seed,
                        groups=check_groups(groups, n, "the inner split"))

    def validation_score(self, classes: Sequence[Any], y_val: Any,
                         prediction: np.ndarray) -> float:
        """Higher is better; NaN when the prediction is not finite. The one score every
        selection step (optuna trials, early stopping, kNN's k) maximises for this kind."""
        raise NotImplementedError(f"task kind {self.name!r} has no validation score")

    def test_metrics(self, y_test: Any, prediction: Any, *, classes: Sequence[Any] = (),
                     train_target: Any = None) -> dict[str, float]:
        """Every test-split metric of one fitted head (see brainbench.metrics)."""
        from brainbench.errors import BenchError

        raise BenchError(f"task kind {self.name!r} is not scored from probe predictions; "
                         f"probe kinds: classification, regression, survival")

    def fit_reference(self, y_train: Any, train_prediction: Any) -> dict[str, Any] | None:
        """What secondary metrics need from the training subset to be recomputed from a
        cell's stored test predictions (stored with the cell); None: nothing."""
        return None

    def needs_train_predictions(self) -> bool:
        """Whether `test_metrics` needs the head's predictions on its training subset."""
        return False

    def scorer(self, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
               classes: Sequence[str] = ()) -> Any:
        """A bootstrap Scorer (brainbench.stats) from stored JSON targets and predictions."""
        from brainbench.errors import BenchError

        if metric not in self.bootstrap_metrics:
            raise BenchError(f"metric {metric!r} of a {self.name} task cannot be recomputed "
                             f"from stored predictions; supported: {self.bootstrap_metrics}")
        return self._scorer(metric, targets, predictions, classes)

    def _scorer(self, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                classes: Sequence[str]) -> Any:
        raise NotImplementedError

    def stored_target(self, value: Any) -> Any:
        """The JSON-able form of a label kept beside each test prediction in the store."""
        return value

    def summary(self, description: str, values: Sequence[Any]) -> str:
        """One line describing a cohort's labels (data check)."""
        return description
