"""From per-slice tokens of each modality to one vector per sample."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from brainbench.errors import BenchError

SliceAggregator = Callable[[np.ndarray], np.ndarray]

AGGREGATORS: dict[str, SliceAggregator] = {
    "mean": lambda tokens: tokens.mean(axis=0),  # the reference: mean over slices
    "max": lambda tokens: tokens.max(axis=0),
}


def sample_vector(per_modality: Sequence[dict[str, np.ndarray]], token: str = "cls",
                  how: str = "mean") -> np.ndarray:
    """Aggregate slices with `how`, then average the modalities (the reference's fusion)."""
    if how not in AGGREGATORS:
        raise BenchError(f"unknown slice aggregation {how!r}; valid: {sorted(AGGREGATORS)}")
    vectors = [AGGREGATORS[how](tokens[token]) for tokens in per_modality]
    return np.mean(vectors, axis=0)
