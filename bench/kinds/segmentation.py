"""Segmentation: voxel label maps on disk, scored per subject by the segmentation evaluator."""

from __future__ import annotations

from typing import Any, Sequence

from brainbench.kinds.base import TaskKind


class SegmentationKind(TaskKind):
    name = "segmentation"
    evaluator = "segmentation"

    def target_array(self, values: Sequence[Any]) -> list[Any]:
        return list(values)  # SegLabel files; voxels are read by the evaluator

    def stored_target(self, value: Any) -> str:
        return str(value)  # "path (scheme)"
