"""`linear` and `multiscale` for the segmentation kind: trainable heads on frozen patch tokens.

The encoder is never part of them. Inputs are one (N, C_l, h, w) grid per layer the head reads
(`head_layers`), C_l = modalities x token dim: each modality is encoded alone by the frozen
backbone and the head combines them (no trained stem in front of the encoder). Targets are
(N, R, H, W) region masks. The names are part of stored cell ids and config hashes, so they
stay "linear" and "multiscale" (the registry keys a head name per task kind).

linear:     BatchNorm + 1x1 conv on the (concatenated) grids, logits upsampled bilinearly to
            the slice, as in the DINOv2 linear segmentation protocol.
multiscale: per-layer 1x1 projections of four intermediate layers, a 3x3 fusion conv, and
            x2 upsampling conv stages back to full resolution.

Training (fixed settings, no selection step) is `brainbench.segmentation.train.train_head`;
the segmentation evaluator drives the module directly through `build_module`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from brainbench.errors import BenchError
from brainbench.heads.base import HEADS, Head, Monitor, heads_for, register_head

__all__ = ["LinearSegmentationHead", "MultiscaleSegmentationHead", "SegmentationHead",
           "build_module", "head_layers", "segmentation_heads", "trainable_parameters"]

SELECTION = "fixed head settings, no selection step (the test split feeds no choice)"
#: params every segmentation head needs to build its module
MODULE_PARAMS = ("channels", "n_out", "out_size", "grid_size")


def segmentation_heads() -> tuple[str, ...]:
    return heads_for("segmentation")


def _head_class(name: str) -> type["SegmentationHead"]:
    if name not in HEADS or "segmentation" not in HEADS.get(name).kinds:
        raise BenchError(f"unknown segmentation head {name!r}; choose one of "
                         f"{list(segmentation_heads())}")
    return HEADS.get(name).head_class("segmentation")  # type: ignore[return-value]


def head_layers(name: str, depth: int) -> tuple[int, ...]:
    """Block indices a segmentation head reads from a `depth`-block backbone."""
    return _head_class(name).layers(depth)


def build_module(name: str, channels: Sequence[int], n_out: int, out_size: tuple[int, int],
                 grid_size: tuple[int, int], seed: int) -> Any:
    """A fresh head module, initialised from `seed` without touching the global RNG."""
    import torch

    cls = _head_class(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.module(channels, n_out, out_size, grid_size)


def trainable_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SegmentationHead(Head):
    """`Head` API over a segmentation module: fit = `train_head` with fixed settings,
    predict = per-region sigmoid probabilities (N, R, H, W) slice by slice.

    params: ``channels``, ``n_out``, ``out_size``, ``grid_size`` (the module) and any
    `TrainConfig` field (``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``threshold``).
    """

    kinds = ("segmentation",)

    def __init__(self, kind: str = "segmentation", *, seed: int,
                 params: Mapping[str, Any] | None = None,
                 target_transform: str | None = None) -> None:
        from brainbench.segmentation.train import TrainConfig

        super().__init__(kind, seed=seed, params=params, target_transform=target_transform)
        missing = [k for k in MODULE_PARAMS if k not in self.params]
        training = {k: v for k, v in self.params.items() if k not in MODULE_PARAMS}
        unknown = sorted(set(training) - set(TrainConfig.__dataclass_fields__))
        if missing or unknown:
            raise BenchError(f"segmentation head {self.head_name!r}: missing params {missing}, "
                             f"unknown params {unknown}; needs {list(MODULE_PARAMS)} and "
                             f"optionally {list(TrainConfig.__dataclass_fields__)}")
        self.config = TrainConfig(**training)
        self.module_ = build_module(self.head_name, *(self.params[k] for k in MODULE_PARAMS),
                                    seed=self.seed)

    # -- per-head hooks
    @classmethod
    def layers(cls, depth: int) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def module(cls, channels: Sequence[int], n_out: int, out_size: tuple[int, int],
               grid_size: tuple[int, int]) -> Any:
        raise NotImplementedError

    def fit(self, X: Sequence[np.ndarray], y: np.ndarray,
            monitor: Monitor | None = None) -> "SegmentationHead":
        """X: per layer (N, C, h, w) token grids; y: (N, R, H, W) bool region masks."""
        from brainbench.segmentation.train import train_head

        n_params = trainable_parameters(self.module_)  # before training freezes it
        info = train_head(self.module_, X, y, self.config, seed=self.seed)
        self._record_fit({**self.config.as_dict(), "head_params": n_params}, SELECTION,
                         info.n_slices)
        self.train_info_ = info
        self._report_once(monitor)
        return self

    def predict(self, X: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Per-region probabilities (N, R, H, W) for per-layer grids (N, C, h, w)."""
        import torch

        from brainbench.heads._torch import one_thread

        self.check_is_fitted()
        self.module_.eval()
        n = X[0].shape[0]
        chunks = []
        with torch.inference_mode(), one_thread():
            for start in range(0, n, batch_size):
                grids = [torch.from_numpy(np.asarray(layer[start:start + batch_size])).float()
                         for layer in X]
                chunks.append(torch.sigmoid(self.module_(grids)))
        return torch.cat(chunks).numpy()  # float32: whole volumes of probabilities


@register_head("linear")
class LinearSegmentationHead(SegmentationHead):
    @classmethod
    def layers(cls, depth: int) -> tuple[int, ...]:
        return (depth - 1,)  # the last block

    @classmethod
    def module(cls, channels: Sequence[int], n_out: int, out_size: tuple[int, int],
               grid_size: tuple[int, int]) -> Any:
        from brainbench.heads.nets import LinearSegmentationNet

        return LinearSegmentationNet(channels, n_out, out_size)


@register_head("multiscale")
class MultiscaleSegmentationHead(SegmentationHead):
    @classmethod
    def layers(cls, depth: int) -> tuple[int, ...]:
        """Four blocks spread evenly (2, 5, 8, 11 for a 12-block ViT-B)."""
        if depth < 4:
            return tuple(range(depth))
        return tuple(sorted({round(depth * q / 4) - 1 for q in (1, 2, 3, 4)}))

    @classmethod
    def module(cls, channels: Sequence[int], n_out: int, out_size: tuple[int, int],
               grid_size: tuple[int, int]) -> Any:
        from brainbench.heads.nets import MultiscaleSegmentationNet

        return MultiscaleSegmentationNet(channels, n_out, out_size, grid_size)
