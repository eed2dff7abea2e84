"""Small real objects for tests: a tiny deterministic backbone and NIfTI writers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo


class TinyBackbone(Backbone):
    """A fixed random conv encoder: cheap, deterministic, and counts its forward calls."""

    name = "tiny"

    def __init__(self, dim: int = 8, seed: int = 0, slices: int = 4, size: int = 16,
                 fail_after: int | None = None, bad_dim: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, dim, 4, stride=4)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
                p.requires_grad_(False)
        self.contract = InputContract("2d", 3, (size, size), slices, "robust_zscore",
                                      ("cls", "patch_mean"), dim)
        self.weights = WeightsInfo("pretrained", f"tiny seed {seed}", f"{seed:064d}")
        self.calls = 0
        self.fail_after = fail_after
        self.bad_dim = bad_dim

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash during extraction")
        with torch.inference_mode():
            grid = self.conv(batch).flatten(2)  # (B, D, P)
        cls = grid.amax(dim=2)
        if self.bad_dim:
            cls = cls[:, :-1]
        return {"cls": cls, "patch_mean": grid.mean(dim=2)}

    def architecture(self) -> dict:
        return {"model": "tiny-conv", "dim": self.contract.feature_dim}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.conv.parameters())


def cache_with_shared_phantoms(cache: Path, request) -> Path:
    """A fresh cache folder whose phantoms/ is one folder in pytest's cache, shared by the
    submission tests across runs (absent under -p no:cacheprovider: generated afresh)."""
    cache.mkdir(parents=True)
    pytest_cache = getattr(request.config, "cache", None)
    if pytest_cache is not None:
        shared = pytest_cache.mkdir("brainbench-submission-phantoms")
        (cache / "phantoms").symlink_to(shared, target_is_directory=True)
    return cache


def write_nifti(path: Path, data: np.ndarray, spacing: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([spacing] * 3 + [1.0])), str(path))
    return path


def random_brain(seed: int, shape=(24, 28, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (zz**2 + yy**2 + xx**2) < 0.8
    return np.where(inside, 500 + 100 * rng.standard_normal(shape), 0)
