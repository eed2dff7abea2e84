"""Patch tokens of the slices a task uses, cached as float16 per (image, slices, layer).

Patch grids are ~50x larger than the CLS/mean vectors of brainbench.features, so only the
slices that are used are encoded and kept: every slice of a test volume (inference covers
the whole volume), and the chosen training slices of each training subject. Entries go
through FeatureCache (content-addressed, atomic writes); the key covers the backbone
identity, preprocessing, the image file's sha256, the slice indices and the layer, so a
warm rerun does no forward pass. Each layer is its own entry, so heads sharing a layer
(linear and multiscale both read the last block) share its tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from brainbench.backbone import Backbone
from brainbench.errors import BenchError
from brainbench.features import ExtractionStats, FeatureCache, _prepared
from brainbench.preprocess import image_sha256, preprocessing_identity
from brainbench.splits import digest

TOKEN_SCHEMA = 1
TOKEN_DTYPE = np.float16


@dataclass(frozen=True)
class TokenRequest:
    """The slices (indices into the contract's slice grid) of one image that are needed."""

    path: Path
    slices: tuple[int, ...]


class PatchTokenCache:
    """(S, D, h, w) float16 patch grids of one image's slices at one layer."""

    def __init__(self, root: Path) -> None:
        self.entries = FeatureCache(root)

    def key(self, backbone: Backbone, image_sha256: str, slices: Sequence[int],
            layer: int) -> str:
        # the contract's vector-token list (cls, patch_mean, extras a protocol asks for) does
        # not change patch grids; leaving it out lets every protocol share these entries
        contract = replace(backbone.contract, tokens=())
        identity = {**backbone.cache_identity(), "contract": contract.as_dict()}
        return digest({"schema": TOKEN_SCHEMA, "kind": "patch_tokens",
                       "dtype": np.dtype(TOKEN_DTYPE).name, "backbone": identity,
                       "preprocessing": preprocessing_identity(contract),
                       "image_sha256": image_sha256, "slices": list(slices), "layer": layer})

    def has(self, key: str) -> bool:
        return self.entries.path(key).exists()

    def load(self, key: str) -> np.ndarray:
        entry = self.entries.load(key)
        if entry is None or "tokens" not in entry:
            raise BenchError(f"patch-token cache entry {self.entries.path(key)} is missing or "
                             "damaged; rerun to re-extract it")
        return entry["tokens"]

    def save(self, key: str, tokens: np.ndarray) -> None:
        self.entries.save(key, {"tokens": tokens.astype(TOKEN_DTYPE)})

    def nbytes(self, key: str) -> int:
        return self.entries.path(key).stat().st_size


Keys = dict[TokenRequest, dict[int, str]]  # request -> layer -> cache key


def ensure_tokens(backbone: Backbone, requests: Sequence[TokenRequest], layers: Sequence[int],
                  cache: PatchTokenCache, *, batch_size: int = 16, progress: bool = True,
                  desc: str = "patch tokens") -> tuple[Keys, ExtractionStats]:
    """Encode what the cache lacks (all missing layers in one pass per slice batch)."""
    started = time.perf_counter()
    stats = ExtractionStats()
    hashes: dict[Path, str] = {}
    keys: Keys = {}
    for request in dict.fromkeys(requests):
        if not request.path.is_file():
            raise BenchError(f"image file not found: {request.path}")
        if request.path not in hashes:
            hashes[request.path] = image_sha256(request.path)
        keys[request] = {layer: cache.key(backbone, hashes[request.path], request.slices, layer)
                         for layer in layers}
    todo = [r for r, by_layer in keys.items() if not all(map(cache.has, by_layer.values()))]
    stats.volumes, stats.cached = len(keys), len(keys) - len(todo)
    stats.keys = sorted(k for by_layer in keys.values() for k in by_layer.values())
    by_name = {str(i): r for i, r in enumerate(todo)}
    bar = tqdm(total=len(todo), desc=desc, unit="vol", leave=False,
               disable=None if progress and todo else True)
    try:
        for name, item in _prepared(backbone, [(r.path, str(i)) for i, r in enumerate(todo)],
                                    lookahead=2):
            if isinstance(item, BaseException):
                raise item
            request = by_name[name]
            missing = [layer for layer, key in keys[request].items() if not cache.has(key)]
            slices = item[list(request.slices)]
            parts: list[list[np.ndarray]] = [[] for _ in missing]
            for start in range(0, slices.shape[0], batch_size):
                chunk = slices[start:start + batch_size]
                tick = time.perf_counter()
                grids = backbone.patch_tokens(chunk, missing)
                stats.forward_seconds += time.perf_counter() - tick
                stats.forward_calls += 1
                stats.items_encoded += chunk.shape[0]
                for store, grid in zip(parts, grids):
                    store.append(grid.detach().cpu().numpy().astype(TOKEN_DTYPE))
            for layer, pieces in zip(missing, parts):
                tokens = np.concatenate(pieces)
                _check(backbone, request, layer, tokens)
                cache.save(keys[request][layer], tokens)
            stats.computed += 1
            bar.update(1)
    finally:
        bar.close()
    stats.wall_seconds = time.perf_counter() - started
    return keys, stats


def _check(backbone: Backbone, request: TokenRequest, layer: int, tokens: np.ndarray) -> None:
    """Wrong shapes or non-finite values (also float16 overflow) never reach the cache."""
    if tokens.ndim != 4 or tokens.shape[0] != len(request.slices):
        raise BenchError(f"backbone {backbone.name}.patch_tokens returned shape {tokens.shape} "
                         f"at layer {layer} for {len(request.slices)} slices of {request.path}; "
                         "expected (slices, dim, h, w)")
    if not np.isfinite(tokens).all():
        raise BenchError(f"backbone {backbone.name} returned non-finite patch tokens (or values "
                         f"beyond float16 range) at layer {layer} for {request.path}")


def load_sample(cache: PatchTokenCache, keys: Keys, requests: Sequence[TokenRequest],
                layers: Sequence[int]) -> list[np.ndarray]:
    """One sample's grids: per layer, its modalities concatenated on the channel axis
    -> [(S, M * D, h, w) float16 per layer]."""
    return [np.concatenate([cache.load(keys[r][layer]) for r in requests], axis=1)
            for layer in layers]
