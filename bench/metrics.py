"""Test-split metrics for the three probe kinds.

Every function here scores predictions on the TEST split only; the caller guarantees that.
Nothing is hand-rolled where a library does it: ROC AUC, balanced accuracy and R^2 come from
scikit-learn, Pearson's r from SciPy, Harrell's C / Uno's C / the log-rank test from
scikit-survival.

Conventions
-----------
classification: ``prediction`` is an (n, K) probability matrix whose columns follow ``classes``
    (normally ``probe.classes_``). The binary AUC scores the LAST class as positive; for K > 2
    the AUC is macro one-vs-rest. A class missing from the test labels makes the AUC undefined
    and raises a BenchError that names the class.
regression: ``prediction`` is (n,) values in the target's own units (probes undo any
    log1p transform themselves).
survival: ``y_true`` is a scikit-survival structured array (event field first, time second, as
    ``sksurv.util.Surv.from_arrays(event, time)`` builds it) or a ``(time, event)`` pair;
    ``prediction`` is a risk score (higher = earlier event). ``train_target`` carries the
    training survival data and the training risk scores (see `SurvivalReference`): Uno's C
    needs the training censoring distribution and the log-rank split uses the TRAINING median
    risk, so no threshold is ever tuned on the test split.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from brainbench.errors import BenchError
from brainbench.targets import SegmentationTarget

__all__ = [
    "PRIMARY_METRIC",
    "PRIMARY_METRIC_DIRECTION",
    "METRIC_RANGE",
    "REGION_METRIC_DIRECTION",
    "SurvivalReference",
    "as_survival_array",
    "classification_metrics",
    "compute_metrics",
    "region_metric",
    "regression_metrics",
    "survival_metrics",
]

#: Direction of each per-region segmentation metric family (bench/segmentation): overlap up,
#: boundary distance down. Every ``<family>_<region>`` name derives from this and the regions.
REGION_METRIC_DIRECTION: dict[str, str] = {"dice": "higher", "hd95": "lower"}


def region_metric(family: str, region: str) -> str:
    """The score name of one family for one region: ``dice_wt``, ``hd95_et`` ..."""
    return f"{family}_{region.lower()}"


#: Direction of improvement for every metric name `compute_metrics` returns.
#: ``n_events`` is context (the test split's number of events), not a score; more events means
#: a better-powered estimate, hence "higher".
PRIMARY_METRIC_DIRECTION: dict[str, str] = {
    "auc": "higher",
    "balanced_accuracy": "higher",
    "accuracy": "higher",
    "mae": "lower",
    "rmse": "lower",
    "pearson_r": "higher",
    "r2": "higher",
    "c_harrell": "higher",
    "c_uno": "higher",
    "logrank_p": "lower",
    "n_events": "higher",
    **{region_metric(family, region): direction
       for family, direction in REGION_METRIC_DIRECTION.items()
       for region in SegmentationTarget().regions},
}

#: The values a metric can take (bootstrap replicates are kept inside them); unbounded above
#: for errors and distances.
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "auc": (0.0, 1.0), "balanced_accuracy": (0.0, 1.0), "accuracy": (0.0, 1.0),
    "mae": (0.0, float("inf")), "rmse": (0.0, float("inf")), "pearson_r": (-1.0, 1.0),
    "c_harrell": (0.0, 1.0), "c_uno": (0.0, 1.0), "logrank_p": (0.0, 1.0),
    **{region_metric(family, region): (0.0, 1.0) if family == "dice" else (0.0, float("inf"))
       for family in REGION_METRIC_DIRECTION for region in SegmentationTarget().regions},
}

#: The headline metric of each kind (the task card may still name its own).
PRIMARY_METRIC: dict[str, str] = {
    "classification": "auc",
    "regression": "mae",
    "survival": "c_harrell",
}


# --------------------------------------------------------------------------- helpers


def _as_1d(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise BenchError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_same_length(n_true: int, n_pred: int) -> None:
    if n_true != n_pred:
        raise BenchError(f"{n_true} test labels but {n_pred} predictions")
    if n_true == 0:
        raise BenchError("the test split is empty: no metric can be computed")


def _finite_float(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise BenchError(f"{name} must be numeric") from None
    bad = ~np.isfinite(array)
    if bad.any():
        raise BenchError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf)")
    return array


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true: Any, probabilities: Any, classes: Sequence[Any] | None = None
) -> dict[str, float]:
    """AUC (binary: last class positive; K > 2: macro one-vs-rest), balanced accuracy, accuracy.

    Predicted labels are the argmax of ``probabilities``. ``classes`` gives the column order;
    when omitted it is the sorted unique test labels, which must then match the column count.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    labels = _as_1d(y_true, "y_true")
    proba = _finite_float(probabilities, "prediction")
    if proba.ndim == 1:
        raise BenchError(
            "classification prediction must be an (n, K) probability matrix, got a 1-D array"
        )
    if proba.ndim != 2:
        raise BenchError(f"classification prediction must be 2-D, got shape {proba.shape}")
    _check_same_length(labels.shape[0], proba.shape[0])

    if classes is None:
        classes = list(np.unique(labels))
    classes = list(classes)
    n_classes = len(classes)
    if len(set(classes)) != n_classes:
        raise BenchError(f"classes must be unique, got {classes}")
    if n_classes < 2:
        raise BenchError(f"classification needs at least 2 classes, got {classes}")
    if proba.shape[1] != n_classes:
        raise BenchError(
            f"prediction has {proba.shape[1]} columns but there are {n_classes} classes {classes}"
        )

    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted({str(v) for v in labels.tolist() if v not in index})
    if unknown:
        raise BenchError(f"test labels {unknown} are not among the classes {classes}")
    y_idx = np.array([index[v] for v in labels.tolist()], dtype=np.int64)

    present = set(np.unique(y_idx).tolist())
    missing = [classes[i] for i in range(n_classes) if i not in present]
    if missing:
        raise BenchError(
            f"the test split has no sample of class(es) {missing} (classes {classes}): "
            "the ROC AUC is undefined"
        )

    if n_classes == 2:
        auc = roc_auc_score(y_idx == 1, proba[:, 1])
    else:
        auc = roc_auc_score(
            y_idx, proba, multi_class="ovr", average="macro", labels=np.arange(n_classes)
        )
    y_hat = np.argmax(proba, axis=1)
    return {
        "auc": float(auc),
        "balanced_accuracy": float(balanced_accuracy_score(y_idx, y_hat)),
        "accuracy": float(accuracy_score(y_idx, y_hat)),
    }


