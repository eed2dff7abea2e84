"""Fit a protocol's head on the label-fraction subset, tuning torch heads with optuna.

Selection never sees the test split: this module only ever receives the training subset.
For searched protocols an inner validation split is carved from that subset (stratified on the
label / event), optuna's TPE sampler proposes parameters, each trial trains on the inner-train
part and reports the validation score per epoch so the MedianPruner can stop bad trials early,
and the best parameters are refitted on the whole subset. The study lives in the same database
as the results store (`storage_url`), named per cell, with ``load_if_exists=True``: a rerun
after an interruption resumes it and only runs the missing trials. ``fresh=True`` (the runner's
``--force``) deletes the cell's old study first, so a forced rerun searches again instead of
replaying the stored trials.

When the subset is too small for an inner split (a few subjects at 1%), the protocol's fixed
defaults (the reference recipe) are used and the selection text says so. Every searched cell,
fallback included, records its budget as ``hyperparameters["trials"]``: tables label results
with it (``paper[20 trials]``), so two budgets are never shown as one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from brainbench.errors import BenchError
from brainbench.heads import make_head
from brainbench.probes import ProbeFit, _survival_arrays
from brainbench.protocols import Protocol

DEFAULT_TRIALS = 20
VALIDATION_SHARE = 0.25
MIN_INNER = 8  # subjects; below this an inner split leaves too little on either side


@dataclass(frozen=True)
class FittedHead:
    head: Any  # has predict(X) and classes_
    info: ProbeFit
    study_name: str | None = None
    trials: dict[str, int] = field(default_factory=dict)  # state -> count


def _subset(y: Any, idx: np.ndarray) -> Any:
    return y[idx]


def inner_split(kind: str, y: Any, seed: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(train_idx, val_idx) inside the training subset, or the reason none is possible."""
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    n = len(y)
    if n < MIN_INNER:
        return f"only {n} training subjects (an inner split needs >= {MIN_INNER})"
    if kind == "classification":
        classes, counts = np.unique(np.asarray(y), return_counts=True)
        if counts.min() < 2:
            return (f"class(es) {[str(c) for c, k in zip(classes, counts) if k < 2]} have a "
                    "single training subject (an inner split needs >= 2 per class)")
        n_val = max(len(classes), int(round(VALIDATION_SHARE * n)))
        splitter: Any = StratifiedShuffleSplit(1, test_size=n_val, random_state=seed)
        return next(splitter.split(np.zeros(n), np.asarray(y)))
    if kind == "survival":
        event, _ = _survival_arrays(y)
        if event.sum() < 4:
            return f"only {int(event.sum())} event(s) (an inner split needs >= 4)"
        splitter = StratifiedShuffleSplit(1, test_size=VALIDATION_SHARE, random_state=seed)
        return next(splitter.split(np.zeros(n), event))
    splitter = ShuffleSplit(1, test_size=VALIDATION_SHARE, random_state=seed)
    return next(splitter.split(np.zeros(n)))


def validation_score(kind: str, head: Any, y_val: Any, prediction: np.ndarray) -> float:
    """Higher is better: ROC AUC, minus MAE (target units), or Harrell's C."""
    if not np.isfinite(prediction).all():
        return float("nan")
    if kind == "classification":
        from sklearn.metrics import roc_auc_score

        classes = list(head.classes_)
        if len(classes) == 2:
            return float(roc_auc_score(np.asarray(y_val) == classes[1], prediction[:, 1]))
        return float(roc_auc_score(np.asarray(y_val), prediction, multi_class="ovr",
                                   labels=classes))
    if kind == "regression":
        return -float(np.mean(np.abs(np.asarray(y_val, dtype=float) - prediction)))
    from sksurv.metrics import concordance_index_censored

    event, time = _survival_arrays(y_val)
    try:
        return float(concordance_index_censored(event, time, prediction)[0])
    except ValueError:
        return float("nan")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)


