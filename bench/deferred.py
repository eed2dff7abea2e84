"""Deferred backbones: a run whose cells are all stored never builds its network.

Building an encoder costs seconds (importing timm or open_clip, initialising or loading ~86M
parameters, the bf16 copy, hashing the weights), and a warm run needs only the backbone's
identity: name, contract, weights id and cache identity, which key every cell and feature.

The first build of a configuration records that identity (`BackboneIdentity`) in
``<cache>/backbones.json`` under a key covering what the build depends on: the run's backbone
options, brainbench's own source, the library versions, the hardware's bf16 path. With it the
record keeps what the build read that the key cannot cover: every weights search and the file
it found (with size and mtime) and every environment variable read. A later run trusts the
record only when all of those still hold, and then gets a `DeferredBackbone`: the recorded
identity, with the network built on first use (a feature-cache miss). That build is checked
against the record; a mismatch removes the record and stops the run before anything is stored.

Backbone files and cards (``--model path``) and entry-point packages are always built: their
code lies outside the source the key covers.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import platform
import sys
from collections.abc import MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo, warn_random_init_once
from brainbench.errors import BenchError
from brainbench.splits import digest
from brainbench.weight_search import Resolution, recording_resolutions

MEMO_FILE = "backbones.json"
MEMO_SCHEMA = 1
MEMO_ENTRIES = 64  # most recent records kept
#: libraries whose code builds, initialises or loads a backbone
LIBRARIES = ("torch", "timm", "open_clip_torch", "monai", "numpy", "huggingface_hub",
             "safetensors")


@dataclass(frozen=True)
class BackboneIdentity:
    """What planning, cache keys and cell identities read from a backbone, without its network."""

    name: str
    contract: InputContract
    weights: WeightsInfo
    cache_identity: dict[str, Any]
    parameters: int
    precision: str
    precisions: tuple[str, ...]
    preprocess_on: str
    max_batch: int | None
    reads_files: bool
    patch_layers: int | None  # None: no patch tokens (segmentation says so)
    pretraining_datasets: tuple[str, ...] | None

    @classmethod
    def of(cls, backbone: Backbone) -> "BackboneIdentity":
        try:
            patch_layers: int | None = backbone.num_patch_layers()
        except NotImplementedError:
            patch_layers = None
        declared = backbone.pretraining_datasets
        return cls(backbone.name, backbone.contract, backbone.weights,
                   copy.deepcopy(backbone.cache_identity()), backbone.parameter_count(),
                   backbone.precision, tuple(backbone.precisions), backbone.preprocess_on,
                   backbone.max_batch, bool(getattr(backbone, "reads_files", False)),
                   patch_layers, None if declared is None else tuple(declared))

    @property
    def digest(self) -> str:
        return digest(self.cache_identity)

    def matches(self, other: "BackboneIdentity") -> bool:
        """Equal, comparing the cache identity by its digest (JSON keeps no tuples)."""
        return replace(self, cache_identity={}) == replace(other, cache_identity={}) \
            and self.digest == other.digest

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "contract": self.contract.as_dict(),
                "weights": {"status": self.weights.status, "source": self.weights.source,
                            "sha256": self.weights.sha256},
                "cache_identity": self.cache_identity, "parameters": self.parameters,
                "precision": self.precision, "precisions": list(self.precisions),
                "preprocess_on": self.preprocess_on, "max_batch": self.max_batch,
                "reads_files": self.reads_files, "patch_layers": self.patch_layers,
                "pretraining_datasets": (None if self.pretraining_datasets is None
                                         else list(self.pretraining_datasets))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BackboneIdentity":
        contract = {key: tuple(value) if isinstance(value, list) else value
                    for key, value in data["contract"].items()}
        declared = data["pretraining_datasets"]
        return cls(data["name"], InputContract(**contract), WeightsInfo(**data["weights"]),
                   data["cache_identity"], int(data["parameters"]), data["precision"],
                   tuple(data["precisions"]), data["preprocess_on"], data["max_batch"],
                   bool(data["reads_files"]), data["patch_layers"],
                   None if declared is None else tuple(declared))


class IdentityOnly(Backbone):
    """A backbone's identity without its network. Subclasses say what `embed` does."""

    def __init__(self, identity: BackboneIdentity) -> None:
        self.identity = identity
        self.name = identity.name
        self.contract = identity.contract
        self.weights = identity.weights
        self.precision = identity.precision
        self.precisions = identity.precisions
        self.preprocess_on = identity.preprocess_on
        self.max_batch = identity.max_batch
        self.reads_files = identity.reads_files
        self.pretraining_datasets = identity.pretraining_datasets

    def architecture(self) -> dict[str, Any]:
        return copy.deepcopy(self.identity.cache_identity["architecture"])

    def cache_identity(self) -> dict[str, Any]:
        return copy.deepcopy(self.identity.cache_identity)

    def parameter_count(self) -> int:
        return self.identity.parameters

    @property
    def runtime(self) -> str:
        return self.identity.cache_identity.get("runtime", "eager")

    def num_patch_layers(self) -> int:
        if self.identity.patch_layers is None:
            return super().num_patch_layers()  # NotImplementedError, as the built one raises
        return self.identity.patch_layers


