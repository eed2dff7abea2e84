"""``swinunetr_ssl``: the self-supervised Swin transformer encoder of SwinUNETR (Tang et al., CVPR
2022; pretrained on ~5k CT volumes with inpainting, rotation and contrastive tasks), 3D.

Architecture: MONAI ``SwinTransformer`` exactly as ``SwinUNETR(feature_size=48)`` builds its
``swinViT``: patch 2, window 7, depths (2, 2, 2, 2), heads (3, 6, 12, 24), qkv bias, merging
downsample, v1 blocks.

Patch merging: the released weights were trained with MONAI's 3-D ``PatchMerging`` as it was
before MONAI 1.5 (the pretraining code pins MONAI commit a23c7f54; 1.3.2 and 1.4 are the same):
it concatenates the eight 2x2x2 neighbours in the (d, h, w) offset order 000, 100, 010, 001,
101, 010, 001, 111, i.e. two neighbours twice and 110 / 011 never. MONAI 1.5 (PR 8285)
changed this to the eight distinct offsets, which changes every feature of these weights (0.3
relative). ``LegacyPatchMerging`` here implements the old order, so features do not depend on
the installed MONAI version; tests/test_parity.py checks it against MONAI 1.3.2's output. Input: the whole volume resized to 96^3 (the pretraining used 96^3 crops
at 1.5 mm; a whole brain resized to 96^3 is ~2 mm, so spacing is not matched), z-score of
nonzero voxels (the CT pretraining scaled HU -1000..1000 to 0..1; MRI has no such scale).

Features: the encoder has no class token. ``cls`` (the runner's name for a backbone's global
vector) is the mean over the 3x3x3 grid of the last stage after the parameter-free layer
norm MONAI applies to encoder outputs (``normalize=True``); ``patch_mean`` is the same mean taken
before that norm. Both are 768-d.

Checkpoint: the released ``model_swinvit.pt``, ``{"state_dict": {"module.patch_embed.proj...",
"module.layers1.0.blocks.0.mlp.fc1.weight", ...}}``, the layout MONAI's ``SwinUNETR.load_from``
reads (its ``mlp.fc1/fc2`` are MONAI's ``mlp.linear1/linear2``);
``swinViT.`` / ``swin_vit.`` prefixes (fine-tuning checkpoints) are accepted too. Pretraining
heads (rotation, contrastive, reconstruction) are skipped by name. The file carries
the relative position indices too (MONAI's loader reads them); they load strictly like the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from brainbench.backbone import InputContract, register_backbone
from brainbench.baselines._frozen import FrozenBackbone
from brainbench.baselines._resolve import (
    WeightsSpec,
    build_with_weights,
    merged,
    strip_prefix,
    unwrap,
    with_notes,
)
from brainbench.errors import BenchError
from brainbench.weights import LoadReport, load_state_strict

IMAGE_SIZE = (96, 96, 96)
FEATURE_SIZE = 48
FEATURE_DIM = 16 * FEATURE_SIZE  # 768 channels in the last stage
TOKENS = ("cls", "patch_mean")
# 16 volumes per forward call (the cpu profile's batch) peaked at 19.8 GB RAM on CPU and spent
# more time in the kernel (3,567 s) than in user code (1,443 s) during a cold make bench:
# its first stage holds 48^3 tokens x 48 channels per volume; 2 at a time keeps it small.
MAX_BATCH = 2
SWIN_CONFIG: dict[str, Any] = {
    "in_chans": 1, "embed_dim": FEATURE_SIZE, "window_size": (7, 7, 7),
    "patch_size": (2, 2, 2), "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24),
    "mlp_ratio": 4.0, "qkv_bias": True, "spatial_dims": 3, "downsample": "merging",
    "use_v2": False,
}
# (d, h, w) offsets of the eight 2x2x2 neighbours, in the order MONAI < 1.5 concatenated them
LEGACY_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1),
                      (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))
PATCH_MERGING = "MONAI < 1.5 (a23c7f54) order: offsets 000,100,010,001,101,010,001,111"
_MLP = re.compile(r"^(layers\d\.0\.blocks\.\d+\.mlp\.)fc([12])(?=\.)")
PREFIXES = ("module.", "swinViT.", "swin_vit.", "module.swinViT.")

SPEC = WeightsSpec(
    backbone="swinunetr_ssl", env_var="SWINUNETR_SSL_WEIGHTS",
    expected="the SwinUNETR self-supervised encoder model_swinvit.pt (Project-MONAI "
             "research-contributions, SwinUNETR/Pretrain)",
)
IGNORED = {
    "rotation_pre.*": "rotation-prediction pretraining head (not the encoder)",
    "rotation_head.*": "rotation-prediction pretraining head (not the encoder)",
    "contrastive_pre.*": "contrastive pretraining head (not the encoder)",
    "contrastive_head.*": "contrastive pretraining head (not the encoder)",
    "conv.*": "inpainting reconstruction decoder (not the encoder)",
}


class LegacyPatchMerging(torch.nn.Module):
    """3-D patch merging with MONAI's parameters (``norm`` over 8*dim, ``reduction`` Linear
    8*dim -> 2*dim without bias, so state-dict keys are unchanged) and the pre-1.5
    concatenation order LEGACY_MERGE_ORDER. Built by MONAI's BasicLayer as
    ``downsample(dim=, norm_layer=, spatial_dims=)``."""

    def __init__(self, dim: int, norm_layer: type[torch.nn.Module] = torch.nn.LayerNorm,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError("LegacyPatchMerging is the 3-D merging only")
        self.dim = dim
        self.reduction = torch.nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"LegacyPatchMerging expects (B, D, H, W, C), got {tuple(x.shape)}")
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = torch.nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in LEGACY_MERGE_ORDER], -1)
        return self.reduction(self.norm(x))


def build_swin_encoder(**overrides: Any) -> torch.nn.Module:
    """MONAI's SwinTransformer with the merging order the released weights were trained with.
    ``downsample="merging"`` in SWIN_CONFIG names the module family; it is replaced by the
    legacy-order class (pass ``downsample=...`` in overrides to use another)."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    config = {**SWIN_CONFIG, **overrides}
    if config["downsample"] == "merging" and config["spatial_dims"] == 3:
        config["downsample"] = LegacyPatchMerging
    return SwinTransformer(**config)


