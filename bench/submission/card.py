"""A declarative backbone card (TOML) for the common cases: timm, open_clip or MONAI networks.

A card names an architecture in one of those libraries, its keyword arguments, a weights file
(loaded strictly through `brainbench.weights.load_state_strict`, with every allowed missing or
unexpected key listed with its reason) and the input contract. No Python is needed. Example:

    name = "resnet18_demo"
    family = "timm"
    architecture = "resnet18"
    weights = "resnet18_demo.pth"      # relative to the card; omit for random init (flagged)
    [kwargs]
    in_chans = 1
    [contract]
    dims = "2d"
    in_channels = 1
    image_size = [112, 112]
    num_slices = 16
    intensity = "robust_zscore"
    tokens = ["cls", "patch_mean"]
    feature_dim = 512
    pretraining_datasets = ["ImageNet-1k"]  # what the weights saw; [] none, "unknown" (default)
    [parity]                           # optional: equality with the author's own code
    reference = "ref.npz"              # arrays named like tokens, made by the author's code
    input_seed = 7                     # numpy.random.default_rng(7).standard_normal(shape)
    tolerance = 1e-5                   # norm-relative, per array
    weights = "parity_weights.pth"     # the file the reference was made with (default: weights)

Tokens a card can ask for: ``cls`` = the network's own pooled vector (timm: ``forward_head(...,
pre_logits=True)``, i.e. the class token of a ViT or global average pooling of a CNN;
open_clip: ``encode_image``; MONAI: the output vector, the first token of a token sequence, or
the spatial mean of a feature map) and ``patch_mean`` = the mean over patch tokens / positions
(timm and MONAI).

Patch tokens (the tumor_seg endpoint) come for free where the library gives them cleanly: a
timm model whose blocks all yield one same-shaped token grid (plain ViTs: ``forward_intermediates``
through the final norm, prefix tokens removed) and an open_clip ViT tower (through ``ln_post``).
Hierarchical timm models (ResNet, Swin, ConvNeXt) and MONAI networks have none, and tumor_seg
is reported as unsupported for them.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from brainbench.backbone import BACKBONES, InputContract, WeightsInfo
from brainbench.errors import BenchError
from brainbench.preprocess import INTENSITIES, intensity_problem
from brainbench.weights import LoadReport, load_checkpoint, load_state_strict, sha256_file

FAMILIES = ("timm", "open_clip", "monai")
FAMILY_TOKENS = {"timm": ("cls", "patch_mean"), "open_clip": ("cls",),
                 "monai": ("cls", "patch_mean")}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TOP_FIELDS = {"name", "family", "architecture", "weights", "sha256", "checkpoint_key",
              "prefix", "description", "kwargs", "contract", "allowed_missing",
              "allowed_unexpected", "parity", "pretraining_datasets"}
CONTRACT_FIELDS = ("dims", "in_channels", "image_size", "num_slices", "intensity", "tokens",
                   "feature_dim")
RANDOM_SEED = 0
PARITY_FIELDS = ("reference", "input_seed", "tolerance", "weights", "image_size", "batch")
PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Parity:
    """A submitted backbone's reference output (SUBMITTING.md, "Parity with your own upstream
    code"): `reference` (.npz, one array per token) was computed by the author's own code, with
    the weights file `weights`, on ``numpy.random.default_rng(input_seed).standard_normal(shape)``
    as float32, shape (batch, C, H, W) for 2d or (batch, C, D, H, W) for 3d from the contract
    (2d: `image_size` replaces the contract's size when given). `where` names the source
    file and `spelling` how its fields are spelled, for messages."""

    reference: Path
    input_seed: int
    where: str
    tolerance: float = PARITY_TOLERANCE
    weights: Path | None = None
    image_size: int | None = None
    batch: int | None = None
    spelling: str = "parity.{}"

    def name(self, key: str) -> str:
        return self.spelling.format(key)


def parse_parity(table: Any, base: Path, where: str, spelling: str = "parity.{}",
                 table_name: str = "[parity]") -> Parity:
    """A [parity] table (card) or PARITY dict (Python file) -> Parity; paths are relative to
    `base` (the folder of the card or file). Every problem names the field and what is
    expected."""
    def fail(text: str) -> BenchError:
        return BenchError(f"{where}: {text}")

    label = spelling.format
    if not isinstance(table, Mapping):
        raise fail(f"{table_name} must be a table with fields {list(PARITY_FIELDS)}, got "
                   f"{type(table).__name__}")
    unknown = sorted(map(str, set(table) - set(PARITY_FIELDS)))
    if unknown:
        raise fail(f"unknown {table_name} field(s) {unknown}; fields: {list(PARITY_FIELDS)}")

    def get(key: str, kind, required: bool = False):
        if key not in table:
            if required:
                raise fail(f"missing field {label(key)} (parity needs {want[key]})")
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise fail(f"field {label(key)} must be {want[key]}, got {value!r}")
        return value

    want = {"reference": "the .npz file of reference arrays, relative to this file",
            "input_seed": "an integer >= 0 (numpy.random.default_rng(seed))",
            "tolerance": "a positive number (norm-relative error per array, e.g. 1e-5)",
            "weights": "the weights file the reference was made with, relative to this file",
            "image_size": "a positive integer (2d: the square slice size of the reference)",
            "batch": "a positive integer (inputs in the reference batch)"}
    reference = get("reference", str, required=True)
    if not reference.strip():
        raise fail(f"field {label('reference')} must be {want['reference']}, got ''")
    seed = get("input_seed", int, required=True)
    if seed < 0:
        raise fail(f"field {label('input_seed')} must be {want['input_seed']}, got {seed}")
    tolerance = get("tolerance", (int, float))
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise fail(f"field {label('tolerance')} must be {want['tolerance']}, got {tolerance!r}")
    weights = get("weights", str)
    size, batch = get("image_size", int), get("batch", int)
    for key, value in (("image_size", size), ("batch", batch)):
        if value is not None and value <= 0:
            raise fail(f"field {label(key)} must be {want[key]}, got {value}")
    return Parity(reference=(base / reference).resolve(), input_seed=seed, where=where,
                  tolerance=float(tolerance) if tolerance is not None else PARITY_TOLERANCE,
                  weights=(base / weights).resolve() if weights else None, image_size=size,
                  batch=batch, spelling=spelling)


@dataclass(frozen=True)
class Card:
    """A parsed, checked card. `path` is the card file; `weights` is resolved against it."""

    path: Path
    name: str
    family: str
    architecture: str
    contract: InputContract
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    sha256: str | None = None
    checkpoint_key: str | None = None
    prefix: str | None = None
    description: str = ""
    allowed_missing: dict[str, str] = field(default_factory=dict)
    allowed_unexpected: dict[str, str] = field(default_factory=dict)
    parity: Parity | None = None
    pretraining_datasets: tuple[str, ...] | None = None  # None: "unknown" (not declared)


def _fail(path: Path, text: str) -> BenchError:
    return BenchError(f"card {path}: {text}")


def _typed(path: Path, table: Mapping[str, Any], key: str, kind: type | tuple, where: str = "",
           required: bool = True) -> Any:
    if key not in table:
        if required:
            raise _fail(path, f"missing field {where}{key!r}")
        return None
    value = table[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(path, f"field {where}{key!r} must be {want}, got {value!r}")
    return value


def _reasons(path: Path, data: Mapping[str, Any], key: str) -> dict[str, str]:
    table = _typed(path, data, key, dict, required=False) or {}
    for pattern, reason in table.items():
        if not isinstance(reason, str) or not reason.strip():
            raise _fail(path, f"[{key}] {pattern!r} needs a reason (a non-empty string), got "
                              f"{reason!r}")
    return dict(table)


def parse_contract(path: Path, table: Mapping[str, Any]) -> InputContract:
    """The [contract] table -> InputContract, every field present and consistent."""
    unknown = sorted(set(table) - set(CONTRACT_FIELDS))
    if unknown:
        raise _fail(path, f"unknown [contract] field(s) {unknown}; fields: {list(CONTRACT_FIELDS)}")
    dims = _typed(path, table, "dims", str, "contract.")
    if dims not in ("2d", "3d"):
        raise _fail(path, f"contract.dims must be '2d' or '3d', got {dims!r}")
    channels = _typed(path, table, "in_channels", int, "contract.")
    size = _typed(path, table, "image_size", list, "contract.")
    want = 2 if dims == "2d" else 3
    if len(size) != want or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                    for v in size):
        raise _fail(path, f"contract.image_size must be {want} positive integers for dims "
                          f"{dims!r} ({'[H, W]' if want == 2 else '[D, H, W]'}), got {size!r}")
    slices = _typed(path, table, "num_slices", int, "contract.", required=dims == "2d")
    if dims == "3d" and slices is not None:
        raise _fail(path, "contract.num_slices applies to 2d backbones only; remove it for a 3d "
                          "backbone (the whole volume is resized to image_size)")
    intensity = _typed(path, table, "intensity", str, "contract.")
    if intensity not in INTENSITIES:
        raise _fail(path, f"contract.intensity must be one of {list(INTENSITIES)}, got "
                          f"{intensity!r}")
    tokens = _typed(path, table, "tokens", list, "contract.")
    if not tokens or not all(isinstance(t, str) and t for t in tokens) or len(set(tokens)) != len(
            tokens):
        raise _fail(path, f"contract.tokens must be a non-empty list of distinct names, got "
                          f"{tokens!r}")
    dim = _typed(path, table, "feature_dim", int, "contract.")
    for field_name, value in (("in_channels", channels), ("num_slices", slices),
                              ("feature_dim", dim)):
        if value is not None and value <= 0:
            raise _fail(path, f"contract.{field_name} must be positive, got {value}")
    problem = intensity_problem(intensity, channels)
    if problem:
        raise _fail(path, f"contract.{problem}")
    return InputContract(dims=dims, in_channels=channels, image_size=tuple(size),
                         num_slices=slices, intensity=intensity, tokens=tuple(tokens),
                         feature_dim=dim)


def read_card(path: str | Path) -> Card:
    """Parse and check a card file; every problem names the field and what is expected."""
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"card {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read card {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"card {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - TOP_FIELDS)
    if unknown:
        raise _fail(path, f"unknown field(s) {unknown}; fields: {sorted(TOP_FIELDS)}")
    name = _typed(path, data, "name", str)
    if not NAME_RE.match(name):
        raise _fail(path, f"name {name!r} must be 1-64 lower-case letters, digits, '_', '.' or "
                          "'-', starting with a letter or digit (it names result rows and the "
                          "bundle folder)")
    family = _typed(path, data, "family", str)
    if family not in FAMILIES:
        raise _fail(path, f"family must be one of {list(FAMILIES)}, got {family!r}")
    contract = parse_contract(path, _typed(path, data, "contract", dict))
    extra = sorted(set(contract.tokens) - set(FAMILY_TOKENS[family]))
    if extra:
        raise _fail(path, f"contract.tokens {extra} cannot be produced by a {family} card; "
                          f"available: {list(FAMILY_TOKENS[family])} (write a Python backbone "
                          "file for other tokens)")
    kwargs = _typed(path, data, "kwargs", dict, required=False) or {}
    if family == "timm" and "num_classes" in kwargs:
        raise _fail(path, "kwargs.num_classes: a timm card always builds the encoder without "
                          "its classifier (num_classes=0); list the classifier's keys under "
                          "[allowed_unexpected] instead")
    weights = _typed(path, data, "weights", str, required=False)
    sha = _typed(path, data, "sha256", str, required=False)
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise _fail(path, f"sha256 must be 64 lower-case hex digits, got {sha!r}")
    if sha is not None and weights is None:
        raise _fail(path, "sha256 is given but weights is not")
    parity = None
    if "parity" in data:
        parity = parse_parity(data["parity"], path.parent, f"card {path}")
        if parity.image_size is not None and contract.dims != "2d":
            raise _fail(path, "parity.image_size applies to 2d contracts only; a 3d reference "
                              "uses contract.image_size")
    return Card(path=path, name=name, family=family,
                architecture=_typed(path, data, "architecture", str), contract=contract,
                kwargs=dict(kwargs),
                weights=(path.parent / weights).resolve() if weights else None, sha256=sha,
                checkpoint_key=_typed(path, data, "checkpoint_key", str, required=False),
                prefix=_typed(path, data, "prefix", str, required=False),
                description=_typed(path, data, "description", str, required=False) or "",
                allowed_missing=_reasons(path, data, "allowed_missing"),
                allowed_unexpected=_reasons(path, data, "allowed_unexpected"), parity=parity,
                pretraining_datasets=_pretraining(path, data))


def _pretraining(path: Path, data: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The card's ``pretraining_datasets`` (brainbench.analyses.contamination): a list of
    dataset names, [] for none, or "unknown" (also when absent)."""
    from brainbench.analyses.contamination import FIELD, UNKNOWN, check_pretraining_datasets

    return check_pretraining_datasets(data.get(FIELD, UNKNOWN), f"card {path}: field {FIELD!r}")


# --------------------------------------------------------------------------- building


def build_module(card: Card) -> tuple[torch.nn.Module, Callable, str]:
    """(model, features(model, x) -> {token: (B, D)}, library version) for the card's family."""
    try:
        if card.family == "timm":
            import timm

            model = timm.create_model(card.architecture, pretrained=False, num_classes=0,
                                      **card.kwargs)
            return model, _timm_features, f"timm {timm.__version__}"
        if card.family == "open_clip":
            import open_clip

            model = open_clip.create_model(card.architecture, pretrained=None, **card.kwargs)
            return model.visual, _clip_features, f"open_clip {open_clip.__version__}"
        import monai
        import monai.networks.nets as nets

        factory = getattr(nets, card.architecture, None)
        if factory is None or not callable(factory):
            raise BenchError(f"card {card.path}: architecture {card.architecture!r} is not in "
                             "monai.networks.nets (e.g. resnet10, DenseNet121, ViT, SwinUNETR)")
        return factory(**card.kwargs), _monai_features, f"monai {monai.__version__}"
    except BenchError:
        raise
    except Exception as exc:  # unknown model names, bad kwargs: the library's own message
        raise BenchError(f"card {card.path}: {card.family} cannot build architecture "
                         f"{card.architecture!r} with kwargs {card.kwargs}: "
                         f"{type(exc).__name__}: {exc}") from None


def dense_tokens(family: str, model: torch.nn.Module):
    """The card model's patch grids for tumor_seg (a `DenseTokens`), or None."""
    from brainbench.baselines._frozen import open_clip_dense, timm_dense

    if family == "timm":
        return timm_dense(model)
    if family == "open_clip":
        return open_clip_dense(model)
    return None


def _pool_tokens(out: torch.Tensor, num_prefix: int = 0) -> dict[str, torch.Tensor]:
    if out.ndim == 2:
        return {"cls": out, "patch_mean": out}
    if out.ndim == 3:  # (B, N, D) token sequence
        return {"cls": out[:, 0], "patch_mean": out[:, num_prefix:].mean(dim=1)}
    pooled = out.flatten(2).mean(dim=2)  # (B, C, *spatial)
    return {"cls": pooled, "patch_mean": pooled}


def _timm_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    if feats.ndim == 4 and feats.shape[1] != pooled.shape[-1]:  # NHWC models (e.g. swin)
        feats = feats.permute(0, 3, 1, 2)
    grid = _pool_tokens(feats, getattr(model, "num_prefix_tokens", 0))
    return {"cls": pooled.flatten(1), "patch_mean": grid["patch_mean"]}


def _clip_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"cls": model(x)}


