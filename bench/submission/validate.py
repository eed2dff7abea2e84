"""Checks a backbone before any long run, on a synthetic brain-like volume; nothing is stored.

Each check says what it found and, when it fails, what to change. The backbone is built the
way the runner will build it (same profile sizes), so what passes here is what runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainbench.backbone import Backbone, InputContract, create_backbone
from brainbench.errors import BenchError
from brainbench.preprocess import intensity_problem, volume_to_input
from brainbench.profiles import Profile
from brainbench.submission.source import NAME_RE
from brainbench.weights import check_pretrained_file, state_dict_sha256

BATCH = 4  # 2d: slices per test batch
#: seconds validation waits for one embed() of its few test inputs (BRAINBENCH_VALIDATE_TIMEOUT
#: overrides): a backbone that hangs fails the check instead of hanging `make validate`
EMBED_TIMEOUT_S = 600.0


class _TimedOut(BaseException):  # not caught by an `except Exception` in embed()
    pass


@contextmanager
def _time_limit(seconds: float):
    """Raise _TimedOut in this (main) thread after `seconds`, by SIGALRM: Python code and
    sleeps are interrupted, a single C call only once it returns. Off the main thread, or
    without SIGALRM, no limit."""
    def expired(signum, frame):
        raise _TimedOut()

    try:
        previous = signal.signal(signal.SIGALRM, expired)
    except (ValueError, AttributeError):  # not the main thread / no SIGALRM here
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def embed_timeout() -> float:
    """The limit on one validation embed() call, in seconds (a BenchError names a bad value)."""
    text = os.environ.get("BRAINBENCH_VALIDATE_TIMEOUT")
    if text is None:
        return EMBED_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise BenchError(f"BRAINBENCH_VALIDATE_TIMEOUT={text!r}: expected seconds > 0 (the "
                         "limit on one embed() call of validation)")
    return value


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ValidationReport:
    source: str
    profile: str
    name: str | None = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    contract: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    architecture: dict[str, Any] | None = None
    parameters: int | None = None
    measures: dict[str, float] = field(default_factory=dict)
    parity: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def render(self) -> str:
        lines = [f"validation of {self.source} (profile {self.profile})"
                 + (f": backbone {self.name}" if self.name else "")]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        m = self.measures
        if "seconds_per_item" in m:
            unit = "slice" if self.contract and self.contract["dims"] == "2d" else "volume"
            lines.append(f"  time per {unit}: {1000 * m['seconds_per_item']:.1f} ms "
                         f"({int(m['items_timed'])} in one batch); build {m['build_seconds']:.1f} s")
            lines.append(f"  memory: parameters {m['parameter_mb']:.1f} MB; process peak "
                         f"{m['peak_rss_mb']:.0f} MB (+{m['forward_rss_mb']:.0f} MB during the "
                         "forward passes)" + (f"; GPU peak {m['cuda_peak_mb']:.0f} MB"
                                              if "cuda_peak_mb" in m else ""))
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  result: " + ("PASSED" if self.ok else
                                     f"FAILED ({len(self.failures)} check(s)); nothing was run "
                                     "or stored"))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def synthetic_brain(seed: int = 0, shape: tuple[int, int, int] = (48, 56, 48)) -> np.ndarray:
    """A brain-like volume: skull-free ellipsoid, grey shell, white core, ventricles, noise."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2)
    vent = np.sqrt((x / 0.18) ** 2 + (y / 0.35) ** 2 + (z / 0.2) ** 2) < 1
    volume = np.where(r < 1, 600.0, 0.0) + np.where(r < 0.8, 250.0, 0.0)  # GM shell, WM core
    volume = np.where(vent, 150.0, volume)
    volume += (r < 1) * (40 * rng.standard_normal(shape) + 60 * x * (1 + 0.3 * seed))
    return np.clip(volume, 0, None).astype(np.float32)


