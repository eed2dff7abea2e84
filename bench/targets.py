"""How a task reads its label from a Subject, and which stratum a label falls in.

Each target type is declarative data with two small methods, so task cards in `tasks/`
stay one screen long and the split/fraction code never needs to know the task kind.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainbench.errors import BenchError
from brainbench.subjects import Subject


@dataclass(frozen=True)
class ClassTarget:
    """A categorical label read from ``subject.targets[key]``; unknown values are errors."""

    key: str
    classes: tuple[str, ...]
    kind: str = "classification"

    def value(self, subject: Subject) -> Any | None:
        raw = subject.targets.get(self.key)
        if raw is None:
            return None
        if raw not in self.classes:
            raise BenchError(
                f"subject {subject.id}: {self.key}={raw!r} is not one of {list(self.classes)}"
            )
        return raw

    def stratum(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class NumericTarget:
    """A continuous label; strata are fixed bins (not data-dependent) so splits stay pure."""

    key: str
    bins: tuple[float, ...]
    unit: str
    transform: str | None = None  # "log1p": the probe fits log1p(y) (heavy-tailed targets)
    kind: str = "regression"

    def value(self, subject: Subject) -> Any | None:
        raw = subject.targets.get(self.key)
        if raw is None:
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise BenchError(f"subject {subject.id}: {self.key}={raw!r} is not a number") from None
        if not math.isfinite(value):
            return None
        return value

    def stratum(self, value: Any) -> str:
        return f"bin{bisect.bisect_right(self.bins, value)}"


@dataclass(frozen=True)
class SurvivalTarget:
    """(time, event) for Cox models; strata are event status so every subset has events."""

    time_key: str
    event_key: str
    kind: str = "survival"

    def value(self, subject: Subject) -> Any | None:
        time, event = subject.targets.get(self.time_key), subject.targets.get(self.event_key)
        if time is None or event is None or not math.isfinite(float(time)) or float(time) <= 0:
            return None
        return (float(time), bool(event))

    def stratum(self, value: Any) -> str:
        return "event" if value[1] else "censored"


@dataclass(frozen=True)
class SurvivalHorizonTarget:
    """Binary survival at a horizon: died at or before it vs alive beyond it.

    Subjects censored before the horizon have unknown status and are excluded.
    """

    time_key: str
    event_key: str
    horizon_days: float
    classes: tuple[str, str] = ("alive_beyond", "died_within")
    kind: str = "classification"

    def value(self, subject: Subject) -> Any | None:
        time, event = subject.targets.get(self.time_key), subject.targets.get(self.event_key)
        if time is None or event is None or not math.isfinite(float(time)):
            return None
        if float(time) <= self.horizon_days:
            return self.classes[1] if bool(event) else None
        return self.classes[0]

    def stratum(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class ModalityTarget:
    """The label is the image's own sequence: each modality image becomes one sample."""

    classes: tuple[str, ...]
    kind: str = "classification"

    def value(self, subject: Subject) -> Any | None:  # per-image; see tasks.build_samples
        raise NotImplementedError

    def stratum(self, value: Any) -> str:
        return str(value)


Target = ClassTarget | NumericTarget | SurvivalTarget | SurvivalHorizonTarget | ModalityTarget


def target_array(target: Target, values: list[Any]) -> np.ndarray:
    """Stack per-sample labels into what the probes and metrics take."""
    if target.kind == "survival":
        from sksurv.util import Surv

        return Surv.from_arrays(
            event=[bool(v[1]) for v in values], time=[float(v[0]) for v in values]
        )
    if target.kind == "regression":
        return np.asarray(values, dtype=np.float64)
    return np.asarray(values, dtype=object).astype(str)
