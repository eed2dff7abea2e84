"""Probe heads on synthetic 768-d features with a known latent signal.

Features imitate frozen-encoder embeddings: a few latent factors mixed into 768 correlated
dimensions plus isotropic noise; labels depend on the latent factors only. Each head must beat
chance clearly when the labels carry signal and sit at chance when the labels are permuted.

The permutation is over the whole cohort (training and test labels together, as in
scikit-learn's permutation_test_score), so labels are independent of features on both sides
and a score's spread around chance is ~1/sqrt(n_test). Permuting only the training labels
is a weaker check here: the probe then learns a random direction in the few-factor latent
space, which aligns with the (still informative) test labels by chance, with a random sign
and a large spread per permutation.
"""

from __future__ import annotations

import numpy as np
import pytest
from sksurv.util import Surv

from brainbench.errors import BenchError
from brainbench.heads import Head as Probe
from brainbench.heads import ProbeFit
from brainbench.heads.linear import make_probe
from brainbench.metrics import compute_metrics

D = 768
N_TRAIN = 120
N_TEST = 300
N_SHUFFLES = 3


def latent_features(n: int, seed: int, k: int = 8) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(12345).standard_normal((k, D))  # shared "encoder"
    z = rng.standard_normal((n, k))
    x = z @ mixing + 2.0 * rng.standard_normal((n, D))
    return x, z, rng


@pytest.fixture(scope="module")
def data():
    x, z, rng = latent_features(N_TRAIN + N_TEST, seed=0)
    n = len(x)
    binary = np.where(rng.random(n) < 1 / (1 + np.exp(-3.0 * z[:, 0])), "mutant", "wildtype")
    scores = np.column_stack([z[:, 0], z[:, 1], -z[:, 0] - z[:, 1]]) * 2.0
    three = np.array(["AD", "CN", "MCI"])[np.argmax(scores + rng.gumbel(size=(n, 3)), axis=1)]
    age = 50 + 10 * z[:, 0] + 3 * rng.standard_normal(n)
    days = np.exp(3.0 + 1.5 * z[:, 1] + 0.4 * rng.standard_normal(n))
    t_event = np.exp(6.0 - 1.0 * z[:, 0] + 0.5 * rng.standard_normal(n))
    t_cens = rng.uniform(0, 1.5 * np.quantile(t_event, 0.9), n)
    surv = Surv.from_arrays(event=t_event <= t_cens, time=np.minimum(t_event, t_cens))
    return {"x": x, "binary": binary, "three": three, "age": age, "days": days, "surv": surv}


def split(values):
    return values[:N_TRAIN], values[N_TRAIN:]


def fit_and_score(kind, x, y, seed=0, shuffle_seed=None, **kw):
    if shuffle_seed is not None:  # labels independent of features, train and test alike
        y = y[np.random.default_rng(shuffle_seed).permutation(len(y))]
    x_tr, x_te = split(x)
    y_tr, y_te = split(y)
    probe = make_probe(kind, seed=seed, **kw).fit(x_tr, y_tr)
    extra = {}
    if kind == "classification":
        extra["classes"] = probe.classes_
    if kind == "survival":
        extra["train_target"] = (y_tr, probe.predict(x_tr))
    return probe, compute_metrics(kind, y_te, probe.predict(x_te), **extra)


# --------------------------------------------------------------------------- signal vs shuffled


