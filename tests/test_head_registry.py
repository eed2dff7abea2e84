"""One head family: every head is a registered `Head`, built by `make_head`, unfitted in the
same way (sklearn's NotFittedError), transformed by the same log1p; a head defined here, in a
test, runs through `make_head` and `fit_protocol` without any other file knowing about it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sksurv.util import Surv

from brainbench.errors import BenchError
from brainbench.heads import HEADS, Head, Log1pTransform, heads_for, make_head, register_head
from brainbench.kinds import get_kind, probe_kinds
from brainbench.protocols import Param, Protocol
from brainbench.search import fit_protocol

SEGMENTATION_PARAMS = {"channels": [6], "n_out": 2, "out_size": (8, 8), "grid_size": (2, 2),
                       "steps": 3, "batch_size": 2}
FAST = {"lr": 3e-3, "epochs": 3, "batch_size": 16, "attention_dim": 8}


@register_head("toy_slope", kinds=("regression",))
class ToySlopeHead(Head):
    """Mean + ``shrink`` x the least-squares slope on the first feature (a test-only head)."""

    def fit(self, X: Any, y: Any, monitor: Any = None) -> "ToySlopeHead":
        x = np.asarray(X, dtype=float)[:, 0]
        target = self._fit_target(np.asarray(y, dtype=float))  # log1p scale when asked
        shrink = float(self.params.get("shrink", 1.0))
        self._centre = (x.mean(), target.mean())
        self._slope = shrink * np.cov(x, target)[0, 1] / (x.var(ddof=1) or 1.0)
        self._record_fit({"shrink": shrink}, "fixed", len(x))
        self._report_once(monitor)
        return self

    def predict(self, X: Any) -> np.ndarray:
        self.check_is_fitted()
        x = np.asarray(X, dtype=float)[:, 0]
        return self._predict_target(self._centre[1] + self._slope * (x - self._centre[0]))


def inputs(name: str, kind: str, n: int, seed: int = 0) -> tuple[Any, Any]:
    """Inputs a head `name` accepts and labels of `kind`, with a signal on feature 0."""
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n, 1, 3, 6)).astype(np.float32)
    signal = rng.uniform(0, 1, n)
    tokens[:, :, :, 0] += 3 * signal[:, None, None]
    X = tokens if name == "attention" else tokens.mean(axis=(1, 2))
    if kind == "classification":
        y = np.where(signal > 0.5, "hi", "lo")
    elif kind == "regression":
        y = np.expm1(1 + 4 * signal)
    else:
        y = Surv.from_arrays(event=rng.uniform(size=n) < 0.8,
                             time=rng.exponential(np.exp(-2 * signal) * 100))
    return X, y


def params_for(name: str, kind: str) -> dict[str, Any] | None:
    if kind == "segmentation":
        return SEGMENTATION_PARAMS
    return FAST if name in ("mlp", "attention") else None


def test_the_registry_lists_every_head_per_kind():
    assert {"linear", "mlp", "attention", "knn", "multiscale"} <= set(HEADS.names())
    assert set(HEADS.get("linear").kinds) == {*probe_kinds(), "segmentation"}
    for name in ("mlp", "attention", "knn"):
        assert HEADS.get(name).kinds == probe_kinds()
    assert HEADS.get("multiscale").kinds == ("segmentation",)
    assert heads_for("segmentation") == ("linear", "multiscale")  # stored names unchanged

    from brainbench.segmentation import heads as seg

    assert seg.HEADS == ("linear", "multiscale")
    assert seg.head_layers("multiscale", 12) == (2, 5, 8, 11)


@pytest.mark.parametrize("name,kind", [(n, k) for n in HEADS.names() for k in HEADS.get(n).kinds])
def test_every_head_is_unfitted_the_same_way(name, kind):
    head = make_head(name, kind, seed=0, params=params_for(name, kind))
    assert isinstance(head, Head) and head.head_name == name and head.kind == kind
    with pytest.raises(NotFittedError, match="not fitted"):
        head.fit_info
    with pytest.raises(NotFittedError, match="not fitted"):
        head.predict(np.zeros((2, 6)))
    assert issubclass(NotFittedError, AttributeError)  # hasattr(head, "fit_info") is False


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(BenchError, match="unknown head 'nope'.*knn.*linear"):
        make_head("nope", "classification", seed=0)
    with pytest.raises(BenchError, match="multiscale.*segmentation"):
        make_head("multiscale", "regression", seed=0)
    with pytest.raises(BenchError, match="only applies to regression"):
        make_head("knn", "classification", seed=0, target_transform="log1p")
    with pytest.raises(BenchError, match="unknown target_transform 'sqrt'"):
        make_head("linear", "regression", seed=0, target_transform="sqrt")
    with pytest.raises(ValueError, match="registered twice"):
        register_head("toy_slope", kinds=("regression",))(type("Again", (ToySlopeHead,), {}))
    with pytest.raises(TypeError, match="Head subclass"):
        register_head("not_a_head")(object)


def test_a_head_defined_in_a_test_runs_through_make_head_and_fit_protocol():
    X, y = inputs("toy_slope", "regression", 40)
    head = make_head("toy_slope", "regression", seed=0, target_transform="log1p").fit(X, y)
    assert head.fit_info.head == "toy_slope"
    assert head.fit_info.hyperparameters == {"shrink": 1.0, "target_transform": "log1p"}

    fixed = Protocol("toy", "a test-only protocol", head="toy_slope", defaults={"shrink": 0.5})
    fitted = fit_protocol(fixed, "regression", X, y, seed=0)
    assert fitted.info.hyperparameters == {"shrink": 0.5}

    # a searched protocol: the head reports once (epoch 0) and optuna scores it with -MAE
    searched = Protocol("toy_search", "searched", head="toy_slope",
                        search_space={"shrink": Param("float", 0.0, 1.0)},
                        defaults={"shrink": 1.0})
    fitted = fit_protocol(searched, "regression", X, y, seed=0, trials=3,
                          target_transform="log1p")
    assert fitted.trials == {"complete": 3}
    assert "maximising validation -MAE" in fitted.info.selection
    assert 0.0 <= fitted.info.hyperparameters["shrink"] <= 1.0
    assert fitted.info.hyperparameters["trials"] == 3


@pytest.mark.parametrize("name", [n for n in heads_for("regression")])
def test_log1p_is_one_transform_and_keeps_every_head_in_the_training_range(name):
    X, y = inputs(name, "regression", 40)
    head = make_head(name, "regression", seed=0, params=params_for(name, "regression"),
                     target_transform="log1p").fit(X, y)
    assert type(head.transform_) is Log1pTransform  # the one implementation, not a copy
    extreme = head.predict(50 * X)  # far outside the training inputs
    assert y.min() - 1e-6 <= extreme.min() and extreme.max() <= y.max() + 1e-6, name
    assert head.fit_info.hyperparameters["target_transform"] == "log1p"


def test_log1p_transform():
    transform = Log1pTransform()
    z = transform.fit_transform(np.array([0.0, 9.0, 99.0]))
    assert np.allclose(z, np.log1p([0, 9, 99])) and transform.range_ == (0.0, float(np.log(100)))
    assert np.allclose(transform.inverse(np.array([-5.0, np.log(10), 50.0])), [0, 9, 99])
    with pytest.raises(BenchError, match="> -1"):
        Log1pTransform().fit_transform(np.array([1.0, -1.0]))


def test_knn_chooses_k_by_the_kinds_validation_score():
    """kNN's inner CV maximises the kind's score (-MAE in target units for regression)."""
    for kind in probe_kinds():
        X, y = inputs("knn", kind, 40)
        head = make_head("knn", kind, seed=0).fit(X, y)
        assert f"maximising {get_kind(kind).validation_metric} " in head.fit_info.selection


def test_segmentation_heads_build_the_evaluators_module_and_fit():
    from brainbench.segmentation.heads import make_head as build_module

    rng = np.random.default_rng(0)
    grids = [rng.standard_normal((4, 6, 2, 2)).astype(np.float16)]
    masks = rng.uniform(size=(4, 2, 8, 8)) > 0.5
    for name in heads_for("segmentation"):
        head = make_head(name, "segmentation", seed=3, params=SEGMENTATION_PARAMS)
        module = build_module(name, [6], 2, (8, 8), (2, 2), seed=3)
        for a, b in zip(head.module_.state_dict().values(), module.state_dict().values()):
            assert np.array_equal(a.numpy(), b.numpy())  # same seed, same initial head
        head.fit(grids, masks)
        assert head.fit_info.head == name and head.fit_info.n_train == 4
        probabilities = head.predict(grids)
        assert probabilities.shape == (4, 2, 8, 8)
        assert ((probabilities >= 0) & (probabilities <= 1)).all()
