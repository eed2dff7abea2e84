"""Frozen features, extracted once: a content-addressed on-disk cache and the extractor.

The key covers everything that changes features: backbone name and architecture, weights
sha256, input contract and preprocessing version, the image file's sha256, and a schema
version. Entries hold per-slice tokens (S, D) so aggregation can change without
re-extraction. Writes go to a temporary file that is renamed into place, so an interrupted
run never leaves a partial entry.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from brainbench.backbone import Backbone
from brainbench.errors import BenchError
from brainbench.preprocess import (
    image_sha256,
    load_volume,
    preprocessing_identity,
    volume_to_input,
)
from brainbench.splits import digest

FEATURE_SCHEMA = 1

Tokens = dict[str, np.ndarray]  # token name -> (n_items, feature_dim) float32


class FeatureCache:
    """Maps a cache key to the per-slice tokens of one volume."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def key(self, backbone: Backbone, image_sha256: str) -> str:
        return digest({
            "schema": FEATURE_SCHEMA,
            "backbone": backbone.cache_identity(),
            "preprocessing": preprocessing_identity(backbone.contract),
            "image_sha256": image_sha256,
        })

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str) -> Tokens | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path) as archive:
                return {name: archive[name] for name in archive.files}
        except Exception:  # a damaged entry is a miss; it is rewritten atomically
            return None

    def save(self, key: str, tokens: Tokens) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **tokens)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class ExtractionStats:
    volumes: int = 0
    cached: int = 0
    computed: int = 0
    forward_calls: int = 0
    items_encoded: int = 0  # slices (2d) or volumes (3d) through the backbone
    forward_seconds: float = 0.0
    wall_seconds: float = 0.0
    keys: list[str] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.items_encoded / self.wall_seconds if self.wall_seconds else 0.0

    def merge(self, other: "ExtractionStats") -> None:
        for name in ("volumes", "cached", "computed", "forward_calls", "items_encoded",
                     "forward_seconds", "wall_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.keys += other.keys


def _prepared(backbone: Backbone, todo: Sequence[tuple[Path, str]], lookahead: int
              ) -> Iterator[tuple[str, torch.Tensor | BaseException]]:
    """Load and preprocess volumes in a background thread while the backbone runs."""
    out: queue.Queue = queue.Queue(maxsize=lookahead)
    stop = threading.Event()

    def work() -> None:
        for path, key in todo:
            if stop.is_set():
                return
            try:
                item: torch.Tensor | BaseException = volume_to_input(load_volume(path),
                                                                     backbone.contract)
            except BaseException as exc:  # handed to the main thread, raised there
                item = exc
            out.put((key, item))
        out.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (entry := out.get()) is not None:
            yield entry
    finally:
        stop.set()
        while worker.is_alive():  # drain so the worker can finish
            try:
                out.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def extract_features(backbone: Backbone, paths: Sequence[Path], cache: FeatureCache, *,
                     batch_size: int = 16, progress: bool = True, desc: str = "features"
                     ) -> tuple[dict[Path, Tokens], ExtractionStats]:
    """Per-volume tokens for `paths`, computing only cache misses, in fixed-size batches
    (at most the backbone's `max_batch` items per forward call)."""
    started = time.perf_counter()
    cap = getattr(backbone, "max_batch", None)
    batch_size = min(batch_size, cap) if cap else batch_size
    stats = ExtractionStats()
    keys: dict[Path, str] = {}
    for path in dict.fromkeys(Path(p) for p in paths):
        if not path.is_file():
            raise BenchError(f"image file not found: {path}")
        keys[path] = cache.key(backbone, image_sha256(path))
    results: dict[Path, Tokens] = {}
    todo: list[tuple[Path, str]] = []
    copies: dict[str, list[Path]] = {}  # byte-identical files share a key: encode once
    for path, key in keys.items():
        hit = cache.load(key)
        if hit is None:
            if key not in copies:
                todo.append((path, key))
            copies.setdefault(key, []).append(path)
        else:
            results[path] = hit
    stats.volumes, stats.cached, stats.keys = len(keys), len(results), sorted(keys.values())
    by_key = {key: path for path, key in todo}

    pending: list[tuple[str, torch.Tensor]] = []  # (key, items) waiting for a forward pass
    partial: dict[str, list[dict[str, np.ndarray]]] = {}
    remaining: dict[str, int] = {}

    def run_batch(items: list[tuple[str, torch.Tensor]]) -> None:
        batch = torch.cat([tensor for _, tensor in items])
        tick = time.perf_counter()
        outputs = backbone.embed(batch)
        stats.forward_seconds += time.perf_counter() - tick
        stats.forward_calls += 1
        stats.items_encoded += batch.shape[0]
        offset = 0
        for key, tensor in items:
            n = tensor.shape[0]
            partial[key].append({name: value[offset:offset + n].float().numpy()
                                 for name, value in outputs.items()})
            offset += n
            remaining[key] -= n
            if remaining[key] == 0:
                parts = partial.pop(key)
                tokens = {name: np.concatenate([p[name] for p in parts]) for name in outputs}
                _check_tokens(backbone, by_key[key], tokens)
                cache.save(key, tokens)
                results.update({copy: tokens for copy in copies[key]})
                stats.computed += 1
                bar.update(1)

    bar = tqdm(total=len(todo), desc=desc, unit="vol", disable=None if progress and todo else True,
               leave=False)
    try:
        buffered = 0
        for key, item in _prepared(backbone, todo, lookahead=4):
            if isinstance(item, BaseException):
                raise item
            partial[key], remaining[key] = [], item.shape[0]
            # split a volume across batches so every forward call has exactly batch_size items
            for start in range(0, item.shape[0], batch_size):
                pending.append((key, item[start:start + batch_size]))
            buffered += item.shape[0]
            while buffered >= batch_size:
                batch, taken = [], 0
                while taken < batch_size:
                    key_, chunk = pending.pop(0)
                    need = batch_size - taken
                    if chunk.shape[0] > need:
                        pending.insert(0, (key_, chunk[need:]))
                        chunk = chunk[:need]
                    batch.append((key_, chunk))
                    taken += chunk.shape[0]
                buffered -= batch_size
                run_batch(batch)
        if pending:
            run_batch(pending)
            pending.clear()
    finally:
        bar.close()
    stats.wall_seconds = time.perf_counter() - started
    return results, stats


def _check_tokens(backbone: Backbone, path: Path, tokens: Tokens) -> None:
    """A backbone that returns the wrong shape or non-finite values must not reach the cache."""
    expected = set(backbone.contract.tokens)
    if set(tokens) != expected:
        raise BenchError(f"backbone {backbone.name} returned tokens {sorted(tokens)} for {path}, "
                         f"but its contract declares {sorted(expected)}")
    for name, value in tokens.items():
        if value.ndim != 2 or value.shape[1] != backbone.contract.feature_dim:
            raise BenchError(f"backbone {backbone.name} returned {name} of shape {value.shape} "
                             f"for {path}; the contract declares dim {backbone.contract.feature_dim}")
        if not np.isfinite(value).all():
            raise BenchError(f"backbone {backbone.name} returned non-finite {name} for {path}")
