"""Frozen features, extracted once: content-addressed on-disk caches and the one extractor.

The key covers everything that changes features: backbone name and architecture, weights
sha256, precision (only when not fp32, so fp32 keys are those of the first release), input
contract and preprocessing version, the image file's sha256, and a schema version. Entries
hold per-slice tokens (S, D) so aggregation can change without re-extraction. Writes go to a
temporary file that is renamed into place, so an interrupted run never leaves a partial
entry. Patch-token grids (segmentation) go through the same cache and the same encoding loop
(`encode_volumes`), keyed also by slice indices and layer.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from brainbench.backbone import Backbone
from brainbench.errors import BenchError
from brainbench.preprocess import (
    image_sha256,
    load_volume,
    preprocessing_identity,
    volume_to_input,
)
from brainbench.progress import progress_bar
from brainbench.splits import digest

log = logging.getLogger("brainbench")

FEATURE_SCHEMA = 1
TOKEN_SCHEMA = 1  # patch-token entries
TOKEN_DTYPE = np.float16
FEATURE_DTYPE = np.float32  # what `extract_features` writes, so all a valid entry may hold

Tokens = dict[str, np.ndarray]  # token name -> (n_items, feature_dim) float32


def _entry_problem(tokens: Tokens, contract: Any) -> str | None:
    """Why a cached entry does not fit the backbone's contract (None: it fits)."""
    expected = set(contract.tokens)
    if set(tokens) != expected:
        return f"holds tokens {sorted(tokens)}, the contract declares {sorted(expected)}"
    items = set()
    for name, value in tokens.items():
        if value.ndim != 2 or value.shape[1] != contract.feature_dim or value.shape[0] < 1:
            return (f"holds {name} of shape {value.shape}, expected (n, "
                    f"{contract.feature_dim})")
        if value.dtype != FEATURE_DTYPE:  # e.g. float64 beyond float32 range, or float16
            return (f"holds {name} of dtype {value.dtype}, expected "
                    f"{np.dtype(FEATURE_DTYPE).name} (what the cache writes)")
        if not np.isfinite(value).all():
            return f"holds non-finite values in {name}"
        items.add(value.shape[0])
    if len(items) > 1:
        return f"holds tokens with different item counts {sorted(items)}"
    return None


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

    def load(self, key: str, contract: Any = None) -> Tokens | None:
        """The entry, or None (a miss) when it is absent or damaged. With the backbone's
        ``contract`` a hit is also validated (token names, 2-D (n, feature_dim) arrays of the
        dtype the cache writes (`FEATURE_DTYPE`, float32), one item count, finite values): a
        bad entry is a miss, recomputed and rewritten atomically, with a logged note naming
        the file."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                tokens = {name: archive[name] for name in archive.files}
        except Exception as exc:  # numpy/zipfile raise many types for a damaged entry
            log.warning("feature cache entry %s is unreadable (%s: %s); recomputing it",
                        path, type(exc).__name__, exc)
            return None
        problem = _entry_problem(tokens, contract) if contract is not None else None
        if problem:
            log.warning("feature cache entry %s %s; treating it as a miss and recomputing it",
                        path, problem)
            return None
        return tokens

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


def default_workers(device: str | torch.device = "cpu") -> int:
    """Decode worker processes for a model on `device`: for a GPU, which encodes a volume in
    tens of ms while decoding one takes ~0.3-0.5 core-s, one per core beyond the one that
    feeds it (at most 16); for a CPU model 0 (the in-process thread), because there the
    forward pass owns the cores, decoding is < 10% of the work, and a worker process slowed
    the forward pass by 15-40% on the 2-core machine (BENCHMARKS.md "Data path")."""
    if torch.device(device).type != "cuda":
        return 0
    from brainbench.device import available_cores

    return available_cores(cap=17) - 1  # every core but the one feeding the GPU, at most 16


def check_workers(workers: object) -> int:
    """A worker count: an int >= 0 (0 = decode in this process), else a BenchError."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise BenchError(f"workers must be an integer >= 0 (0 = decode in this process), "
                         f"got {workers!r}")
    return workers


