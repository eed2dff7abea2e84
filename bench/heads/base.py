"""What every head shares: the `Head` estimator base, its `ProbeFit` record, the registry and
the one target transform.

A head is an sklearn-style estimator on frozen features (or patch-token grids): ``fit`` on the
training subset only, ``predict`` on any split, ``fit_info`` saying what was chosen and how.
Heads register themselves under a name per task kind (as timm models do), so the pipeline
builds every head through `brainbench.heads.make_head` and never switches on a head's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

import numpy as np

from brainbench.errors import BenchError
from brainbench.registry import Registry

__all__ = ["HEADS", "FitInfo", "Head", "HeadEntry", "Log1pTransform", "ProbeFit",
           "TARGET_TRANSFORMS", "heads_for", "make_target_transform", "register_head"]

#: ``monitor(epoch, head)``: called after each training epoch (optuna reporting / pruning);
#: heads without epochs call it once, as epoch 0, after fitting.
Monitor = Callable[[int, "Head"], None]


@dataclass(frozen=True)
class ProbeFit:
    """What the runner stores next to the metric rows."""

    head: str  # the registered head name ("linear", "knn", ...)
    hyperparameters: dict = field(default_factory=dict)  # chosen values (+ target_transform)
    selection: str = ""  # how they were chosen, or which fallback was used and why
    n_train: int = 0


FitInfo = ProbeFit


# --------------------------------------------------------------------------- target transform


class Log1pTransform:
    """Fit on log1p(y); predict expm1 clipped to the training targets' log range.

    Why the clip: expm1 turns a modest extrapolation on the log scale into an absurd one (a few
    subjects at 1-10%: 7,553 days for a 28-day stroke); the bound is learnt from the training
    subset only. The one implementation every regression head uses.
    """

    name = "log1p"
    note = "fitted on log1p(y), predicts expm1, clipped to the training range"

    def __init__(self) -> None:
        self.range_: tuple[float, float] | None = None

    def fit_transform(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if (y <= -1).any():
            raise BenchError("target_transform='log1p' needs labels > -1")
        z = np.log1p(y)
        self.range_ = (float(z.min()), float(z.max()))
        return z

    def inverse(self, z: np.ndarray) -> np.ndarray:
        if self.range_ is None:
            raise BenchError("the log1p target transform is applied before it is fitted")
        return np.expm1(np.clip(z, *self.range_))


TARGET_TRANSFORMS: dict[str, type[Log1pTransform]] = {"log1p": Log1pTransform}


def make_target_transform(name: str | None, kind: str) -> Log1pTransform | None:
    """A fresh transform for ``TaskSpec.target.transform``; None means identity."""
    if name is None:
        return None
    if name not in TARGET_TRANSFORMS:
        valid = ", ".join(repr(n) for n in TARGET_TRANSFORMS)
        raise BenchError(f"unknown target_transform {name!r}; valid: None, {valid}")
    if kind != "regression":
        raise BenchError(f"target_transform={name!r} only applies to regression, not {kind!r}")
    return TARGET_TRANSFORMS[name]()


# --------------------------------------------------------------------------- the base class


class Head(ABC):
    """Estimator base: ``fit(X, y, monitor=None) -> self``, ``predict(X)``, ``classes_``,
    ``fit_info``.

    predict returns class probabilities (n, K) in ``classes_`` order, regression values (n,)
    in the target's units, survival risk scores (n,) (higher = earlier event), or, for
    segmentation heads, per-region probabilities. Subclasses set ``kinds`` (the task kinds
    they implement); `register_head` sets ``head_name``. ``params`` are the head's settings;
    a head reads the keys it knows and ignores the rest, so protocols can share defaults.
    """

    head_name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, kind: str, *, seed: int, params: Mapping[str, Any] | None = None,
                 target_transform: str | None = None) -> None:
        if kind not in self.kinds:
            raise BenchError(f"no {self.head_name or type(self).__name__} head for task kind "
                             f"{kind!r}; valid: {', '.join(self.kinds)}")
        self.kind = kind
        self.seed = int(seed)
        self.params = dict(params or {})
        self.target_transform = target_transform
        self.transform_ = make_target_transform(target_transform, kind)
        self.classes_: np.ndarray | None = None
        self._fit_info: ProbeFit | None = None

    @classmethod
    def from_params(cls: type[H], kind: str, *, seed: int,
                    params: Mapping[str, Any] | None = None,
                    target_transform: str | None = None) -> H:
        """The build hook `make_head` calls; override when the constructor differs."""
        return cls(kind, seed=seed, params=params, target_transform=target_transform)

    @abstractmethod
    def fit(self, X: Any, y: Any, monitor: Monitor | None = None,
            groups: Any = None) -> "Head":
        """Fit on the training subset only; return self. ``groups``: the person of each row,
        so inner selection never splits a person (brainbench.heads.folds); None: one each."""

    @abstractmethod
    def predict(self, X: Any) -> np.ndarray:
        """Predictions for any split (see the class docstring for their form)."""

    # -- fitted state
    @property
    def who(self) -> str:
        """How errors name this head ("the knn regression head")."""
        return f"the {self.head_name} {self.kind} head"

    def _not_fitted(self) -> Exception:
        from sklearn.exceptions import NotFittedError  # an AttributeError and a ValueError

        return NotFittedError(f"{type(self).__name__} is not fitted; call fit(X, y) first")

    def check_is_fitted(self) -> None:
        """The one "not fitted" error of every head: sklearn's NotFittedError."""
        if self._fit_info is None:
            raise self._not_fitted()

    @property
    def fit_info(self) -> ProbeFit:
        self.check_is_fitted()
        return self._fit_info  # type: ignore[return-value]

    def set_fit_info(self, info: ProbeFit) -> None:
        """Replace the record (the search adds its budget and study to it)."""
        self._fit_info = info

    def _record_fit(self, hyperparameters: Mapping[str, Any], selection: str,
                    n_train: int) -> ProbeFit:
        """Set ``fit_info``; the target transform, when used, is recorded last."""
        hyper = dict(hyperparameters)
        if self.target_transform:
            hyper["target_transform"] = self.target_transform
        self._fit_info = ProbeFit(head=self.head_name, hyperparameters=hyper,
                                  selection=selection, n_train=int(n_train))
        return self._fit_info

    def _report_once(self, monitor: Monitor | None) -> None:
        """A head without epochs reports once, as epoch 0, so a search can score it."""
        if monitor is not None:
            monitor(0, self)

    # -- target transform
    def _fit_target(self, target: np.ndarray) -> np.ndarray:
        """Training targets on the scale the head fits (log1p when asked)."""
        return target if self.transform_ is None else self.transform_.fit_transform(target)

    def _predict_target(self, values: np.ndarray) -> np.ndarray:
        """Fitted-scale predictions back in the target's units (clipped expm1 for log1p)."""
        return values if self.transform_ is None else self.transform_.inverse(values)


