"""CLIP image towers as 2d slice encoders: ``clip`` (open_clip ViT-B-16) and ``biomedclip``
(Microsoft BiomedCLIP's ViT-B/16, registered only when its files are in the local HF cache).

Features are taken before the projection into the joint image-text space: the final-norm
(``ln_post``) class token and the mean of the final-norm patch tokens, 768-d. The text tower,
projection and temperature are in the checkpoints but not used; they are skipped by name, each
with its reason, and everything else is loaded strictly.

``clip``: the pretrained tag is ``laion2b_s34b_b88k`` unless ``CLIP_PRETRAINED`` names another
open_clip tag of ViT-B-16 (its QuickGELU setting follows the tag, e.g. ``openai``). Weights
come from ``--weights`` / ``CLIP_WEIGHTS`` (an open_clip state dict: ``visual.*`` + text keys,
e.g. ``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``), else the tag's file in
the local HF cache. The tower is built at the input size; a checkpoint trained at another size
has its position grid resampled by open_clip's own ``resize_pos_embed`` (bicubic), as
open_clip does when it loads a model at a new size; the load report says so.

Patch tokens (tumor_seg), both towers: every block's patch grid through the same final norm as
the features (``ln_post`` for ``clip``, the trunk's ``norm`` for ``biomedclip``), class token
removed, before any projection; (B, 768, size/16, size/16). open_clip's and timm's own
``forward_intermediates`` compute them.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch

from brainbench.backbone import BACKBONES, InputContract, register_backbone
from brainbench.baselines._frozen import (
    DenseTokens,
    FrozenBackbone,
    cls_and_patch_mean,
    open_clip_dense,
    timm_patch_grids,
)
from brainbench.baselines._resolve import (
    CachedFile,
    WeightsSpec,
    build_with_weights,
    check_size,
    hf_cached,
    strip_prefix,
    unwrap,
    with_notes,
)
from brainbench.errors import BenchError
from brainbench.weights import LoadReport, load_state_strict

ARCH = "ViT-B-16"
DEFAULT_TAG = "laion2b_s34b_b88k"
TAG_ENV = "CLIP_PRETRAINED"
PATCH_SIZE = 16
FEATURE_DIM = 768
DEFAULT_IMAGE_SIZE = 224
DEFAULT_NUM_SLICES = 128
TOKENS = ("cls", "patch_mean")
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

TEXT_KEYS = {
    "transformer.*": "text tower (not used to encode images)",
    "token_embedding.*": "text tower (not used to encode images)",
    "positional_embedding": "text tower position embedding (not used to encode images)",
    "ln_final.*": "text tower final norm (not used to encode images)",
    "text_projection": "text projection (not used to encode images)",
    "text.*": "text tower (not used to encode images)",
    "attn_mask": "text tower causal mask buffer (not used to encode images)",
    "logit_scale": "contrastive temperature (not used for features)",
    "logit_bias": "contrastive bias (not used for features)",
}

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_FILE = "open_clip_pytorch_model.bin"
BIOMEDCLIP_TRUNK = "vit_base_patch16_224"


def clip_tag() -> str:
    return os.environ.get(TAG_ENV, "").strip() or DEFAULT_TAG


def clip_spec(tag: str) -> WeightsSpec:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(ARCH, tag)
    if not cfg:
        raise BenchError(f"{TAG_ENV}={tag!r} is not an open_clip pretrained tag of {ARCH}; valid: "
                         f"{', '.join(open_clip.list_pretrained_tags_by_model(ARCH))}")
    repo = (cfg.get("hf_hub") or "").strip("/")
    return WeightsSpec(
        backbone="clip", env_var="CLIP_WEIGHTS",
        expected=f"the open_clip {ARCH} '{tag}' state dict (open_clip_pytorch_model.bin)",
        cached=tuple(CachedFile(name, repo) for name in OPEN_CLIP_FILES) if repo else (),
    )


def build_clip_tower(image_size: int = DEFAULT_IMAGE_SIZE, quick_gelu: bool = False,
                     vision_cfg: dict[str, Any] | None = None,
                     embed_dim: int | None = None) -> torch.nn.Module:
    """open_clip's ViT-B-16 image tower (no text tower) at `image_size`."""
    import open_clip
    from open_clip.model import _build_vision_tower

    config = open_clip.get_model_config(ARCH)
    cfg = {**config["vision_cfg"], **(vision_cfg or {}), "image_size": image_size}
    return _build_vision_tower(embed_dim or config["embed_dim"], cfg, quick_gelu=quick_gelu)