def contract_problems(c: InputContract) -> list[str]:
    """What is missing or inconsistent in a contract (empty when it is sound)."""
    problems = []
    if c.dims not in ("2d", "3d"):
        problems.append(f"dims must be '2d' or '3d', got {c.dims!r}")
        return problems
    want = 2 if c.dims == "2d" else 3
    size = tuple(c.image_size) if isinstance(c.image_size, (tuple, list)) else ()
    if len(size) != want or not all(isinstance(v, int) and v > 0 for v in size):
        problems.append(f"image_size must be {want} positive integers for dims {c.dims!r}, "
                        f"got {c.image_size!r}")
    if c.dims == "2d" and not (isinstance(c.num_slices, int) and c.num_slices > 0):
        problems.append(f"num_slices must be a positive integer for a 2d backbone, got "
                        f"{c.num_slices!r}")
    if c.dims == "3d" and c.num_slices is not None:
        problems.append(f"num_slices must be None for a 3d backbone, got {c.num_slices!r}")
    if not (isinstance(c.in_channels, int) and c.in_channels > 0):
        problems.append(f"in_channels must be a positive integer, got {c.in_channels!r}")
    intensity = intensity_problem(c.intensity, c.in_channels)
    if intensity:
        problems.append(intensity)
    tokens = tuple(c.tokens) if isinstance(c.tokens, (tuple, list)) else ()
    if not tokens or len(set(tokens)) != len(tokens) or not all(
            isinstance(t, str) and t for t in tokens):
        problems.append(f"tokens must be distinct non-empty names, got {c.tokens!r}")
    elif "cls" not in tokens:
        problems.append(f"tokens {list(tokens)} lack 'cls', the vector the default probe "
                        "protocol reads; add it (the backbone's main per-image vector)")
    if not (isinstance(c.feature_dim, int) and c.feature_dim > 0):
        problems.append(f"feature_dim must be a positive integer, got {c.feature_dim!r}")
    return problems


def modules_of(backbone: Backbone) -> list[tuple[str, torch.nn.Module]]:
    """The torch modules a backbone holds as attributes (through a PyFileBackbone wrapper)."""
    found, seen = [], set()
    stack: list[tuple[str, Any]] = [("", backbone)]
    while stack:
        prefix, obj = stack.pop()
        for key, value in vars(obj).items():
            if isinstance(value, torch.nn.Module) and id(value) not in seen:
                seen.add(id(value))
                found.append((prefix + key, value))
            elif isinstance(value, Backbone):
                stack.append((f"{prefix}{key}.", value))
    return found


