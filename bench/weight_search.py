"""Where a backbone's weights file is, found offline (DESIGN.md section 3).

Order: an explicit path (``--weights`` / ``WEIGHTS=``), then the backbone's environment
variable, then local caches (Hugging Face hub cache, torch hub checkpoints folder, which is
where timm and open_clip put downloads). Nothing is ever downloaded.

Every search made while a recorder is active is recorded (`recording_resolutions`), with the
size and mtime of the file it found, so a later run can tell cheaply whether the same search
would find the same file today (`Resolution.still_holds`; used by brainbench.deferred).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch


@dataclass(frozen=True)
class CachedFile:
    """A file a library may already have downloaded: an HF hub repo file or a torch hub file."""

    filename: str
    hf_repo: str | None = None  # None: look in torch.hub's checkpoints folder

    def describe(self) -> str:
        if self.hf_repo:
            return f"Hugging Face cache {self.hf_repo}/{self.filename}"
        return f"torch hub cache checkpoints/{self.filename}"

    def find(self, hf_cache_dir: str | Path | None = None) -> Path | None:
        if self.hf_repo:
            return hf_cached(self.hf_repo, self.filename, hf_cache_dir)
        path = Path(torch.hub.get_dir()) / "checkpoints" / self.filename
        return path if path.is_file() else None


def hf_cached(repo: str, filename: str, cache_dir: str | Path | None = None) -> Path | None:
    """The path of `filename` from `repo` in the local HF cache, or None. Never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


@dataclass(frozen=True)
class WeightsSpec:
    """Where a backbone's weights may be and what to tell a user who has none."""

    backbone: str
    env_var: str
    expected: str  # what the file is, e.g. "the DINOv2 ViT-B/14 checkpoint (...pretrain.pth)"
    cached: tuple[CachedFile, ...] = ()

    def hint(self) -> str:
        places = ["--weights PATH / WEIGHTS=PATH", f"the environment variable {self.env_var}"]
        places += [c.describe() for c in self.cached]
        return f"Put {self.expected} in one of: " + "; ".join(places) + "."


@dataclass(frozen=True)
class Resolved:
    path: Path | None
    origin: str  # which rule found it ("" when none did)


def resolve(spec: WeightsSpec, explicit: Path | None) -> Resolved:
    """Explicit path, then the environment variable, then the local caches."""
    if explicit is not None:
        return Resolved(Path(explicit).expanduser(), "--weights")
    env = os.environ.get(spec.env_var, "").strip()
    if env:
        return Resolved(Path(env).expanduser(), f"environment variable {spec.env_var}")
    for entry in spec.cached:
        found = entry.find()
        if found is not None:
            return Resolved(found, entry.describe())
    return Resolved(None, "")


def _fingerprint(path: Path | None) -> list[int] | None:
    """[size, mtime_ns] of a file (what `make` and git trust to see a change), else None."""
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns] if stat is not None else None


@dataclass(frozen=True)
class Resolution:
    """One search: what was looked for, and the file it found (None: none) as it was then."""

    spec: WeightsSpec
    explicit: str | None
    path: str | None
    fingerprint: list[int] | None

    def still_holds(self) -> bool:
        """Would the same search find the same file, unchanged, now?"""
        found = resolve(self.spec, None if self.explicit is None else Path(self.explicit))
        return (None if found.path is None else str(found.path)) == self.path \
            and _fingerprint(found.path) == self.fingerprint

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Resolution":
        spec = dict(data["spec"])
        spec["cached"] = tuple(CachedFile(**c) for c in spec["cached"])
        return cls(WeightsSpec(**spec), data["explicit"], data["path"], data["fingerprint"])


_recorders: list[list[Resolution]] = []


def record_resolution(spec: WeightsSpec, explicit: Path | None, found: Resolved) -> None:
    """Called by every weights search (brainbench.baselines._resolve.build_with_weights)."""
    for recorder in _recorders:
        recorder.append(Resolution(spec, None if explicit is None else str(explicit),
                                   None if found.path is None else str(found.path),
                                   _fingerprint(found.path)))


@contextmanager
def recording_resolutions() -> Iterator[list[Resolution]]:
    """The weights searches made inside the block, in order."""
    recorder: list[Resolution] = []
    _recorders.append(recorder)
    try:
        yield recorder
    finally:
        _recorders.remove(recorder)