def load_clip_weights(tower: torch.nn.Module, ckpt: Mapping[str, Any], source: str) -> LoadReport:
    """Strictly load an open_clip CLIP state dict's ``visual.*`` part into `tower`."""
    from open_clip.model import resize_pos_embed

    state, notes = unwrap(ckpt, source, ("state_dict", "model"))
    if state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the 'module.' prefix of a distributed training checkpoint")
    if not any(str(k).startswith("visual.") for k in state):
        raise BenchError(f"weights {source}: no 'visual.*' keys; expected an open_clip CLIP "
                         f"state dict, found e.g. {sorted(map(str, state))[:5]}")
    pos = state.get("visual.positional_embedding")
    if isinstance(pos, torch.Tensor) and pos.shape != tower.positional_embedding.shape:
        holder = {"visual.positional_embedding": pos}
        resize_pos_embed(holder, SimpleNamespace(visual=tower))
        state["visual.positional_embedding"] = holder["visual.positional_embedding"]
        notes.append(f"visual.positional_embedding {tuple(pos.shape)} resampled to "
                     f"{tuple(holder['visual.positional_embedding'].shape)} by open_clip "
                     "resize_pos_embed (bicubic)")
    # load into a holder named like the file, so text-tower keys never clash with visual ones
    clip_model = torch.nn.Module()
    clip_model.visual = tower
    report = load_state_strict(clip_model, state, allowed_unexpected=TEXT_KEYS, source=source,
                               model_name=f"open_clip {ARCH} visual")
    return with_notes(report, notes)


