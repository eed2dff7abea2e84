"""``dinov3``: Meta's natural-image DINOv3 ViT-B/16 (LVD-1689M) as a 2d slice encoder.

Architecture: timm ``vit_base_patch16_dinov3_qkvb`` (dim 768, depth 12, 4 register tokens,
layer scale, axial RoPE base 100, LayerNorm eps 1e-5 as in timm's definition of the release)
*with* q and v biases. The DINOv3 release stores ``attn.qkv.bias`` (3 x 768) plus a
``bias_mask`` that zeroes the k part; the BrainDINO reference built a no-bias model and so
dropped these biases without a word. Here the q and v parts load into ``q_bias``/``v_bias``;
the k part is dropped only after checking it is masked (``bias_mask`` zero there) or zero.
A timm export of the no-bias variant (``vit_base_patch16_dinov3.lvd1689m``) also loads: its
missing q/v biases stay at their zero init, which is exactly that model.

No absolute position embedding (RoPE from each input's grid), so any multiple of 16 works;
profile sizes are rounded to the nearest multiple.

Patch tokens (tumor_seg): every block's patch grid through the final norm, class and register
tokens removed (timm ``forward_intermediates``); (B, 768, size/16, size/16).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

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
    strip_prefix,
    unwrap,
    with_notes,
)
from brainbench.errors import BenchError
from brainbench.weights import LoadReport, load_state_strict

MODEL_NAME = "vit_base_patch16_dinov3_qkvb"
PATCH_SIZE = 16
FEATURE_DIM = 768
ROPE_BASE = 100.0
DEFAULT_IMAGE_SIZE = 224
DEFAULT_NUM_SLICES = 128
TOKENS = ("cls", "patch_mean")
META_FILE = "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"

SPEC = WeightsSpec(
    backbone="dinov3",
    env_var="DINOV3_WEIGHTS",
    expected=f"the DINOv3 ViT-B/16 LVD-1689M checkpoint ({META_FILE} from Meta, or timm's "
             f"{MODEL_NAME}.lvd1689m model.safetensors)",
    cached=(CachedFile("model.safetensors", f"timm/{MODEL_NAME}.lvd1689m"),
            CachedFile(META_FILE)),
)

IGNORED_KEYS = {
    "mask_token": "iBOT mask token, used only to mask patches in pretraining",
    "dino_head.*": "DINO projection head, used only in pretraining",
    "ibot_head.*": "iBOT projection head, used only in pretraining",
}
_QKV_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.bias$")
_LAYER_SCALE = re.compile(r"^(blocks\.\d+)\.ls([12])\.gamma$")


def build_dinov3_qkvb(**overrides: Any) -> torch.nn.Module:
    import timm

    kwargs = {"img_size": DEFAULT_IMAGE_SIZE, **overrides}
    return timm.create_model(MODEL_NAME, pretrained=False, num_classes=0, **kwargs)


def _convert_release(state: dict[str, Any], model: torch.nn.Module, source: str
                     ) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """DINOv3 release naming -> timm naming. Returns (state, ignored-key reasons, key names)."""
    out: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    names: dict[str, str] = {}
    dim = model.embed_dim
    for key, value in state.items():
        if key == "storage_tokens":
            out["reg_token"], names["reg_token"] = value, key
        elif m := _LAYER_SCALE.match(key):
            new = f"{m[1]}.gamma_{m[2]}"
            out[new], names[new] = value, key
        elif m := _QKV_BIAS.match(key):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (3 * dim,):
                raise BenchError(f"weights {source}: {key} has shape "
                                 f"{tuple(getattr(value, 'shape', ()))}, expected ({3 * dim},)")
            mask = state.get(key + "_mask")
            k_part = value[dim:2 * dim]
            if isinstance(mask, torch.Tensor) and tuple(mask.shape) == (3 * dim,):
                want = torch.ones(3 * dim)
                want[dim:2 * dim] = 0
                if not torch.equal(mask.float().cpu(), want):
                    raise BenchError(
                        f"weights {source}: {key}_mask is not the DINOv3 k-bias mask (ones for "
                        "q and v, zeros for k); timm's q/v-bias model cannot represent it")
                why = "k part of qkv.bias, zeroed by bias_mask in DINOv3 (never used)"
            elif bool((k_part != 0).any()):
                raise BenchError(
                    f"weights {source}: {key} has a non-zero k part and no bias_mask; "
                    f"{MODEL_NAME} has no k bias, so these weights would be lost")
            else:
                why = "k part of qkv.bias, all zero (the k bias is fixed at 0)"
            block = f"blocks.{m[1]}.attn"
            out[f"{block}.q_bias"], names[f"{block}.q_bias"] = value[:dim], f"{key}[:{dim}]"
            out[f"{block}.v_bias"], names[f"{block}.v_bias"] = value[2 * dim:], f"{key}[{2 * dim}:]"
            reasons[f"{key}[{dim}:{2 * dim}]"] = why
        elif key.endswith("attn.qkv.bias_mask"):
            out[key] = value
            reasons[key] = "mask buffer of the qkv bias (checked: zero only on the k part)"
        elif key == "rope_embed.periods":
            ours = model.rope.periods.detach().float()
            if (not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(ours.shape)
                    or float(((value.float() - ours).abs() / ours).max()) > 1e-2):
                raise BenchError(f"weights {source}: rope_embed.periods do not match RoPE base "
                                 f"{ROPE_BASE:g} of {MODEL_NAME}")
            out[key] = value
            reasons[key] = (f"RoPE periods buffer; timm recomputes it from base {ROPE_BASE:g} "
                            "(checked equal)")
        else:
            out[key] = value
    # every model key gets its release name, so a key missing from the file is reported under
    # the name the file should have had (blocks.2.ls1.gamma, not timm's blocks.2.gamma_1)
    for key in model.state_dict():
        names.setdefault(key, release_name(key, dim))
    return out, reasons, names


_TIMM_GAMMA = re.compile(r"^(blocks\.\d+)\.gamma_([12])$")
_TIMM_QV = re.compile(r"^(blocks\.\d+\.attn)\.([qv])_bias$")


def release_name(key: str, dim: int = FEATURE_DIM) -> str:
    """The DINOv3 release's name for a timm key (the key itself where they agree)."""
    if key == "reg_token":
        return "storage_tokens"
    if m := _TIMM_GAMMA.match(key):
        return f"{m[1]}.ls{m[2]}.gamma"
    if m := _TIMM_QV.match(key):
        part = f"[:{dim}]" if m[2] == "q" else f"[{2 * dim}:]"
        return f"{m[1]}.qkv.bias{part}"
    return key


