"""How a task reads its label from a Subject, and which stratum a label falls in.

Each target type is declarative data with two small methods, so task cards in `tasks/`
stay one screen long and the split/fraction code never needs to know the task kind.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
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


# label value -> region membership per scheme (DESIGN.md section 2): WT = all tumour,
# TC = necrotic core + enhancing, ET = enhancing. BraTS 2023 renumbered ET from 4 to 3.
BRATS_LABEL_SCHEMES: dict[str, dict[str, tuple[int, ...]]] = {
    "brats2021": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    "brats2023": {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
}


@dataclass(frozen=True)
class SegLabel:
    """A voxel label map on disk and the scheme its values follow."""

    path: Path
    scheme: str

    def __str__(self) -> str:  # what the store's predictions table keeps as the target
        return f"{self.path} ({self.scheme})"


@dataclass(frozen=True)
class SegmentationTarget:
    """A label-map file in ``subject.targets[key]`` whose scheme is ``subject.meta[scheme_key]``.

    Only the path is read here (splits stay cheap); the voxels are checked before any compute
    by brainbench.segmentation. Strata are label schemes, so mixed 2021/2023 cohorts balance.
    """

    key: str = "seg"
    scheme_key: str = "label_scheme"
    default_scheme: str = "brats2021"
    regions: tuple[str, ...] = ("WT", "TC", "ET")
    kind: str = "segmentation"

    def value(self, subject: Subject) -> Any | None:
        raw = subject.targets.get(self.key)
        if raw is None:
            return None
        scheme = str(subject.meta.get(self.scheme_key, self.default_scheme))
        if scheme not in BRATS_LABEL_SCHEMES:
            raise BenchError(
                f"subject {subject.id}: {self.scheme_key}={scheme!r} is not one of "
                f"{sorted(BRATS_LABEL_SCHEMES)}"
            )
        return SegLabel(Path(raw), scheme)

    def stratum(self, value: Any) -> str:
        return value.scheme

    def region_labels(self, scheme: str) -> dict[str, tuple[int, ...]]:
        table = BRATS_LABEL_SCHEMES[scheme]
        return {region: table[region] for region in self.regions}


Target = (ClassTarget | NumericTarget | SurvivalTarget | SurvivalHorizonTarget | ModalityTarget
          | SegmentationTarget)
