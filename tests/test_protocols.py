"""Protocols: registry, feature variants, the optuna search, its fallback, resumption from the
results database, and proof that the test split never influences selection."""

import sqlite3

import numpy as np
import optuna
import pytest

from brainbench.errors import BenchError
from brainbench.protocols import PROTOCOLS, Protocol, check_tokens, get_protocol, protocol_input
from brainbench.evaluators.probe import HEAD, _config_hash, _protocol_identity, evaluate_cell
from brainbench.search import fit_protocol
from brainbench.store import ResultStore
from brainbench.taskspec import Sample, get_task

FAST = {"epochs": 6, "batch_size": 16}


def fast(name: str) -> Protocol:
    """The shipped protocol with a short epoch range so the tests stay quick."""
    from brainbench.protocols import Param

    p = get_protocol(name)
    if not p.searched:
        return p
    space = {**p.search_space, "epochs": Param("int", 4, 24)}
    return Protocol(p.name, p.description, p.head, p.variant, p.aggregation, space,
                    {**p.defaults, **FAST})


def signal_data(n: int, seed: int, d: int = 16):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    score = X[:, 0] + 0.5 * X[:, 1]
    y = np.where(score + 0.5 * rng.standard_normal(n) > 0, "pos", "neg")
    return X, y


def test_shipped_protocols_and_variants():
    assert {"linear", "paper", "knn", "attention", "linear_last4",
            "linear_cls_patch"} <= set(PROTOCOLS.names())
    assert get_protocol("paper").head == "mlp" and get_protocol("paper").searched
    assert get_protocol("paper").defaults["lr"] == 1e-4  # the reference recipe
    tokens = [{"cls": np.ones((4, 3)), "patch_mean": np.zeros((4, 3)),
               **{f"cls_prev{i}": np.full((4, 3), i) for i in (1, 2, 3)}}] * 2
    assert protocol_input(get_protocol("linear_cls_patch"), tokens).shape == (6,)
    last4 = protocol_input(get_protocol("linear_last4"), tokens)
    assert last4.shape == (12,) and list(last4[::3]) == [3, 2, 1, 1]
    assert protocol_input(get_protocol("attention"), tokens).shape == (2, 4, 3)
    with pytest.raises(BenchError, match="cls_prev3"):
        check_tokens(get_protocol("linear_last4"), ("cls", "patch_mean"), "dinov2")
    with pytest.raises(BenchError, match="unknown protocol 'nope'"):
        get_protocol("nope")


def test_config_hash_separates_protocols_and_keeps_linear():
    from tests.helpers import TinyBackbone
    from brainbench.profiles import PROFILES

    task, bb, prof = get_task("brain_age"), TinyBackbone(), PROFILES.get("tiny")
    linear = _config_hash(task, bb, prof)
    paper = _config_hash(task, bb, prof, _protocol_identity(get_protocol("paper"), 20))
    paper_more = _config_hash(task, bb, prof, _protocol_identity(get_protocol("paper"), 40))
    assert len({linear, paper, paper_more}) == 3 and HEAD == "linear"


@pytest.mark.parametrize("name", ["paper", "knn", "linear"])
def test_test_labels_cannot_change_selection(name):
    """Permute the test labels adversarially: chosen parameters and predictions stay identical
    while the test metric moves, so the test split only ever scores."""
    task = get_task("neurodev_cls")
    X, y = signal_data(120, seed=0)
    classes = sorted(set(y))
    samples = [Sample(f"s{i}", f"s{i}", (), label, label, label) for i, label in enumerate(y)]
    train, test = samples[:80], samples[80:]
    inputs = {s.id: X[i] for i, s in enumerate(samples)}
    info, pred, metrics = evaluate_cell(task, fast(name), train, test, inputs, seed=1, trials=4,
                                        study_name="cell")

    # adversarial: relabel each test subject with the class the fitted head ranks LOWER
    flipped = [Sample(s.id, s.group, (), classes[int(p[1] < p[0])], "", "")
               for s, p in zip(test, pred)]
    info2, pred2, metrics2 = evaluate_cell(task, fast(name), train, flipped, inputs, seed=1,
                                           trials=4, study_name="cell")
    assert info2.hyperparameters == info.hyperparameters and info2.selection == info.selection
    assert np.array_equal(pred, pred2)
    assert metrics2["auc"] < 0.25 and metrics2["auc"] < metrics["auc"], (metrics, metrics2)


def test_search_beats_chance_and_records_its_choice(tmp_path):
    X, y = signal_data(160, seed=3)
    fitted = fit_protocol(fast("paper"), "classification", X[:100], y[:100], seed=0, trials=6)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(y[100:] == "pos", fitted.head.predict(X[100:])[:, 1])
    assert auc > 0.8
    hyper = fitted.info.hyperparameters
    assert {"lr", "weight_decay", "epochs", "batch_size", "study", "trials"} <= set(hyper)
    assert "optuna TPE" in fitted.info.selection and "75/25" in fitted.info.selection
    assert sum(fitted.trials.values()) == 6


def test_tiny_subset_falls_back_to_documented_defaults():
    X, y = signal_data(6, seed=1)
    y[:2] = ["pos", "neg"]
    fitted = fit_protocol(get_protocol("paper"), "classification", X, y, seed=0, trials=5)
    assert fitted.info.selection.startswith("fallback: fixed defaults")
    assert "only 6 training subjects" in fitted.info.selection
    assert fitted.info.hyperparameters["lr"] == 1e-4 and fitted.study_name is None


def test_study_lives_in_the_results_database_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    ResultStore(url)  # the results store's tables
    X, y = signal_data(60, seed=2)
    first = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=3,
                         storage_url=url, study_name="brainbench-cellA")
    tables = {r[0] for r in sqlite3.connect(tmp_path / "results.db").execute(
        "select name from sqlite_master where type='table'")}
    assert {"results", "predictions", "studies", "trials"} <= tables
    study = optuna.load_study(study_name="brainbench-cellA", storage=url)
    before = [(t.number, t.params) for t in study.trials]
    assert len(before) == 3

    # an interrupted run had done 3 of 5 trials: the rerun adds only the missing 2
    resumed = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=5,
                           storage_url=url, study_name="brainbench-cellA")
    study = optuna.load_study(study_name="brainbench-cellA", storage=url)
    assert len(study.trials) == 5 and [(t.number, t.params) for t in study.trials[:3]] == before
    again = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=5,
                         storage_url=url, study_name="brainbench-cellA")
    assert len(optuna.load_study(study_name="brainbench-cellA", storage=url).trials) == 5
    assert again.info.hyperparameters == resumed.info.hyperparameters
    assert first.info.hyperparameters["study"] == "brainbench-cellA"


def test_comparison_table_puts_protocols_side_by_side():
    import pandas as pd

    from brainbench.leaderboard.tables import comparison_table

    rows = [dict(backbone="m", weights_status="pretrained", weights_id="x:abcdef12", task="brain_age",
                 dataset="ixi", metric="mae", fraction=0.1, seed=s, value=v + s, n_train=5,
                 n_test=4, head=h, hyperparameters='{"trials": 20}' if h == "paper" else "{}")
            for h, v in (("linear", 10.0), ("paper", 20.0)) for s in (0, 1)]
    table = comparison_table(pd.DataFrame(rows), [get_task("brain_age")])
    assert "{linear}" in table and "{paper[20 trials]}" in table  # searched: with its budget
    assert "10.500" in table and "20.500" in table