H = TypeVar("H", bound=Head)


# --------------------------------------------------------------------------- the registry


class HeadEntry:
    """One registered head name: which `Head` class implements it for each task kind."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._classes: dict[str, type[Head]] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def add(self, kinds: Iterable[str], cls: type[Head]) -> None:
        for kind in kinds:
            if kind in self._classes:
                raise ValueError(f"head {self.name!r} is registered twice for kind {kind!r}")
            self._classes[kind] = cls

    def head_class(self, kind: str) -> type[Head]:
        try:
            return self._classes[kind]
        except KeyError:
            raise BenchError(f"head {self.name!r} has no implementation for task kind "
                             f"{kind!r}; it supports: {', '.join(self.kinds)}") from None

    def __repr__(self) -> str:
        return f"HeadEntry({self.name!r}, kinds={self.kinds})"


HEADS: Registry[HeadEntry] = Registry("head")


def register_head(name: str, kinds: Iterable[str] | None = None) -> Callable[[type[H]], type[H]]:
    """Class decorator: register a `Head` subclass as head ``name`` for ``kinds`` (default
    the class's own ``kinds``). One name may have a class per kind ("linear" does)."""

    def wrap(cls: type[H]) -> type[H]:
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"register_head({name!r}) needs a Head subclass, got {cls!r}")
        if kinds is not None:
            cls.kinds = tuple(kinds)
        if not cls.kinds:
            raise ValueError(f"head {name!r} ({cls.__name__}) declares no task kinds")
        cls.head_name = name
        entry = HEADS.get(name) if name in HEADS else HEADS.register(name, HeadEntry(name))
        entry.add(cls.kinds, cls)
        return cls

    return wrap


def heads_for(kind: str) -> tuple[str, ...]:
    """Registered head names that implement task kind ``kind``."""
    return tuple(n for n in HEADS.names() if kind in HEADS.get(n).kinds)