class _Volumes(torch.utils.data.Dataset):
    """Volume i of `todo` read whole and preprocessed to the contract (``decode_only``: read
    only, as a float32 tensor with its axes reversed, for preprocessing on the model's device:
    nibabel's Fortran-ordered voxels are then one contiguous block to pin and copy, and the
    device, not a decode worker, makes the C-order copy); a bad file comes back as its
    BenchError (raised by the consumer, in order, with its own message)."""

    def __init__(self, todo: Sequence[tuple[Path, str]], contract: Any,
                 decode_only: bool = False) -> None:
        self.todo = list(todo)
        self.contract = contract
        self.decode_only = decode_only

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | Exception]:
        path, key = self.todo[index]
        try:
            volume = load_volume(path)
            if self.decode_only:  # axes reversed: nibabel's Fortran order as a C-order block
                return key, torch.from_numpy(np.asarray(volume, dtype=np.float32).T)
            return key, volume_to_input(volume, self.contract, contiguous=False)  # batched
        except Exception as exc:  # handed to the consumer, raised there
            return key, exc


def _on_device(decoded: Iterator[tuple[str, torch.Tensor | BaseException]], contract: Any,
               device: str | torch.device) -> Iterator[tuple[str, torch.Tensor | BaseException]]:
    """z-score and resize of decoded volumes on the model's device (``PREPROCESS=device``)."""
    try:
        for key, item in decoded:
            if isinstance(item, BaseException):
                yield key, item
                continue
            try:
                # the decode workers reversed the axes (`_Volumes`): the C-order copy they
                # used to make on the CPU is made here, on the device
                on_device = item.to(device, non_blocking=True).permute(2, 1, 0).contiguous()
                prepared = volume_to_input(on_device, contract,
                                           contiguous=False)  # batched by torch.cat
            except Exception as exc:  # raised by the consumer with the others
                prepared = exc
            yield key, prepared
    finally:
        close = getattr(decoded, "close", None)
        if close is not None:
            close()  # stops the decoding thread


def _threaded(volumes: _Volumes, lookahead: int
              ) -> Iterator[tuple[str, torch.Tensor | BaseException]]:
    """In-process decoding (workers=0) in a background thread while the backbone runs."""
    out: queue.Queue = queue.Queue(maxsize=lookahead)
    stop = threading.Event()

    def work() -> None:
        for index in range(len(volumes)):
            if stop.is_set():
                return
            try:
                item = volumes[index]
            except BaseException as exc:  # handed to the main thread, raised there
                item = (volumes.todo[index][1], exc)
            out.put(item)
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


