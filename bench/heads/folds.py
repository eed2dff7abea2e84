"""Inner cross-validation folds and hold-outs inside a training subset, grouped by person.

Why: when one person contributes several samples (ADNI visits, the four sequences of one BraTS
subject), folds that split a person between inner training and validation let selection
reward memorised anatomy instead of the label (audit: inner AUC 0.66-0.71 ungrouped vs
0.50-0.61 grouped; kNN chose k=1 in 4 of 5 seeds). Every selection step (grid searches, kNN's
k, Cox's alpha, optuna's hold-out) takes its folds from here, so a person is always on one side.

A subset with one sample per person gets exactly the (stratified) folds earlier releases
used, so those selections are unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from brainbench.errors import BenchError

__all__ = ["Fold", "check_groups", "grouped", "hold_out", "kfold", "smallest_class"]

Fold = tuple[np.ndarray, np.ndarray]  # (inner train indices, validation indices)


def check_groups(groups: Sequence[Any] | None, n: int, who: str) -> np.ndarray | None:
    """Person ids as a string array aligned with the n training rows (None: one per row)."""
    if groups is None:
        return None
    array = np.asarray([str(g) for g in groups])
    if array.shape != (n,):
        raise BenchError(f"{who}: {array.shape[0] if array.ndim else 0} person ids for {n} "
                         "training rows; pass one group per row")
    return array


def grouped(groups: np.ndarray | None) -> bool:
    """Whether some person has several rows (only then do folds need grouping)."""
    return groups is not None and len(np.unique(groups)) < len(groups)


def smallest_class(labels: np.ndarray, groups: np.ndarray | None) -> int:
    """People (not rows) in the rarest class: how many folds a stratified split can have."""
    labels = np.asarray(labels)
    if not grouped(groups):
        return int(np.unique(labels, return_counts=True)[1].min())
    return min(len(np.unique(groups[labels == c])) for c in np.unique(labels))


def kfold(n: int, n_folds: int, seed: int, *, strata: np.ndarray | None = None,
          groups: np.ndarray | None = None, require_all: bool = False) -> list[Fold]:
    """Shuffled (stratified when ``strata`` is given) k-fold over rows, or over people when a
    person has several rows. ``require_all``: drop folds whose validation or training side
    lacks a stratum (a metric such as AUC is undefined there)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    x = np.zeros(n)
    if grouped(groups):
        n_folds = min(n_folds, len(np.unique(groups)))
        if n_folds < 2:
            return []
        splitter: Any = (StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
                         if strata is not None else
                         GroupKFold(n_folds, shuffle=True, random_state=seed))
        folds = [(np.asarray(tr), np.asarray(va)) for tr, va in splitter.split(x, strata, groups)]
    else:
        splitter = (StratifiedKFold(n_folds, shuffle=True, random_state=seed)
                    if strata is not None else KFold(n_folds, shuffle=True, random_state=seed))
        folds = [(np.asarray(tr), np.asarray(va)) for tr, va in splitter.split(x, strata)]
    folds = [(tr, va) for tr, va in folds if len(tr) and len(va)]
    if require_all and strata is not None:
        every = set(np.unique(strata))
        folds = [(tr, va) for tr, va in folds
                 if set(np.unique(strata[tr])) == every == set(np.unique(strata[va]))]
    return folds


def hold_out(n: int, share: float, seed: int, *, strata: np.ndarray | None = None,
             groups: np.ndarray | None = None, n_val: int | None = None) -> Fold | str:
    """One inner (train, validation) split holding out about ``share`` of the rows (or
    ``n_val`` rows), stratified when ``strata`` is given and whole people when grouped; a
    string says why none exists."""
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    if not grouped(groups):
        size = n_val if n_val is not None else share
        if strata is None:
            return next(ShuffleSplit(1, test_size=size, random_state=seed).split(np.zeros(n)))
        return next(StratifiedShuffleSplit(1, test_size=size, random_state=seed)
                    .split(np.zeros(n), strata))
    people = len(np.unique(groups))
    n_folds = max(2, int(round(1.0 / share)))
    if people < n_folds:
        return f"only {people} people in the training subset (a grouped hold-out needs >= {n_folds})"
    folds = kfold(n, n_folds, seed, strata=strata, groups=groups,
                  require_all=strata is not None)
    if not folds:
        return "no person-grouped hold-out keeps every class on both sides"
    return folds[0]
