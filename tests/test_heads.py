"""The protocol heads on a phantom-like task with a known signal: per-slice tokens where a
focal 'lesion' appears on one slice of positive subjects (as a tumour does on a few slices).

Every head must beat chance clearly on the real signal and sit at chance once the labels are
shuffled; the attention head must find the lesion slice."""

import numpy as np
import pytest
from scipy.stats import binomtest, pearsonr
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from brainbench.errors import BenchError
from brainbench.heads import make_head
from brainbench.heads._torch import cox_partial_likelihood
from brainbench.stats import mcnemar_between, mcnemar_cells, mcnemar_exact

# AUC, r, C; the oracle (true severity) scores ~0.97 r and ~0.77 C on the test set, and the
# linear Cox head ~0.67 C; the null sd of C or AUC at n_test=300 is ~0.03
CLEARLY_ABOVE = {"classification": 0.75, "regression": 0.5, "survival": 0.6}
AT_CHANCE = {"classification": 0.1, "regression": 0.2, "survival": 0.1}  # |score - chance|
N_TRAIN, N_TEST, SLICES, DIM = 160, 300, 6, 24
LESION = 10.0  # lesion amplitude on its slice (noise sd 1 per dimension)
FIXED = {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 30, "batch_size": 16, "attention_dim": 32}