def _prepared(backbone: Backbone, todo: Sequence[tuple[Path, str]], lookahead: int,
              workers: int | None = None) -> Iterator[tuple[str, torch.Tensor | BaseException]]:
    """Volumes decoded and preprocessed ahead of the forward pass, in file order: by
    `workers` DataLoader processes (None: `default_workers`), or a background thread for 0.
    Whole-volume reads (slice-wise gzip reads are quadratic, nibabel issue 1058). With the
    backbone's ``preprocess_on == "device"`` the workers only decode and z-score and resize
    run on the model's device. The worker processes start here, before any progress-bar
    thread exists."""
    on_device = getattr(backbone, "preprocess_on", "workers") == "device"
    device = getattr(backbone, "device", None) or "cpu"
    volumes = _Volumes(todo, backbone.contract, decode_only=on_device)
    if workers is None:
        workers = default_workers(device)
    workers = min(check_workers(workers), len(volumes))
    if workers == 0:
        decoded = _threaded(volumes, lookahead)
    else:
        decoded = iter(torch.utils.data.DataLoader(
            volumes, batch_size=None, shuffle=False, num_workers=workers,
            prefetch_factor=max(1, -(-lookahead // workers)),
            pin_memory=on_device and torch.device(device).type == "cuda"))
    return _on_device(decoded, backbone.contract, device) if on_device else decoded


def _on_cuda(backbone: Backbone) -> bool:
    device = getattr(backbone, "device", None)
    return device is not None and torch.device(device).type == "cuda"


@dataclass(frozen=True)
class EncodeJob:
    """One volume to encode: its file, which items (slices) of its input to keep (None: all),
    and a name the finished outputs are handed back under."""

    path: Path
    name: str
    slices: tuple[int, ...] | None = None


Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _where(backbone: Backbone) -> str:
    """How messages name a backbone: a Python-file backbone by its file."""
    return getattr(backbone, "where", None) or f"backbone {backbone.name}"


def _output_problem(outputs: Any, n: int) -> str | None:
    """Why a forward call's outputs are not named (n, ...) tensors (None: they are)."""
    if not isinstance(outputs, dict):
        return (f"returned {type(outputs).__name__} for a batch of {n} inputs; expected a dict "
                f"{{token name: torch.Tensor ({n}, feature_dim)}}")
    for key, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            return (f"returned {key!r} as {type(value).__name__}; expected a torch.Tensor with "
                    f"one row per input")
        if value.ndim < 1 or value.shape[0] != n:
            return (f"returned {key!r} of shape {tuple(value.shape)} for a batch of {n} "
                    f"inputs; expected {n} rows, one per input")
    return None


def effective_batch(backbone: Backbone, batch_size: int) -> int:
    """Items per forward call: the profile's batch, capped by the backbone's ``max_batch``."""
    cap = getattr(backbone, "max_batch", None)
    return min(batch_size, cap) if cap else batch_size


def encode_volumes(backbone: Backbone, jobs: Sequence[EncodeJob], forward: Forward, *,
                   batch_size: int, stats: ExtractionStats,
                   on_volume: Callable[[EncodeJob, dict[str, np.ndarray]], None],
                   dtype: Any = FEATURE_DTYPE, progress: bool = True, desc: str = "features",
                   lookahead: int = 4, workers: int | None = None,
                   what: str = "embed()") -> None:
    """The one encoding loop: volumes are read and preprocessed by `workers` processes
    (None: `default_workers`; 0: a background thread) while the backbone runs, their
    items (slices, or whole volumes for 3d backbones) packed into forward calls of exactly
    `batch_size` items (the last may be smaller; capped by the backbone's ``max_batch``), and
    each volume's outputs concatenated and handed to `on_volume` once all of its items are
    encoded. `forward` maps a batch to named (items, ...) tensors (anything else stops the run
    with a BenchError naming the backbone and `what` it called, before any entry of that
    batch is written). For a CUDA model each batch is assembled in pinned memory, where the
    host-to-device copy reads it."""
    from brainbench.device import tune_host_allocator

    tune_host_allocator()  # activations reused from the heap, not faulted in on every call
    batch_size = effective_batch(backbone, batch_size)
    pinned = _on_cuda(backbone)
    by_name = {job.name: job for job in jobs}
    pending: list[tuple[str, torch.Tensor]] = []  # (job name, items) waiting for a forward pass
    partial: dict[str, list[dict[str, np.ndarray]]] = {}
    remaining: dict[str, int] = {}

    def run_batch(items: list[tuple[str, torch.Tensor]]) -> None:
        chunks = [tensor for _, tensor in items]
        if pinned and not chunks[0].is_cuda:  # preprocessed on the GPU: already there
            shape = (sum(c.shape[0] for c in chunks), *chunks[0].shape[1:])
            batch = torch.cat(chunks, out=torch.empty(shape, dtype=chunks[0].dtype,
                                                      pin_memory=True))
        else:
            batch = torch.cat(chunks)
        tick = time.perf_counter()
        outputs = forward(batch)
        stats.forward_seconds += time.perf_counter() - tick
        stats.forward_calls += 1
        stats.items_encoded += batch.shape[0]
        problem = _output_problem(outputs, batch.shape[0])
        if problem:
            raise BenchError(f"{_where(backbone)}: {what} {problem}")
        offset = 0
        for name, tensor in items:
            n = tensor.shape[0]
            partial[name].append({key: value[offset:offset + n].detach().float().cpu().numpy()
                                  .astype(dtype, copy=False) for key, value in outputs.items()})
            offset += n
            remaining[name] -= n
            if remaining[name] == 0:
                parts = partial.pop(name)
                on_volume(by_name[name], {key: np.concatenate([p[key] for p in parts])
                                          for key in parts[0]})
                stats.computed += 1
                bar.update(1)

    prepared = _prepared(backbone, [(job.path, job.name) for job in jobs], lookahead, workers)
    bar = progress_bar(total=len(jobs), desc=desc, unit="vol", enabled=progress)
    try:
        buffered = 0
        for name, item in prepared:
            if isinstance(item, BaseException):
                raise item
            slices = by_name[name].slices
            if slices is not None:
                item = item[list(slices)]
            partial[name], remaining[name] = [], item.shape[0]
            # split a volume across batches so every forward call has exactly batch_size items
            for start in range(0, item.shape[0], batch_size):
                pending.append((name, item[start:start + batch_size]))
            buffered += item.shape[0]
            while buffered >= batch_size:
                batch, taken = [], 0
                while taken < batch_size:
                    name_, chunk = pending.pop(0)
                    need = batch_size - taken
                    if chunk.shape[0] > need:
                        pending.insert(0, (name_, chunk[need:]))
                        chunk = chunk[:need]
                    batch.append((name_, chunk))
                    taken += chunk.shape[0]
                buffered -= batch_size
                run_batch(batch)
        if pending:
            run_batch(pending)
            pending.clear()
    finally:
        bar.close()
        del prepared  # stops decode workers (or the thread) on an error as well


def _image_keys(paths: Sequence[Path], key: Callable[[Path, str], Any],
                progress: bool = True) -> dict[Path, Any]:
    """Each distinct file's cache key(s), after checking it exists (hashing each file once).
    Reading every byte of a large cohort takes a while before any volume is encoded: a bar
    appears on a terminal once it has run for 2 s."""
    keys: dict[Path, Any] = {}
    unique = list(dict.fromkeys(Path(p) for p in paths))
    for path in progress_bar(unique, desc="file hashes", unit="file", delay=2.0,
                             enabled=progress):
        if not path.is_file():
            raise BenchError(f"image file not found: {path}")
        keys[path] = key(path, image_sha256(path))
    return keys


def extract_features(backbone: Backbone, paths: Sequence[Path], cache: FeatureCache, *,
                     batch_size: int = 16, progress: bool = True, desc: str = "features",
                     workers: int | None = None
                     ) -> tuple[dict[Path, Tokens], ExtractionStats]:
    """Per-volume tokens for `paths`, computing only cache misses; `workers` decode processes
    (None: from the machine, 0: in this process) never change the features."""
    started = time.perf_counter()
    stats = ExtractionStats()
    keys = _image_keys(paths, lambda _path, sha: cache.key(backbone, sha), progress)
    results: dict[Path, Tokens] = {}
    todo: list[EncodeJob] = []
    copies: dict[str, list[Path]] = {}  # byte-identical files share a key: encode once
    # a warm run of a large cohort reads thousands of entries: a bar after 2 s
    for path, key in progress_bar(keys.items(), desc=f"{desc} (cache lookup)", unit="vol",
                                  delay=2.0, enabled=progress):
        hit = cache.load(key, backbone.contract)
        if hit is None:
            if key not in copies:
                todo.append(EncodeJob(path, key))
            copies.setdefault(key, []).append(path)
        else:
            results[path] = hit
    stats.volumes, stats.cached, stats.keys = len(keys), len(results), sorted(keys.values())

    def save(job: EncodeJob, tokens: dict[str, np.ndarray]) -> None:
        # entries hold FEATURE_DTYPE, the one dtype `FeatureCache.load` accepts (a no-op for
        # the encoding loop's float32; a control's `encode_file` may return another)
        tokens = {name: np.asarray(value).astype(FEATURE_DTYPE, copy=False)
                  for name, value in tokens.items()}
        _check_tokens(backbone, job.path, tokens)
        cache.save(job.name, tokens)
        results.update({copy: tokens for copy in copies[job.name]})

    if getattr(backbone, "reads_files", False):  # a control that reads each file's truth
        for job in todo:
            save(job, backbone.encode_file(job.path))
            stats.computed += 1
    else:
        encode_volumes(backbone, todo, backbone.embed, batch_size=batch_size, stats=stats,
                       on_volume=save, progress=progress, desc=desc, workers=workers)
    stats.wall_seconds = time.perf_counter() - started
    return results, stats


# ------------------------------------------------------------------------------ patch tokens


@dataclass(frozen=True)
class TokenRequest:
    """The slices (indices into the contract's slice grid) of one image that are needed."""

    path: Path
    slices: tuple[int, ...]


class PatchTokenCache:
    """(S, D, h, w) float16 patch grids of one image's slices at one layer.

    Patch grids are ~50x larger than the CLS/mean vectors, so only the slices that are used are
    encoded and kept. Each layer is its own entry, so heads sharing a layer share its tokens.
    """

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

    def load_sample(self, keys: "PatchKeys", requests: Sequence[TokenRequest],
                    layers: Sequence[int]) -> list[np.ndarray]:
        """One sample's grids: per layer, its modalities concatenated on the channel axis
        -> [(S, M * D, h, w) float16 per layer]."""
        return [np.concatenate([self.load(keys[r][layer]) for r in requests], axis=1)
                for layer in layers]


PatchKeys = dict[TokenRequest, dict[int, str]]  # request -> layer -> cache key


def extract_patch_tokens(backbone: Backbone, requests: Sequence[TokenRequest],
                         layers: Sequence[int], cache: PatchTokenCache, *, batch_size: int = 16,
                         progress: bool = True, desc: str = "patch tokens",
                         workers: int | None = None) -> tuple[PatchKeys, ExtractionStats]:
    """Encode the patch grids the cache lacks (every requested layer in one pass per batch)."""
    started = time.perf_counter()
    stats = ExtractionStats()
    layers = tuple(layers)
    hashes = _image_keys([r.path for r in requests], lambda _path, sha: sha, progress)
    keys: PatchKeys = {r: {layer: cache.key(backbone, hashes[Path(r.path)], r.slices, layer)
                           for layer in layers} for r in dict.fromkeys(requests)}
    todo = [r for r, by_layer in keys.items() if not all(map(cache.has, by_layer.values()))]
    stats.volumes, stats.cached = len(keys), len(keys) - len(todo)
    stats.keys = sorted(k for by_layer in keys.values() for k in by_layer.values())
    jobs = [EncodeJob(r.path, str(i), r.slices) for i, r in enumerate(todo)]

    def forward(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        grids = backbone.patch_tokens(batch, layers)
        if not isinstance(grids, (list, tuple)) or len(grids) != len(layers):
            got = (f"{len(grids)} item(s)" if isinstance(grids, (list, tuple))
                   else type(grids).__name__)
            raise BenchError(f"{_where(backbone)}: patch_tokens(batch, {list(layers)}) returned "
                             f"{got}; expected a list of one (batch, dim, h, w) tensor per "
                             "layer asked for")
        return {str(layer): grid for layer, grid in zip(layers, grids)}

    def save(job: EncodeJob, grids: dict[str, np.ndarray]) -> None:
        request = todo[int(job.name)]
        for layer in layers:
            tokens = grids[str(layer)]
            _check_patch_tokens(backbone, request, layer, tokens)
            cache.save(keys[request][layer], tokens)

    encode_volumes(backbone, jobs, forward, batch_size=batch_size, stats=stats, on_volume=save,
                   dtype=TOKEN_DTYPE, progress=progress, desc=desc, lookahead=2,
                   workers=workers, what="patch_tokens()")
    stats.wall_seconds = time.perf_counter() - started
    return keys, stats


def _check_patch_tokens(backbone: Backbone, request: TokenRequest, layer: int,
                        tokens: np.ndarray) -> None:
    """Wrong shapes or non-finite values (also float16 overflow) never reach the cache."""
    if tokens.ndim != 4 or tokens.shape[0] != len(request.slices):
        raise BenchError(f"{_where(backbone)}: patch_tokens() returned shape {tokens.shape} "
                         f"at layer {layer} for {len(request.slices)} slices of {request.path}; "
                         "expected (slices, dim, h, w)")
    if not np.isfinite(tokens).all():
        raise BenchError(f"{_where(backbone)} returned non-finite patch tokens (or values "
                         f"beyond float16 range) at layer {layer} for {request.path}")


def _check_tokens(backbone: Backbone, path: Path, tokens: Tokens) -> None:
    """A backbone that returns the wrong shape or non-finite values must not reach the cache."""
    expected = set(backbone.contract.tokens)
    if set(tokens) != expected:
        raise BenchError(f"{_where(backbone)} returned tokens {sorted(tokens)} for {path}, "
                         f"but its contract declares {sorted(expected)}")
    for name, value in tokens.items():
        if value.ndim != 2 or value.shape[1] != backbone.contract.feature_dim:
            raise BenchError(f"{_where(backbone)} returned {name} of shape {value.shape} "
                             f"for {path}; the contract declares dim {backbone.contract.feature_dim}")
        if not np.isfinite(value).all():
            raise BenchError(f"{_where(backbone)} returned non-finite {name} for {path}")
