"""One `Backbone` implementation for every baseline: a frozen module plus a feature function.

Each entry supplies `features(model, batch) -> {token: (B, dim)}`; this class checks the
batch against the contract, runs it under inference mode in float32 (no autocast, so
features never depend on it), and returns plain tensors.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo
from brainbench.errors import BenchError
from brainbench.weights import LoadReport

Features = Callable[[torch.nn.Module, torch.Tensor], dict[str, torch.Tensor]]


class FrozenBackbone(Backbone):
    def __init__(self, name: str, model: torch.nn.Module, features: Features,
                 contract: InputContract, weights: WeightsInfo, architecture: dict[str, Any],
                 load_report: LoadReport | None = None) -> None:
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.features = features
        self.contract = contract
        self.weights = weights
        self.load_report = load_report
        self._architecture = dict(architecture)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "FrozenBackbone":
        self.model.to(device)
        return self

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        expected = (self.contract.in_channels, *self.contract.image_size)
        if not isinstance(batch, torch.Tensor):
            raise BenchError(
                f"{self.name}.embed expects a torch.Tensor, got {type(batch).__name__}")
        if batch.ndim != 2 + len(self.contract.image_size) or tuple(batch.shape[1:]) != expected:
            raise BenchError(
                f"{self.name}.embed expects a batch shaped (B, {', '.join(map(str, expected))}), "
                f"got {tuple(batch.shape)}")
        if not batch.is_floating_point():
            raise BenchError(f"{self.name}.embed expects floating-point input, got {batch.dtype}")
        self.model.eval()
        device = self.device
        x = batch.to(device=device, dtype=torch.float32)
        with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=False):
            out = self.features(self.model, x)
        # clone outside inference mode: callers may train heads on these tensors
        return {name: value.float().clone() for name, value in out.items()}

    def architecture(self) -> dict[str, Any]:
        return dict(self._architecture)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cls_and_patch_mean(tokens: torch.Tensor, num_prefix: int) -> dict[str, torch.Tensor]:
    """Final-norm tokens (B, N, D) -> first token and the mean of the patch tokens."""
    return {"cls": tokens[:, 0], "patch_mean": tokens[:, num_prefix:].mean(dim=1)}