def phantom_tokens(n: int, seed: int):
    """(n, 1, S, d) tokens, a latent severity in [0, 1] and the lesion slice of each subject."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    tokens = rng.standard_normal((n, 1, SLICES, DIM)).astype(np.float32)
    severity = rng.uniform(0, 1, n)
    lesion_slice = rng.integers(0, SLICES, n)
    tokens[np.arange(n), 0, lesion_slice] += (LESION * severity)[:, None] * direction
    return tokens, severity, lesion_slice


def inputs_for(head: str, tokens: np.ndarray) -> np.ndarray:
    return tokens if head == "attention" else tokens.mean(axis=(1, 2))


def labels(kind: str, severity: np.ndarray, seed: int):
    rng = np.random.default_rng(seed + 1)
    if kind == "classification":
        return np.where(severity > 0.5, "tumour", "control")
    if kind == "regression":  # a skewed, positive target like days since stroke
        return np.expm1(1.0 + 4.0 * severity + 0.3 * rng.standard_normal(severity.size))
    time = rng.exponential(np.exp(-4.0 * severity) * 400)
    censor = rng.uniform(0, 1500, severity.size)
    return Surv.from_arrays(event=time <= censor, time=np.minimum(time, censor))


def quality(kind: str, head, y_test, prediction) -> float:
    if kind == "classification":
        return roc_auc_score(y_test == head.classes_[1], prediction[:, 1])
    if kind == "regression":
        return pearsonr(np.log1p(y_test), np.log1p(np.maximum(prediction, 0)))[0]
    return concordance_index_censored(y_test["event"], y_test["time"], prediction)[0]


@pytest.fixture(scope="module")
def data():
    train = phantom_tokens(N_TRAIN, seed=1)
    test = phantom_tokens(N_TEST, seed=2)
    return train, test


@pytest.mark.parametrize("kind", ["classification", "regression", "survival"])
@pytest.mark.parametrize("head_name", ["mlp", "attention", "knn"])
def test_head_beats_chance_and_is_at_chance_on_shuffled_labels(head_name, kind, data):
    (x_tr, sev_tr, _), (x_te, sev_te, _) = data
    y_tr, y_te = labels(kind, sev_tr, 1), labels(kind, sev_te, 2)
    transform = "log1p" if kind == "regression" else None
    params = {**FIXED, "epochs": 10} if kind == "survival" else FIXED  # Cox overfits sooner
    fit = make_head(head_name, kind, seed=0, params=params, target_transform=transform)
    fit.fit(inputs_for(head_name, x_tr), y_tr)
    real = quality(kind, fit, y_te, fit.predict(inputs_for(head_name, x_te)))
    chance = 0.0 if kind == "regression" else 0.5
    assert real > CLEARLY_ABOVE[kind], (head_name, kind, real)

    shuffled = np.random.default_rng(5).permutation(len(y_tr))
    null = make_head(head_name, kind, seed=0, params=params, target_transform=transform)
    null.fit(inputs_for(head_name, x_tr), y_tr[shuffled])
    score = quality(kind, null, y_te, null.predict(inputs_for(head_name, x_te)))
    # kNN's null predictions are spatially correlated noise, so the null spread exceeds 1/sqrt(n)
    assert abs(score - chance) < AT_CHANCE[kind], (head_name, kind, "shuffled", score)


def test_attention_head_finds_the_lesion_slice(data):
    (x_tr, sev_tr, _), (x_te, sev_te, lesion_te) = data
    head = make_head("attention", "classification", seed=0, params=FIXED)
    head.fit(x_tr, labels("classification", sev_tr, 1))
    weights = head.slice_weights(x_te)[:, 0]  # (n, S)
    assert weights.shape == (N_TEST, SLICES) and np.allclose(weights.sum(1), 1)
    strong = sev_te > 0.7
    hits = (weights[strong].argmax(1) == lesion_te[strong]).mean()
    assert hits > 0.8, hits  # chance would be 1/6


def test_regression_head_predicts_in_target_units_with_log1p(data):
    (x_tr, sev_tr, _), (x_te, _, _) = data
    y = labels("regression", sev_tr, 1)
    head = make_head("mlp", "regression", seed=0, params=FIXED, target_transform="log1p")
    head.fit(inputs_for("mlp", x_tr), y)
    pred = head.predict(inputs_for("mlp", x_te))
    assert (pred > -1).all() and 0.2 * np.median(y) < np.median(pred) < 5 * np.median(y)
    extreme = head.predict(50 * inputs_for("mlp", x_te))  # no expm1 blow-up: training range
    assert y.min() - 1e-6 <= extreme.min() and extreme.max() <= y.max() + 1e-6
    assert head.fit_info.hyperparameters["target_transform"] == "log1p"


def test_same_seed_same_predictions(data):
    (x_tr, sev_tr, _), (x_te, _, _) = data
    y = labels("classification", sev_tr, 1)
    a = make_head("mlp", "classification", seed=3, params=FIXED).fit(x_tr.mean((1, 2)), y)
    b = make_head("mlp", "classification", seed=3, params=FIXED).fit(x_tr.mean((1, 2)), y)
    assert np.array_equal(a.predict(x_te.mean((1, 2))), b.predict(x_te.mean((1, 2))))


def test_cox_partial_likelihood_matches_a_direct_breslow_computation():
    import torch

    risk = np.array([0.3, -0.2, 1.1, 0.0, 0.5])
    time = np.array([5.0, 3.0, 3.0, 8.0, 1.0])
    event = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    expected = 0.0
    for i in np.flatnonzero(event):
        expected -= risk[i] - np.log(np.exp(risk[time >= time[i]]).sum())
    got = cox_partial_likelihood(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert np.isclose(float(got), expected / event.sum())


def test_knn_small_subset_uses_a_documented_fallback(data):
    (x_tr, sev_tr, _), _ = data
    y = labels("classification", sev_tr, 1)
    pick = [int(np.flatnonzero(y == "tumour")[0])] + list(np.flatnonzero(y == "control")[:3])
    head = make_head("knn", "classification", seed=0).fit(x_tr.mean((1, 2))[pick], y[pick])
    assert head.fit_info.selection.startswith("fallback: fixed k=3")


def test_mcnemar_exact_counts_discordant_pairs():
    truth = np.array([1] * 20)
    a = np.array([1] * 15 + [0] * 5)
    b = np.array([1] * 9 + [0] * 6 + [1] * 1 + [0] * 4)  # a-only right: 6, b-only right: 1
    result = mcnemar_exact(truth, a, b)
    assert (result.only_a_correct, result.only_b_correct) == (6, 1)
    assert result.p_value == pytest.approx(binomtest(6, 7, 0.5).pvalue)
    assert mcnemar_exact(truth, a, a).p_value == 1.0
    with pytest.raises(BenchError, match="same test subjects"):
        mcnemar_between({"s1": 1}, {"s2": 1}, {"s1": 1, "s2": 1})


def test_mcnemar_between_stored_cells(tmp_path):
    from brainbench.store import Cell, ResultStore

    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    truth = ["a", "b", "a", "b", "a", "b"]
    ids = [f"s{i}" for i in range(6)]

    def write(backbone, correct):
        cell = Cell(backbone, "w", "pretrained", "0", "t", "d", "src", "tiny", "knn", 0.5, 0, 6,
                    6, {}, "", "v", "h", "s", "sub", "c")
        probs = [[0.9, 0.1] if (t == "a") == ok else [0.1, 0.9] for t, ok in zip(truth, correct)]
        store.write_cell(cell, {"auc": 0.5}, zip(ids, truth, probs))
        return cell.cell_id

    first = write("m1", [True] * 6)
    second = write("m2", [True, False, True, False, True, True])
    result = mcnemar_cells(store, first, second)
    assert (result.only_a_correct, result.only_b_correct, result.n) == (2, 0, 6)
    assert result.accuracy_a == 1.0