def test_binary_classification_beats_chance_and_shuffled_sits_at_chance(data):
    probe, m = fit_and_score("classification", data["x"], data["binary"])
    assert m["auc"] > 0.85
    assert isinstance(probe, Probe)
    assert probe.fit_info.head == "linear"
    assert probe.fit_info.selection.startswith("inner stratified 5-fold CV")
    assert probe.fit_info.n_train == N_TRAIN
    assert list(probe.classes_) == ["mutant", "wildtype"]
    proba = probe.predict(data["x"][:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(axis=1), 1.0)

    shuffled = [fit_and_score("classification", data["x"], data["binary"], shuffle_seed=s)[1]["auc"]
                for s in range(N_SHUFFLES)]
    assert abs(np.mean(shuffled) - 0.5) < 0.06


def test_three_class_classification(data):
    probe, m = fit_and_score("classification", data["x"], data["three"])
    assert m["auc"] > 0.85
    assert m["balanced_accuracy"] > 1 / 3 + 0.2
    assert probe.predict(data["x"][:4]).shape == (4, 3)
    assert "macro one-vs-rest" in probe.fit_info.selection


def test_regression_beats_the_mean_and_shuffled_does_not(data):
    probe, m = fit_and_score("regression", data["x"], data["age"])
    y_tr, y_te = split(data["age"])
    baseline_mae = np.mean(np.abs(y_te - y_tr.mean()))
    assert m["mae"] < 0.5 * baseline_mae
    assert m["pearson_r"] > 0.8
    assert "leave-one-out" in probe.fit_info.selection
    assert set(probe.fit_info.hyperparameters) == {"alpha"}

    shuffled = [fit_and_score("regression", data["x"], data["age"], shuffle_seed=s)[1]
                for s in range(N_SHUFFLES)]
    assert np.mean([s["mae"] for s in shuffled]) > 0.9 * baseline_mae
    assert abs(np.mean([s["pearson_r"] for s in shuffled])) < 0.12


def test_regression_log1p_transform_for_skewed_days(data):
    probe, m = fit_and_score("regression", data["x"], data["days"], target_transform="log1p")
    y_tr, y_te = split(data["days"])
    assert m["mae"] < 0.7 * np.mean(np.abs(y_te - np.median(y_tr)))
    assert probe.fit_info.hyperparameters["target_transform"] == "log1p"
    assert "log1p" in probe.fit_info.selection
    assert (probe.predict(data["x"]) > -1).all()  # expm1 of a real number
    # far outside the training inputs, predictions stay within the training targets' range
    # (an unclipped expm1 of the extrapolated log value runs to absurd numbers of days)
    extreme = probe.predict(50 * data["x"])
    assert y_tr.min() - 1e-6 <= extreme.min() and extreme.max() <= y_tr.max() + 1e-6
    assert np.isclose(extreme, y_tr.max()).any() and np.isclose(extreme, y_tr.min()).any()
    with pytest.raises(BenchError, match="> -1"):
        make_probe("regression", seed=0, target_transform="log1p").fit(
            data["x"][:5], np.array([1.0, 2.0, -3.0, 4.0, 5.0])
        )


def test_survival_beats_chance_and_shuffled_sits_at_chance(data):
    probe, m = fit_and_score("survival", data["x"], data["surv"])
    assert m["c_harrell"] > 0.7
    assert m["c_uno"] > 0.7
    assert m["logrank_p"] < 1e-3
    info = probe.fit_info
    assert info.hyperparameters["pca_components"] == 32
    assert "Harrell C" in info.selection and "stratified on event" in info.selection

    shuffled = [fit_and_score("survival", data["x"], data["surv"], shuffle_seed=s)[1]["c_harrell"]
                for s in range(N_SHUFFLES)]
    assert abs(np.mean(shuffled) - 0.5) < 0.06


# --------------------------------------------------------------------------- fallbacks


def test_classification_fallback_when_a_class_has_one_example(data):
    x = data["x"][:9]
    y = np.array(["AD"] + ["CN"] * 4 + ["MCI"] * 4)
    probe = make_probe("classification", seed=0).fit(x, y)
    info = probe.fit_info
    assert info.selection.startswith("fallback: fixed C=1")
    assert "AD" in info.selection
    assert info.hyperparameters == {"C": 1.0}
    assert probe.predict(data["x"][9:12]).shape == (3, 3)


def test_regression_fallback_for_two_samples(data):
    probe = make_probe("regression", seed=0).fit(data["x"][:2], np.array([30.0, 60.0]))
    assert probe.fit_info.selection.startswith("fallback: fixed alpha=1")
    assert probe.predict(data["x"][2:4]).shape == (2,)


def test_survival_fallback_with_few_events(data):
    x = data["x"][:12]
    y = Surv.from_arrays(event=[1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0],
                         time=np.arange(1.0, 13.0))
    probe = make_probe("survival", seed=0).fit(x, y)
    assert probe.fit_info.selection.startswith("fallback: fixed alpha")
    assert "3 event(s)" in probe.fit_info.selection
    assert probe.fit_info.hyperparameters["pca_components"] == 11
    assert np.isfinite(probe.predict(data["x"][12:20])).all()


# --------------------------------------------------------------------------- errors


def test_single_class_training_data_is_an_error_naming_the_class(data):
    with pytest.raises(BenchError, match="CN"):
        make_probe("classification", seed=0).fit(data["x"][:6], np.array(["CN"] * 6))


@pytest.mark.parametrize("kind", ["classification", "regression", "survival"])
def test_empty_or_single_sample_training_data(kind, data):
    y = {
        "classification": np.array(["a"]),
        "regression": np.array([1.0]),
        "survival": Surv.from_arrays([True], [1.0]),
    }[kind]
    with pytest.raises(BenchError, match="single training sample"):
        make_probe(kind, seed=0).fit(data["x"][:1], y)
    with pytest.raises(BenchError, match="empty"):
        make_probe(kind, seed=0).fit(np.empty((0, D)), y[:0])


def test_other_input_errors(data):
    with pytest.raises(BenchError, match="no events"):
        make_probe("survival", seed=0).fit(data["x"][:5], Surv.from_arrays(np.zeros(5, bool), np.ones(5)))
    with pytest.raises(BenchError, match="labels"):
        make_probe("regression", seed=0).fit(data["x"][:5], np.arange(4.0))
    with pytest.raises(BenchError, match="non-finite"):
        bad = data["x"][:5].copy()
        bad[2, 7] = np.nan
        make_probe("regression", seed=0).fit(bad, np.arange(5.0))
    probe = make_probe("regression", seed=0).fit(data["x"][:5], np.arange(5.0))
    with pytest.raises(BenchError, match="768"):
        probe.predict(data["x"][:3, :10])
    with pytest.raises(BenchError, match="segmentation"):
        make_probe("segmentation", seed=0)
    with pytest.raises(BenchError, match="only applies to regression"):
        make_probe("classification", seed=0, target_transform="log1p")
    unfitted = make_probe("classification", seed=0)
    with pytest.raises(AttributeError, match="not fitted"):
        unfitted.predict(data["x"][:2])


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind,label", [("classification", "three"), ("regression", "age"),
                                        ("survival", "surv")])
