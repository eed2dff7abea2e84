"""Tumour segmentation on frozen patch tokens (the tumor_seg endpoint).

labels: label maps -> WT/TC/ET masks, checked against their images; data: slice grids and
foreground-aware slice choice; heads: `linear` and `multiscale`; train: fitting a head (the encoder never trains); metrics: 3D Dice / HD95 in mm with MONAI.
The task's cells are planned and scored by brainbench.evaluators.segmentation, in the same
pipeline as every other endpoint.
"""

from brainbench.segmentation.heads import HEADS, head_layers, make_head, trainable_parameters
from brainbench.segmentation.metrics import CONVENTIONS, region_scores

__all__ = ["HEADS", "head_layers", "make_head", "trainable_parameters", "CONVENTIONS",
           "region_scores"]