class DeferredBackbone(IdentityOnly):
    """The recorded identity; the network is built on first use and checked against it."""

    def __init__(self, identity: BackboneIdentity, build: Callable[[], Backbone],
                 memo: "BuildMemo", key: str) -> None:
        super().__init__(identity)
        self._build = build
        self._memo = memo
        self._key = key
        self._built: Backbone | None = None

    @property
    def is_built(self) -> bool:
        return self._built is not None

    def built(self) -> Backbone:
        if self._built is None:
            backbone = self._build()
            if not BackboneIdentity.of(backbone).matches(self.identity):
                self._memo.forget(self._key)
                raise BenchError(
                    f"backbone {self.name}: the network built now has another identity than "
                    f"the one recorded in {self._memo.path} (cache identity "
                    f"{digest(backbone.cache_identity())[:12]} vs {self.identity.digest[:12]}), "
                    "so something the record's key does not cover changed; the record was "
                    "removed and nothing was stored: run again")
            self._built = backbone
        return self._built

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.built().embed(batch)

    def patch_tokens(self, batch: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        return self.built().patch_tokens(batch, layers)

    def __getattr__(self, name: str) -> Any:
        """Anything else (device, encode_file, to, model, ...) comes from the built network."""
        if name.startswith("_") or name == "identity":  # unpickling, copy: never build
            raise AttributeError(name)
        return getattr(self.built(), name)


class BuildMemo:
    """``<cache>/backbones.json``: build key -> the identity and what its build read."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / MEMO_FILE

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or unreadable: a cache, rebuilt by the next build
        if not isinstance(data, dict) or data.get("schema") != MEMO_SCHEMA:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        kept = dict(list(entries.items())[-MEMO_ENTRIES:])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"schema": MEMO_SCHEMA, "entries": kept}, indent=1))
        os.replace(partial, self.path)  # atomic: readers see the old file or the new one

    def lookup(self, key: str) -> tuple[BackboneIdentity, list[Resolution]] | None:
        """The recorded identity and weights searches, when everything the build read holds."""
        entry = self._entries().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            identity = BackboneIdentity.from_json(entry["identity"])
            resolutions = [Resolution.from_json(r) for r in entry["resolutions"]]
            environment = dict(entry["environment"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # a damaged record is no record: the backbone is built
        if any(os.environ.get(name) != value for name, value in environment.items()):
            return None
        if not all(r.still_holds() for r in resolutions):
            return None
        return identity, resolutions

    def record(self, key: str, identity: BackboneIdentity, resolutions: Sequence[Resolution],
               environment: Mapping[str, str | None]) -> None:
        entries = self._entries()
        entries.pop(key, None)
        entries[key] = {"identity": identity.as_json(),
                        "resolutions": [r.as_json() for r in resolutions],
                        "environment": dict(environment)}
        try:
            self._write(entries)
        except OSError:
            pass  # a read-only cache only costs the next run a build

    def forget(self, key: str) -> None:
        entries = self._entries()
        if entries.pop(key, None) is not None:
            try:
                self._write(entries)
            except OSError:
                pass


class _RecordingEnviron(MutableMapping):
    """os.environ that remembers which names brainbench's own code read during a build.

    Libraries read hundreds of settings at import; those are theirs, as in the feature cache
    (the weights file they locate is covered by the recorded searches instead).
    """

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        self.environ = environ
        self.reads: dict[str, str | None] = {}
        self.whole = False  # iterated, copied or written by our code: no record can say what

    def _by_brainbench(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename in _PLUMBING:
            frame = frame.f_back
        return frame is not None and _is_own_source(frame.f_code.co_filename)

    def __getitem__(self, name: str) -> str:
        if self._by_brainbench():
            self.reads[name] = self.environ.get(name)
        return self.environ[name]

    def __setitem__(self, name: str, value: str) -> None:
        self.whole = self.whole or self._by_brainbench()
        self.environ[name] = value

    def __delitem__(self, name: str) -> None:
        self.whole = self.whole or self._by_brainbench()
        del self.environ[name]

    def __iter__(self) -> Iterator[str]:
        self.whole = self.whole or self._by_brainbench()
        return iter(self.environ)

    def __len__(self) -> int:
        self.whole = self.whole or self._by_brainbench()
        return len(self.environ)

    def copy(self) -> dict[str, str]:
        self.whole = self.whole or self._by_brainbench()
        return dict(self.environ)


#: frames between a caller and the mapping: os.getenv, Mapping.get / __contains__, this module
_PLUMBING = frozenset({os.__file__, MutableMapping.get.__code__.co_filename, __file__})


@contextmanager
def _recording_environment() -> Iterator[_RecordingEnviron]:
    real = os.environ
    recorder = _RecordingEnviron(real)
    os.environ = recorder  # type: ignore[assignment]  # os.getenv reads os.environ too
    try:
        yield recorder
    finally:
        os.environ = real


def _warn_random_init(identity: BackboneIdentity, searches: Sequence[Resolution]) -> None:
    """What the recorded build warned: no weights found, so random initialisation (once per
    process and backbone, as a build warns)."""
    if identity.weights.is_random:
        for search in searches:
            if search.path is None:
                warn_random_init_once(search.spec.backbone, search.spec.hint())


@lru_cache(maxsize=1)
def _source_roots() -> tuple[Path, ...]:
    """brainbench's engine folder and its built-in backbones' folder."""
    spec = importlib.util.find_spec("brainbench.baselines")
    found = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return (Path(__file__).parent, *found)


def _is_own_source(filename: str) -> bool:
    return any(filename.startswith(f"{root}{os.sep}") for root in _source_roots())


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of brainbench's own Python source (engine and built-in backbones)."""
    sha = hashlib.sha256()
    for root in _source_roots():
        for path in sorted(root.rglob("*.py")):
            sha.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def can_defer(model: str) -> bool:
    """Built-in names only: not a backbone file or card, not an entry-point package's name."""
    from brainbench.submission.entrypoints import GROUP
    from brainbench.submission.source import is_submission_path

    if is_submission_path(model):
        return False
    return model not in {ep.name for ep in metadata.entry_points(group=GROUP)}


def build_key(options: Mapping[str, Any]) -> str:
    """The record's key: the backbone options, brainbench's source, libraries, bf16 path (and
    the smallest image COMPILE=auto compiles each precision for on this CPU, and whether it
    can compile at all)."""
    from brainbench import precision, runtime

    capability = precision.detect_capability()
    return digest({"schema": MEMO_SCHEMA, "options": dict(options), "source": source_digest(),
                   "libraries": _versions(), "cuda": torch.cuda.is_available(),
                   "bf16": {"cpu": capability.cpu_bf16, "cuda": capability.cuda_bf16},
                   "compile_min_image": {p: runtime.compile_min_image(capability, p)
                                         for p in precision.RESOLVED},
                   "cpp_compiler": runtime.cpp_compiler() is not None})


def deferred(build: Callable[[], Backbone], options: Mapping[str, Any], cache_dir: Path
             ) -> Backbone:
    """What `build` returns: from the record when one holds (a `DeferredBackbone`), else built
    now and recorded. `options` must name everything `build` takes from its caller."""
    memo = BuildMemo(cache_dir)
    key = build_key(options)
    found = memo.lookup(key)
    if found is not None:
        identity, searches = found
        _warn_random_init(identity, searches)
        return DeferredBackbone(identity, build, memo, key)
    with recording_resolutions() as resolutions, _recording_environment() as environment:
        backbone = build()
    identity = BackboneIdentity.of(backbone)
    stable = BackboneIdentity.from_json(json.loads(json.dumps(identity.as_json())))
    if not environment.whole and stable.matches(identity):
        memo.record(key, identity, resolutions, environment.reads)
    return backbone
