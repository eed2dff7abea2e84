"""What a dataset adapter hands to the engine: people, their scans and their labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class Subject:
    """One scan session of one person, as read from a dataset's own files.

    id:      unique within the dataset (a scan/session/exam id, e.g. ``UPENN-GBM-00012_21``).
    group:   the person; every split and label fraction keeps a group together.
    images:  modality name -> NIfTI path (modality names are the task's, e.g. ``t1``, ``t1c``).
    targets: label values by name (``age``, ``dx``, ``idh``, ``os_days``, ``event`` ...).
    meta:    covariates that are not targets but may stratify (``site``, ``sex`` ...).
    """

    id: str
    group: str
    images: Mapping[str, Path]
    targets: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cohort:
    """Everything an adapter read from one dataset folder."""

    dataset: str
    root: Path
    subjects: tuple[Subject, ...]
    notes: tuple[str, ...] = ()  # things the adapter resolved (duplicate ids, dropped rows), shown to users
