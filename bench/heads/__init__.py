"""Every head: one `Head` base, one registry (`HEADS`), one build path (`make_head`).

All heads train on cached frozen features (or patch-token grids) only; the encoder never
trains. A head is a `Head` subclass registered per task kind with ``@register_head(name)``;
importing this package imports the built-in head modules, which register themselves (as timm's
model modules do). Adding a head touches two files: its module (subclass `Head`, decorate it,
optionally `brainbench.protocols.register_protocol` a protocol that uses it) and one import
line below.

Built-ins: ``linear`` (classification, regression, survival, segmentation), ``mlp``,
``attention``, ``knn`` (the probe kinds) and ``multiscale`` (segmentation).
"""

from __future__ import annotations

from typing import Any, Mapping

from brainbench.heads.base import (
    HEADS,
    FitInfo,
    Head,
    HeadEntry,
    Log1pTransform,
    ProbeFit,
    heads_for,
    make_target_transform,
    register_head,
)

# the built-in heads register themselves on import
from brainbench.heads import attention, knn, linear, mlp, segmentation  # noqa: F401

__all__ = ["HEADS", "FitInfo", "Head", "HeadEntry", "Log1pTransform", "ProbeFit", "heads_for",
           "make_head", "make_target_transform", "register_head"]


def make_head(name: str, kind: str, *, seed: int, params: Mapping[str, Any] | None = None,
              target_transform: str | None = None) -> Head:
    """A fresh, unfitted head `name` for task kind `kind`: the one way heads are built.

    Heads are implemented per prediction family; a registered task kind is mapped to its
    family (a new kind predicting class probabilities runs on every classification head)."""
    from brainbench.kinds import KINDS

    if kind in KINDS:
        kind = KINDS.get(kind).family
    cls = HEADS.get(name).head_class(kind)
    return cls.from_params(kind, seed=seed, params=params, target_transform=target_transform)
