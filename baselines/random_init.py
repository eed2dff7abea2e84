"""``random``: the BrainDINO architecture with random weights, a deliberate reference point.

Same architecture, input contract and features as ``braindino`` (one shared builder), but
always timm's initialisation with seed 0, marked ``random-init``. It shows how much of a score
comes from the architecture and the protocol alone. It takes no weights; `require_weights` does
not apply to it (it has no trained weights by definition, and every result says random-init).
"""

from __future__ import annotations

from pathlib import Path

from brainbench.backbone import WeightsInfo, register_backbone
from brainbench.baselines.braindino import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_SLICES,
    PATCH_SIZE,
    RANDOM_SEED,
    DinoV3Backbone,
    _check_size,
    build_dinov3_vitb16,
)
from brainbench.errors import BenchError
from brainbench.weights import state_dict_sha256


def make_random(
    *,
    weights: Path | None = None,
    require_weights: bool = False,
    image_size: int | None = None,
    num_slices: int | None = None,
) -> DinoV3Backbone:
    """Factory of the ``random`` backbone."""
    if weights is not None:
        raise BenchError(
            f"backbone 'random' is always randomly initialised and takes no weights "
            f"(got {weights}); use backbone 'braindino' to load a checkpoint"
        )
    size = _check_size("image_size", image_size, DEFAULT_IMAGE_SIZE, PATCH_SIZE)
    slices = _check_size("num_slices", num_slices, DEFAULT_NUM_SLICES)
    model = build_dinov3_vitb16(size, seed=RANDOM_SEED)
    info = WeightsInfo(
        status="random-init",
        source=f"timm init (seed {RANDOM_SEED}), deliberate random-weights reference",
        sha256=state_dict_sha256(model),
    )
    return DinoV3Backbone("random", model, info, image_size=size, num_slices=slices)


register_backbone("random")(make_random)
