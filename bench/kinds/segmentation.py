"""Segmentation: voxel label maps on disk, scored per subject by the segmentation evaluator."""

from __future__ import annotations

from typing import Any, Sequence

from brainbench.kinds.base import TaskKind
from brainbench.metrics import REGION_METRIC_DIRECTION, region_metric
from brainbench.targets import SegmentationTarget


class SegmentationKind(TaskKind):
    name = "segmentation"
    evaluator = "segmentation"
    # per-subject Dice and HD95 are stored with every cell: intervals and paired tests as for
    # every other endpoint
    bootstrap_metrics = tuple(region_metric(family, region) for family in REGION_METRIC_DIRECTION
                              for region in SegmentationTarget().regions)

    def target_array(self, values: Sequence[Any]) -> list[Any]:
        return list(values)  # SegLabel files; voxels are read by the evaluator

    def stored_target(self, value: Any) -> str:
        return str(value)  # "path (scheme)"

    def _scorer(self, metric: str, targets: Sequence[Any], predictions: Sequence[Any],
                classes: Sequence[str]) -> Any:
        from brainbench.stats import subject_mean_scorer

        return subject_mean_scorer(metric, targets, predictions)