def _clip_features(tower: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: list[torch.Tensor] = []
    handle = tower.ln_post.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        tower(x)
    finally:
        handle.remove()
    return cls_and_patch_mean(captured[0], 1)


def _contract(size: int, slices: int) -> InputContract:
    return InputContract(dims="2d", in_channels=3, image_size=(size, size), num_slices=slices,
                         intensity="clip", tokens=TOKENS, feature_dim=FEATURE_DIM)


def _sizes(image_size: int | None, num_slices: int | None) -> tuple[int, int]:
    size = check_size("image_size", image_size, DEFAULT_IMAGE_SIZE, PATCH_SIZE,
                      round_to_multiple=True)
    return size, check_size("num_slices", num_slices, DEFAULT_NUM_SLICES)


# the default tag laion2b_s34b_b88k; other CLIP_PRETRAINED tags are natural-image corpora too
@register_backbone("clip", pretraining_datasets=("LAION-2B",))
def make_clip(*, weights: Path | None = None, require_weights: bool = False,
              image_size: int | None = None, num_slices: int | None = None) -> FrozenBackbone:
    import open_clip

    size, slices = _sizes(image_size, num_slices)
    tag = clip_tag()
    spec = clip_spec(tag)
    quick_gelu = bool(open_clip.get_pretrained_cfg(ARCH, tag).get("quick_gelu", False))
    built = build_with_weights(spec, weights=weights, require_weights=require_weights,
                               build=lambda: build_clip_tower(size, quick_gelu),
                               load=load_clip_weights, init="open_clip init")
    architecture = {
        "model": f"open_clip {ARCH} visual", "pretrained_tag": tag,
        "implementation": f"open_clip {open_clip.__version__}", "quick_gelu": quick_gelu,
        "embed_dim": FEATURE_DIM, "patch_size": PATCH_SIZE, "img_size": size,
        "features": "ln_post CLS token (before projection); mean of ln_post patch tokens",
    }
    return FrozenBackbone("clip", built.model, _clip_features, _contract(size, slices),
                          built.weights, architecture, built.report,
                          dense=open_clip_dense(built.model))


# ---------------------------------------------------------------- BiomedCLIP

BIOMEDCLIP_SPEC = WeightsSpec(
    backbone="biomedclip", env_var="BIOMEDCLIP_WEIGHTS",
    expected=f"BiomedCLIP's {BIOMEDCLIP_FILE} (Hugging Face {BIOMEDCLIP_REPO})",
    cached=(CachedFile(BIOMEDCLIP_FILE, BIOMEDCLIP_REPO),),
)
BIOMEDCLIP_IGNORED = {
    **TEXT_KEYS,
    "visual.head.*": "projection into the joint image-text space (features are taken before it)",
}


def build_biomedclip_trunk(**overrides: Any) -> torch.nn.Module:
    """BiomedCLIP's image trunk: timm ViT-B/16 without pooling or head (open_clip TimmModel)."""
    import timm

    return timm.create_model(BIOMEDCLIP_TRUNK, pretrained=False, num_classes=0, global_pool="",
                             dynamic_img_size=True, **overrides)


def load_biomedclip_weights(trunk: torch.nn.Module, ckpt: Mapping[str, Any], source: str
                            ) -> LoadReport:
    state, notes = unwrap(ckpt, source, ("state_dict", "model"))
    inside, other = strip_prefix(state, "visual.trunk.")
    if not inside:
        raise BenchError(f"weights {source}: no 'visual.trunk.*' keys; expected the BiomedCLIP "
                         f"open_clip state dict, found e.g. {sorted(map(str, state))[:5]}")
    names = {k: "visual.trunk." + k for k in trunk.state_dict()}
    report = load_state_strict(trunk, {**inside, **other}, allowed_unexpected=BIOMEDCLIP_IGNORED,
                               source=source, key_names=names,
                               model_name=f"BiomedCLIP trunk ({BIOMEDCLIP_TRUNK})")
    return with_notes(report, notes)


def _trunk_features(trunk: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return cls_and_patch_mean(trunk.forward_features(x), trunk.num_prefix_tokens)


def make_biomedclip(*, weights: Path | None = None, require_weights: bool = False,
                    image_size: int | None = None, num_slices: int | None = None
                    ) -> FrozenBackbone:
    import timm

    size, slices = _sizes(image_size, num_slices)
    built = build_with_weights(BIOMEDCLIP_SPEC, weights=weights, require_weights=require_weights,
                               build=build_biomedclip_trunk, load=load_biomedclip_weights,
                               init="timm init")
    architecture = {
        "model": f"BiomedCLIP visual trunk ({BIOMEDCLIP_TRUNK})",
        "implementation": f"timm {timm.__version__}", "embed_dim": FEATURE_DIM,
        "patch_size": PATCH_SIZE, "img_size": size, "pos_embed_grid": 14,
        "pos_embed_resample": "timm dynamic_img_size (bicubic, antialias)",
        "features": "final-norm CLS token (before projection); mean of final-norm patch tokens",
    }
    return FrozenBackbone("biomedclip", built.model, _trunk_features, _contract(size, slices),
                          built.weights, architecture, built.report,
                          dense=DenseTokens(timm_patch_grids, len(built.model.blocks)))


def register_biomedclip_if_cached(hf_cache_dir: str | Path | None = None) -> bool:
    """Register ``biomedclip`` when its weights are in the local HF cache (or named by
    BIOMEDCLIP_WEIGHTS). Returns whether it is registered."""
    if "biomedclip" in BACKBONES:
        return True
    present = bool(os.environ.get(BIOMEDCLIP_SPEC.env_var, "").strip()) or (
        hf_cached(BIOMEDCLIP_REPO, BIOMEDCLIP_FILE, hf_cache_dir) is not None)
    if present:
        register_backbone("biomedclip", pretraining_datasets=("PMC-15M",))(make_biomedclip)
    return present
