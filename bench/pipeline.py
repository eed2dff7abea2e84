"""One task pipeline: a task is prepared once, its cells planned once, then evaluated.

`prepare_task` is the single place where a cohort becomes a split: adapter -> samples ->
voxel hashes -> duplicate merge -> fixed split -> manifest -> leakage check. `brainbench run`
(every evaluator) and `brainbench data-check` call it, so what the data check accepts is what
a run scores. `plan_cells` lists the (head, fraction, seed) cells of a prepared task with their
provenance, so the identity of a cell is computed in one place for every evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from brainbench.backbone import Backbone
from brainbench.datasets import load_cohort
from brainbench.errors import BenchError
from brainbench.kinds import TaskKind, get_kind
from brainbench.leakage import HashCache, assert_no_leakage, merge_duplicate_groups
from brainbench.profiles import Profile
from brainbench.provenance import code_version
from brainbench.splits import (Split, fraction_subset, make_site_split, make_split, record_split,
                               subset_hash)
from brainbench.store import Cell
from brainbench.subjects import Cohort
from brainbench.taskspec import Sample, TaskSpec, build_samples
from brainbench.validation import validate_images


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-120:]


def manifest_path(results_dir: Path, data_source: str, task: TaskSpec) -> Path:
    """Where a task's split manifest lives (the data check reports the same file)."""
    return Path(results_dir) / "splits" / _slug(data_source) / task.manifest_name


@dataclass(frozen=True)
class TaskSamples:
    """A task's samples as the adapter and the task card define them (before any hashing)."""

    task: TaskSpec
    cohort: Cohort
    samples: list[Sample]
    excluded: list[str]  # why subjects did not become samples

    @property
    def notes(self) -> list[str]:
        return ([f"{self.task.dataset}: {n}" for n in self.cohort.notes]
                + [f"{self.task.id}: {n}" for n in self.excluded])

    def image_paths(self) -> list[Path]:
        return [Path(p) for s in self.samples for _, p in s.images]


def load_samples(task: TaskSpec, root: Path) -> TaskSamples:
    cohort = load_cohort(task.dataset, Path(root))
    samples, excluded = build_samples(task, cohort)
    return TaskSamples(task, cohort, samples, excluded)


@dataclass
class PreparedTask:
    """A task ready for evaluation: merged samples, its fixed split, and what was noted."""

    task: TaskSpec
    data_source: str
    loaded: TaskSamples
    samples: list[Sample]  # after the duplicate merge (persons sharing an image share a group)
    split: Split
    duplicates: list[str] = field(default_factory=list)

    @property
    def kind(self) -> TaskKind:
        return get_kind(self.task.kind)

    @property
    def notes(self) -> list[str]:
        return self.loaded.notes + [f"{self.task.id}: {d}" for d in self.duplicates]

    @cached_property
    def test(self) -> list[Sample]:
        groups = set(self.split.test_groups)
        return [s for s in self.samples if s.group in groups]

    @cached_property
    def test_persons(self) -> dict[str, str]:
        """Test sample id -> person (split group), stored so statistics resample people."""
        return {s.id: s.group for s in self.test}

    def members(self, groups: Iterable[str]) -> list[Sample]:
        """The samples of the given training groups (persons), in cohort order."""
        wanted = set(groups)
        return [s for s in self.samples if s.group in wanted]


def prepare_task(task: TaskSpec, root: Path, data_source: str, *,
                 hash_cache: HashCache | None = None, manifest: Path | None = None,
                 loaded: TaskSamples | None = None,
                 hashes: Mapping[Path, str] | None = None) -> PreparedTask:
    """Everything before compute, raising BenchError on what makes the task unusable.

    hashes: voxel hashes already computed (the data check computes them itself, collecting
        unreadable files instead of stopping); otherwise they come from ``hash_cache``. With
        neither (a headers-only data check) duplicates cannot be merged or checked.
    manifest: the split manifest to write on first use and verify afterwards (None: neither).
    """
    loaded = loaded or load_samples(task, root)
    samples = loaded.samples
    if hashes is None and hash_cache is not None:
        hashes = validate_images(loaded, hash_cache)  # headers and voxels, as the data check
    duplicates: list[str] = []
    if hashes:
        samples = [s for s in samples if all(Path(p) in hashes for _, p in s.images)]
        samples, duplicates = merge_duplicate_groups(samples, hashes)  # before the split
    split, unsited = _split(task, samples)
    if unsited:
        samples = [s for s in samples if s.site is not None]
        duplicates.append(f"{len(unsited)} person(s) without a {task.split.meta!r} left out of "
                          f"the {task.split.name} split: {', '.join(unsited[:5])}"
                          f"{' ...' if len(unsited) > 5 else ''}")
    if manifest is not None:
        record_split(split, manifest)
    if hashes:
        assert_no_leakage(task.id, samples, split.test_groups, hashes)
    return PreparedTask(task, data_source, loaded, samples, split, duplicates)


def _split(task: TaskSpec, samples: Sequence[Sample]) -> tuple[Split, list[str]]:
    """The task's fixed split (standard, or its split variant) and the persons a site-held-out
    split leaves out for lack of a site."""
    require_all = get_kind(task.kind).require_all_labels
    if task.split is None:
        return make_split(task.id, task.dataset, samples, task.split_salt, task.test_fraction,
                          require_all_labels=require_all), []
    unsited = sorted({s.group for s in samples if s.site is None})
    sited = [s for s in samples if s.site is not None]
    if not sited:
        raise BenchError(f"task {task.id}: the {task.split.name} split needs each subject's "
                         f"{task.split.meta!r}, and dataset {task.dataset} gives none")
    return make_site_split(task.id, task.dataset, sited, task.split_salt, task.test_fraction,
                           task.split.name, require_all_labels=require_all), unsited


# ------------------------------------------------------------------------------ cell planner


@dataclass(frozen=True)
class PlannedCell:
    """One (head, fraction, seed) cell: its identity and the training groups it fits on.

    ``cell`` lacks what only evaluation knows (chosen hyperparameters, selection text, the
    digest of the feature-cache keys); evaluators fill those in with `dataclasses.replace`.
    ``detail`` carries evaluator-specific settings (e.g. the layers a segmentation head reads).
    """

    cell: Cell
    groups: tuple[str, ...]
    detail: Any = None


def plan_cells(prepared: PreparedTask, backbone: Backbone, profile: Profile, *, head: str,
               config_hash: str, fractions: Sequence[float], seeds: Sequence[int],
               selection: str = "", detail: Any = None) -> list[PlannedCell]:
    """The cells of one head over fractions x seeds, in that order (fraction-major)."""
    task, split = prepared.task, prepared.split
    n_test = len(prepared.test)
    planned = []
    for fraction in fractions:
        for seed in seeds:
            groups = fraction_subset(split, prepared.samples, fraction, seed,
                                     task.min_per_stratum)
            cell = Cell(
                backbone=backbone.name, weights_id=backbone.weights.id,
                weights_status=backbone.weights.status, weights_sha256=backbone.weights.sha256,
                task=task.id, dataset=task.dataset, data_source=prepared.data_source,
                profile=profile.name, head=head, fraction=fraction, seed=seed,
                n_train=len(prepared.members(groups)), n_test=n_test, hyperparameters={},
                selection=selection, code_version=code_version(), config_hash=config_hash,
                split_hash=split.hash, subset_hash=subset_hash(groups), cache_key="",
                precision=getattr(backbone, "precision", "fp32"), split=split.label)
            planned.append(PlannedCell(cell, groups, detail))
    return planned
