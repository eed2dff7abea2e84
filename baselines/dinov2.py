"""DINOv2 ViT-B/14 (LVD-142M, natural images) as a 2d slice encoder: ``dinov2``, ``dinov2_reg``
(the 4-register variant) and ``random2d`` (the same architecture, untrained).

Architecture: timm ``vit_base_patch14_dinov2`` / ``vit_base_patch14_reg4_dinov2`` (dim 768,
depth 12, LayerScale, LayerNorm eps 1e-6), built at the pretraining grid (518 px, 37x37
patches) with ``dynamic_img_size``: the checkpoint's position embedding loads unchanged and is
resampled to each input's patch grid at run time exactly as the DINOv2 hub models do
(facebookresearch/dinov2 ``DinoVisionTransformer.interpolate_pos_encoding``):
- ``dinov2`` / ``random2d`` (hub ``dinov2_vitb14``): bicubic, antialias off, scale factors
  ``(n + 0.1) / 37`` (the "interpolate_offset" kludge). timm's own resampling (antialiased, exact
  output size) gave features 0.4-2.4% off the hub model at 112 and 224 px; this one is exact.
- ``dinov2_reg`` (hub ``dinov2_vitb14_reg``): bicubic, antialiased, exact output size, which is
  timm's resampling unchanged.
At 518 px no resampling happens. tests/test_parity.py checks both against the hub code.

Input size: a multiple of the patch size 14. Profile sizes map to the nearest multiple
(112 -> 112, 224 -> 224, 32 -> 28); the contract states the size actually used.

Checkpoints accepted, all through one strict loader:
- the DINOv2 release (``dinov2_vitb14_pretrain.pth``, ``dinov2_vitb14_reg4_pretrain.pth``):
  ``mask_token`` (pretraining only) is ignored with a reason; ``register_tokens`` is renamed
  ``reg_token``; in the register variant the class token's position embedding is added to
  ``cls_token`` (timm's register model keeps neither token inside ``pos_embed``; exact);
- timm's own export (``timm/vit_base_patch14_dinov2.lvd142m`` ``model.safetensors``);
- a DINOv2 training checkpoint ``{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}``.

Patch tokens (tumor_seg): every block's patch grid through the final norm, class and register
tokens removed (timm ``forward_intermediates``), as the DINOv2 segmentation protocol reads them;
(B, 768, size/14, size/14).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from brainbench.backbone import InputContract, register_backbone
from brainbench.baselines._frozen import (
    DenseTokens,
    FrozenBackbone,
    cls_and_patch_mean,
    timm_patch_grids,
)
from brainbench.baselines._resolve import (
    CachedFile,
    WeightsSpec,
    build_with_weights,
    merged,
    check_size,
    random_model,
    strip_prefix,
    unwrap,
    with_notes,
)
from brainbench.weights import LoadReport, load_state_strict

PATCH_SIZE = 14
FEATURE_DIM = 768
PRETRAIN_SIZE = 518
DEFAULT_IMAGE_SIZE = 224
DEFAULT_NUM_SLICES = 128
TOKENS = ("cls", "patch_mean")

MODELS = {False: "vit_base_patch14_dinov2", True: "vit_base_patch14_reg4_dinov2"}
META_FILES = {False: "dinov2_vitb14_pretrain.pth", True: "dinov2_vitb14_reg4_pretrain.pth"}

IGNORED_KEYS = {
    "mask_token": "iBOT mask token, used only to mask patches in pretraining",
    "dino_head.*": "DINO projection head, used only in pretraining",
    "ibot_head.*": "iBOT projection head, used only in pretraining",
}


def spec(name: str, registers: bool) -> WeightsSpec:
    model = MODELS[registers]
    return WeightsSpec(
        backbone=name,
        env_var="DINOV2_REG_WEIGHTS" if registers else "DINOV2_WEIGHTS",
        expected=f"the DINOv2 ViT-B/14{' reg4' if registers else ''} checkpoint "
                 f"({META_FILES[registers]} or timm's {model}.lvd142m model.safetensors)",
        cached=(CachedFile("model.safetensors", f"timm/{model}.lvd142m"),
                CachedFile("pytorch_model.bin", f"timm/{model}.lvd142m"),
                CachedFile(META_FILES[registers])),
    )


# How each variant's position embedding follows the input grid (part of architecture(), so of
# the feature cache key: features made with timm's antialiased resampling are not reused).
POS_EMBED_RESAMPLE = {
    False: "DINOv2 hub dinov2_vitb14: bicubic, no antialias, scale (n+0.1)/grid",
    True: "DINOv2 hub dinov2_vitb14_reg: bicubic, antialias, exact size (= timm)",
}
INTERPOLATE_OFFSET = 0.1


def hub_resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int],
                           new: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """The DINOv2 hub's resampling of (1, prefix + g*g, D) to an (h, w) patch grid: bicubic
    with scale factors ((h + 0.1) / g, (w + 0.1) / g), antialias off; unchanged when the grid
    already matches."""
    if tuple(new) == tuple(grid):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    dim = pos_embed.shape[-1]
    dtype = patches.dtype
    img = patches.float().reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)
    scale = ((new[0] + INTERPOLATE_OFFSET) / grid[0], (new[1] + INTERPOLATE_OFFSET) / grid[1])
    img = F.interpolate(img, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(img.shape[-2:]) != tuple(new):  # pragma: no cover - the offset guards against it
        raise RuntimeError(f"position embedding resampled to {tuple(img.shape[-2:])}, "
                           f"expected {tuple(new)}")
    img = img.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, img], dim=1)


def _hub_pos_embed(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer._pos_embed (class token inside pos_embed, dynamic size) with the
    hub's resampling."""
    b, h, w, c = x.shape
    pos = hub_resample_pos_embed(self.pos_embed, tuple(self.patch_embed.grid_size), (h, w),
                                 self.num_prefix_tokens)
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
    return self.pos_drop(x + pos)


