"""One `Backbone` implementation for every baseline: a frozen module plus a feature function.

Each entry supplies `features(model, batch) -> {token: (B, dim)}` and, optionally, a
`DenseTokens` (patch grids per block, for tumor_seg); this class checks the batch against
the contract, runs it under inference mode at the backbone's precision (fp32 with autocast
off, so an outer autocast never changes fp32 features; bf16 under torch.autocast, see
brainbench.precision), eager or through a compiled graph (brainbench.runtime), and returns
plain float32 tensors.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo
from brainbench.errors import BenchError
from brainbench.precision import autocast, bf16_matmul_copy
from brainbench.runtime import CompiledForward, check_runtime, resolve_runtime
from brainbench.weights import LoadReport

Features = Callable[[torch.nn.Module, torch.Tensor], dict[str, torch.Tensor]]
PatchGrids = Callable[[torch.nn.Module, torch.Tensor, list[int]], list[torch.Tensor]]


@dataclass(frozen=True)
class DenseTokens:
    """How a model yields patch-token grids (segmentation).

    grids(model, x, layers): `layers` sorted, unique, each in 0..depth-1; returns one
    (B, D, h, w) grid per layer in that order, patch tokens only (no class/register tokens).
    """

    grids: PatchGrids
    depth: int


class FrozenBackbone(Backbone):
    precisions = ("fp32", "bf16")

    def __init__(self, name: str, model: torch.nn.Module, features: Features,
                 contract: InputContract, weights: WeightsInfo, architecture: dict[str, Any],
                 load_report: LoadReport | None = None, dense: DenseTokens | None = None) -> None:
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.features = features
        self.contract = contract
        self.weights = weights
        self.load_report = load_report
        self.dense = dense
        self._architecture = dict(architecture)
        # derived copies by precision (set_precision("bf16")), held in a dict, not as module
        # attributes: they are not extra encoder parameters (parameter_count and submission
        # validation count the fp32 model, the one whose weights are hashed)
        self._copies: dict[str, torch.nn.Module] = {}
        self._runtime_request = "eager"
        # compiled forward functions by (precision, function, layers): one graph each
        self._compiled: dict[tuple, CompiledForward] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "FrozenBackbone":
        self.model.to(device)
        for copy in self._copies.values():
            copy.to(device)
        self._compiled.clear()  # graphs are specialised to the device they were traced on
        return self

    @property
    def runtime(self) -> str:
        return resolve_runtime(self._runtime_request, device=self.device,
                               precision=self.precision, image_side=min(self.contract.image_size))

    def set_runtime(self, requested: str) -> None:
        self._runtime_request = check_runtime(requested)
        self.runtime  # noqa: B018  (resolves now: a missing compiler fails at build time)

    def _run(self, key: tuple, fn: Callable[[torch.nn.Module, torch.Tensor], Any],
             x: torch.Tensor) -> Any:
        """`fn(module, x)` on the module of this precision, eager or through its compiled
        graph (brainbench.runtime), built on first use."""
        module = self._module
        if self.runtime == "eager":
            return fn(module, x)
        slot = (self.precision, *key)
        if slot not in self._compiled:
            self._compiled[slot] = CompiledForward(lambda batch: fn(module, batch))
        return self._compiled[slot](x)

    def set_precision(self, precision: str) -> None:
        """bf16 runs a copy of the model with its Linear/Conv weights already in bf16, under
        autocast: what autocast computes, without re-casting the weights on every call."""
        super().set_precision(precision)
        if self.precision == "bf16" and "bf16" not in self._copies:
            self._copies["bf16"] = bf16_matmul_copy(self.model)

    def share_precision(self, other: "FrozenBackbone") -> None:
        """Run at `other`'s precision and runtime, sharing its bf16 copy when both wrap the
        same model (compiled graphs are not shared: the forward function differs)."""
        if other.model is self.model:
            self._copies = dict(other._copies)
        self.set_precision(other.precision)
        self.set_runtime(other._runtime_request)

    @property
    def _module(self) -> torch.nn.Module:
        """The module a forward pass runs: the fp32 model, or its bf16-matmul copy."""
        return self._copies.get(self.precision, self.model)

    def _input(self, batch: Any, what: str) -> torch.Tensor:
        """The batch checked against the contract, as float32 on the model's device."""
        expected = (self.contract.in_channels, *self.contract.image_size)
        if not isinstance(batch, torch.Tensor):
            raise BenchError(
                f"{self.name}.{what} expects a torch.Tensor, got {type(batch).__name__}")
        if batch.ndim != 2 + len(self.contract.image_size) or tuple(batch.shape[1:]) != expected:
            raise BenchError(
                f"{self.name}.{what} expects a batch shaped (B, {', '.join(map(str, expected))}), "
                f"got {tuple(batch.shape)}")
        if not batch.is_floating_point():
            raise BenchError(f"{self.name}.{what} expects floating-point input, got {batch.dtype}")
        self.model.eval()
        if type(batch) is not torch.Tensor:
            # a tensor subclass (MONAI's MetaTensor) runs Python around every op of the
            # forward pass, returns itself as features and makes a compiled graph recompile
            batch = batch.as_subclass(torch.Tensor)
        return batch.to(device=self.device, dtype=torch.float32)

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._input(batch, "embed")
        with torch.inference_mode(), autocast(self.precision, x.device.type):
            out = self._run(("features",), self.features, x)
        # clone outside inference mode: callers may train heads on these tensors
        return {name: value.float().clone() for name, value in out.items()}

    def num_patch_layers(self) -> int:
        if self.dense is None:
            return super().num_patch_layers()  # NotImplementedError: segmentation says why
        return self.dense.depth

    def patch_tokens(self, batch: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """(B, D, h, w) patch grids of blocks `layers` (0-based), in the order asked.

        Each block is computed once however often it is asked for; frozen, float32.
        """
        if self.dense is None:
            return super().patch_tokens(batch, layers)
        wanted = self._layers(layers)
        x = self._input(batch, "patch_tokens")
        unique = sorted(set(wanted))
        with torch.inference_mode(), autocast(self.precision, x.device.type):
            grids = list(self._run(("grids", *unique), partial(self._grids, layers=unique), x))
        if len(grids) != len(unique) or any(
                g.ndim != 4 or g.shape[0] != x.shape[0] for g in grids):
            raise BenchError(
                f"{self.name}.patch_tokens: the model returned "
                f"{[tuple(g.shape) for g in grids]} for layers {unique}; expected one "
                f"({x.shape[0]}, D, h, w) grid per layer")
        by_layer = dict(zip(unique, grids))
        # clone outside inference mode: heads train on these tensors
        return [by_layer[i].float().clone() for i in wanted]

    def _grids(self, module: torch.nn.Module, x: torch.Tensor, layers: list[int]) -> list:
        return list(self.dense.grids(module, x, layers))

    def _layers(self, layers: Sequence[int]) -> list[int]:
        depth = self.dense.depth
        valid = f"block indices in 0..{depth - 1} ({depth} blocks)"
        try:
            wanted = [operator.index(i) for i in layers]
        except TypeError:
            raise BenchError(f"{self.name}.patch_tokens: layers {layers!r} must be {valid}"
                             ) from None
        bad = [i for i in wanted if not 0 <= i < depth]
        if not wanted or bad:
            raise BenchError(f"{self.name}.patch_tokens: layers {list(wanted)} must be a "
                             f"non-empty list of {valid}"
                             + (f"; out of range: {bad}" if bad else ""))
        return wanted

    def architecture(self) -> dict[str, Any]:
        return dict(self._architecture)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cls_and_patch_mean(tokens: torch.Tensor, num_prefix: int) -> dict[str, torch.Tensor]:
    """Final-norm tokens (B, N, D) -> first token and the mean of the patch tokens."""
    return {"cls": tokens[:, 0], "patch_mean": tokens[:, num_prefix:].mean(dim=1)}


# ----------------------------------------------------------------------- patch-token grids


def timm_patch_grids(model: torch.nn.Module, x: torch.Tensor, layers: list[int]
                     ) -> list[torch.Tensor]:
    """timm ViT blocks through the final norm, prefix (class, register) tokens removed, as the
    DINOv2/v3 segmentation protocols read them; the last block's grid is the patch part of
    `forward_features`."""
    return model.forward_intermediates(x, indices=layers, norm=True, output_fmt="NCHW",
                                       intermediates_only=True, stop_early=True)


def timm_dense(model: torch.nn.Module) -> DenseTokens | None:
    """Patch grids for a timm model whose blocks all give one same-shaped token grid (plain
    ViTs: DINOv2/v3, DeiT, EVA, ...); None for hierarchical ones (ResNet, Swin, ConvNeXt),
    whose stages differ in resolution and width, which the segmentation heads cannot combine.
    """
    method = getattr(model, "forward_intermediates", None)
    info = getattr(model, "feature_info", None)
    if method is None or not isinstance(info, list) or not info:
        return None
    try:
        shapes = {(d["num_chs"], d["reduction"]) for d in info}
        params = inspect.signature(method).parameters
    except (TypeError, KeyError, ValueError):
        return None
    needed = {"indices", "norm", "output_fmt", "intermediates_only", "stop_early"}
    if len(shapes) != 1 or not needed <= set(params):
        return None
    return DenseTokens(timm_patch_grids, len(info))


def open_clip_patch_grids(tower: torch.nn.Module, x: torch.Tensor, layers: list[int]
                          ) -> list[torch.Tensor]:
    """open_clip VisionTransformer blocks through ``ln_post`` (the norm its pooled and token
    outputs get), the class token removed."""
    out = tower.forward_intermediates(x, indices=layers, stop_early=True,
                                      normalize_intermediates=True, intermediates_only=True,
                                      output_fmt="NCHW")
    return out["image_intermediates"]


def open_clip_dense(tower: torch.nn.Module) -> DenseTokens | None:
    """Patch grids for an open_clip ViT image tower whose token outputs go through ``ln_post``
    (class-token or mean pooling); None for attention-pooled towers (CoCa), towers that norm
    only the pooled vector, and non-ViT towers (ModifiedResNet, timm trunks)."""
    from open_clip.transformer import VisionTransformer

    if (not isinstance(tower, VisionTransformer) or tower.attn_pool is not None
            or tower.final_ln_after_pool):
        return None
    return DenseTokens(open_clip_patch_grids, len(tower.transformer.resblocks))