def load_swin_weights(model: torch.nn.Module, ckpt: Mapping[str, Any], source: str
                      ) -> LoadReport:
    state, notes = unwrap(ckpt, source, ("state_dict", "model"))
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        inside, outside = strip_prefix(state, prefix)
        if "patch_embed.proj.weight" in inside:
            notes.append(f"used keys under {prefix!r}")
            state = merged(inside, outside, prefix, source)
            break
    else:
        prefix = ""
        if "patch_embed.proj.weight" not in state:
            raise BenchError(f"weights {source}: no patch_embed.proj.weight under any of "
                             f"{list(PREFIXES)} or at the top level; not a Swin encoder state dict")
    # the release names the MLP like Swin/timm (mlp.fc1, mlp.fc2); MONAI calls them linear1/2
    renamed = {_MLP.sub(r"\1linear\2", k): k for k in state if _MLP.search(k)}
    if renamed:
        state = {_MLP.sub(r"\1linear\2", k): v for k, v in state.items()}
        notes.append("mlp.fc1/fc2 (release naming) loaded as MONAI's mlp.linear1/linear2")
    release = re.compile(r"^(layers\d\.0\.blocks\.\d+\.mlp\.)linear([12])(?=\.)")
    names = {k: prefix + (release.sub(r"\1fc\2", k) if renamed else k)
             for k in model.state_dict()}
    report = load_state_strict(model, state,
                               allowed_unexpected=IGNORED, source=source, key_names=names,
                               model_name="MONAI SwinTransformer (SwinUNETR SSL)")
    return with_notes(report, notes)


def _features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    raw = model(x, normalize=False)[-1]  # (B, 768, 3, 3, 3)
    normed = model.proj_out(raw, normalize=True)
    return {"cls": normed.flatten(2).mean(dim=2), "patch_mean": raw.flatten(2).mean(dim=2)}


# Tang et al. 2022: 5,050 CT volumes from these five public collections (no brain MRI)
@register_backbone("swinunetr_ssl", pretraining_datasets=("LUNA16", "TCIA COVID-19", "HNSCC",
                                                        "TCIA CT Colonography", "LIDC-IDRI"))
def make_swinunetr_ssl(*, weights: Path | None = None, require_weights: bool = False,
                       image_size: int | None = None, num_slices: int | None = None
                       ) -> FrozenBackbone:
    """3d: the profile's 2d overrides (image_size, num_slices) do not apply."""
    import monai

    built = build_with_weights(SPEC, weights=weights, require_weights=require_weights,
                               build=build_swin_encoder, load=load_swin_weights, init="MONAI init")
    contract = InputContract(dims="3d", in_channels=1, image_size=IMAGE_SIZE, num_slices=None,
                             intensity="zscore", tokens=TOKENS, feature_dim=FEATURE_DIM)
    architecture = {
        "model": "monai SwinTransformer (SwinUNETR swinViT, feature_size 48)",
        "implementation": f"monai {monai.__version__}",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in SWIN_CONFIG.items()},
        "patch_merging": PATCH_MERGING,
        "img_size": IMAGE_SIZE,
        "input_spacing": "none: whole volume resized to 96^3 (pretraining: 1.5 mm crops)",
        "features": "cls: mean over the layer-normed last stage; patch_mean: the same before "
                    "that norm",
    }
    backbone = FrozenBackbone("swinunetr_ssl", built.model, _features, contract, built.weights,
                              architecture, built.report)
    backbone.max_batch = MAX_BATCH
    return backbone