_HUB_CLASSES: dict[type, type] = {}


def _with_hub_resampling(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a timm no-register DINOv2 ViT to the hub's position resampling (a subclass
    overriding ``_pos_embed`` only; state dict and everything else unchanged)."""
    if model.reg_token is not None or model.no_embed_class or not model.dynamic_img_size:
        raise RuntimeError("hub resampling applies to the no-register DINOv2 layout only")
    base = type(model)
    cls = _HUB_CLASSES.get(base)
    if cls is None:
        cls = type(f"Hub{base.__name__}", (base,), {"_pos_embed": _hub_pos_embed,
                                                    "__module__": __name__})
        _HUB_CLASSES[base] = cls
        globals()[cls.__name__] = cls  # picklable by name
    model.__class__ = cls
    return model


def build_dinov2(registers: bool = False, **overrides: Any) -> torch.nn.Module:
    """timm's DINOv2 ViT-B/14 at the pretraining grid, resampling positions per input as the
    DINOv2 hub model of that variant does."""
    import timm

    kwargs = {"img_size": PRETRAIN_SIZE, **overrides}
    model = timm.create_model(MODELS[registers], pretrained=False, num_classes=0,
                              dynamic_img_size=True, **kwargs)
    return model if registers else _with_hub_resampling(model)


def load_dinov2_weights(model: torch.nn.Module, ckpt: Mapping[str, Any], source: str
                        ) -> LoadReport:
    """Strictly load a DINOv2 release, timm export or teacher checkpoint into `model`."""
    state, notes = unwrap(ckpt, source, ("teacher", "model", "state_dict"))
    if any(str(k).startswith("backbone.") for k in state):
        state, other = strip_prefix(state, "backbone.")
        notes.append("used keys under 'backbone.'")
    else:
        other = {}
    registers = getattr(model, "reg_token", None) is not None
    key_names: dict[str, str] = {}
    state = dict(state)
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        key_names["reg_token"] = "register_tokens"
        notes.append("DINOv2 naming: register_tokens loaded as reg_token")
    if registers and "mask_token" in state and "pos_embed" in state:
        # DINOv2 release layout: pos_embed holds the class token's position first
        pos = state["pos_embed"]
        cls = state.get("cls_token")
        if (isinstance(pos, torch.Tensor) and isinstance(cls, torch.Tensor)
                and pos.ndim == 3 and pos.shape[1] == model.pos_embed.shape[1] + 1):
            state["cls_token"] = cls + pos[:, :1]
            state["pos_embed"] = pos[:, 1:]
            key_names["cls_token"] = "cls_token + pos_embed[:, 0]"
            key_names["pos_embed"] = "pos_embed[:, 1:]"
            notes.append("class-token position embedding folded into cls_token (timm's "
                         "register model adds no position to prefix tokens; exact)")
    report = load_state_strict(model, merged(state, other, "backbone.", source),
                               allowed_unexpected=IGNORED_KEYS, source=source, key_names=key_names,
                               model_name=type(model).__name__ + f" ({_name(model)})")
    return with_notes(report, notes)


def _name(model: torch.nn.Module) -> str:
    return MODELS[getattr(model, "reg_token", None) is not None]


def _architecture(registers: bool, model: torch.nn.Module, size: int) -> dict[str, Any]:
    import timm

    return {
        "model": MODELS[registers], "implementation": f"timm {timm.__version__}",
        "embed_dim": FEATURE_DIM, "depth": len(model.blocks), "patch_size": PATCH_SIZE,
        "norm_eps": model.norm.eps, "pos_embed_grid": PRETRAIN_SIZE // PATCH_SIZE,
        "pos_embed_resample": POS_EMBED_RESAMPLE[registers], "img_size": size,
        "num_prefix_tokens": model.num_prefix_tokens,
        "features": "final-norm CLS token; mean of final-norm patch tokens",
    }


def _contract(size: int, slices: int) -> InputContract:
    return InputContract(dims="2d", in_channels=3, image_size=(size, size), num_slices=slices,
                         intensity="imagenet", tokens=TOKENS, feature_dim=FEATURE_DIM)


def _features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return cls_and_patch_mean(model.forward_features(x), model.num_prefix_tokens)


def _dense(model: torch.nn.Module) -> DenseTokens:
    """Each block's patch grid through the final norm (register tokens removed); the grid
    follows the input (e.g. 8x8 at 112 px)."""
    return DenseTokens(timm_patch_grids, len(model.blocks))


def _sizes(image_size: int | None, num_slices: int | None) -> tuple[int, int]:
    size = check_size("image_size", image_size, DEFAULT_IMAGE_SIZE, PATCH_SIZE,
                      round_to_multiple=True)
    return size, check_size("num_slices", num_slices, DEFAULT_NUM_SLICES)


def _make(name: str, registers: bool, *, weights: Path | None, require_weights: bool,
          image_size: int | None, num_slices: int | None) -> FrozenBackbone:
    size, slices = _sizes(image_size, num_slices)
    built = build_with_weights(spec(name, registers), weights=weights,
                               require_weights=require_weights,
                               build=lambda: build_dinov2(registers), load=load_dinov2_weights,
                               init="timm init")
    return FrozenBackbone(name, built.model, _features, _contract(size, slices), built.weights,
                          _architecture(registers, built.model, size), built.report,
                          dense=_dense(built.model))


@register_backbone("dinov2", pretraining_datasets=("LVD-142M",))  # natural images
def make_dinov2(*, weights: Path | None = None, require_weights: bool = False,
                image_size: int | None = None, num_slices: int | None = None) -> FrozenBackbone:
    return _make("dinov2", False, weights=weights, require_weights=require_weights,
                 image_size=image_size, num_slices=num_slices)


@register_backbone("dinov2_reg", pretraining_datasets=("LVD-142M",))
def make_dinov2_reg(*, weights: Path | None = None, require_weights: bool = False,
                    image_size: int | None = None, num_slices: int | None = None
                    ) -> FrozenBackbone:
    return _make("dinov2_reg", True, weights=weights, require_weights=require_weights,
                 image_size=image_size, num_slices=num_slices)


@register_backbone("random2d", pretraining_datasets=())
def make_random2d(*, weights: Path | None = None, require_weights: bool = False,
                  image_size: int | None = None, num_slices: int | None = None
                  ) -> FrozenBackbone:
    """DINOv2 ViT-B/14 with timm's seeded initialisation: the untrained 2d reference point."""
    size, slices = _sizes(image_size, num_slices)
    built = random_model("random2d", weights, lambda: build_dinov2(False), "timm init")
    return FrozenBackbone("random2d", built.model, _features, _contract(size, slices),
                          built.weights, _architecture(False, built.model, size),
                          dense=_dense(built.model))

