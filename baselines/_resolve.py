"""Weight resolution and the one build path every baseline shares (DESIGN.md section 3).

The weights file is searched for offline by brainbench.weight_search (an explicit path, the
backbone's environment variable, then the local HF hub and torch hub caches; every search is
recorded for brainbench.deferred). Nothing is ever downloaded. When nothing is found the backbone is built with seeded random initialisation, warns once saying where to put
the file, and is marked ``random-init``; ``require_weights`` turns that into an error.

A file that is found is read with ``torch.load(weights_only=True)`` (`load_checkpoint`) and
loaded strictly by the backbone's own loader; its sha256 becomes the weights id, which is part
of the feature cache key and of every result row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from brainbench.backbone import WeightsInfo, warn_random_init_once
from brainbench.errors import BenchError
from brainbench.weight_search import (  # noqa: F401  (re-exported for the baselines)
    CachedFile, Resolved, WeightsSpec, hf_cached, record_resolution, resolve)
from brainbench.weights import LoadReport, load_checkpoint, sha256_file, state_dict_sha256

RANDOM_SEED = 0


@dataclass
class Built:
    model: torch.nn.Module
    weights: WeightsInfo
    report: LoadReport | None


Loader = Callable[[torch.nn.Module, Mapping[str, Any], str], LoadReport]


def seeded(build: Callable[[], torch.nn.Module], seed: int = RANDOM_SEED) -> torch.nn.Module:
    """Build with a fixed seed without touching the global RNG; eval mode, frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval().requires_grad_(False)


def build_with_weights(
    spec: WeightsSpec,
    *,
    weights: Path | None,
    require_weights: bool,
    build: Callable[[], torch.nn.Module],
    load: Loader,
    init: str,
    random_source: str | None = None,
) -> Built:
    """Resolve, then either load strictly (pretrained) or fall back to random init.

    init: how the random model is made, for the weights source (e.g. "timm init").
    random_source: the whole weights source of a random-init fallback instead of
        "<init> (seed 0); no weights found" (a backbone whose stored rows say it otherwise).
    """
    found = resolve(spec, weights)
    record_resolution(spec, weights, found)
    if found.path is None:
        if require_weights:
            raise BenchError(
                f"backbone {spec.backbone!r} needs trained weights (require-weights is set) and "
                f"none were found. {spec.hint()}"
            )
        model = seeded(build)
        warn_random_init_once(spec.backbone, spec.hint())
        info = WeightsInfo(
            status="random-init",
            source=random_source or f"{init} (seed {RANDOM_SEED}); no weights found",
            sha256=state_dict_sha256(model),
        )
        return Built(model, info, None)
    path = found.path
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise BenchError(
            f"{spec.backbone} weights file {path} (from {found.origin}) {what}; expected "
            f"{spec.expected}. {spec.hint()}"
        )
    ckpt = load_checkpoint(path)
    model = seeded(build)
    report = load(model, ckpt, str(path))
    model.eval().requires_grad_(False)
    info = WeightsInfo(status="pretrained", source=str(path), sha256=sha256_file(path))
    return Built(model, info, report)


def random_model(name: str, weights: Path | None, build: Callable[[], torch.nn.Module],
                 what: str) -> Built:
    """A deliberate random-weights reference point; it takes no weights."""
    if weights is not None:
        raise BenchError(
            f"backbone {name!r} is always randomly initialised and takes no weights (got "
            f"{weights}); use the pretrained entry of the same architecture to load a file"
        )
    model = seeded(build)
    info = WeightsInfo(
        status="random-init",
        source=f"{what} (seed {RANDOM_SEED}), deliberate random-weights reference",
        sha256=state_dict_sha256(model),
    )
    return Built(model, info, None)


def unwrap(ckpt: Mapping[str, Any], source: str, containers: tuple[str, ...]
           ) -> tuple[dict[str, Any], list[str]]:
    """The state dict inside a checkpoint: the first of `containers` present, else the dict.

    Returns (state, notes); the notes name the container used and the top-level entries ignored.
    """
    for name in containers:
        if name in ckpt:
            state = ckpt[name]
            if not isinstance(state, Mapping):
                raise BenchError(
                    f"weights {source}: ckpt[{name!r}] is a {type(state).__name__}, expected a "
                    "state dict (key -> tensor)"
                )
            ignored = sorted(str(k) for k in ckpt if k != name)
            note = f"used ckpt[{name!r}]" + (
                f"; ignored top-level entries: {', '.join(ignored)}" if ignored else "")
            return dict(state), [note]
    if not any(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise BenchError(
            f"weights {source}: no tensors at the top level and none of the containers "
            f"{list(containers)}; found keys {sorted(map(str, ckpt))[:10]}"
        )
    return dict(ckpt), []


def strip_prefix(state: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (keys under `prefix` with it removed, every other key unchanged)."""
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return inside, outside


def merged(inside: Mapping[str, Any], outside: Mapping[str, Any], prefix: str, source: str
           ) -> dict[str, Any]:
    """Keys from under `prefix` (stripped) together with the rest; a name in both is an error."""
    clash = sorted(set(inside) & set(outside))
    if clash:
        raise BenchError(
            f"weights {source}: keys present both with and without the {prefix!r} prefix: "
            f"{clash[:10]}")
    return {**inside, **outside}


def with_notes(report: LoadReport, notes: list[str] | tuple[str, ...]) -> LoadReport:
    return LoadReport(
        source=report.source,
        loaded=report.loaded,
        skipped_missing=report.skipped_missing,
        skipped_unexpected=report.skipped_unexpected,
        file_dtypes=report.file_dtypes,
        notes=tuple(notes) + report.notes,
    )


def check_size(name: str, value: int | None, default: int, multiple: int = 1,
               round_to_multiple: bool = False) -> int:
    """A positive size; with `round_to_multiple`, the nearest multiple (at least one patch)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BenchError(f"{name} must be a positive integer, got {value!r}")
    if value % multiple:
        if round_to_multiple:
            return max(multiple, int(round(value / multiple)) * multiple)
        below = max(multiple, value - value % multiple)
        raise BenchError(f"{name}={value} is not a multiple of the patch size {multiple}; use "
                         f"e.g. {below} or {value - value % multiple + multiple}")
    return value
