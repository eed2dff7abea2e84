"""The interface every evaluator implements: plan a prepared task's cells, then score them.

An evaluator turns cached frozen features into stored cells. The probe evaluator fits heads on
feature vectors (classification, regression, survival); the segmentation evaluator trains
dense heads on patch tokens. Both see the same `PreparedTask` and write the same `Cell` rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

from brainbench.backbone import Backbone
from brainbench.pipeline import PlannedCell, PreparedTask
from brainbench.runconfig import RunConfig, RunReport
from brainbench.store import Cell


@dataclass(frozen=True)
class EvaluatedCell:
    """A finished cell: final identity and provenance, its metrics, and per-subject test
    predictions as (sample id, stored target, prediction) - what every statistic is
    recomputed from."""

    cell: Cell
    metrics: dict[str, float]
    predictions: list[tuple[str, Any, Any]]
    persons: dict[str, str]  # sample id -> person (split group): statistics resample people


class Evaluator(ABC):
    name: ClassVar[str]

    def unsupported_reason(self, backbone: Backbone) -> str:
        """Why this backbone cannot be evaluated here (empty if it can)."""
        return ""

    @abstractmethod
    def plan(self, prepared: PreparedTask, backbone: Backbone,
             config: RunConfig) -> list[PlannedCell]:
        """Every cell the run asks for (stored or not), with its identity."""

    @abstractmethod
    def evaluate(self, prepared: PreparedTask, cells: Sequence[PlannedCell], backbone: Backbone,
                 config: RunConfig, store_url: str, report: RunReport
                 ) -> Iterator[EvaluatedCell]:
        """Compute the given (not yet stored) cells; the test split is scored, never chosen on."""
