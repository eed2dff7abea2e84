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
from brainbench.leakage import HashCache, assert_no_leakage, merge_duplicate_groups
from brainbench.metrics import compute_metrics
from brainbench.protocols import Protocol, check_tokens, get_protocol, protocol_input
from brainbench.search import DEFAULT_TRIALS, fit_protocol
from brainbench.profiles import Profile
from brainbench.provenance import code_version
from brainbench.splits import digest, fraction_subset, make_split, record_split, subset_hash
from brainbench.store import Cell, ResultStore, default_url
from brainbench.targets import target_array
from brainbench.taskspec import (Sample, TaskSpec, all_tasks, build_samples, check_fraction,
                                 get_task)

log = logging.getLogger("brainbench")

HEAD = "linear"  # the default protocol; a cell's `head` column holds the protocol name
AGGREGATION = {"token": "cls", "slices": "mean", "modalities": "mean"}  # of protocol `linear`


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
    data_dir: Path | None = None  # None: the phantom cohorts (or brainbench.toml / env, see datasets.locations)
    datasets: tuple[str, ...] | None = None  # alternate datasets: "task=dataset" or "dataset"
    db_url: str | None = None
    force: bool = False
    progress: bool = True
    protocol: str = HEAD  # see brainbench.protocols.PROTOCOLS
    trials: int = DEFAULT_TRIALS  # optuna budget per cell for searched protocols


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
    unavailable: list[str] = field(default_factory=list)  # tasks whose dataset is not under DATA


def resolve_tasks(names: Sequence[str] | None,
                  datasets: Sequence[str] | None = None) -> list[TaskSpec]:
    """The tasks to run, each on its default dataset or the alternate chosen in ``datasets``.

    ``datasets`` entries are ``task=dataset`` or a bare ``dataset``, which applies to every task
    that accepts it; without ``names``, a bare or explicit entry also selects those tasks.
    """
    tasks = [get_task(name) for name in names] if names else all_tasks()
    if not datasets:
        return tasks
    chosen: dict[str, str] = {}
    for entry in datasets:
        task_id, _, name = entry.rpartition("=")
        if task_id:
            get_task(task_id).on_dataset(name)  # validates both names
            chosen[task_id] = name
            continue
        matching = [t.id for t in tasks if name in t.datasets]
        if not matching:
            raise BenchError(f"DATASET={name}: no selected task runs on it; tasks and their datasets: "
                             + "; ".join(f"{t.id}: {', '.join(t.datasets)}" for t in tasks))
        chosen.update({t: name for t in matching})
    picked = [t for t in tasks if names or t.id in chosen]
    picked += [get_task(t) for t in chosen if t not in {p.id for p in picked}]
    return [t.on_dataset(chosen[t.id]) if t.id in chosen else t for t in picked]


def manifest_path(results_dir: Path, data_source: str, task: TaskSpec) -> Path:
    """Where a task's split manifest lives (the data check reports the same file)."""
    return Path(results_dir) / "splits" / _slug(data_source) / task.manifest_name


def prepare_data(config: RunConfig, datasets: set[str]) -> tuple[dict[str, Path], str]:
    """Where each needed dataset is read from, and a label for the data (goes into every row).

    Real data: DATA / brainbench.toml / BRAINBENCH_DATA_<NAME> (brainbench.datasets.locations).
    Otherwise phantom cohorts are generated on first use, only for the datasets the tasks need.
    """
    from brainbench.datasets.locations import data_locations

    locations = data_locations(config.data_dir)
    if locations.real:
        return ({d: locations.path_for(d) for d in datasets if locations.present(d)},
                locations.source_label(d for d in datasets if locations.present(d)))
    from brainbench.phantoms import PHANTOM_VERSION, generate_phantoms

    profile = config.profile
    tag = f"v{PHANTOM_VERSION}-seed{profile.phantom_seed}-n{profile.phantom_subjects}"
    root = generate_phantoms(config.cache_dir / "phantoms" / tag, profile.phantom_subjects,
                             seed=profile.phantom_seed, progress=config.progress,
                             datasets=sorted(datasets))
    return {d: root for d in datasets}, f"phantom:{tag}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-120:]


def run(config: RunConfig) -> RunReport:
    for fraction in config.fractions:
        check_fraction(fraction)
    tasks = resolve_tasks(config.tasks, config.datasets)
    protocol = get_protocol(config.protocol)
    backbone = create_backbone(
        config.model, weights=config.weights, require_weights=config.require_weights,
        image_size=config.profile.slice_size, num_slices=config.profile.num_slices)
    backbone = _with_protocol_tokens(backbone, protocol)
    store = ResultStore(config.db_url or default_url(config.results_dir))
    ready = {t.dataset for t in tasks if t.status == "ready"}
    roots, data_source = prepare_data(config, ready)
    missing = sorted(ready - set(roots))
    if missing and (config.tasks or config.datasets or len(missing) == len(ready)):
        from brainbench.datasets import ADAPTERS

        raise BenchError("dataset(s) not found under DATA or in the dataset config: " + "; ".join(
            f"{d} (expected folder {ADAPTERS.get(d).folder}/)" for d in missing)
            + "; see README 'Real data' for the expected trees")
    report = RunReport(backbone=backbone.name, weights_status=backbone.weights.status,
                       weights_source=backbone.weights.source, data_source=data_source,
                       store_url=store.url)
    cache = FeatureCache(config.cache_dir / "features")
    for task in tasks:
        if task.status == "pending":
            report.pending.append(task)
            continue
        if task.dataset not in roots:  # real data holding only some datasets: say so, run the rest
            report.unavailable.append(f"{task.id} (dataset {task.dataset} not found)")
            continue
        root = roots[task.dataset]
        if task.kind == "segmentation":
            from brainbench.segmentation.runner import run_segmentation_task

            run_segmentation_task(task, backbone, root, data_source, store, config, report)
            continue
        run_task(task, backbone, root, data_source, cache, store, config, report)
    return report


