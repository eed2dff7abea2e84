"""Typed task metadata (like MTEB's TaskMetadata) and the registry the cards in tasks/ fill."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from brainbench.errors import BenchError
from brainbench.registry import Registry
from brainbench.subjects import Cohort, Subject
from brainbench.targets import ModalityTarget, Target

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
DEFAULT_TEST_FRACTION = 0.2

Kind = Literal["classification", "regression", "survival", "segmentation"]


@dataclass(frozen=True)
class DatasetVariant:
    """The same endpoint read from an alternate dataset: what changes with the data.

    e.g. neurodegen_cls on OASIS-1 is demented vs not (CDR > 0) instead of ADNI's CN/MCI/AD.
    """

    dataset: str
    target: Target
    target_description: str
    stratify_meta: tuple[str, ...] = ()
    select: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""


@dataclass(frozen=True)
class SiteHeldOut:
    """Robustness to unseen sites: train on the other sites, test on one held-out site.

    The held-out site is a pure function of the cohort, so the split is as fixed as the
    standard one: among the sites whose removal leaves every label on both sides (and at
    least one training site), the one whose number of people is closest to the task's
    test_fraction of the cohort (ties: the site name). The site is recorded in the manifest
    and in each cell's ``split`` ("site-held-out:<site>"); subjects without a site are left
    out of this split, with a note.
    """

    meta: str = "site"  # the subject meta key that names the site

    name = "site-held-out"


@dataclass(frozen=True)
class PrecisionRule:
    """Where ``PRECISION=auto`` keeps a task in fp32 although the hardware runs bf16 fast.

    Why: issue #15's rule. If bf16 features move a primary metric by more than
    `brainbench.precision.BF16_SHIFT_LIMIT_SD` of its fp32 seed-to-seed sd in the full default
    sweep (``scripts/precision_sweep.py``; BENCHMARKS.md "Fidelity: bf16 vs fp32 on the full
    default sweep"), bf16 is not the default there. Per fraction, because features are cached
    per precision and the finding is per (task, fraction). An explicit ``PRECISION=bf16``
    still runs bf16, with a note.
    """

    fp32_fractions: tuple[float, ...]
    measured: str  # the finding, shown in run notes and by `brainbench list tasks`

    def covers(self, fraction: float) -> bool:
        return any(abs(float(fraction) - f) < 1e-9 for f in self.fp32_fractions)


SplitVariant = SiteHeldOut  # the declared split variants (the standard split is implicit)
SPLIT_VARIANTS: dict[str, type] = {SiteHeldOut.name: SiteHeldOut}


@dataclass(frozen=True)
class TaskSpec:
    """One endpoint: which data, which label, how it is split and scored.

    stratify_meta: subject meta keys (e.g. "site") crossed with the label's stratum for the
        fixed train/test split; label-fraction subsets stratify on the label alone so that
        "at least one per class" stays meaningful at 1%.
    select: meta/target values a subject must have to enter the task (e.g. baseline session).
    min_per_stratum: the label floor: every training subset holds at least this many people
        of each label stratum (class, event status, target bin) when the training split has
        them, so "1%" never means one person. Declared per task, part of every cell's
        configuration hash and shown by `brainbench list tasks` and in every table.
    status: "pending" tasks are listed everywhere with `pending_reason`, never silently skipped.
    split_variants: the other splits the task declares (e.g. `SiteHeldOut` for datasets with
        sites), run with `brainbench run --split NAME`; `with_split` makes the spec that
        evaluates on one of them, and ``split`` is then set.
    precision_rule: the (task, fraction) pairs where ``PRECISION=auto`` runs fp32 because
        bf16 moved the primary metric measurably (`PrecisionRule`); None: bf16 wherever fast.
    """

    id: str
    endpoint: str
    kind: Kind
    dataset: str
    modalities: tuple[str, ...]
    target: Target
    target_description: str
    primary_metric: str
    secondary_metrics: tuple[str, ...]
    stratify_meta: tuple[str, ...] = ()
    select: Mapping[str, Any] = field(default_factory=dict)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    test_fraction: float = DEFAULT_TEST_FRACTION
    min_per_stratum: int = 1
    status: Literal["ready", "pending"] = "ready"
    pending_reason: str = ""
    reference: str = ""
    alternates: tuple[DatasetVariant, ...] = ()  # other datasets that serve this endpoint
    base_dataset: str = ""  # set on a spec made by on_dataset(): the card's default dataset
    split_variants: tuple[SplitVariant, ...] = ()
    split: SplitVariant | None = None  # set by with_split(): the variant evaluated on
    precision_rule: PrecisionRule | None = None

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.split_variants)

    def with_split(self, name: str) -> "TaskSpec":
        """This endpoint evaluated on its declared split variant ``name``."""
        for variant in self.split_variants:
            if variant.name == name:
                return replace(self, split=variant)
        declared = ", ".join(self.split_names) or "none"
        raise BenchError(f"task {self.id} declares no split {name!r}; its split variants: "
                         f"{declared} (known variants: {', '.join(SPLIT_VARIANTS)})")

    @property
    def datasets(self) -> tuple[str, ...]:
        return (self.dataset, *(a.dataset for a in self.alternates))

    def on_dataset(self, name: str) -> "TaskSpec":
        """This endpoint on dataset ``name`` (the default or one of the alternates)."""
        if name == self.dataset:
            return self
        for alt in self.alternates:
            if alt.dataset == name:
                return replace(self, dataset=alt.dataset, target=alt.target,
                               target_description=alt.target_description,
                               stratify_meta=alt.stratify_meta, select=dict(alt.select),
                               reference=alt.reference or self.reference, alternates=(),
                               base_dataset=self.base_dataset or self.dataset,
                               split_variants=self.split_variants, split=self.split)
        raise BenchError(f"task {self.id} cannot run on dataset {name!r}; valid datasets: "
                         f"{', '.join(self.datasets)}")

    @property
    def manifest_name(self) -> str:
        """Split manifest file name; alternates, split variants and other test fractions get
        their own (a profile's phantom_test_fraction draws a different split)."""
        stem = f"{self.id}@{self.dataset}" if self.base_dataset else self.id
        if self.test_fraction != DEFAULT_TEST_FRACTION:
            stem += f".test{self.test_fraction:g}"
        return f"{stem}.{self.split.name}.json" if self.split else f"{stem}.json"

    def for_profile(self, profile: Any, data_source: str) -> "TaskSpec":
        """The task as its split is drawn on this data: on phantom cohorts a profile's
        ``phantom_test_fraction`` replaces the test fraction; real data keeps the task's."""
        share = getattr(profile, "phantom_test_fraction", None)
        if share is None or not data_source.startswith("phantom:") or share == self.test_fraction:
            return self
        return replace(self, test_fraction=share)

    @property
    def split_salt(self) -> str:
        """Splits depend on the dataset, not the task: tasks sharing a cohort share its test set."""
        return f"brainbench-split-v1:{self.dataset}"

    def stratify_description(self) -> str:
        parts = ["label"] + list(self.stratify_meta)
        return " x ".join(parts)


@dataclass(frozen=True)
class Sample:
    """The unit a probe sees: one person's image(s) for this task, with the label."""

    id: str
    group: str
    images: tuple[tuple[str, Path], ...]  # (modality, path); features are averaged over them
    target: Any
    split_stratum: str
    fraction_stratum: str
    site: str | None = None  # the subject's acquisition site, where the adapter knows it


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    return TASKS.register(spec.id, spec)


def get_task(name: str) -> TaskSpec:
    import brainbench.tasks  # noqa: F401  (registers the task cards)

    return TASKS.get(name)


def all_tasks() -> list[TaskSpec]:
    import brainbench.tasks  # noqa: F401

    return [TASKS.get(name) for name in TASKS.names()]


def _selected(task: TaskSpec, subject: Subject) -> bool:
    for key, wanted in task.select.items():
        have = subject.meta.get(key, subject.targets.get(key))
        if have != wanted:
            return False
    return True


def _site(task: TaskSpec, subject: Subject) -> str | None:
    key = task.split.meta if task.split else "site"
    value = subject.meta.get(key)
    return None if value is None or value == "" else str(value)


def _missing_modalities(task: TaskSpec, subject: Subject) -> list[str]:
    return [m for m in task.modalities if m not in subject.images]


def build_samples(task: TaskSpec, cohort: Cohort) -> tuple[list[Sample], list[str]]:
    """Turn a cohort into labelled samples; returns (samples, notes on what was excluded)."""
    samples: list[Sample] = []
    notes: list[str] = []
    unlabeled: list[str] = []
    no_images: list[str] = []
    for subject in cohort.subjects:
        if not _selected(task, subject):
            continue
        missing = _missing_modalities(task, subject)
        if missing:
            no_images.append(f"{subject.id} (no {', '.join(missing)})")
            continue
        meta_stratum = "|".join(str(subject.meta.get(k, "?")) for k in task.stratify_meta)
        if isinstance(task.target, ModalityTarget):
            for modality in task.modalities:
                samples.append(
                    Sample(
                        id=f"{subject.id}/{modality}",
                        group=subject.group,
                        images=((modality, Path(subject.images[modality])),),
                        target=modality,
                        split_stratum=meta_stratum or "all",
                        fraction_stratum=modality,
                        site=_site(task, subject),
                    )
                )
            continue
        value = task.target.value(subject)
        if value is None:
            unlabeled.append(subject.id)
            continue
        label_stratum = task.target.stratum(value)
        samples.append(
            Sample(
                id=subject.id,
                group=subject.group,
                images=tuple((m, Path(subject.images[m])) for m in task.modalities),
                target=value,
                split_stratum="|".join(filter(None, [label_stratum, meta_stratum])),
                fraction_stratum=label_stratum,
                site=_site(task, subject),
            )
        )
    if unlabeled:
        notes.append(f"{len(unlabeled)} subject(s) without a usable {task.target_description}: "
                     f"{', '.join(unlabeled[:5])}{' ...' if len(unlabeled) > 5 else ''}")
    if no_images:
        notes.append(f"{len(no_images)} subject(s) lack required modalities: "
                     f"{', '.join(no_images[:5])}{' ...' if len(no_images) > 5 else ''}")
    if not samples:
        raise BenchError(
            f"task {task.id}: no usable samples in dataset {cohort.dataset} at {cohort.root}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    return samples, notes


def check_fraction(value: float) -> float:
    if not (0.0 < value <= 1.0):
        raise BenchError(f"FRACTION={value} is outside (0, 1]; use e.g. 0.01, 0.1 or 1.0")
    return value

