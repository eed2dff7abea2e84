"""The typed boundary between cohort sampling (main process) and rendering (worker processes).

Why a separate module: a ScanSpec must be small and picklable, and both sides import it without
importing each other.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainbench.phantoms.anatomy import AnatomySpec
from brainbench.phantoms.lesions import StrokeSpec, TumourSpec
from brainbench.phantoms.mri import SiteProtocol


@dataclass(frozen=True)
class ScanSpec:
    """One image session to render: which files, which brain, which lesion, which scanner.

    ``images`` maps each written contrast (mri.CONTRASTS name) to its path relative to the
    dataset folder; ``label_kind`` is ``brats`` (int16 {0,1,2,4}) or ``binary`` (uint8 {0,1}).
    """

    dataset: str
    scan_id: str
    images: tuple[tuple[str, str], ...]
    anatomy: AnatomySpec
    protocol: SiteProtocol
    noise_seed: int
    label_path: str | None = None
    label_kind: str = "brats"
    tumour: TumourSpec | None = None
    stroke: StrokeSpec | None = None
    snr_jitter: float = 1.0
    gain_jitter: float = 1.0


@dataclass
class Record:
    """One row of a dataset's own label file and/or one scan, with its latent truth.

    ``fields`` holds everything (native values and latent covariates); layouts pick and format
    the native columns, the truth CSV keeps the latent ones. ``in_table`` False: a scan with no
    label-file row (UPENN-GBM follow-ups); ``scan`` None: a row whose image does not exist.
    ``quirk`` marks rows that exist only to reproduce a real file's oddity (duplicates).
    """

    key: str
    fields: dict[str, Any]
    scan: ScanSpec | None = None
    in_table: bool = True
    quirk: str = ""
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class CohortPlan:
    """Everything sampled for one dataset before rendering."""

    dataset: str
    n_subjects: int
    records: list[Record]

    @property
    def scans(self) -> list[ScanSpec]:
        return [r.scan for r in self.records if r.scan is not None]


def dataset_key(name: str) -> int:
    """A stable integer for a dataset name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def rng_for(seed: int, dataset: str, *keys: int) -> np.random.Generator:
    """The one way to get randomness: a Generator seeded by (global seed, dataset, keys...)."""
    return np.random.default_rng([int(seed), dataset_key(dataset), *[int(k) for k in keys]])
