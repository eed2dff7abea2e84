"""Task kinds as registered objects: ``get_kind(task.kind)`` instead of string switches."""

from __future__ import annotations

from brainbench.kinds.base import TaskKind
from brainbench.kinds.classification import ClassificationKind
from brainbench.kinds.regression import RegressionKind
from brainbench.kinds.segmentation import SegmentationKind
from brainbench.kinds.survival import SurvivalKind, survival_arrays
from brainbench.registry import Registry

KINDS: Registry[TaskKind] = Registry("task kind")
for _kind in (ClassificationKind(), RegressionKind(), SurvivalKind(), SegmentationKind()):
    KINDS.register(_kind.name, _kind)


def get_kind(name: str) -> TaskKind:
    return KINDS.get(name)


def probe_kinds() -> tuple[str, ...]:
    """Kinds scored by probe heads on feature vectors (every head supports these)."""
    return tuple(n for n in KINDS.names() if KINDS.get(n).evaluator == "probe")


__all__ = ["KINDS", "TaskKind", "get_kind", "probe_kinds", "survival_arrays"]
