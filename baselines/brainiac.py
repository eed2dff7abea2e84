"""``brainiac``: BrainIAC v2, a SimCLR-trained 3D ViT-B for brain MRI, and ``random3d`` (the same
architecture, untrained).

Architecture: MONAI ``ViT(in_channels=1, img_size=96^3, patch_size=16^3, hidden_size=768,
mlp_dim=3072, num_layers=12, num_heads=12)``, conv patch embedding, learnable positions,
no qkv bias, 216 patch tokens. Input: the whole volume resized to 96^3 (no fixed spacing: the
BrainIAC pipeline resizes skull-stripped, registered volumes to 96^3), z-score of nonzero voxels
(MONAI NormalizeIntensity(nonzero=True), as BrainIAC does).

Features: MONAI's ViT without a classification head has *no* class token. BrainIAC's reference
takes the first output token (``backbone(x)[0][:, 0]``), i.e. the final-norm token of the first
patch; ``cls`` is exactly that, so results match the reference. ``patch_mean`` is the mean of all
216 final-norm tokens.

Checkpoint: BrainIAC's Lightning checkpoint ``{"state_dict": {"backbone.<MONAI ViT key>": ...,
<SimCLR projection head / other module keys>}}`` (or a bare state dict). Keys under
``backbone.`` load strictly; keys outside it are not part of the encoder and are listed in the
load report (the reference keeps only ``backbone.*`` too). Allowed missing keys: MONAI >= 1.4
builds a ``norm_cross_attn`` LayerNorm in every block that is never called without cross
attention; checkpoints from older MONAI do not have it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from brainbench.backbone import InputContract, register_backbone
from brainbench.baselines._frozen import FrozenBackbone
from brainbench.baselines._resolve import (
    WeightsSpec,
    build_with_weights,
    merged,
    random_model,
    strip_prefix,
    unwrap,
    with_notes,
)
from brainbench.errors import BenchError
from brainbench.weights import LoadReport, load_state_strict

IMAGE_SIZE = (96, 96, 96)
PATCH_SIZE = 16
FEATURE_DIM = 768
TOKENS = ("cls", "patch_mean")
VIT_CONFIG = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12}

SPEC = WeightsSpec(
    backbone="brainiac", env_var="BRAINIAC_WEIGHTS",
    expected="the BrainIAC v2 SimCLR ViT-B checkpoint (Lightning .ckpt with state_dict "
             "'backbone.*'; re-save as torch.save({'state_dict': ckpt['state_dict']}) if it "
             "holds non-tensor objects)",
)
ALLOWED_MISSING = {
    "blocks.*.norm_cross_attn.*": "unused LayerNorm MONAI >= 1.4 adds to every block; never "
                                  "called without cross attention (absent in older MONAI)",
}
OUTSIDE_ENCODER = "not under 'backbone.': SimCLR projection head / training module, not encoder"


def build_brainiac_vit(image_size: tuple[int, int, int] = IMAGE_SIZE,
                       **config: Any) -> torch.nn.Module:
    from monai.networks.nets import ViT

    return ViT(in_channels=1, img_size=image_size, patch_size=PATCH_SIZE,
               **{**VIT_CONFIG, **config})


def load_brainiac_weights(model: torch.nn.Module, ckpt: Mapping[str, Any], source: str
                          ) -> LoadReport:
    """Strictly load BrainIAC's ``backbone.*`` keys into a MONAI ViT."""
    state, notes = unwrap(ckpt, source, ("state_dict",))
    if any(str(k).startswith("backbone.") for k in state):
        inside, outside = strip_prefix(state, "backbone.")
        notes.append("used keys under 'backbone.'")
    else:
        inside, outside = state, {}
        if "patch_embedding.position_embeddings" not in inside:
            raise BenchError(f"weights {source}: neither 'backbone.*' keys (BrainIAC) nor a bare "
                             "MONAI ViT state dict (patch_embedding.position_embeddings)")
    allowed_unexpected = {k: OUTSIDE_ENCODER for k in outside}
    names = {k: "backbone." + k for k in model.state_dict()} if outside or notes else {}
    report = load_state_strict(model, merged(inside, outside, "backbone.", source),
                               allowed_missing=ALLOWED_MISSING,
                               allowed_unexpected=allowed_unexpected, source=source,
                               key_names=names, model_name="MONAI ViT (BrainIAC)")
    return with_notes(report, notes)


def _features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    tokens = model(x)[0]  # (B, 216, 768) after the final norm
    return {"cls": tokens[:, 0], "patch_mean": tokens.mean(dim=1)}


def _contract() -> InputContract:
    return InputContract(dims="3d", in_channels=1, image_size=IMAGE_SIZE, num_slices=None,
                         intensity="zscore", tokens=TOKENS, feature_dim=FEATURE_DIM)


def _architecture(model: torch.nn.Module) -> dict[str, Any]:
    import monai

    return {
        "model": "monai.networks.nets.ViT (BrainIAC v2)",
        "implementation": f"monai {monai.__version__}", "img_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE, **VIT_CONFIG, "proj_type": "conv", "qkv_bias": False,
        "input_spacing": "none: whole volume resized to 96^3 (BrainIAC pipeline)",
        "features": "first final-norm token (BrainIAC reference; MONAI ViT has no CLS token); "
                    "mean of all final-norm tokens",
    }


@register_backbone("brainiac")
def make_brainiac(*, weights: Path | None = None, require_weights: bool = False,
                  image_size: int | None = None, num_slices: int | None = None) -> FrozenBackbone:
    """3d: the profile's 2d overrides (image_size, num_slices) do not apply."""
    built = build_with_weights(SPEC, weights=weights, require_weights=require_weights,
                               build=build_brainiac_vit, load=load_brainiac_weights,
                               init="MONAI init")
    return FrozenBackbone("brainiac", built.model, _features, _contract(), built.weights,
                          _architecture(built.model), built.report)


@register_backbone("random3d", pretraining_datasets=())
def make_random3d(*, weights: Path | None = None, require_weights: bool = False,
                  image_size: int | None = None, num_slices: int | None = None) -> FrozenBackbone:
    """BrainIAC's MONAI ViT with seeded MONAI initialisation: the untrained 3d reference."""
    built = random_model("random3d", weights, build_brainiac_vit, "MONAI init")
    return FrozenBackbone("random3d", built.model, _features, _contract(), built.weights,
                          _architecture(built.model))