def _delete_study(storage_url: str, study_name: str) -> None:
    """Remove a stored study (and its trials) if there is one."""
    import optuna

    try:
        optuna.delete_study(study_name=study_name, storage=storage_url)
    except KeyError:  # no such study: nothing to discard
        pass


def fit_protocol(protocol: Protocol, kind: str, X: np.ndarray, y: Any, *, seed: int,
                 target_transform: str | None = None, trials: int = DEFAULT_TRIALS,
                 storage_url: str | None = None, study_name: str | None = None,
                 fresh: bool = False) -> FittedHead:
    """Fit `protocol`'s head on the training subset (X, y) only; search if the protocol has a
    search space. `storage_url` None keeps the study in memory (tests); `fresh` discards a
    stored study of the same name first (a forced rerun), otherwise it is resumed."""
    def new_head(params: dict[str, Any] | None) -> Any:
        return make_head(protocol.head, kind, seed=seed, params=params,
                         target_transform=target_transform)

    if not protocol.searched:
        head = new_head(dict(protocol.defaults) or None).fit(X, y)
        return FittedHead(head, head.fit_info)
    if trials < 1:
        raise BenchError(f"trials={trials}: a searched protocol needs a budget of >= 1 trial")
    split = inner_split(kind, y, seed)
    if isinstance(split, str):
        head = new_head(dict(protocol.defaults)).fit(X, y)
        info = replace(head.fit_info, hyperparameters={
            **head.fit_info.hyperparameters, "trials": trials}, selection=(
            f"fallback: fixed defaults {dict(protocol.defaults)} (the reference recipe), no "
            f"search: {split}"))
        head.set_fit_info(info)
        return FittedHead(head, info)

    import optuna

    _quiet_optuna()
    tr, va = split
    X_tr, X_va, y_tr, y_va = X[tr], X[va], _subset(y, tr), _subset(y, va)

    def objective(trial: Any) -> float:
        params = {**protocol.defaults,
                  **{name: p.suggest(trial, name) for name, p in protocol.search_space.items()}}
        best = [-math.inf]

        def monitor(epoch: int, head: Any) -> None:
            score = validation_score(kind, head, y_va, head.predict(X_va))
            if math.isnan(score):
                raise optuna.TrialPruned(f"non-finite validation score at epoch {epoch}")
            trial.report(score, epoch)
            best[0] = score  # the score of the model as it ends (final epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        new_head(params).fit(X_tr, y_tr, monitor=monitor)
        return best[0]

    if fresh and storage_url is not None and study_name is not None:
        _delete_study(storage_url, study_name)
    study = optuna.create_study(
        storage=storage_url, study_name=study_name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)
    if done < trials:
        study.optimize(objective, n_trials=trials - done, catch=(BenchError,))
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        head = new_head(dict(protocol.defaults)).fit(X, y)
        info = replace(head.fit_info, hyperparameters={
            **head.fit_info.hyperparameters, "study": study.study_name, "trials": trials},
            selection=(f"fallback: fixed defaults {dict(protocol.defaults)}: no optuna trial "
                       f"completed ({states})"))
        head.set_fit_info(info)
        return FittedHead(head, info, study.study_name, states)
    best = max(complete, key=lambda t: (t.value, -t.number))
    params = {**protocol.defaults, **best.params}
    head = new_head(params).fit(X, y)
    metric = {"classification": "ROC AUC", "regression": "-MAE",
              "survival": "Harrell C"}[kind]
    info = replace(head.fit_info, hyperparameters={
        **head.fit_info.hyperparameters, "study": study.study_name, "trials": trials,
        "best_trial": best.number}, selection=(
        f"optuna TPE + MedianPruner, {trials} trial budget ({states}), on an inner "
        f"{len(tr)}/{len(va)} train/validation split of the training subset (stratified, seed "
        f"{seed}) maximising validation {metric} (best {best.value:.3f}, trial {best.number}); "
        f"refit on the full subset; study {study.study_name!r}"))
    head.set_fit_info(info)
    return FittedHead(head, info, study.study_name, states)