def _with_protocol_tokens(backbone: Backbone, protocol: Protocol) -> Backbone:
    """The backbone, asked for the extra tokens a feature variant needs (e.g. cls_last4)."""
    missing = [t for t in protocol.tokens if t not in backbone.contract.tokens]
    if missing and hasattr(backbone, "with_tokens"):
        backbone = backbone.with_tokens(tuple(missing))
    check_tokens(protocol, backbone.contract.tokens, backbone.name)
    return backbone


def _protocol_identity(protocol: Protocol, trials: int) -> dict[str, Any]:
    return {**protocol.as_dict(), "trials": trials if protocol.searched else None}


def _config_hash(task: TaskSpec, backbone: Backbone, profile: Profile,
                 protocol: dict[str, Any] | None = None) -> str:
    return digest({
        "task": {"id": task.id, "modalities": task.modalities, "target": repr(task.target),
                 "select": dict(task.select), "test_fraction": task.test_fraction,
                 "min_per_stratum": task.min_per_stratum},
        "backbone": backbone.cache_identity(), "profile": profile.as_dict(), "head": HEAD,
        "aggregation": AGGREGATION,
        **({"protocol": protocol} if protocol is not None else {}),
    })


def run_task(task: TaskSpec, backbone: Backbone, root: Path, data_source: str,
             cache: FeatureCache, store: ResultStore, config: RunConfig,
             report: RunReport) -> None:
    cohort = load_cohort(task.dataset, root)
    samples, notes = build_samples(task, cohort)
    hashes = HashCache(config.cache_dir / "voxel_hashes.json").hashes(
        [p for s in samples for _, p in s.images])
    samples, duplicates = merge_duplicate_groups(samples, hashes)  # before the split, always
    for note in ([f"{task.dataset}: {n}" for n in cohort.notes] + [f"{task.id}: {n}" for n in notes]
                 + [f"{task.id}: {d}" for d in duplicates]):
        if note not in report.notes:
            report.notes.append(note)
    split = make_split(task.id, task.dataset, samples, task.split_salt, task.test_fraction,
                       require_all_labels=task.target.kind != "regression")
    record_split(split, manifest_path(config.results_dir, data_source, task))
    assert_no_leakage(task.id, samples, split.test_groups, hashes)
    protocol = get_protocol(config.protocol)
    # the linear protocol keeps the spine's hash (stored linear results stay valid)
    config_hash = _config_hash(task, backbone, config.profile, None if protocol.name == HEAD
                               else _protocol_identity(protocol, config.trials))
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
            profile=config.profile.name, head=protocol.name, fraction=fraction, seed=seed,
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
    vectors, stats = sample_features(backbone, needed, cache, config, desc=task.id,
                                     protocol=protocol)
    report.extraction.merge(stats)
    cache_digest = digest(stats.keys)

    for cell, groups in cells:
        train = [s for s in samples if s.group in set(groups)]
        info, prediction, metrics = evaluate_cell(
            task, protocol, train, test, vectors, seed=cell.seed, trials=config.trials,
            storage_url=store.url, study_name=f"brainbench-{cell.cell_id}",
            fresh=config.force)  # --force searches again instead of resuming the old study
        final = Cell(**{**cell.__dict__, "hyperparameters": dict(info.hyperparameters),
                        "selection": info.selection, "cache_key": cache_digest})
        store.write_cell(final, metrics, zip([s.id for s in test], [s.target for s in test],
                                             _rows(prediction)))
        report.cells.append(CellOutcome(task.id, cell.fraction, cell.seed, final.cell_id, True))


def evaluate_cell(task: TaskSpec, protocol: Protocol, train: Sequence[Sample],
                  test: Sequence[Sample], inputs: dict[str, np.ndarray], *, seed: int,
                  trials: int, storage_url: str | None = None, study_name: str | None = None,
                  fresh: bool = False):
    """Fit on `train` (selection sees nothing else), then predict and score `test`.

    Returns (ProbeFit, test prediction, metrics). Test labels are read only after the head
    is fitted, and only to score it.
    """
    x_train = np.stack([inputs[s.id] for s in train])
    y_train = target_array(task.target, [s.target for s in train])
    fitted = fit_protocol(protocol, task.target.kind, x_train, y_train, seed=seed,
                          target_transform=getattr(task.target, "transform", None),
                          trials=trials, storage_url=storage_url, study_name=study_name,
                          fresh=fresh)
    x_test = np.stack([inputs[s.id] for s in test])
    prediction = fitted.head.predict(x_test)
    y_test = target_array(task.target, [s.target for s in test])
    metrics = score(task, fitted.head, y_test, prediction, x_train, y_train)
    return fitted.info, prediction, metrics


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
                    config: RunConfig, desc: str, protocol: Protocol | None = None
                    ) -> tuple[dict[str, np.ndarray], ExtractionStats]:
    """One input per sample from cached per-slice tokens (extracting cache misses): a vector,
    or for attention protocols the per-slice tokens (modalities, slices, d)."""
    paths = [path for s in samples for _, path in s.images]
    tokens, stats = extract_features(backbone, paths, cache, batch_size=config.profile.batch_size,
                                     progress=config.progress, desc=desc)
    if protocol is not None and protocol.name != HEAD:
        return {s.id: protocol_input(protocol, [tokens[Path(p)] for _, p in s.images])
                for s in samples}, stats
    vectors = {s.id: sample_vector([tokens[Path(p)] for _, p in s.images],
                                   token=AGGREGATION["token"], how=AGGREGATION["slices"])
               for s in samples}
    return vectors, stats
