"""BrainDINO: the reference DINOv3 ViT-B/16, frozen, as a 2d slice encoder (DESIGN.md section 3).

Architecture: timm ``vit_base_patch16_dinov3`` (dim 768, depth 12, 12 heads, 4 register tokens,
no qkv bias, layer scale, axial RoPE base 100, no absolute position embedding) built with
LayerNorm eps 1e-6. timm's default eps (1e-5) changes the features.

RoPE precision: timm computes the RoPE periods, angles and sin/cos in float32 and rotates q/k
in float32. The BrainDINO reference (DINOv3 code) defaults to bfloat16 RoPE: periods, angles
and sin/cos in bf16 and q/k rounded to bf16 while rotated. Final features then differ by about
1e-4 relative (||a - b|| / ||b||; measured 1.4e-4 on the CLS token of the golden fixture). We
keep float32 RoPE and record it in `architecture()`.

Image size: the model has no absolute position embedding and builds RoPE from the patch grid
of each input, so the same weights work at any multiple of 16 (e.g. 224, 112, 32).

Weights: ``--weights`` / ``WEIGHTS=``, else ``BRAINDINO_WEIGHTS`` (no public download, so no
cache is searched); none -> seeded random init, warned and marked. Resolution, the frozen
embed and the patch grids are the shared baseline machinery (`_resolve`, `_frozen`); only the
checkpoint loader and the optional earlier-block CLS tokens are BrainDINO's own.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from brainbench.backbone import InputContract, WeightsInfo, register_backbone
from brainbench.baselines._frozen import (
    DenseTokens,
    FrozenBackbone,
    cls_and_patch_mean,
    timm_patch_grids,
)
from brainbench.baselines._resolve import (
    RANDOM_SEED,
    WeightsSpec,
    build_with_weights,
    check_size,
    merged,
    strip_prefix,
    unwrap,
    with_notes,
)
from brainbench.errors import BenchError
from brainbench.weights import LoadReport, load_state_strict

MODEL_NAME = "vit_base_patch16_dinov3"
NORM_EPS = 1e-6
ROPE_BASE = 100.0
ROPE_DTYPE = "float32"
PATCH_SIZE = 16
FEATURE_DIM = 768
DEFAULT_IMAGE_SIZE = 224
DEFAULT_NUM_SLICES = 128
WEIGHTS_ENV = "BRAINDINO_WEIGHTS"
TOKENS = ("cls", "patch_mean")
# Optional tokens (see DinoV3Backbone.with_tokens): the CLS of the 3 blocks before the last,
# each through the final norm, so cls_prev3..1 + cls are the last four layers' CLS (DINOv2
# linear evaluation). Off by default: they are only computed and cached when asked for.
PREV_CLS_TOKENS = ("cls_prev3", "cls_prev2", "cls_prev1")

SPEC = WeightsSpec(
    backbone="braindino",
    env_var=WEIGHTS_ENV,
    expected="the BrainDINO checkpoint file (DINOv3 teacher format, e.g. teacher_checkpoint.pth; "
             "BrainDINO weights are not public yet)",
)
# the random-init fallback's weights source, word for word as run reports have always shown it
RANDOM_SOURCE = f"timm init (seed {RANDOM_SEED}), no BrainDINO weights configured"

# Keys of a DINOv3 training checkpoint that are not part of the frozen encoder.
HEAD_KEYS = {
    "dino_head.*": "DINO projection head, used only in pretraining (not part of the encoder)",
    "ibot*": "iBOT projection head, used only in pretraining (not part of the encoder)",
}
_BACKBONE_PREFIX = "backbone."
_QKV_BIAS = re.compile(r"^blocks\.\d+\.attn\.qkv\.bias$")
_QKV_BIAS_MASK = re.compile(r"^blocks\.\d+\.attn\.qkv\.bias_mask$")


def build_dinov3_vitb16(
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    norm_eps: float = NORM_EPS,
    seed: int = RANDOM_SEED,
) -> torch.nn.Module:
    """The BrainDINO architecture with timm's initialisation made deterministic by `seed`.

    The global torch RNG is left untouched (fork_rng). Returns the model in eval mode, frozen.
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(
            MODEL_NAME,
            pretrained=False,
            num_classes=0,
            img_size=image_size,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=norm_eps),
        )
    model.eval()
    model.requires_grad_(False)
    return model


