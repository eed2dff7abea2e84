"""Input checks shared by every head (the sklearn ``utils.validation`` of this package).

One place, so each head rejects bad features and labels with the same clear `BenchError`
(naming the row, the class, the shape) instead of a solver's traceback.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from brainbench.errors import BenchError
from brainbench.kinds import survival_arrays

__all__ = ["ClassLabels", "check_features", "check_n_train", "check_targets",
           "classification_targets", "regression_targets", "survival_targets"]


def check_features(X: Any, *, ndim: int = 2, layout: str = "(n, d)",
                   sample_shape: tuple[int, ...] | None = None,
                   dtype: Any = np.float64) -> np.ndarray:
    """A finite numeric array of ``ndim`` dimensions (samples first); ``sample_shape``, when
    given, is what the head was fitted on."""
    try:
        array = np.asarray(X, dtype=dtype)
    except (TypeError, ValueError):
        raise BenchError(f"features must be a numeric {layout} array") from None
    if array.ndim != ndim:
        raise BenchError(f"features must be a {ndim}-D {layout} array, got shape {array.shape}")
    if sample_shape is not None and tuple(array.shape[1:]) != tuple(sample_shape):
        if ndim == 2:
            raise BenchError(f"features have {array.shape[1]} columns but the head was fitted "
                             f"on {sample_shape[0]}")
        raise BenchError(f"features shaped {array.shape[1:]} per sample, but the head was "
                         f"fitted on {tuple(sample_shape)}")
    per_row = array.reshape(array.shape[0], int(np.prod(array.shape[1:])))  # empty-safe
    bad_rows = ~np.isfinite(per_row).all(axis=1)
    if bad_rows.any():
        raise BenchError(
            f"features have non-finite values (NaN or inf) in {int(bad_rows.sum())} row(s), "
            f"first at row {int(np.flatnonzero(bad_rows)[0])}"
        )
    return array


def check_n_train(n_rows: int, n_labels: int, who: str) -> None:
    """As many labels as feature rows, and at least two of them."""
    if n_rows != n_labels:
        raise BenchError(f"{n_rows} feature rows but {n_labels} labels for {who}")
    if n_rows == 0:
        raise BenchError(f"cannot fit {who} on an empty training subset")
    if n_rows == 1:
        raise BenchError(f"cannot fit {who} on a single training sample; "
                         "use a larger label fraction")


class ClassLabels(NamedTuple):
    labels: np.ndarray  # as given (1-D)
    classes: np.ndarray  # np.unique(labels): every head's ``classes_`` order
    index: np.ndarray  # labels as indices into classes
    counts: np.ndarray  # samples per class


def classification_targets(y: Any, n_rows: int, who: str) -> ClassLabels:
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise BenchError(f"classification labels must be 1-D, got shape {labels.shape}")
    check_n_train(n_rows, labels.shape[0], who)
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if classes.shape[0] < 2:
        found = [c.item() if hasattr(c, "item") else c for c in classes]
        raise BenchError(f"classification training subset has only one class {found} "
                         f"({n_rows} samples); {who} needs at least 2 classes")
    return ClassLabels(labels, classes, index, counts)


def regression_targets(y: Any, n_rows: int, who: str) -> np.ndarray:
    try:
        target = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise BenchError("regression labels must be numeric") from None
    if target.ndim != 1:
        raise BenchError(f"regression labels must be 1-D, got shape {target.shape}")
    check_n_train(n_rows, target.shape[0], who)
    if not np.isfinite(target).all():
        raise BenchError("regression labels contain NaN or inf")
    return target


def survival_targets(y: Any, n_rows: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(event bool, time float) with at least one event."""
    event, time = survival_arrays(y)
    check_n_train(n_rows, event.shape[0], who)
    if not event.any():
        raise BenchError(f"survival training subset ({n_rows} subjects) has no events; "
                         f"{who} needs at least one")
    return event, time


_TARGETS = {"classification": classification_targets, "regression": regression_targets,
            "survival": survival_targets}


def check_targets(kind: str, y: Any, n_rows: int, who: str) -> Any:
    """The training labels of a probe kind, checked against the feature rows."""
    try:
        check = _TARGETS[kind]
    except KeyError:
        raise BenchError(f"no target check for task kind {kind!r}") from None
    return check(y, n_rows, who)
