"""Honest weight loading, shared by every backbone.

Rules (DESIGN.md section 3, flaw 4): a checkpoint is loaded strictly. Key sets and shapes are
compared *before* anything is copied into the model; every missing or unexpected key must be
listed, with a reason, by the backbone that allows it, and the reasons are returned in a
`LoadReport` so they can be shown to users. Nothing is dropped silently.
"""

from __future__ import annotations

import fnmatch
import hashlib
import pickle
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from brainbench.errors import BenchError

__all__ = [
    "LoadReport",
    "check_pretrained_file",
    "load_checkpoint",
    "load_state_strict",
    "sha256_file",
    "state_dict_sha256",
]

_CHUNK = 1 << 20
_LIST_LIMIT = 10

_EXPECTED = (
    "a PyTorch checkpoint written by torch.save (a dict of tensors, e.g. a state dict or "
    "{'teacher': state_dict}) or a .safetensors file"
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise BenchError(f"weights file {path} does not exist") from None
    except IsADirectoryError:
        raise BenchError(f"weights path {path} is a directory; expected a file") from None
    except OSError as exc:
        raise BenchError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def check_pretrained_file(source: str, sha256: str) -> str:
    """The file a "pretrained" claim names, re-hashed: its sha256 (equal to the claimed one).
    A claim is only as good as this check, so a source that is not a file (nothing to
    re-hash) is refused like a wrong digest: BenchError naming the field and the fix."""
    path = Path(str(source))
    fix = ("WeightsInfo('pretrained', str(path), brainbench.weights.sha256_file(path)) with the "
           "path of the weights file the backbone loaded")
    if not path.is_file():
        raise BenchError(f"weights.source {source!r} is not a file, so the sha256 of this "
                         f"'pretrained' claim cannot be re-checked; set {fix}")
    digest = sha256_file(path)
    if digest != sha256:
        raise BenchError(f"weights.sha256 {str(sha256)[:16]}… is not the sha256 of "
                         f"weights.source {path} ({digest[:16]}…); set {fix}")
    return digest


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without executing pickled code (``weights_only=True``).

    Any problem (missing file, directory, unreadable, truncated, not a checkpoint, a pickle that
    needs arbitrary classes, not a dict) raises a BenchError that names the file and what was
    expected.
    """
    path = Path(path)
    if not path.exists():
        raise BenchError(f"weights file {path} does not exist; expected {_EXPECTED}")
    if path.is_dir():
        raise BenchError(f"weights path {path} is a directory; expected a file: {_EXPECTED}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise BenchError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    if path.stat().st_size == 0:
        raise BenchError(f"weights file {path} is empty; expected {_EXPECTED}")

    if path.suffix == ".safetensors":
        obj = _load_safetensors(path)
    else:
        obj = _torch_load(path)

    if not isinstance(obj, Mapping):
        raise BenchError(
            f"weights file {path} holds a {type(obj).__name__}, not a dict; expected {_EXPECTED}"
        )
    return dict(obj)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            detail = text.strip().splitlines()
            hint = next((line.strip() for line in detail if "Unsupported global" in line), "")
            raise BenchError(
                f"weights file {path} contains Python objects other than tensors and plain "
                f"containers ({hint or 'unsupported global'}); brainbench loads checkpoints with "
                "weights_only=True and will not run pickled code. Re-save just the state dict, "
                "e.g. torch.save({'teacher': ckpt['teacher']}, 'teacher.pth')."
            ) from None
        raise BenchError(
            f"weights file {path} is not a PyTorch checkpoint ({_short(exc)}); expected {_EXPECTED}"
        ) from None
    except Exception as exc:  # RuntimeError (zip), EOFError, KeyError (legacy format), ...
        raise BenchError(
            f"weights file {path} is truncated or not a PyTorch checkpoint ({_short(exc)}); "
            f"expected {_EXPECTED}"
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - timm depends on safetensors
        raise BenchError(
            f"weights file {path} is a .safetensors file but the safetensors package is missing"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise BenchError(
            f"weights file {path} is truncated or not a valid .safetensors file ({_short(exc)}); "
            f"expected {_EXPECTED}"
        ) from None


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(exc).__name__}: {first}"[:200]


@dataclass(frozen=True)
class LoadReport:
    """What a strict load did: how many tensors went in, and which keys were skipped and why."""

    source: str
    loaded: int
    skipped_missing: dict[str, str] = field(default_factory=dict)  # model key -> reason
    skipped_unexpected: dict[str, str] = field(default_factory=dict)  # file key -> reason
    file_dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> number of tensors
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        out = [f"loaded {self.loaded} tensors from {self.source}"]
        dtypes = ", ".join(f"{n} x {d}" for d, n in sorted(self.file_dtypes.items()))
        if dtypes:
            out.append(f"file dtypes: {dtypes}")
        for key, reason in self.skipped_unexpected.items():
            out.append(f"ignored file key {key}: {reason}")
        for key, reason in self.skipped_missing.items():
            out.append(f"left at init (not in file) {key}: {reason}")
        out.extend(self.notes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": self.loaded,
            "skipped_missing": dict(self.skipped_missing),
            "skipped_unexpected": dict(self.skipped_unexpected),
            "file_dtypes": dict(self.file_dtypes),
            "notes": list(self.notes),
        }


def _reason(key: str, allowed: Mapping[str, str]) -> str | None:
    """The reason of the first allowed entry (exact key or fnmatch pattern) matching `key`."""
    if key in allowed:
        return allowed[key]
    for pattern, reason in allowed.items():
        if fnmatch.fnmatchcase(key, pattern):
            return reason
    return None


def _listing(keys: list[str], names: Mapping[str, str]) -> str:
    shown = []
    for key in keys[:_LIST_LIMIT]:
        alias = names.get(key)
        shown.append(f"{key} (file: {alias})" if alias and alias != key else key)
    more = len(keys) - _LIST_LIMIT
    return ", ".join(shown) + (f", ... and {more} more" if more > 0 else "")


def load_state_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, Any],
    *,
    allowed_missing: Mapping[str, str] | None = None,
    allowed_unexpected: Mapping[str, str] | None = None,
    source: str,
    key_names: Mapping[str, str] | None = None,
    model_name: str | None = None,
) -> LoadReport:
    """Load `state_dict` into `model` after checking keys, shapes and values.

    allowed_missing:    model key or fnmatch pattern -> reason it may stay at its init value.
    allowed_unexpected: file key or pattern -> reason it may be ignored.
    source:             the file (or description) named in errors and in the report.
    key_names:          optional model key -> name in the file, shown next to keys in errors
                        when a backbone renamed them (e.g. gamma_1 <- ls1.gamma).
    model_name:         how errors name the model (default: its class name).

    Raises BenchError listing the offending keys (first 10 and a count) for: non-tensor values,
    missing or unexpected keys that are not allowed, shape mismatches (never allowed), and
    non-finite values. Nothing is copied into the model unless every check passes.
    """
    allowed_missing = dict(allowed_missing or {})
    allowed_unexpected = dict(allowed_unexpected or {})
    names = dict(key_names or {})
    model_state = model.state_dict()

    missing = sorted(set(model_state) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_state))

    skipped_missing = {k: r for k in missing if (r := _reason(k, allowed_missing)) is not None}
    skipped_unexpected = {
        k: r for k in unexpected if (r := _reason(k, allowed_unexpected)) is not None
    }
    not_tensors = sorted(
        k
        for k, v in state_dict.items()
        if not isinstance(v, torch.Tensor) and k not in skipped_unexpected
    )
    bad_missing = [k for k in missing if k not in skipped_missing]
    bad_unexpected = [k for k in unexpected if k not in skipped_unexpected and k not in not_tensors]

    common = sorted(k for k in set(model_state) & set(state_dict) if k not in not_tensors)
    shape_bad = [
        k for k in common if tuple(state_dict[k].shape) != tuple(model_state[k].shape)
    ]

    problems = []
    if not_tensors:
        problems.append(
            f"{len(not_tensors)} value(s) that are not tensors: {_listing(not_tensors, names)}"
        )
    if bad_missing:
        problems.append(
            f"{len(bad_missing)} missing key(s) (in the model, not in the file): "
            f"{_listing(bad_missing, names)}"
        )
    if bad_unexpected:
        problems.append(
            f"{len(bad_unexpected)} unexpected key(s) (in the file, not in the model): "
            f"{_listing(bad_unexpected, names)}"
        )
    if shape_bad:
        shown = [
            f"{k}{' (file: ' + names[k] + ')' if names.get(k, k) != k else ''} "
            f"file {tuple(state_dict[k].shape)} vs model {tuple(model_state[k].shape)}"
            for k in shape_bad[:_LIST_LIMIT]
        ]
        more = len(shape_bad) - _LIST_LIMIT
        problems.append(
            f"{len(shape_bad)} shape mismatch(es): "
            + "; ".join(shown)
            + (f"; ... and {more} more" if more > 0 else "")
        )
    if problems:
        raise BenchError(
            f"weights {source} do not fit {model_name or type(model).__name__} (strict load): "
            + " | ".join(problems)
        )

    non_finite = [
        k
        for k in common
        if state_dict[k].is_floating_point() and not bool(torch.isfinite(state_dict[k]).all())
    ]
    if non_finite:
        raise BenchError(
            f"weights {source} contain NaN or inf in {len(non_finite)} tensor(s): "
            f"{_listing(non_finite, names)}"
        )

    # The model's own module versions go with the tensors: without them torch treats the dict
    # as a legacy checkpoint, and BatchNorm then fills a missing `num_batches_tracked` itself
    # instead of reporting it, so an allowed missing counter would read as a disagreement.
    to_load = OrderedDict((k, state_dict[k]) for k in common)
    to_load._metadata = getattr(model_state, "_metadata", None)  # type: ignore[attr-defined]
    try:
        result = model.load_state_dict(to_load, strict=False)
    except RuntimeError as exc:  # a module's own loader refused what the pre-check passed
        raise BenchError(f"weights {source}: torch refused the checked tensors: "
                         f"{_short(exc)}") from None
    # torch must have left out exactly the keys we allowed to stay at init, nothing else
    if sorted(result.missing_keys) != sorted(skipped_missing) or result.unexpected_keys:
        raise BenchError(
            f"weights {source}: torch reported missing {result.missing_keys} / unexpected "
            f"{result.unexpected_keys} after the pre-check passed (allowed to stay at init: "
            f"{sorted(skipped_missing)}); a module's loader disagrees with its state_dict()"
        )

    dtypes = Counter(str(state_dict[k].dtype).replace("torch.", "") for k in common)
    return LoadReport(
        source=source,
        loaded=len(common),
        skipped_missing=skipped_missing,
        skipped_unexpected=skipped_unexpected,
        file_dtypes=dict(sorted(dtypes.items())),
    )


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Deterministic sha256 over the model's state dict: key, dtype, shape and raw bytes of each
    tensor in sorted key order. Used as the weights id of random-init models, so a change of
    initialisation changes the feature-cache key."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):  # pragma: no cover - extra_state objects
            digest.update(f"{key}|{value!r}\n".encode())
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}|{str(tensor.dtype)}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
