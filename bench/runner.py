"""The runner: cohort -> split -> subsets -> cached features -> probes -> metrics -> store.

Only the test split is ever scored, and nothing about it feeds a choice: probes select their
regularisation by inner cross-validation on the label-fraction subset alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from brainbench.aggregate import sample_vector
from brainbench.backbone import Backbone, create_backbone
from brainbench.datasets import load_cohort
from brainbench.errors import BenchError
from brainbench.features import ExtractionStats, FeatureCache, extract_features
from brainbench.metrics import compute_metrics
from brainbench.probes import make_probe
from brainbench.profiles import Profile
from brainbench.provenance import code_version
from brainbench.splits import digest, fraction_subset, make_split, record_split, subset_hash
from brainbench.store import Cell, ResultStore, default_url
from brainbench.targets import target_array
from brainbench.taskspec import (Sample, TaskSpec, all_tasks, build_samples, check_fraction,
                                 get_task)

log = logging.getLogger("brainbench")

HEAD = "linear"
AGGREGATION = {"token": "cls", "slices": "mean", "modalities": "mean"}


@dataclass(frozen=True)
class RunConfig:
    model: str
    fractions: tuple[float, ...]
    profile: Profile
    cache_dir: Path
    results_dir: Path
    tasks: tuple[str, ...] | None = None  # None: every task
    seeds: tuple[int, ...] | None = None  # None: each task's default seeds
    weights: Path | None = None
    require_weights: bool = False
    data_dir: Path | None = None  # None: the phantom cohorts
    db_url: str | None = None
    force: bool = False
    progress: bool = True


@dataclass
class CellOutcome:
    task: str
    fraction: float
    seed: int
    cell_id: str
    computed: bool


@dataclass
class RunReport:
    backbone: str
    weights_status: str
    weights_source: str
    data_source: str
    store_url: str
    cells: list[CellOutcome] = field(default_factory=list)
    pending: list[TaskSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extraction: ExtractionStats = field(default_factory=ExtractionStats)


def resolve_tasks(names: Sequence[str] | None) -> list[TaskSpec]:
    if not names:
        return all_tasks()
    return [get_task(name) for name in names]


def prepare_data(config: RunConfig, datasets: set[str]) -> tuple[Path, str]:
    """The dataset root and a label for where the data came from (goes into every row).

    Phantom cohorts are generated on first use, only for the datasets the tasks need.
    """
    if config.data_dir is not None:
        root = Path(config.data_dir)
        if not root.is_dir():
            raise BenchError(f"DATA={root} is not a folder")
        return root, f"real:{root.resolve()}"
    from brainbench.phantoms import PHANTOM_VERSION, generate_phantoms

    profile = config.profile
    tag = f"v{PHANTOM_VERSION}-seed{profile.phantom_seed}-n{profile.phantom_subjects}"
    root = generate_phantoms(config.cache_dir / "phantoms" / tag, profile.phantom_subjects,
                             seed=profile.phantom_seed, progress=config.progress,
                             datasets=sorted(datasets))
    return root, f"phantom:{tag}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-120:]


def run(config: RunConfig) -> RunReport:
    for fraction in config.fractions:
        check_fraction(fraction)
    tasks = resolve_tasks(config.tasks)
    backbone = create_backbone(
        config.model, weights=config.weights, require_weights=config.require_weights,
        image_size=config.profile.slice_size, num_slices=config.profile.num_slices)
    store = ResultStore(config.db_url or default_url(config.results_dir))
    root, data_source = prepare_data(config, {t.dataset for t in tasks if t.status == "ready"})
    report = RunReport(backbone=backbone.name, weights_status=backbone.weights.status,
                       weights_source=backbone.weights.source, data_source=data_source,
                       store_url=store.url)
    cache = FeatureCache(config.cache_dir / "features")
    for task in tasks:
        if task.status == "pending":
            report.pending.append(task)
            continue
        run_task(task, backbone, root, data_source, cache, store, config, report)
    return report


def _config_hash(task: TaskSpec, backbone: Backbone, profile: Profile) -> str:
    return digest({
        "task": {"id": task.id, "modalities": task.modalities, "target": repr(task.target),
                 "select": dict(task.select), "test_fraction": task.test_fraction,
                 "min_per_stratum": task.min_per_stratum},
        "backbone": backbone.cache_identity(), "profile": profile.as_dict(), "head": HEAD,
        "aggregation": AGGREGATION,
    })


def run_task(task: TaskSpec, backbone: Backbone, root: Path, data_source: str,
             cache: FeatureCache, store: ResultStore, config: RunConfig,
             report: RunReport) -> None:
    cohort = load_cohort(task.dataset, root)
    samples, notes = build_samples(task, cohort)
    for note in [f"{task.dataset}: {n}" for n in cohort.notes] + [f"{task.id}: {n}" for n in notes]:
        if note not in report.notes:
            report.notes.append(note)
    split = make_split(task.id, task.dataset, samples, task.split_salt, task.test_fraction,
                       require_all_labels=task.target.kind != "regression")
    record_split(split, config.results_dir / "splits" / _slug(data_source) / f"{task.id}.json")
    config_hash = _config_hash(task, backbone, config.profile)
    test_groups = set(split.test_groups)
    test = [s for s in samples if s.group in test_groups]

    cells: list[tuple[Cell, tuple[str, ...]]] = []  # cells still to compute
    for fraction, seed in [(f, s) for f in config.fractions for s in config.seeds or task.seeds]:
        groups = fraction_subset(split, samples, fraction, seed, task.min_per_stratum)
        train = [s for s in samples if s.group in set(groups)]
        cell = Cell(
            backbone=backbone.name, weights_id=backbone.weights.id,
            weights_status=backbone.weights.status, weights_sha256=backbone.weights.sha256,
            task=task.id, dataset=task.dataset, data_source=data_source,
            profile=config.profile.name, head=HEAD, fraction=fraction, seed=seed,
            n_train=len(train), n_test=len(test), hyperparameters={}, selection="",
            code_version=code_version(), config_hash=config_hash, split_hash=split.hash,
            subset_hash=subset_hash(groups), cache_key="")
        if not config.force and store.has_cell(cell.cell_id):
            report.cells.append(CellOutcome(task.id, fraction, seed, cell.cell_id, False))
            continue
        cells.append((cell, groups))
    if not cells:
        return

    needed_groups = test_groups.union(*[set(groups) for _, groups in cells])
    needed = [s for s in samples if s.group in needed_groups]
    vectors, stats = sample_features(backbone, needed, cache, config, desc=task.id)
    report.extraction.merge(stats)
    cache_digest = digest(stats.keys)

    y_test = target_array(task.target, [s.target for s in test])
    x_test = np.stack([vectors[s.id] for s in test])
    for cell, groups in cells:
        train = [s for s in samples if s.group in set(groups)]
        x_train = np.stack([vectors[s.id] for s in train])
        y_train = target_array(task.target, [s.target for s in train])
        probe = make_probe(task.target.kind, seed=cell.seed,
                           target_transform=getattr(task.target, "transform", None))
        probe.fit(x_train, y_train)
        prediction = probe.predict(x_test)
        metrics = score(task, probe, y_test, prediction, x_train, y_train)
        info = probe.fit_info
        final = Cell(**{**cell.__dict__, "hyperparameters": dict(info.hyperparameters),
                        "selection": info.selection, "cache_key": cache_digest})
        store.write_cell(final, metrics, zip([s.id for s in test], [s.target for s in test],
                                             _rows(prediction)))
        report.cells.append(CellOutcome(task.id, cell.fraction, cell.seed, final.cell_id, True))


def score(task: TaskSpec, probe: Any, y_test: np.ndarray, prediction: np.ndarray,
          x_train: np.ndarray, y_train: np.ndarray) -> dict[str, float]:
    kind = task.target.kind
    if kind == "classification":
        return compute_metrics(kind, y_test, prediction, classes=probe.classes_)
    if kind == "survival":
        return compute_metrics(kind, y_test, prediction,
                               train_target=(y_train, probe.predict(x_train)))
    return compute_metrics(kind, y_test, prediction)


def _rows(prediction: np.ndarray) -> list[Any]:
    return [p.tolist() if isinstance(p, np.ndarray) else float(p) for p in prediction]


def sample_features(backbone: Backbone, samples: Sequence[Sample], cache: FeatureCache,
                    config: RunConfig, desc: str) -> tuple[dict[str, np.ndarray], ExtractionStats]:
    """One vector per sample from cached per-slice tokens (extracting cache misses)."""
    paths = [path for s in samples for _, path in s.images]
    tokens, stats = extract_features(backbone, paths, cache, batch_size=config.profile.batch_size,
                                     progress=config.progress, desc=desc)
    vectors = {s.id: sample_vector([tokens[Path(p)] for _, p in s.images],
                                   token=AGGREGATION["token"], how=AGGREGATION["slices"])
               for s in samples}
    return vectors, stats
