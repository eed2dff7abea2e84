"""Where generated data, caches and results live: outside git, overridable by environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Phantom cohorts and feature cache (large, reusable across clones)."""
    return Path(os.environ.get("BRAINBENCH_CACHE", Path.home() / ".cache" / "brainbench"))


def results_dir() -> Path:
    """Results database and split manifests (small; what a run produced)."""
    return Path(os.environ.get("BRAINBENCH_RESULTS", "results"))
