"""Tumour segmentation on frozen patch tokens (the tumor_seg endpoint).

labels: label maps -> WT/TC/ET masks, checked against their images; tokens: cached fp16 patch
grids; data: slice grids and foreground-aware slice choice; heads: `linear` and `multiscale`;
train: fitting a head (the encoder never trains); metrics: 3D Dice / HD95 in mm with MONAI;
runner: the task's cells, like the other endpoints'.
"""

from brainbench.segmentation.heads import HEADS, head_layers, make_head, trainable_parameters
from brainbench.segmentation.metrics import CONVENTIONS, region_scores
from brainbench.segmentation.runner import SegmentationConfig, run_segmentation_task

__all__ = ["HEADS", "head_layers", "make_head", "trainable_parameters", "CONVENTIONS",
           "region_scores", "SegmentationConfig", "run_segmentation_task"]
