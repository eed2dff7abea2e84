"""The backbone interface: an input contract, honest weight provenance, and `embed` on a batch.

A backbone never reads files. The runner turns volumes into what `contract` asks for and
calls `embed`; everything that changes the features goes into `cache_identity()`.
"""

from __future__ import annotations

import abc
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from brainbench.registry import Registry

Dims = Literal["2d", "3d"]
Intensity = str  # a name in brainbench.preprocess.NORMALISATIONS, where the names are declared
WeightStatus = Literal["pretrained", "random-init", "control"]  # control: no learned weights
# by design (hand-crafted features, ground truth); shown as such wherever results are shown


@dataclass(frozen=True)
class InputContract:
    """What a backbone expects; the runner adapts each volume to it.

    dims:         "2d" = axial slices from the NIfTI's last axis, one forward pass per slice;
                  "3d" = the whole volume resampled to ``image_size``.
    in_channels:  grey input is repeated to this many channels.
    image_size:   (H, W) for 2d, (D, H, W) for 3d.
    num_slices:   2d only: the volume's depth is resized to this many slices, all of them encoded.
    intensity:    per-volume normalisation applied before resizing.
    tokens:       names of the vectors `embed` returns per image, e.g. ("cls", "patch_mean").
    feature_dim:  length of each returned vector.
    """

    dims: Dims
    in_channels: int
    image_size: tuple[int, ...]
    num_slices: int | None
    intensity: Intensity
    tokens: tuple[str, ...]
    feature_dim: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from. Random-init results must say so wherever they are shown."""

    status: WeightStatus
    source: str  # file path, or how the random init was made
    sha256: str  # of the weights file; for random init, of the initialised state dict

    @property
    def id(self) -> str:
        return f"{self.status}:{self.sha256[:16]}"

    @property
    def is_random(self) -> bool:
        return self.status == "random-init"

    @property
    def is_control(self) -> bool:
        return self.status == "control"


class Backbone(abc.ABC):
    """A frozen encoder. Subclasses set `name`, `contract`, `weights` and implement `embed`."""

    name: str
    contract: InputContract
    weights: WeightsInfo
    max_batch: int | None = None
    """Most inputs per forward call, for encoders whose activations are too large for the
    profile's batch (None: the profile's batch size). Does not change features."""
    precisions: tuple[str, ...] = ("fp32",)
    """Precisions `embed` can run at (brainbench.precision). Controls without a network, and
    submitted backbones that do not declare bf16, run and record fp32 whatever is asked."""
    precision: str = "fp32"
    """The precision `embed` runs at, resolved ("fp32" or "bf16", never "auto"); set by
    `create_backbone`. Part of `cache_identity` when it is not fp32."""
    preprocess_on: str = "workers"
    """Where z-score and resize run (brainbench.preprocess.PREPROCESS_PLACES): "workers"
    (numpy, in the decode workers) or "device" (torch, on the model's device; the workers only
    decode). Set by `create_backbone`; part of `cache_identity` when "device"."""
    pretraining_datasets: tuple[str, ...] | None = None
    """The corpora the weights were trained on (dataset names; () = none: random init or no
    learned weights; None = not declared, shown as "unknown"). Tables and the site mark every
    cell whose evaluation dataset is among them (brainbench.analyses.contamination). Built-ins
    declare it at `register_backbone`, cards in their ``pretraining_datasets`` field."""

    @abc.abstractmethod
    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode a batch shaped (B, C, *image_size); return {token name: (B, feature_dim)}."""

    @abc.abstractmethod
    def architecture(self) -> dict[str, Any]:
        """Architecture settings that change features (model name, eps, rope precision, ...)."""

    @abc.abstractmethod
    def parameter_count(self) -> int:
        """Number of encoder parameters (all frozen)."""

    def num_patch_layers(self) -> int:
        """Optional (dense tasks): how many layers `patch_tokens` can index (e.g. 12 blocks)."""
        raise NotImplementedError(f"backbone {self.name} does not provide patch tokens")

    def patch_tokens(self, batch: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Optional (dense tasks): the patch-token grid of each layer in `layers` (0-based).

        Takes the same batch as `embed`; returns one frozen (B, D, h, w) tensor per layer, in
        the order asked. Backbones that cannot do this keep the default, and segmentation
        says so before any compute.
        """
        raise NotImplementedError(f"backbone {self.name} does not provide patch tokens")

    def cache_identity(self) -> dict[str, Any]:
        """Everything about the backbone that the feature cache key must cover."""
        return {
            "backbone": self.name,
            "architecture": self.architecture(),
            "weights_sha256": self.weights.sha256,
            "contract": self.contract.as_dict(),
            # fp32 keys stay those of the first release; any other precision is its own entry
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            **({"preprocess_on": self.preprocess_on} if self.preprocess_on != "workers"
               else {}),
            **({"runtime": self.runtime} if self.runtime != "eager" else {}),
        }

    @property
    def runtime(self) -> str:
        """How `embed` executes now ("eager" or "compiled", brainbench.runtime); part of
        `cache_identity` when compiled. Eager unless a subclass can compile."""
        return "eager"

    def set_runtime(self, requested: str) -> None:
        """Ask for a runtime ("auto", "eager", "compiled"); backbones that cannot compile
        stay eager whatever is asked."""
        from brainbench.runtime import check_runtime

        check_runtime(requested)

    def set_precision(self, precision: str) -> None:
        """Run at `precision` ("fp32" or "bf16") where this backbone supports it, else fp32."""
        from brainbench.precision import RESOLVED

        if precision not in RESOLVED:
            from brainbench.errors import BenchError

            raise BenchError(f"backbone {self.name}: precision must be resolved to one of "
                             f"{list(RESOLVED)} (see brainbench.precision), got {precision!r}")
        self.precision = precision if precision in self.precisions else "fp32"


BackboneFactory = Callable[..., Backbone]
"""Called as factory(weights=Path | None, require_weights=bool, image_size=int | None,
num_slices=int | None); the last two are profile overrides for 2d backbones."""

BACKBONES: Registry[BackboneFactory] = Registry("backbone")


#: registered name -> the pretraining datasets it declares (absent: not declared, "unknown");
#: read without building a model, so tables can mark contaminated cells cheaply
PRETRAINING_DATASETS: dict[str, tuple[str, ...]] = {}


def register_backbone(name: str, pretraining_datasets: Sequence[str] | None = None
                      ) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory; ``pretraining_datasets`` declares what its weights were trained on
    (see `Backbone.pretraining_datasets`; None leaves it undeclared)."""
    if pretraining_datasets is not None:
        from brainbench.analyses.contamination import check_pretraining_datasets

        PRETRAINING_DATASETS[name] = check_pretraining_datasets(
            list(pretraining_datasets), f"backbone {name!r}: pretraining_datasets")
    return BACKBONES.decorator(name)


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    require_weights: bool = False,
    image_size: int | None = None,
    num_slices: int | None = None,
    precision: str = "fp32",
    preprocess_on: str = "workers",
    device: str = "cpu",
    compile: str = "eager",
) -> Backbone:
    """Build a registered backbone (like timm.create_model). Unknown names list the valid ones.

    ``name`` may also be the path of a backbone card (.toml) or Python backbone file (.py), and
    installed packages add names through the entry-point group ``brainbench.backbones``
    (see brainbench.submission and SUBMITTING.md). ``precision`` is "fp32" (exact, the
    library default), "bf16" or "auto" (brainbench.precision), resolved here for the
    backbone's device; the built backbone's ``.precision`` says what it runs at.
    ``preprocess_on``: "workers" (default) or "device" (brainbench.preprocess).
    ``device``: "cpu" (the library default), "cuda[:N]" or "auto" (brainbench.device); the
    network is moved there before its precision is resolved for it. ``compile``: "eager"
    (the library default), "compiled" or "auto" (brainbench.runtime), resolved per precision.
    """
    from brainbench.device import place, resolve_device
    from brainbench.precision import check_precision, resolve_precision
    from brainbench.preprocess import check_preprocess_place
    from brainbench.runtime import check_runtime

    check_precision(precision)  # a bad value fails before any model is built
    check_preprocess_place(preprocess_on)
    check_runtime(compile)
    device = resolve_device(device)
    load_plugins()
    from brainbench.submission.source import backbone_from_path, is_submission_path

    if name not in BACKBONES and is_submission_path(name):
        backbone = backbone_from_path(name, weights=weights, require_weights=require_weights,
                                      image_size=image_size, num_slices=num_slices)
    else:
        factory = BACKBONES.get(name)
        backbone = factory(
            weights=Path(weights) if weights is not None else None,
            require_weights=require_weights,
            image_size=image_size,
            num_slices=num_slices,
        )
    place(backbone, device)
    backbone.set_precision(resolve_precision(precision, getattr(backbone, "device", "cpu")))
    backbone.set_runtime(compile)
    if not getattr(backbone, "reads_files", False):  # controls reading truth decode nothing
        backbone.preprocess_on = preprocess_on
    if backbone.pretraining_datasets is None and name in PRETRAINING_DATASETS:
        backbone.pretraining_datasets = PRETRAINING_DATASETS[name]
    return backbone


def check_backbone_name(name: str) -> None:
    """`create_backbone`'s refusal of an unknown name, without building anything: for a
    command that builds several backbones one after another and must not build the first
    before finding that the last does not exist."""
    load_plugins()
    from brainbench.submission.source import is_submission_path

    if name not in BACKBONES and not is_submission_path(name):
        BACKBONES.get(name)  # raises the registry's error, naming the valid ones


def load_plugins() -> None:
    """Register the built-in backbones and those of installed entry-point packages."""
    import brainbench.baselines  # noqa: F401  (registers the built-in backbones)
    from brainbench.submission.entrypoints import register_entry_points

    register_entry_points()


_warned: set[str] = set()


def warn_random_init_once(name: str, hint: str) -> None:
    """One warning per backbone per process when it runs without trained weights."""
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(
        f"backbone {name!r}: no weights configured, using RANDOM INITIALISATION; every result "
        f"will be marked random-init. {hint}",
        stacklevel=3,
    )