# --------------------------------------------------------------------------- regression


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MAE, RMSE, Pearson r and R^2; r (and R^2 for n < 2) is NaN when undefined, never a crash."""
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    target = _finite_float(_as_1d(y_true, "y_true"), "y_true")
    pred = _finite_float(_as_1d(y_pred, "prediction"), "prediction")
    _check_same_length(target.shape[0], pred.shape[0])

    mae = float(mean_absolute_error(target, pred))
    rmse = float(math.sqrt(mean_squared_error(target, pred)))

    # A constant prediction (or constant target) has no correlation: report NaN.
    if target.shape[0] < 2 or np.ptp(target) == 0 or np.ptp(pred) == 0:
        r = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = float(pearsonr(target, pred)[0])
    if target.shape[0] < 2:
        r2 = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r2 = float(r2_score(target, pred))
    return {"mae": mae, "rmse": rmse, "pearson_r": r, "r2": r2}


# --------------------------------------------------------------------------- survival


@dataclass(frozen=True)
class SurvivalReference:
    """What survival metrics need from the TRAINING subset.

    y: the training survival data (structured array or (time, event) pair).
    risk: the probe's risk scores on the training subset; their median is the log-rank cut.
    """

    y: Any
    risk: Any


def as_survival_array(y: Any, name: str = "y") -> np.ndarray:
    """A scikit-survival structured array (fields ``event``, ``time``) from either form.

    Accepts a structured array with two fields (event first, time second, any field names)
    or a ``(time, event)`` pair of arrays.
    """
    from sksurv.util import Surv

    if isinstance(y, np.ndarray) and y.dtype.names is not None:
        if len(y.dtype.names) != 2:
            raise BenchError(
                f"{name}: a survival structured array needs two fields (event, time), "
                f"got {y.dtype.names}"
            )
        event = np.asarray(y[y.dtype.names[0]])
        time = np.asarray(y[y.dtype.names[1]])
    elif isinstance(y, (tuple, list)) and len(y) == 2:
        time, event = np.asarray(y[0]), np.asarray(y[1])
        if time.dtype == bool:
            raise BenchError(
                f"{name}: a survival pair is (time, event); the first array is boolean, "
                "so the two are probably swapped"
            )
    else:
        raise BenchError(
            f"{name} must be a scikit-survival structured array or a (time, event) pair"
        )
    event = _as_1d(event, f"{name} event")
    time = _finite_float(_as_1d(time, f"{name} time"), f"{name} time")
    if event.shape != time.shape:
        raise BenchError(f"{name}: {event.shape[0]} event flags but {time.shape[0]} times")
    if event.dtype != bool:
        values = set(np.unique(event).tolist())
        if not values <= {0, 1}:
            raise BenchError(f"{name}: event flags must be boolean or 0/1, got {sorted(values)}")
        event = event.astype(bool)
    if (time < 0).any():
        raise BenchError(f"{name}: survival times must be >= 0")
    return Surv.from_arrays(event=event, time=time)


def _as_reference(train_target: Any) -> SurvivalReference:
    if train_target is None:
        raise BenchError(
            "survival metrics need train_target=(training survival data, training risk scores) "
            "for Uno's C and the training-median log-rank cut"
        )
    if isinstance(train_target, SurvivalReference):
        return train_target
    if isinstance(train_target, Mapping) and {"y", "risk"} <= set(train_target):
        return SurvivalReference(y=train_target["y"], risk=train_target["risk"])
    if isinstance(train_target, (tuple, list)) and len(train_target) == 2:
        return SurvivalReference(y=train_target[0], risk=train_target[1])
    raise BenchError(
        "train_target must be a SurvivalReference, a (train_y, train_risk) pair "
        "or a mapping with keys 'y' and 'risk'"
    )


#: below this variance (of the low group's observed minus expected deaths) the log-rank test
#: is undefined: no one of one group was at risk at any death. sksurv then returns p = 1 or
#: raises, depending on round-off; both fit-time and bootstrap scores say NaN.
LOGRANK_MIN_VARIANCE = 1e-9


def survival_metrics(y_true: Any, risk: Any, train_target: Any) -> dict[str, float]:
    """Harrell's C, Uno's C (truncated at the training follow-up), log-rank p, number of events.

    Uno's C: `sksurv.metrics.concordance_index_ipcw` estimates the censoring distribution on the
    TRAINING data, which is only defined up to the longest training time. Following the sksurv
    documentation, tau = the maximum observed training time: test subjects with time >= tau get
    zero weight as index cases (they still count as the longer-surviving partner of a pair), so
    test times beyond the training follow-up never raise. If Uno's C is still undefined (no
    weighted comparable pair before tau) it is NaN, with a warning.

    Log-rank: test subjects are split at the median TRAINING risk score (high = risk above it)
    and the groups compared with `sksurv.compare.compare_survival`. If either group is empty
    (or the test is otherwise undefined, e.g. no one of one group at risk at any death) the
    p-value is NaN.
    """
    from sksurv.compare import compare_survival
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

    y_test = as_survival_array(y_true, "y_true")
    scores = _finite_float(_as_1d(risk, "prediction"), "prediction")
    _check_same_length(y_test.shape[0], scores.shape[0])
    reference = _as_reference(train_target)
    y_train = as_survival_array(reference.y, "train_target y")
    train_risk = _finite_float(_as_1d(reference.risk, "train_target risk"), "train_target risk")
    if train_risk.shape[0] != y_train.shape[0]:
        raise BenchError(
            f"train_target: {y_train.shape[0]} training subjects but {train_risk.shape[0]} "
            "training risk scores"
        )

    event, time = y_test["event"], y_test["time"]
    n_events = int(event.sum())
    if n_events == 0:
        raise BenchError(
            f"the survival test split ({event.shape[0]} subjects) has no events: "
            "the concordance index is undefined"
        )
    try:
        c_harrell = float(concordance_index_censored(event, time, scores)[0])
    except NoComparablePairException:
        raise BenchError(
            "the survival test split has no comparable pair (no event precedes another "
            "subject's time): the concordance index is undefined"
        ) from None

    tau = float(y_train["time"].max())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c_uno = float(concordance_index_ipcw(y_train, y_test, scores, tau=tau)[0])
    except (ValueError, ZeroDivisionError) as err:  # NoComparablePairException is a ValueError
        warnings.warn(f"Uno's C undefined with tau={tau:g} (training follow-up): {err}")
        c_uno = float("nan")

    cut = float(np.median(train_risk))
    high = scores > cut
    if high.all() or not high.any():
        logrank_p = float("nan")
    else:
        try:
            _, p, _, covariance = compare_survival(y_test, high, return_stats=True)
            # nobody of one group at risk at any death: undefined, whatever round-off says
            logrank_p = float(p) if covariance[0, 0] > LOGRANK_MIN_VARIANCE else float("nan")
        except ValueError:
            logrank_p = float("nan")

    return {
        "c_harrell": c_harrell,
        "c_uno": c_uno,
        "logrank_p": logrank_p,
        "n_events": float(n_events),
    }


# --------------------------------------------------------------------------- dispatch


def compute_metrics(
    kind: str,
    y_true: Any,
    prediction: Any,
    *,
    classes: Sequence[Any] | None = None,
    train_target: Any = None,
) -> dict[str, float]:
    """Score test-split predictions of one probe kind (the kind object decides how)."""
    from brainbench.kinds import get_kind

    return get_kind(kind).test_metrics(y_true, prediction, classes=classes,
                                       train_target=train_target)