def _monai_features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x)
    if isinstance(out, (tuple, list)):  # e.g. MONAI ViT returns (tokens, hidden states)
        out = out[0]
    return _pool_tokens(out)


def _state_from(card: Card, ckpt: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str],
                                                               list[str]]:
    """The state dict the card points at, plus keys outside its prefix (with reasons)."""
    notes: list[str] = []
    state: Mapping[str, Any] = ckpt
    if card.checkpoint_key:
        if card.checkpoint_key not in ckpt or not isinstance(ckpt[card.checkpoint_key], Mapping):
            raise BenchError(f"weights {card.weights}: checkpoint_key {card.checkpoint_key!r} "
                             f"(card {card.path}) is not a dict in the file; top-level keys: "
                             f"{sorted(map(str, ckpt))[:10]}")
        state = ckpt[card.checkpoint_key]
        notes.append(f"used ckpt[{card.checkpoint_key!r}]")
    prefix = card.prefix
    if prefix is None and card.family == "open_clip" and any(
            str(k).startswith("visual.") for k in state):
        prefix = "visual."
    if not prefix:
        return dict(state), {}, notes
    inside = {k[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    if not inside:
        raise BenchError(f"weights {card.weights}: no key starts with prefix {prefix!r} (card "
                         f"{card.path}); first keys: {sorted(map(str, state))[:5]}")
    outside = {k: f"outside prefix {prefix!r}: not part of the image encoder"
               for k in state if not str(k).startswith(prefix)}
    notes.append(f"used keys under {prefix!r}; {len(outside)} other key(s) ignored")
    return inside, outside, notes


def load_weights(card: Card, model: torch.nn.Module) -> tuple[WeightsInfo, LoadReport | None]:
    """Strictly load the card's weights into `model`, or keep the seeded init (random-init)."""
    if card.weights is None:
        from brainbench.weights import state_dict_sha256

        return WeightsInfo("random-init", f"{card.family} init (seed {RANDOM_SEED}); the card "
                           "names no weights file", state_dict_sha256(model)), None
    digest = sha256_file(card.weights)
    if card.sha256 and digest != card.sha256:
        raise BenchError(f"weights {card.weights}: sha256 {digest} does not match the card's "
                         f"sha256 {card.sha256} ({card.path}); the file changed or the card is "
                         "stale")
    state, outside, notes = _state_from(card, load_checkpoint(card.weights))
    report = load_state_strict(model, state, allowed_missing=card.allowed_missing,
                               allowed_unexpected=card.allowed_unexpected,
                               source=str(card.weights),
                               model_name=f"{card.family} {card.architecture}")
    report = LoadReport(report.source, report.loaded, report.skipped_missing,
                        {**report.skipped_unexpected, **outside}, report.file_dtypes, tuple(notes))
    return WeightsInfo("pretrained", str(card.weights), digest), report


def card_backbone(card: Card, *, weights: Path | None = None, require_weights: bool = False,
                  image_size: int | None = None, num_slices: int | None = None):
    """Build the card's frozen backbone. 2d cards follow the profile's slice size and count
    (like every built-in 2d backbone); `weights` (from --weights) replaces the card's file."""
    from dataclasses import replace

    from brainbench.baselines._frozen import FrozenBackbone
    from brainbench.baselines._resolve import seeded

    if card.name in BACKBONES:
        raise BenchError(f"card {card.path}: name {card.name!r} is a built-in backbone; choose "
                         "another name so results never mix with the reference rows")
    if weights is not None:
        card = replace(card, weights=Path(weights).expanduser().resolve(), sha256=None)
    if card.weights is None and require_weights:
        raise BenchError(f"card {card.path} names no weights file and require-weights is set; "
                         "add weights = \"file.pth\" to the card or pass --weights")
    contract = card.contract
    if contract.dims == "2d" and (image_size or num_slices):
        contract = replace(contract, image_size=(image_size, image_size) if image_size
                           else contract.image_size, num_slices=num_slices or contract.num_slices)
    built: dict[str, Any] = {}

    def build() -> torch.nn.Module:
        built["model"], built["features"], built["library"] = build_module(card)
        return built["model"]

    model = seeded(build, RANDOM_SEED)
    info, report = load_weights(card, model)
    model.eval().requires_grad_(False)
    if info.is_random:
        from brainbench.backbone import warn_random_init_once

        warn_random_init_once(card.name, f"Add weights = \"file.pth\" to {card.path}.")
    architecture = {"card": card.name, "family": card.family, "model": card.architecture,
                    "kwargs": card.kwargs, "implementation": built["library"],
                    "features": {"cls": "the network's pooled vector",
                                 "patch_mean": "mean over patch tokens / positions"}}
    produce, wanted = built["features"], contract.tokens

    def features(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = produce(module, x)
        return {t: out[t] for t in wanted}  # only the declared tokens

    backbone = FrozenBackbone(card.name, model, features, contract, info, architecture, report,
                              dense=dense_tokens(card.family, model))
    backbone.pretraining_datasets = () if info.is_random else card.pretraining_datasets
    return backbone
