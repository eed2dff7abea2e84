"""``random``: the BrainDINO architecture with random weights, a deliberate reference point.

Same architecture, input contract and features as ``braindino`` (one shared builder), but
always timm's initialisation with seed 0, marked ``random-init``. It shows how much of a score
comes from the architecture and the protocol alone. It takes no weights; `require_weights` does
not apply to it (it has no trained weights by definition, and every result says random-init).
"""

from __future__ import annotations

from pathlib import Path

from brainbench.backbone import register_backbone
from brainbench.baselines._resolve import random_model
from brainbench.baselines.braindino import DinoV3Backbone, build_dinov3_vitb16, sizes


def make_random(
    *,
    weights: Path | None = None,
    require_weights: bool = False,
    image_size: int | None = None,
    num_slices: int | None = None,
) -> DinoV3Backbone:
    """Factory of the ``random`` backbone."""
    size, slices = sizes(image_size, num_slices)
    built = random_model("random", weights, lambda: build_dinov3_vitb16(size), "timm init")
    return DinoV3Backbone("random", built.model, built.weights, image_size=size,
                          num_slices=slices)


register_backbone("random", pretraining_datasets=())(make_random)  # untrained
