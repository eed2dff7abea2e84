"""The segmentation heads, kept importable here: they live in `brainbench.heads.segmentation`
(registered as "linear" and "multiscale" for the segmentation kind, beside the probe heads).

`make_head` here is that module's `build_module`: the bare torch module the segmentation
evaluator trains with `brainbench.segmentation.train.train_head`.
"""

from brainbench.heads.nets import LinearSegmentationNet as LinearHead
from brainbench.heads.nets import MultiscaleSegmentationNet as MultiscaleHead
from brainbench.heads.segmentation import build_module as make_head
from brainbench.heads.segmentation import head_layers, segmentation_heads, trainable_parameters

#: the segmentation head names ("linear", "multiscale")
HEADS: tuple[str, ...] = segmentation_heads()

__all__ = ["HEADS", "LinearHead", "MultiscaleHead", "head_layers", "make_head",
           "trainable_parameters"]