def test_same_seed_same_output(kind, label, data):
    x_tr, x_te = split(data["x"])
    y_tr = split(data[label])[0]
    a = make_probe(kind, seed=7).fit(x_tr, y_tr)
    b = make_probe(kind, seed=7).fit(x_tr.copy(), y_tr.copy())
    np.testing.assert_array_equal(a.predict(x_te), b.predict(x_te))
    assert a.fit_info == b.fit_info
    assert isinstance(a.fit_info, ProbeFit)


def test_survival_refit_at_the_weakest_penalty_stays_quiet_and_finite():
    """At the grid's weakest penalty, 24 subjects and 23 PCA components, Newton drives the Cox
    linear predictor to extremes and sksurv's Breslow baseline survival (which we never use)
    overflows in exp. The probe must not leak that warning; its risk scores stay finite."""
    import warnings

    from brainbench.heads.linear import COX_ALPHA_GRID, CoxSurvivalProbe

    rng = np.random.default_rng(2)  # a draw that overflows (found by search; not all do)
    n = 24
    x = rng.normal(size=(n, 64))
    time = rng.exponential(size=n) + 0.01
    event = rng.random(n) < 0.8
    y = Surv.from_arrays(event=event, time=time)
    probe = CoxSurvivalProbe(seed=0, alpha_grid=(COX_ALPHA_GRID[0],))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.fit(x, y)
        risk = probe.predict(x)
    assert not [w for w in caught if "overflow" in str(w.message)], \
        [str(w.message) for w in caught]
    assert np.isfinite(risk).all()
    # nearly unpenalised with n-1 components: it (over)fits its own training ordering
    assert compute_metrics("survival", y, risk, train_target=(y, risk))["c_harrell"] > 0.9
