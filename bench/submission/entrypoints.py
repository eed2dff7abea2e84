"""Backbones from installed packages: the entry-point group ``brainbench.backbones``.

A package declares, in its pyproject.toml::

    [project.entry-points."brainbench.backbones"]
    my_model = "my_package.brainbench_backbone:make_my_model"

The entry point's name is the backbone name; the object is a factory (or Backbone subclass)
called with the keyword arguments it accepts among weights, require_weights, image_size and
num_slices. Entry points are registered lazily: importing the plugin happens only when the
backbone is created. A name that is already registered (a built-in) is refused, loudly.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from brainbench.backbone import BACKBONES, Backbone
from brainbench.errors import BenchError

GROUP = "brainbench.backbones"
_registered: dict[str, str] = {}  # backbone name -> entry point value


def _factory(ep: EntryPoint):
    def make(**kwargs: Any) -> Backbone:
        from brainbench.submission.pyfile import call_factory

        where = f"entry point {ep.name} = {ep.value!r} (group {GROUP})"
        try:
            entry = ep.load()
        except Exception as exc:
            raise BenchError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        backbone = call_factory(entry, where, **kwargs)
        if backbone.name != ep.name:
            raise BenchError(f"{where} built a backbone named {backbone.name!r}; it must be "
                             f"named {ep.name!r} like its entry point")
        return backbone

    return make


def register_entry_points() -> list[str]:
    """Register every installed ``brainbench.backbones`` entry point; returns the new names."""
    added = []
    for ep in entry_points(group=GROUP):
        if _registered.get(ep.name) == ep.value:
            continue
        if ep.name in BACKBONES:
            warnings.warn(f"entry point {ep.name} = {ep.value!r} (group {GROUP}) is ignored: "
                          f"the name {ep.name!r} is already registered", stacklevel=2)
            continue
        BACKBONES.register(ep.name, _factory(ep))
        _registered[ep.name] = ep.value
        added.append(ep.name)
    return added
