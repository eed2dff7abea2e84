"""Inner selection never splits a person: folds, hold-outs and every head's search keep each
person's samples on one side, and subsets with one sample per person keep their old folds."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from brainbench.heads import make_head
from brainbench.heads.folds import hold_out, kfold
from brainbench.kinds import get_kind
from brainbench.protocols import get_protocol
from brainbench.search import fit_protocol


def _people(n_people: int, per_person: int, seed: int = 0):
    """Persons with near-identical repeated samples and a label that is noise per person:
    ungrouped folds can score well by recognising the person; grouped folds cannot."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, 24))
    X = np.repeat(centres, per_person, axis=0) + 0.01 * rng.normal(size=(n_people * per_person, 24))
    labels = np.repeat(rng.permutation(np.arange(n_people) % 2), per_person)
    groups = np.repeat([f"p{i}" for i in range(n_people)], per_person)
    return X, np.where(labels == 1, "yes", "no"), groups


def test_grouped_folds_keep_each_person_on_one_side():
    _, y, groups = _people(30, 3)
    folds = kfold(len(y), 5, seed=0, strata=y, groups=groups, require_all=True)
    assert len(folds) >= 2
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
        assert set(y[val]) == {"yes", "no"}
    train, val = hold_out(len(y), 0.25, seed=1, strata=y, groups=groups)
    assert not set(groups[train]) & set(groups[val]) and len(val) > 0


def test_one_sample_per_person_keeps_the_earlier_folds():
    rng = np.random.default_rng(3)
    y = rng.permutation(np.array(["a"] * 12 + ["b"] * 9))
    groups = np.array([f"p{i}" for i in range(len(y))])
    old = [(tr.tolist(), va.tolist()) for tr, va in
           StratifiedKFold(5, shuffle=True, random_state=7).split(np.zeros(len(y)), y)]
    for given in (None, groups):
        new = [(tr.tolist(), va.tolist()) for tr, va in
               kfold(len(y), 5, seed=7, strata=y, groups=given)]
        assert new == old


@pytest.mark.parametrize("head", ["linear", "knn"])
def test_a_heads_inner_score_is_not_inflated_by_repeated_persons(head):
    X, y, groups = _people(40, 3)
    ungrouped = make_head(head, "classification", seed=0).fit(X, y)
    grouped = make_head(head, "classification", seed=0).fit(X, y, groups=groups)

    def inner_score(fitted) -> float:
        return float(re.search(r"mean (-?[0-9.]+)", fitted.fit_info.selection).group(1))

    assert "person-grouped" in grouped.fit_info.selection
    assert "person-grouped" not in ungrouped.fit_info.selection
    # recognising the person gives a near-perfect inner AUC; across people the label is noise
    assert inner_score(ungrouped) > 0.9
    assert inner_score(grouped) < 0.75


def test_regression_and_survival_heads_group_their_inner_cv():
    X, y, groups = _people(30, 2)
    rng = np.random.default_rng(1)
    values = np.repeat(rng.normal(50, 10, size=30), 2)
    ridge = make_head("linear", "regression", seed=0).fit(X, values, groups=groups)
    assert "person-grouped" in ridge.fit_info.selection
    times = np.repeat(rng.uniform(50, 900, size=30), 2)
    events = np.repeat(rng.random(30) < 0.7, 2)
    surv = get_kind("survival").target_array(list(zip(times, events)))
    cox = make_head("linear", "survival", seed=0).fit(X, surv, groups=groups)
    assert "person-grouped" in cox.fit_info.selection


def test_the_search_holds_out_whole_people():
    X, y, groups = _people(24, 3)
    protocol = get_protocol("knn")
    fitted = fit_protocol(protocol, "classification", X, y, seed=0, groups=groups)
    assert "person-grouped" in fitted.info.selection
