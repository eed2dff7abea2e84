"""Fit a protocol's head on the label-fraction subset, tuning torch heads with optuna.

Selection never sees the test split: this module only ever receives the training subset.
For searched protocols an inner validation split is carved from that subset (stratified on the
label / event), optuna's TPE sampler proposes parameters, each trial trains on the inner-train
part and reports the validation score per epoch so the MedianPruner can stop bad trials early,
and the best parameters are refitted on the whole subset. The study lives in the same database
as the results store (`storage_url`), named per cell, with ``load_if_exists=True``: a rerun
after an interruption resumes it and only runs the missing trials. ``fresh=True`` (the runner's
``--force``) deletes the cell's old study first, so a forced rerun searches again instead of
replaying the stored trials. Concurrent runs of one cell share its study and its budget: trials
running or finished count against it (optuna's MaxTrialsCallback, and a trial started past the
budget ends as FAIL unscored), so N trials means N across runs. The inner split and the validation score (ROC AUC, -MAE in the
target's units, Harrell's C) are the task kind's (`brainbench.kinds`), the same score the heads'
own selection steps maximise; heads come from `brainbench.heads.make_head` only.

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
from brainbench.heads import Head, ProbeFit, make_head
from brainbench.kinds import get_kind
from brainbench.protocols import Protocol
from brainbench.store import fail_orphaned_trials, optuna_storage

DEFAULT_TRIALS = 20


@dataclass(frozen=True)
class FittedHead:
    head: Any  # a fitted brainbench.heads.Head
    info: ProbeFit
    study_name: str | None = None
    trials: dict[str, int] = field(default_factory=dict)  # state -> count


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)


def _delete_study(storage_url: str, study_name: str) -> None:
    """Remove a stored study (and its trials) if there is one."""
    import optuna

    try:
        optuna.delete_study(study_name=study_name, storage=optuna_storage(storage_url))
    except KeyError:  # no such study: nothing to discard
        pass


class _OverBudget(Exception):
    """A trial another run's trials left no budget for (recorded as FAIL, not scored)."""


def fit_head(head: Head, X: Any, y: Any, *, monitor: Any = None, groups: Any = None) -> Head:
    """``head.fit``, given the persons of the rows when it takes them (a head registered by
    a user before heads took ``groups`` still fits, on ungrouped inner folds)."""
    import inspect

    kwargs = {"monitor": monitor} if monitor is not None else {}
    if groups is not None and "groups" in inspect.signature(head.fit).parameters:
        kwargs["groups"] = groups
    return head.fit(X, y, **kwargs)


def fit_protocol(protocol: Protocol, kind: str, X: np.ndarray, y: Any, *, seed: int,
                 target_transform: str | None = None, trials: int = DEFAULT_TRIALS,
                 storage_url: str | None = None, study_name: str | None = None,
                 fresh: bool = False, groups: Any = None) -> FittedHead:
    """Fit `protocol`'s head on the training subset (X, y) only; search if the protocol has a
    search space. `storage_url` None keeps the study in memory (tests); `fresh` discards a
    stored study of the same name first (a forced rerun), otherwise it is resumed. `groups`:
    the person of each row of X; every inner split keeps a person on one side."""
    def new_head(params: dict[str, Any] | None) -> Head:
        return make_head(protocol.head, kind, seed=seed, params=params,
                         target_transform=target_transform)

    if not protocol.searched:
        head = fit_head(new_head(dict(protocol.defaults) or None), X, y, groups=groups)
        return FittedHead(head, head.fit_info)
    if trials < 1:
        raise BenchError(f"trials={trials}: a searched protocol needs a budget of >= 1 trial")
    task_kind = get_kind(kind)  # its inner split and validation score: one per kind
    split = task_kind.inner_split(y, seed, groups)
    if isinstance(split, str):
        head = fit_head(new_head(dict(protocol.defaults)), X, y, groups=groups)
        info = replace(head.fit_info, hyperparameters={
            **head.fit_info.hyperparameters, "trials": trials}, selection=(
            f"fallback: fixed defaults {dict(protocol.defaults)} (the reference recipe), no "
            f"search: {split}"))
        head.set_fit_info(info)
        return FittedHead(head, info)

    import optuna

    _quiet_optuna()
    tr, va = split
    groups_tr = None if groups is None else [groups[i] for i in tr]
    grouping = ("person-grouped" if groups is not None and len(set(map(str, groups))) < len(y)
                else "stratified")
    X_tr, X_va, y_tr, y_va = X[tr], X[va], y[tr], y[va]

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
               optuna.trial.TrialState.RUNNING)

    def objective(trial: Any) -> float:
        # concurrent runs of one cell share the study: a trial numbered after `trials` live
        # (running or finished) ones is over the budget; it ends as FAIL, and the search stops
        ahead = sum(t.number < trial.number and t.state in counted
                    for t in trial.study.get_trials(deepcopy=False))
        if ahead >= trials:
            trial.study.stop()
            raise _OverBudget(f"budget of {trials} trials already reached by other runs")
        params = {**protocol.defaults,
                  **{name: p.suggest(trial, name) for name, p in protocol.search_space.items()}}
        best = [-math.inf]

        def monitor(epoch: int, head: Any) -> None:
            score = task_kind.validation_score(head.classes_, y_va, head.predict(X_va))
            if math.isnan(score):
                raise optuna.TrialPruned(f"non-finite validation score at epoch {epoch}")
            trial.report(score, epoch)
            best[0] = score  # the score of the model as it ends (final epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        fit_head(new_head(params), X_tr, y_tr, monitor=monitor, groups=groups_tr)
        return best[0]

    if fresh and storage_url is not None and study_name is not None:
        _delete_study(storage_url, study_name)
    storage = optuna_storage(storage_url)
    if storage is not None and study_name is not None:
        fail_orphaned_trials(storage, study_name)
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)
    if done < trials:
        study.optimize(objective, n_trials=trials - done, catch=(BenchError, _OverBudget),
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=counted)])
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        head = fit_head(new_head(dict(protocol.defaults)), X, y, groups=groups)
        info = replace(head.fit_info, hyperparameters={
            **head.fit_info.hyperparameters, "study": study.study_name, "trials": trials},
            selection=(f"fallback: fixed defaults {dict(protocol.defaults)}: no optuna trial "
                       f"completed ({states})"))
        head.set_fit_info(info)
        return FittedHead(head, info, study.study_name, states)
    best = max(complete, key=lambda t: (t.value, -t.number))
    params = {**protocol.defaults, **best.params}
    head = fit_head(new_head(params), X, y, groups=groups)
    metric = task_kind.validation_metric
    info = replace(head.fit_info, hyperparameters={
        **head.fit_info.hyperparameters, "study": study.study_name, "trials": trials,
        "best_trial": best.number}, selection=(
        f"optuna TPE + MedianPruner, {trials} trial budget ({states}), on an inner "
        f"{len(tr)}/{len(va)} train/validation split of the training subset ({grouping}, seed "
        f"{seed}) maximising validation {metric} (best {best.value:.3f}, trial {best.number}); "
        f"refit on the full subset; study {study.study_name!r}"))
    head.set_fit_info(info)
    return FittedHead(head, info, study.study_name, states)
