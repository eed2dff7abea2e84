"""Synthetic brain-MRI cohorts with known ground truth, written in the real datasets' layouts.

``from brainbench.phantoms import generate_phantoms, PHANTOM_VERSION, DATASETS``; the names are
loaded lazily so that ``python -m brainbench.phantoms.generate`` runs without a double import.
The rendering modules import ``scipy.ndimage`` inside the functions that use it: a warm run
only reads the cohort's manifest and should not pay ~0.15 s to import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DATASETS", "PHANTOM_VERSION", "generate_phantoms"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from brainbench.phantoms import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'brainbench.phantoms' has no attribute {name!r}")