def _file_name(model_key: str, prefix: str) -> str:
    """The name a timm key has in a DINOv3 checkpoint (for error messages)."""
    name = model_key.replace("reg_token", "storage_tokens")
    name = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", name)
    return prefix + name


def _split_checkpoint(
    ckpt: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, Any], str, list[str]]:
    """-> (backbone state without prefix, other keys, prefix used in the file, notes)."""
    state, notes = unwrap(ckpt, source, ("teacher",))
    prefix = _BACKBONE_PREFIX if any(str(k).startswith(_BACKBONE_PREFIX) for k in state) else ""
    backbone, other = strip_prefix(state, prefix) if prefix else (state, {})
    if prefix:
        merged(backbone, other, prefix, source)  # raises on a key with and without the prefix
    not_tensors = sorted(k for k, v in backbone.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise BenchError(
            f"weights {source}: {len(not_tensors)} backbone entries are not tensors: "
            f"{', '.join(prefix + str(k) for k in not_tensors[:10])}"
        )
    return backbone, other, prefix, notes


def _dinov3_extras(
    backbone: dict[str, Any], model: torch.nn.Module, prefix: str, source: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Pop the DINOv3 keys the timm encoder does not load: ({file key: value}, {key: reason}).

    Each is checked first, so dropping it cannot change the features.
    """
    reasons: dict[str, str] = {}
    extras: dict[str, Any] = {}

    periods = backbone.pop("rope_embed.periods", None)
    if periods is not None:
        ours = model.rope.periods.detach().float()
        if not isinstance(periods, torch.Tensor) or tuple(periods.shape) != tuple(ours.shape):
            raise BenchError(
                f"weights {source}: {prefix}rope_embed.periods has shape "
                f"{tuple(getattr(periods, 'shape', ()))}, expected {tuple(ours.shape)}"
            )
        rel = float(((periods.float() - ours).abs() / ours).max())
        if rel > 1e-2:
            raise BenchError(
                f"weights {source}: {prefix}rope_embed.periods differ from RoPE base "
                f"{ROPE_BASE:g} (max relative difference {rel:.3g}); this checkpoint was trained "
                "with another RoPE configuration"
            )
        reasons[prefix + "rope_embed.periods"] = (
            f"RoPE periods buffer: timm recomputes it in float32 from base {ROPE_BASE:g}; the "
            f"file's {str(periods.dtype).replace('torch.', '')} copy matches "
            f"(max relative difference {rel:.2g})"
        )
        extras[prefix + "rope_embed.periods"] = periods

    mask_token = backbone.pop("mask_token", None)
    if mask_token is not None:
        reasons[prefix + "mask_token"] = (
            "iBOT mask token, used only to mask patches in pretraining (never at inference)"
        )
        extras[prefix + "mask_token"] = mask_token

    for key in sorted(backbone):
        value = backbone[key]
        if _QKV_BIAS.match(key):
            if isinstance(value, torch.Tensor) and not bool((value != 0).any()):
                reasons[prefix + key] = "all-zero qkv bias; this architecture has no qkv bias"
                extras[prefix + key] = backbone.pop(key)
            else:
                raise BenchError(
                    f"weights {source}: {prefix}{key} is a non-zero qkv bias, but BrainDINO's "
                    f"architecture ({MODEL_NAME}) has no qkv bias; these weights would be "
                    "silently lost. The checkpoint is not a BrainDINO ViT-B/16."
                )
        elif _QKV_BIAS_MASK.match(key):
            reasons[prefix + key] = "mask buffer of a qkv bias (this architecture has none)"
            extras[prefix + key] = backbone.pop(key)

    return extras, reasons


def load_braindino_weights(
    model: torch.nn.Module, ckpt: Mapping[str, Any], *, source: str
) -> LoadReport:
    """Strictly load a DINOv3/BrainDINO checkpoint dict into `model` (from build_dinov3_vitb16).

    Accepts ``{"teacher": {"backbone.<key>": tensor, "dino_head.*": ..., "ibot*": ...}}``, a
    plain backbone state dict in DINOv3 naming (with or without ``backbone.``), or one already
    in timm naming. Every key the encoder does not load is listed in the report with a reason;
    anything else that does not fit raises BenchError.
    """
    from timm.models.eva import checkpoint_filter_fn

    backbone, other, prefix, notes = _split_checkpoint(ckpt, source)
    extras, extra_reasons = _dinov3_extras(backbone, model, prefix, source)
    reasons = {**HEAD_KEYS, **extra_reasons}

    if "storage_tokens" in backbone:
        mapped = checkpoint_filter_fn(dict(backbone), model)
        notes.append("DINOv3 key names mapped with timm.models.eva.checkpoint_filter_fn")
    elif "reg_token" in backbone:
        mapped = dict(backbone)
        notes.append("checkpoint already in timm naming (reg_token, gamma_1, ...)")
    else:
        raise BenchError(
            f"weights {source}: missing key {prefix}storage_tokens (the 4 DINOv3 register "
            "tokens); this does not look like a DINOv3 ViT checkpoint"
        )

    # checkpoint_filter_fn renames tensors; it may also drop keys (any key containing 'rope',
    # '.periods', 'mask_token', qkv biases the model lacks, projectors.*, local_cls_norm*) or
    # resample patch_embed to another patch size. Audit by tensor identity: every input tensor
    # must come out unchanged under exactly one name.
    by_id = {id(v): k for k, v in backbone.items()}
    names: dict[str, str] = {}
    transformed = []
    for key, value in mapped.items():
        src = by_id.get(id(value))
        if src is None:
            transformed.append(key)
        else:
            names[key] = prefix + src
    dropped = sorted(set(backbone) - {n[len(prefix):] for n in names.values()})
    if transformed or dropped:
        parts = []
        if dropped:
            more = f" ... and {len(dropped) - 10} more" if len(dropped) > 10 else ""
            shown = ", ".join(prefix + k for k in dropped[:10])
            parts.append(f"keys it would silently drop: {shown}{more}")
        if transformed:
            shown = ", ".join(transformed[:10])
            parts.append(f"tensors it would change (e.g. resampled patch embedding): {shown}")
        raise BenchError(
            f"weights {source} do not fit {MODEL_NAME}: timm's checkpoint_filter_fn reports "
            + "; ".join(parts)
        )

    key_names = {k: _file_name(k, prefix) for k in model.state_dict()}
    key_names.update(names)
    state = {**mapped, **extras, **other}
    report = load_state_strict(
        model,
        state,
        allowed_unexpected=reasons,
        source=source,
        key_names=key_names,
        model_name=MODEL_NAME,
    )
    return with_notes(report, notes)


def _features(model: torch.nn.Module, x: torch.Tensor, extra: tuple[str, ...] = ()
              ) -> dict[str, torch.Tensor]:
    """Final-norm CLS and patch mean; with `extra`, also earlier blocks' CLS in the same pass."""
    if not extra:
        return cls_and_patch_mean(model.forward_features(x), model.num_prefix_tokens)
    depth = len(model.blocks)
    tokens, inter = model.forward_intermediates(
        x, indices=[depth - 4, depth - 3, depth - 2], return_prefix_tokens=True, norm=True,
        output_fmt="NLC")
    prev = dict(zip(PREV_CLS_TOKENS, (prefix[:, 0] for _, prefix in inter)))
    return {**cls_and_patch_mean(tokens, model.num_prefix_tokens), **{t: prev[t] for t in extra}}


def _architecture(model: torch.nn.Module, image_size: int, norm_eps: float) -> dict[str, Any]:
    import timm

    return {
        "model": MODEL_NAME,
        "implementation": f"timm {timm.__version__}",
        "embed_dim": FEATURE_DIM,
        "depth": len(model.blocks),
        "num_heads": model.blocks[0].attn.num_heads,
        "patch_size": PATCH_SIZE,
        "qkv_bias": False,
        "norm_eps": norm_eps,
        "rope_base": ROPE_BASE,
        "rope_dtype": ROPE_DTYPE,
        "img_size": image_size,
        "num_prefix_tokens": model.num_prefix_tokens,
        "num_register_tokens": model.num_prefix_tokens - 1,
        "features": "final-norm CLS token; mean of final-norm patch tokens",
    }


class DinoV3Backbone(FrozenBackbone):
    """A frozen DINOv3 ViT-B/16 encoding 2d slices into final-norm CLS and patch-mean tokens.

    Patch tokens: each block's (B, 768, H/16, W/16) grid through the final norm, register
    tokens removed, as the DINOv2/v3 segmentation protocols read them
    (get_intermediate_layers(norm=True)); the last block's grid equals the patch part of
    `forward_features`.
    """

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        weights: WeightsInfo,
        *,
        image_size: int,
        num_slices: int,
        norm_eps: float = NORM_EPS,
        load_report: LoadReport | None = None,
        extra_tokens: tuple[str, ...] = (),
    ) -> None:
        unknown = [t for t in extra_tokens if t not in PREV_CLS_TOKENS]
        if unknown:
            raise BenchError(f"{name}: unknown extra token(s) {unknown}; available: "
                             f"{list(PREV_CLS_TOKENS)}")
        extra = tuple(t for t in PREV_CLS_TOKENS if t in extra_tokens)
        contract = InputContract(
            dims="2d",
            in_channels=3,
            image_size=(image_size, image_size),
            num_slices=num_slices,
            intensity="robust_zscore",
            tokens=TOKENS + extra,
            feature_dim=FEATURE_DIM,
        )
        super().__init__(name, model, functools.partial(_features, extra=extra), contract,
                         weights, _architecture(model, image_size, norm_eps), load_report,
                         dense=DenseTokens(timm_patch_grids, len(model.blocks)))
        self.extra_tokens = extra
        self.norm_eps = norm_eps

    def with_tokens(self, extra: Sequence[str]) -> "DinoV3Backbone":
        """The same frozen model also returning the optional tokens `extra` (PREV_CLS_TOKENS).

        The contract's tokens change, so the feature cache keys them separately.
        """
        wider = DinoV3Backbone(self.name, self.model, self.weights,
                               image_size=self.contract.image_size[0],
                               num_slices=self.contract.num_slices, norm_eps=self.norm_eps,
                               load_report=self.load_report,
                               extra_tokens=tuple(self.extra_tokens) + tuple(extra))
        wider.share_precision(self)
        return wider


def sizes(image_size: int | None, num_slices: int | None) -> tuple[int, int]:
    """Profile sizes; the image size must be a multiple of the patch size (never rounded)."""
    return (check_size("image_size", image_size, DEFAULT_IMAGE_SIZE, PATCH_SIZE),
            check_size("num_slices", num_slices, DEFAULT_NUM_SLICES))


def _load(model: torch.nn.Module, ckpt: Mapping[str, Any], source: str) -> LoadReport:
    return load_braindino_weights(model, ckpt, source=source)


def make_braindino(
    *,
    weights: Path | None = None,
    require_weights: bool = False,
    image_size: int | None = None,
    num_slices: int | None = None,
) -> DinoV3Backbone:
    """Factory of the ``braindino`` backbone (see module docstring and `create_backbone`)."""
    size, slices = sizes(image_size, num_slices)
    built = build_with_weights(SPEC, weights=weights, require_weights=require_weights,
                               build=lambda: build_dinov3_vitb16(size), load=_load,
                               init="timm init", random_source=RANDOM_SOURCE)
    return DinoV3Backbone("braindino", built.model, built.weights, image_size=size,
                          num_slices=slices, load_report=built.report)


# pretraining_datasets not declared ("unknown"): the paper (arXiv 2604.27277) pretrains on ~6.6M
# axial slices of 20 brain-MRI datasets that overlap the usual evaluation sets, and the names
# are not recorded here yet; declare them with register_backbone(..., pretraining_datasets=...)
register_backbone("braindino")(make_braindino)