def load_dinov3_weights(model: torch.nn.Module, ckpt: Mapping[str, Any], source: str
                        ) -> LoadReport:
    """Strictly load a DINOv3 release, teacher checkpoint or timm export into `model`."""
    state, notes = unwrap(ckpt, source, ("teacher", "model", "state_dict"))
    other: dict[str, Any] = {}
    if any(str(k).startswith("backbone.") for k in state):
        state, other = strip_prefix(state, "backbone.")
        notes.append("used keys under 'backbone.'")
    allowed_missing: dict[str, str] = {}
    if "storage_tokens" in state:
        state, reasons, names = _convert_release(state, model, source)
        notes.append("DINOv3 release naming converted to timm naming (storage_tokens, ls*.gamma, "
                     "qkv.bias -> q_bias/v_bias)")
        notes += [f"dropped {k}: {r}" for k, r in reasons.items() if "[" in k]
        ignored = {**IGNORED_KEYS, **{k: r for k, r in reasons.items() if "[" not in k}}
    elif "reg_token" in state:
        names = {}
        ignored = dict(IGNORED_KEYS)
        if not any(k.endswith("attn.q_bias") for k in state):
            biases = {k: v for k, v in model.state_dict().items()
                      if k.endswith(("q_bias", "v_bias"))}
            if any(bool((v != 0).any()) for v in biases.values()):  # pragma: no cover - timm init
                raise BenchError(f"{MODEL_NAME}: q/v biases are not zero at init")
            allowed_missing = {"blocks.*.attn.[qv]_bias": "timm export of the no-bias variant: "
                               "biases stay at their zero init, which is that model exactly"}
            notes.append("timm no-bias export (vit_base_patch16_dinov3): q/v biases kept at 0")
    else:
        raise BenchError(f"weights {source}: neither storage_tokens (DINOv3 release) nor reg_token "
                         "(timm) present; this is not a DINOv3 ViT checkpoint")
    report = load_state_strict(model, merged(state, other, "backbone.", source),
                               allowed_missing=allowed_missing,
                               allowed_unexpected=ignored, source=source, key_names=names,
                               model_name=MODEL_NAME)
    return with_notes(report, notes)


def _features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return cls_and_patch_mean(model.forward_features(x), model.num_prefix_tokens)


@register_backbone("dinov3", pretraining_datasets=("LVD-1689M",))  # natural images
def make_dinov3(*, weights: Path | None = None, require_weights: bool = False,
                image_size: int | None = None, num_slices: int | None = None) -> FrozenBackbone:
    import timm

    size = check_size("image_size", image_size, DEFAULT_IMAGE_SIZE, PATCH_SIZE,
                      round_to_multiple=True)
    slices = check_size("num_slices", num_slices, DEFAULT_NUM_SLICES)
    built = build_with_weights(SPEC, weights=weights, require_weights=require_weights,
                               build=lambda: build_dinov3_qkvb(img_size=size),
                               load=load_dinov3_weights, init="timm init")
    model = built.model
    contract = InputContract(dims="2d", in_channels=3, image_size=(size, size),
                             num_slices=slices, intensity="imagenet", tokens=TOKENS,
                             feature_dim=FEATURE_DIM)
    architecture = {
        "model": MODEL_NAME, "implementation": f"timm {timm.__version__}",
        "embed_dim": FEATURE_DIM, "depth": len(model.blocks), "patch_size": PATCH_SIZE,
        "qkv_bias": "q and v (k fixed at 0)", "norm_eps": model.norm.eps,
        "rope_base": ROPE_BASE, "rope_dtype": "float32", "img_size": size,
        "num_prefix_tokens": model.num_prefix_tokens,
        "features": "final-norm CLS token; mean of final-norm patch tokens",
    }
    return FrozenBackbone("dinov3", model, _features, contract, built.weights, architecture,
                          built.report, dense=DenseTokens(timm_patch_grids, len(model.blocks)))