def _fingerprint(modules) -> dict[str, str]:
    return {name: state_dict_sha256(m) for name, m in modules}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _batch(contract: InputContract) -> torch.Tensor:
    if contract.dims == "2d":
        slices = volume_to_input(synthetic_brain(0), contract)  # (S, C, H, W)
        middle = slices.shape[0] // 2
        return slices[max(0, middle - BATCH // 2): max(0, middle - BATCH // 2) + BATCH]
    return torch.cat([volume_to_input(synthetic_brain(s), contract) for s in (0, 1)])


def _check_output(report: ValidationReport, out: Any, contract: InputContract, n: int) -> bool:
    if not isinstance(out, dict):
        return report.add("output", False, f"embed() returned {type(out).__name__}; return a "
                          "dict {token name: tensor (B, feature_dim)}")
    missing = [t for t in contract.tokens if t not in out]
    extra = sorted(set(out) - set(contract.tokens))
    if missing or extra:
        return report.add("output", False, f"embed() returned tokens {sorted(out)} but the "
                          f"contract declares {list(contract.tokens)}"
                          + (f" (missing {missing})" if missing else "")
                          + (f" (undeclared {extra})" if extra else ""))
    problems = []
    for token in contract.tokens:
        value = out[token]
        if not isinstance(value, torch.Tensor):
            problems.append(f"token {token!r} is a {type(value).__name__}, not a torch.Tensor")
            continue
        if tuple(value.shape) != (n, contract.feature_dim):
            problems.append(f"embed() returned shape {tuple(value.shape)} for token {token!r} "
                            f"but the contract declares feature_dim {contract.feature_dim} "
                            f"(expected ({n}, {contract.feature_dim}) for a batch of {n})")
            continue
        if value.dtype != torch.float32:
            problems.append(f"token {token!r} has dtype {value.dtype}; return float32 "
                            "(value.float())")
        elif not bool(torch.isfinite(value).all()):
            problems.append(f"token {token!r} holds NaN or inf")
        elif n > 1 and float(value.detach().std(dim=0).max()) == 0.0:
            problems.append(f"token {token!r} is identical for every input of the batch "
                            "(different slices/volumes): the features carry no information")
        if value.requires_grad or value.grad_fn is not None:
            problems.append(f"token {token!r} carries autograd history; run the network under "
                            "torch.inference_mode() (the encoder is frozen)")
    if problems:
        return report.add("output", False, "; ".join(problems))
    return report.add("output", True, f"{len(contract.tokens)} token(s) "
                      f"{list(contract.tokens)}, each ({n}, {contract.feature_dim}) float32, "
                      "finite, varying across inputs")


def _compare(a: dict, b: dict, tokens, rtol: float, atol: float) -> float:
    worst = 0.0
    for t in tokens:
        diff = (a[t].double() - b[t].double()).abs()
        scale = atol + rtol * b[t].double().abs()
        worst = max(worst, float((diff / scale).max()))
    return worst  # <= 1 means within tolerance


def validate(model: str | Path, profile: Profile, weights: str | Path | None = None,
             require_weights: bool = False, precision: str = "fp32") -> ValidationReport:
    """Build the backbone as the runner would (at `precision`, brainbench.precision) and run
    every check; never stores anything."""
    report = ValidationReport(source=str(model), profile=profile.name)
    rss0 = _rss_mb()
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone = create_backbone(str(model), weights=weights,
                                       require_weights=require_weights,
                                       image_size=profile.slice_size,
                                       num_slices=profile.num_slices, precision=precision)
        except BenchError as exc:
            report.add("load", False, str(exc))
            return report
        except Exception as exc:  # the author's constructor failed
            report.add("load", False, f"building the backbone raised {type(exc).__name__}: "
                       f"{exc}")
            return report
    report.measures["build_seconds"] = time.perf_counter() - started
    report.notes += [str(w.message) for w in caught]
    report.add("load", True, f"built {type(backbone).__name__} in "
               f"{report.measures['build_seconds']:.1f} s")
    _check_backbone(report, backbone)
    _check_parity(report, model)
    report.measures["peak_rss_mb"] = _rss_mb()
    report.measures.setdefault("forward_rss_mb", max(0.0, report.measures["peak_rss_mb"] - rss0))
    return report


def _check_backbone(report: ValidationReport, backbone: Backbone) -> None:
    name = getattr(backbone, "name", None)
    report.name = name if isinstance(name, str) else None
    report.add("name", isinstance(name, str) and bool(NAME_RE.match(name)),
               f"{name!r}" if isinstance(name, str) and NAME_RE.match(name) else
               f"name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    contract = getattr(backbone, "contract", None)
    if not isinstance(contract, InputContract):
        report.add("contract", False, "backbone.contract must be a brainbench.backbone."
                   f"InputContract, got {type(contract).__name__}")
        return
    report.contract = contract.as_dict()
    problems = contract_problems(contract)
    if not report.add("contract", not problems, "; ".join(problems) or
                      f"{contract.dims}, {contract.in_channels} channel(s), input "
                      f"{'x'.join(map(str, contract.image_size))}"
                      + (f", {contract.num_slices} slices" if contract.num_slices else "")
                      + f", {contract.intensity}, tokens {list(contract.tokens)}, dim "
                      f"{contract.feature_dim}"):
        return
    _check_weights(report, backbone)
    _check_pretraining(report, backbone)
    _check_identity(report, backbone)
    modules = modules_of(backbone)
    if not report.add("frozen: modules", bool(modules),
                      f"{len(modules)} torch module(s): {', '.join(n for n, _ in modules)}"
                      if modules else "no torch.nn.Module attribute found on the backbone; keep "
                      "the network in an attribute (e.g. self.model) so brainbench can check "
                      "that it stays frozen"):
        return
    held = sum(p.numel() for _, m in modules for p in m.parameters())
    count = backbone.parameter_count()
    report.parameters = int(count) if isinstance(count, int) else None
    report.add("parameter_count", count == held, f"{held:,} parameters" if count == held else
               f"parameter_count() returned {count!r} but the backbone's modules hold {held:,} "
               "parameters")
    trainable = [f"{n}.{p}" for n, m in modules for p, t in m.named_parameters()
                 if t.requires_grad]
    report.add("frozen: requires_grad", not trainable,
               "no parameter requires grad" if not trainable else
               f"{len(trainable)} parameter(s) require grad (first: {', '.join(trainable[:3])}); "
               "call model.requires_grad_(False)")
    batch = _batch(backbone.contract)
    n = batch.shape[0]
    before = _fingerprint(modules)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = _rss_mb()
    limit = embed_timeout()
    try:
        with _time_limit(3 * limit):  # three calls, each allowed `limit`
            first = backbone.embed(batch.clone())
            second = backbone.embed(batch.clone())
            alone = backbone.embed(batch[:1].clone())
    except _TimedOut:
        report.add("forward", False, f"embed() on a batch shaped {tuple(batch.shape)} did not "
                   f"return within {limit:g} s a call (BRAINBENCH_VALIDATE_TIMEOUT): a backbone "
                   "must embed a few inputs in reasonable time; look for a loop or a wait that "
                   "never ends")
        return
    except Exception as exc:
        report.add("forward", False, f"embed() on a batch shaped {tuple(batch.shape)} raised "
                   f"{type(exc).__name__}: {exc}")
        return
    if not _check_output(report, first, backbone.contract, n):
        return
    worst = _compare(second, first, backbone.contract.tokens, 1e-6, 1e-7)
    report.add("deterministic", worst <= 1, "the same input gave the same output twice"
               if worst <= 1 else "the same batch embedded twice gave different features "
               f"({worst:.3g}x the tolerance 1e-6 relative): remove dropout / random "
               "augmentation at inference (model.eval()) and any randomness in embed()")
    if _check_output(ValidationReport("", ""), alone, backbone.contract, 1):
        worst = _compare({t: v[:1] for t, v in first.items()}, alone, backbone.contract.tokens,
                         1e-4, 1e-5)
        report.add("batch independent", worst <= 1, "an input embedded alone equals the same "
                   "input inside a batch" if worst <= 1 else "an input embedded alone differs "
                   f"from the same input inside a batch ({worst:.3g}x the tolerance 1e-4 "
                   "relative): the network uses batch statistics; call model.eval()")
    after = _fingerprint(modules)
    changed = [k for k in before if before[k] != after[k]]
    grads = [f"{n_}.{p}" for n_, m in modules for p, t in m.named_parameters()
             if t.grad is not None]
    report.add("frozen: unchanged", not changed and not grads,
               "parameters and buffers identical before and after embed(); no gradient kept"
               if not changed and not grads else
               (f"parameters or buffers of {changed} changed during embed() (BatchNorm in train "
                "mode updates running statistics: call model.eval())" if changed else "")
               + (f"; {len(grads)} parameter(s) hold a .grad (first {grads[:3]}); run under "
                  "torch.inference_mode()" if grads else ""))
    _check_patch_tokens(report, backbone, batch)
    _measure(report, backbone, rss, cuda)


# --------------------------------------------------------------------------- parity


def parity_spec(model: str | Path):
    """The `Parity` a card's [parity] table or a Python file's PARITY dict names, or None (also
    for registered names). A card's parity weights default to the card's own weights file."""
    from dataclasses import replace

    from brainbench.submission.source import submission_kind

    kind = submission_kind(model)
    if kind == "card":
        from brainbench.submission.card import read_card

        card = read_card(model)
        spec = card.parity
        if spec is not None and spec.weights is None:
            if card.weights is None:
                raise BenchError(f"{spec.where}: [parity] needs the weights file the reference "
                                 "was made with: set parity.weights (or the card's weights)")
            spec = replace(spec, weights=card.weights)
        return spec
    if kind == "pyfile":
        from brainbench.submission.pyfile import read_parity

        return read_parity(model)
    return None


def parity_input(contract: InputContract, spec) -> torch.Tensor:
    """``numpy.random.default_rng(input_seed).standard_normal(shape).astype(float32)``, shape
    (batch, C, H, W) for 2d (batch 2 unless stated) or (batch, C, D, H, W) for 3d (batch 1)."""
    batch = spec.batch or (2 if contract.dims == "2d" else 1)
    shape = (batch, contract.in_channels, *contract.image_size)
    return torch.from_numpy(np.random.default_rng(spec.input_seed).standard_normal(shape)
                            .astype(np.float32))


def load_reference(spec, tokens, batch: int, feature_dim: int) -> dict[str, np.ndarray]:
    """The reference arrays, checked: a readable .npz, names among `tokens`, each float,
    finite, non-zero and shaped (batch, feature_dim)."""
    path = spec.reference
    where = f"parity reference {path} ({spec.name('reference')} in {spec.where})"
    if not path.is_file():
        raise BenchError(f"{where} does not exist; save your own code's outputs there with "
                         "numpy.savez(path, cls=..., patch_mean=...)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise BenchError(f"{where} is not a readable .npz of numeric arrays (numpy.savez): "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise BenchError(f"{where} holds one unnamed array, not named arrays; save it with "
                         "numpy.savez(path, cls=..., patch_mean=...) (one array per token)")
    try:
        with loaded:
            arrays = {name: np.asarray(loaded[name]) for name in loaded.files}
    except Exception as exc:
        raise BenchError(f"{where} cannot be read: {type(exc).__name__}: {exc}") from None
    if not arrays:
        raise BenchError(f"{where} holds no arrays; expected one per token among "
                         f"{list(tokens)}")
    unknown = sorted(set(arrays) - set(tokens))
    if unknown:
        raise BenchError(f"{where}: array(s) {unknown} are not tokens of this backbone; name "
                         f"each array like the token it holds, among {list(tokens)}")
    expected = (batch, feature_dim)
    for name, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise BenchError(f"{where}: array {name!r} has dtype {value.dtype}; expected "
                             "floating point (float32)")
        if value.shape != expected:
            raise BenchError(f"{where}: array {name!r} has shape {value.shape} but the parity "
                             f"input and contract give {expected} (batch, feature_dim)")
        if not np.isfinite(value).all():
            raise BenchError(f"{where}: array {name!r} holds NaN or inf")
        if not np.any(value):
            raise BenchError(f"{where}: array {name!r} is all zeros; a relative error needs a "
                             "non-zero reference")
    return arrays


def parity_error(ours: torch.Tensor, ref: np.ndarray) -> float:
    """||ours - ref|| / ||ref||, in float64."""
    ref64 = torch.from_numpy(np.asarray(ref, dtype=np.float64))
    ours64 = ours.detach().to("cpu", torch.float64).reshape(ref64.shape)
    return float((ours64 - ref64).norm() / ref64.norm())


def check_parity(model: str | Path, spec) -> dict[str, Any]:
    """Build the backbone with the reference's weights (`require_weights=True`), embed the
    stated input and compare every reference array. Bad files raise BenchError naming them;
    a comparison beyond the tolerance is returned with ``ok`` False, never raised."""
    if spec.weights is not None and not spec.weights.is_file():
        raise BenchError(f"{spec.where}: {spec.name('weights')} {spec.weights} does not exist; "
                         "name the weights file the reference was made with")
    backbone = create_backbone(str(model), weights=spec.weights, require_weights=True,
                               image_size=spec.image_size)
    weights = getattr(backbone, "weights", None)
    if getattr(weights, "status", None) != "pretrained":
        raise BenchError(f"{spec.where}: parity needs the weights the reference was made with, "
                         f"but the backbone loaded {getattr(weights, 'status', None)!r} weights; "
                         f"set {spec.name('weights')} (and load it when require_weights is set)")
    contract = backbone.contract
    x = parity_input(contract, spec)
    refs = load_reference(spec, contract.tokens, x.shape[0], contract.feature_dim)
    out = backbone.embed(x.clone())
    missing = [t for t in refs if not isinstance(out, dict) or t not in out]
    if missing:
        raise BenchError(f"{spec.where}: embed() on the parity input returned no {missing}")
    errors = {t: parity_error(out[t], refs[t]) for t in refs}
    return {"reference": str(spec.reference), "weights": str(weights.source),
            "weights_sha256": weights.sha256, "input_seed": spec.input_seed,
            "input_shape": list(x.shape), "tolerance": spec.tolerance, "errors": errors,
            "not_compared": [t for t in contract.tokens if t not in refs],
            "ok": all(e <= spec.tolerance for e in errors.values())}


def _check_parity(report: ValidationReport, model: str | Path) -> None:
    try:
        spec = parity_spec(model)
        if spec is None:
            report.notes.append("no parity reference: equality with your own code is not "
                                "checked (add a [parity] table, SUBMITTING.md)")
            return
        result = check_parity(model, spec)
    except BenchError as exc:
        report.add("parity", False, str(exc))
        return
    except Exception as exc:  # the author's code failed on the parity input
        report.add("parity", False, f"parity check raised {type(exc).__name__}: {exc}")
        return
    report.parity = result
    for token, error in result["errors"].items():
        report.measures[f"parity_error_{token}"] = error
    tol = result["tolerance"]
    figures = ", ".join(f"{t} {e:.3g}" + ("" if e <= tol else f" > {tol:g}")
                        for t, e in result["errors"].items())
    recipe = (f"input default_rng({result['input_seed']}).standard_normal("
              f"{tuple(result['input_shape'])}) float32, weights "
              f"{Path(result['weights']).name}")
    skipped = (f"; not in the reference: {result['not_compared']}"
               if result["not_compared"] else "")
    name = Path(result["reference"]).name
    report.add("parity", result["ok"], (
        f"PASS: equals {name} within {tol:g} (norm-relative): {figures} ({recipe}){skipped}"
        if result["ok"] else
        f"FAIL: differs from {name} beyond the tolerance {tol:g} (norm-relative): {figures} "
        f"({recipe}){skipped}; the backbone does not compute what your code computed: check "
        "the architecture and kwargs, the weights file and that the reference was made on this "
        "input without preprocessing"))


def _check_patch_tokens(report: ValidationReport, backbone: Backbone, batch: torch.Tensor
                        ) -> None:
    """When offered, the last block's grid as tumor_seg reads it: (B, D, h, w) float32, finite,
    no autograd history."""
    try:
        depth = backbone.num_patch_layers()
    except NotImplementedError:
        return  # the identity check's note says tumor_seg will be unsupported
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        report.add("patch tokens", False, f"num_patch_layers() returned {depth!r}; return the "
                   "number of layers patch_tokens can index (a positive int)")
        return
    n, last = batch.shape[0], None
    try:
        grids = backbone.patch_tokens(batch.clone(), [depth - 1])
    except Exception as exc:
        report.add("patch tokens", False, f"patch_tokens(batch, [{depth - 1}]) raised "
                   f"{type(exc).__name__}: {exc}")
        return
    if not (isinstance(grids, (list, tuple)) and len(grids) == 1
            and isinstance(grids[0], torch.Tensor)):
        problem = (f"patch_tokens returned {type(grids).__name__}; return a list holding one "
                   "(B, D, h, w) tensor per layer asked")
    else:
        last = grids[0]
        problem = (f"patch_tokens returned shape {tuple(last.shape)}; expected ({n}, D, h, w)"
                   if last.ndim != 4 or last.shape[0] != n else
                   f"patch tokens have dtype {last.dtype}; return float32"
                   if last.dtype != torch.float32 else
                   "patch tokens hold NaN or inf" if not bool(torch.isfinite(last).all()) else
                   "patch tokens carry autograd history; compute them under "
                   "torch.inference_mode()" if last.requires_grad or last.grad_fn else "")
    report.add("patch tokens", not problem, problem or
               f"available, {depth} layers; last layer {tuple(last.shape)} float32, finite: "
               "tumor_seg can run")


def _check_pretraining(report: ValidationReport, backbone: Backbone) -> None:
    """The declared pretraining datasets (brainbench.analyses.contamination): well formed, and
    which evaluation datasets they contain (those cells will be marked contaminated)."""
    from brainbench.analyses.contamination import (FIELD, check_pretraining_datasets,
                                                   evaluation_datasets)

    value = getattr(backbone, FIELD, None)
    try:
        declared = None if value is None else check_pretraining_datasets(
            value, f"backbone.{FIELD}")
    except BenchError as exc:
        report.add("pretraining data", False, str(exc))
        return
    if declared is None:
        report.add("pretraining data", True, "not declared (unknown): contamination cannot be "
                   f"checked; declare it (a card's {FIELD}, a Python file's module-level "
                   f"{FIELD.upper()}: a list of dataset names, [] for none)")
        return
    overlap = evaluation_datasets(declared)
    report.add("pretraining data", True, (", ".join(declared) or "none") + (
        f"; results on {', '.join(overlap)} will be marked CONTAMINATED" if overlap else
        "; no evaluation dataset among them"))


def _check_weights(report: ValidationReport, backbone: Backbone) -> None:
    w = getattr(backbone, "weights", None)
    if w is None or not hasattr(w, "status"):
        report.add("weights", False, "backbone.weights must be a brainbench.backbone.WeightsInfo")
        return
    report.weights = {"status": w.status, "source": w.source, "sha256": w.sha256}
    if w.status not in ("pretrained", "random-init") or not re.fullmatch(r"[0-9a-f]{64}",
                                                                         str(w.sha256)):
        report.add("weights", False, f"weights status {w.status!r} / sha256 {w.sha256!r}: "
                   "status must be 'pretrained' or 'random-init' and sha256 64 hex digits")
        return
    load_report = getattr(backbone, "load_report", None)
    if w.status == "random-init":
        report.add("weights", True, f"RANDOM-INIT ({w.source}); every result will be flagged "
                   "random-init in the store, the bundle and the leaderboard")
        return
    try:
        digest = check_pretrained_file(w.source, w.sha256)
    except BenchError as exc:
        report.add("weights", False, str(exc))
        return
    report.add("weights", True, f"pretrained, {Path(w.source).name} sha256 {digest[:16]}…")
    if load_report is not None:
        report.add("weights: strict load", True, "; ".join(load_report.lines()))
    else:
        report.notes.append("this backbone does not expose a load report; load your checkpoint "
                            "with brainbench.weights.load_state_strict so skipped keys are named")


def _check_identity(report: ValidationReport, backbone: Backbone) -> None:
    try:
        arch = backbone.architecture()
        json.dumps(backbone.cache_identity(), sort_keys=True)
        json.dumps(arch, sort_keys=True)
    except Exception as exc:
        report.add("identity", False, f"architecture() / cache_identity() must return "
                   f"JSON-serialisable dicts (they key the feature cache): {type(exc).__name__}: "
                   f"{exc}")
        return
    report.architecture = arch
    report.add("identity", isinstance(arch, dict) and bool(arch),
               "architecture() and cache_identity() are JSON-serialisable"
               if isinstance(arch, dict) and arch else "architecture() must return a non-empty "
               "dict of the settings that change features")
    try:
        backbone.num_patch_layers()  # available: the "patch tokens" check runs them
    except NotImplementedError:
        report.notes.append("no patch tokens (Backbone.patch_tokens): tumor_seg will be reported "
                            "as unsupported for this backbone; every other endpoint runs")


def _measure(report: ValidationReport, backbone: Backbone, rss: float, cuda: bool) -> None:
    """Time one full volume (2d: all its slices in one batch; 3d: one volume)."""
    x = volume_to_input(synthetic_brain(2), backbone.contract)
    backbone.embed(x[:1])  # warm-up
    started = time.perf_counter()
    backbone.embed(x)
    elapsed = time.perf_counter() - started
    modules = modules_of(backbone)
    report.measures.update(
        seconds_per_item=elapsed / x.shape[0], items_timed=float(x.shape[0]),
        parameter_mb=sum(p.numel() * p.element_size() for _, m in modules
                         for p in m.parameters()) / 2 ** 20,
        forward_rss_mb=max(0.0, _rss_mb() - rss))
    if cuda:
        report.measures["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if not math.isfinite(elapsed):  # pragma: no cover
        report.notes.append("timing failed")
