"""The executor interface: what runs a sweep's planned cells, in this process or on a cluster.

The runner prepares each task and plans the cells the store lacks (`WorkItem`); an executor
turns work items into finished cells, and the runner writes each one through the store as it
arrives. So every executor shares the pipeline, the content-addressed feature cache and the
store, and stored results depend on the features, never on where they were computed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Iterator

from brainbench.backbone import Backbone
from brainbench.evaluators.base import EvaluatedCell, Evaluator
from brainbench.pipeline import PlannedCell, PreparedTask
from brainbench.runconfig import RunConfig, RunReport

BackboneBuilder = Callable[[], Backbone]
"""Builds the run's backbone again in another process (a picklable callable), so a worker
loads it from the same card, file or weights instead of receiving a pickled model."""


@dataclass(frozen=True)
class WorkItem:
    """One prepared task and the cells of it that must be computed, with its evaluator."""

    prepared: PreparedTask
    evaluator: Evaluator
    cells: tuple[PlannedCell, ...]


class Executor(ABC):
    """Computes work items' cells. Closing releases what it started (a local Ray instance)."""

    name: ClassVar[str]

    @abstractmethod
    def evaluate(self, items: Iterable[WorkItem], backbone: Backbone, config: RunConfig,
                 store_url: str, report: RunReport,
                 build: BackboneBuilder | None = None) -> Iterator[EvaluatedCell]:
        """Yield every cell of `items` once, as it is finished (order is not promised).

        `items` may be lazy: the local executor prepares task N+1 only after task N's cells
        were yielded (and stored). `build` rebuilds `backbone` elsewhere; without it a
        distributed executor ships the object itself.
        """

    def close(self) -> None:
        """Release resources; a no-op by default."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """Today's behaviour: each task's evaluator runs in this process, one task after another."""

    name = "local"

    def evaluate(self, items: Iterable[WorkItem], backbone: Backbone, config: RunConfig,
                 store_url: str, report: RunReport,
                 build: BackboneBuilder | None = None) -> Iterator[EvaluatedCell]:
        for item in items:
            yield from item.evaluator.evaluate(item.prepared, item.cells, backbone, config,
                                               store_url, report)
