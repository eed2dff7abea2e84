"""The tumor_seg cells: same split, subsets, provenance and store rows as every other task.

Per task: samples -> fixed split (manifest) -> per (head, fraction, seed) the subset of
training SUBJECTS -> every label checked before any compute -> patch tokens of the slices
used (cached) -> one head per cell trained on foreground-aware slices of its subset -> the
test subjects streamed once, every head predicting each whole volume slice by slice ->
per-subject 3D metrics in the label's grid -> means stored, one row per metric.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from brainbench.backbone import Backbone
from brainbench.datasets import load_cohort
from brainbench.errors import BenchError
from brainbench.provenance import code_version
from brainbench.leakage import HashCache, assert_no_leakage, merge_duplicate_groups
from brainbench.runner import CellOutcome, RunConfig, RunReport, manifest_path
from brainbench.segmentation.data import choose_slices, grid_shape, to_slice_grid
from brainbench.segmentation.heads import HEADS, head_layers, make_head, trainable_parameters
from brainbench.segmentation.labels import read_regions
from brainbench.segmentation.metrics import CONVENTIONS, region_scores
from brainbench.segmentation.tokens import (PatchTokenCache, TokenRequest, ensure_tokens,
                                            load_sample)
from brainbench.segmentation.train import TrainConfig, predict_volume, train_head
from brainbench.splits import digest, fraction_subset, make_split, record_split, subset_hash
from brainbench.store import Cell, ResultStore
from brainbench.taskspec import TaskSpec, build_samples

log = logging.getLogger("brainbench")

HEADS_ENV = "BRAINBENCH_SEG_HEADS"
SELECTION = "fixed head settings, no selection step (the test split feeds no choice)"


@dataclass(frozen=True)
class SegmentationConfig:
    """Workload of the segmentation endpoint (sized so the cpu profile stays in budget).

    heads: which heads get cells (default the linear one; BRAINBENCH_SEG_HEADS=linear,multiscale
        adds the decoder). slices_per_subject: training slices per training subject (of the
        profile's slice grid), foreground_share of them through the tumour.
    """

    heads: tuple[str, ...] = ("linear",)
    slices_per_subject: int = 8
    foreground_share: float = 0.75
    training: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_env(cls) -> "SegmentationConfig":
        text = os.environ.get(HEADS_ENV, "").strip()
        if not text:
            return cls()
        heads = tuple(dict.fromkeys(h.strip() for h in text.split(",") if h.strip()))
        unknown = [h for h in heads if h not in HEADS]
        if unknown or not heads:
            raise BenchError(f"{HEADS_ENV}={text!r}: unknown head(s) {unknown}; choose from "
                             f"{list(HEADS)}, comma-separated")
        return cls(heads=heads)


def unsupported_reason(backbone: Backbone) -> str:
    """Why this backbone cannot be segmented with (empty if it can)."""
    if backbone.contract.dims != "2d":
        return (f"backbone {backbone.name} is a 3d encoder (whole volume in, no per-slice "
                "patch grid out); tumor_seg segments slice by slice from 2d patch tokens, so "
                "3d backbones are unsupported for it")
    try:
        backbone.num_patch_layers()
    except NotImplementedError:
        return (f"backbone {backbone.name} provides no patch tokens (Backbone.patch_tokens), "
                "which segmentation heads need")
    return ""


def _config_hash(task: TaskSpec, backbone: Backbone, profile, head: str,
                 layers: Sequence[int], settings: SegmentationConfig) -> str:
    return digest({
        "task": {"id": task.id, "modalities": task.modalities, "target": repr(task.target),
                 "test_fraction": task.test_fraction, "min_per_stratum": task.min_per_stratum},
        "backbone": backbone.cache_identity(), "profile": profile.as_dict(), "head": head,
        "layers": list(layers), "slices_per_subject": settings.slices_per_subject,
        "foreground_share": settings.foreground_share, "training": settings.training.as_dict(),
    })


@dataclass
class _Plan:
    cell: Cell
    groups: tuple[str, ...]
    layers: tuple[int, ...]


def run_segmentation_task(task: TaskSpec, backbone: Backbone, root: Path, data_source: str,
                          store: ResultStore, config: RunConfig, report: RunReport,
                          settings: SegmentationConfig | None = None) -> None:
    """Compute and store the task's missing cells; same arguments as the runner's run_task."""
    settings = settings or SegmentationConfig.from_env()
    reason = unsupported_reason(backbone)
    if reason:
        report.pending.append(replace(task, status="pending", pending_reason=reason))
        return
    depth = backbone.num_patch_layers()
    cohort = load_cohort(task.dataset, root)
    samples, notes = build_samples(task, cohort)
    hashes = HashCache(config.cache_dir / "voxel_hashes.json").hashes(
        [p for s in samples for _, p in s.images])
    samples, duplicates = merge_duplicate_groups(samples, hashes)  # as the runner does
    for note in ([f"{task.dataset}: {n}" for n in cohort.notes] + [f"{task.id}: {n}" for n in notes]
                 + [f"{task.id}: {d}" for d in duplicates]):
        if note not in report.notes:
            report.notes.append(note)
    split = make_split(task.id, task.dataset, samples, task.split_salt, task.test_fraction)
    record_split(split, manifest_path(config.results_dir, data_source, task))
    assert_no_leakage(task.id, samples, split.test_groups, hashes)
    test_groups = set(split.test_groups)
    test = [s for s in samples if s.group in test_groups]

    plans: list[_Plan] = []
    for head in settings.heads:
        layers = head_layers(head, depth)
        config_hash = _config_hash(task, backbone, config.profile, head, layers, settings)
        for fraction, seed in [(f, s) for f in config.fractions for s in config.seeds or task.seeds]:
            groups = fraction_subset(split, samples, fraction, seed, task.min_per_stratum)
            n_train = sum(s.group in set(groups) for s in samples)
            cell = Cell(
                backbone=backbone.name, weights_id=backbone.weights.id,
                weights_status=backbone.weights.status, weights_sha256=backbone.weights.sha256,
                task=task.id, dataset=task.dataset, data_source=data_source,
                profile=config.profile.name, head=head, fraction=fraction, seed=seed,
                n_train=n_train, n_test=len(test), hyperparameters={}, selection=SELECTION,
                code_version=code_version(), config_hash=config_hash, split_hash=split.hash,
                subset_hash=subset_hash(groups), cache_key="")
            if not config.force and store.has_cell(cell.cell_id):
                report.cells.append(CellOutcome(task.id, fraction, seed, cell.cell_id, False))
                continue
            plans.append(_Plan(cell, groups, layers))
    if not plans:
        return

    train_groups = set().union(*[set(p.groups) for p in plans])
    train_all = [s for s in samples if s.group in train_groups]
    contract = backbone.contract
    # every label map is checked before any forward pass
    slices: dict[str, tuple[int, ...]] = {}
    truth: dict[str, np.ndarray] = {}
    empty: list[str] = []
    for sample in train_all + test:
        regions = read_regions(sample.id, sample.target, dict(sample.images), task.target)
        if regions.empty_regions:
            names = [task.target.regions[i] for i in regions.empty_regions]
            empty.append(f"{sample.id} (no {'/'.join(names)})")
        if sample.group in train_groups:
            grid = to_slice_grid(regions.masks, contract)
            chosen = choose_slices(grid[:, 0].sum(axis=(1, 2)), settings.slices_per_subject,
                                   settings.foreground_share, salt=sample.id)
            slices[sample.id], truth[sample.id] = chosen, grid[list(chosen)]
    if empty:
        report.notes.append(f"{task.id}: {len(empty)} subject(s) with empty tumour regions, "
                            f"scored by the empty-mask conventions: {', '.join(empty[:5])}"
                            + (" ..." if len(empty) > 5 else ""))
    all_slices = tuple(range(grid_shape(contract)[2]))
    requests = {s.id: [TokenRequest(Path(p), slices.get(s.id, all_slices)) for _, p in s.images]
                for s in train_all + test}
    layers = tuple(sorted({layer for p in plans for layer in p.layers}))
    token_cache = PatchTokenCache(config.cache_dir / "patch_tokens")
    keys, stats = ensure_tokens(backbone, [r for rs in requests.values() for r in rs], layers,
                                token_cache, batch_size=config.profile.batch_size,
                                progress=config.progress, desc=task.id)
    report.extraction.merge(stats)
    cache_digest = digest(stats.keys)

    regions = task.target.regions
    height, width, _ = grid_shape(contract)
    trained = []
    for plan in plans:
        members = [s for s in train_all if s.group in set(plan.groups)]
        per_sample = [load_sample(token_cache, keys, requests[s.id], plan.layers) for s in members]
        inputs = [np.concatenate([grids[i] for grids in per_sample])
                  for i in range(len(plan.layers))]
        del per_sample
        targets = np.concatenate([truth[s.id] for s in members])
        head = make_head(plan.cell.head, [a.shape[1] for a in inputs], len(regions),
                         (height, width), tuple(inputs[0].shape[2:]), seed=plan.cell.seed)
        n_params = trainable_parameters(head)  # counted before training freezes it
        info = train_head(head, inputs, targets, settings.training, seed=plan.cell.seed)
        del inputs
        trained.append((plan, head, info, n_params))

    started = time.perf_counter()
    scores: list[list[dict[str, float]]] = [[] for _ in trained]
    for sample in test:
        volume = read_regions(sample.id, sample.target, dict(sample.images), task.target)
        grids = dict(zip(layers, load_sample(token_cache, keys, requests[sample.id], layers)))
        for j, (plan, head, _, _) in enumerate(trained):
            prediction = predict_volume(head, [grids[layer] for layer in plan.layers],
                                        volume.masks.shape[1:], settings.training.threshold)
            scores[j].append(region_scores(prediction, volume.masks, volume.spacing, regions))
    inference_seconds = time.perf_counter() - started

    backbone_params = backbone.parameter_count()
    for (plan, head, info, head_params), per_subject in zip(trained, scores):
        metrics = {name: float(np.mean([s[name] for s in per_subject]))
                   for name in per_subject[0]}
        metrics.update(head_params=float(head_params), backbone_params=float(backbone_params))
        hyper = {"head": plan.cell.head, "layers": list(plan.layers),
                 "head_params": head_params, "backbone_params": backbone_params,
                 "train_slices": info.n_slices, "slices_per_subject": settings.slices_per_subject,
                 "foreground_share": settings.foreground_share,
                 "training": settings.training.as_dict(), "conventions": CONVENTIONS}
        final = replace(plan.cell, hyperparameters=hyper, cache_key=cache_digest)
        store.write_cell(final, metrics, zip([s.id for s in test], [str(s.target) for s in test],
                                             per_subject))
        report.cells.append(CellOutcome(task.id, final.fraction, final.seed, final.cell_id, True))

    by_head: dict[str, list] = {}
    for plan, _, info, n_params in trained:
        by_head.setdefault(plan.cell.head, []).append((n_params, info))
    sizes = _cache_sizes(token_cache, keys, requests, train_groups, samples)
    for name, items in by_head.items():
        report.notes.append(
            f"{task.id}: head {name}: {items[0][0]:,} trainable "
            f"parameters beside the frozen backbone's {backbone_params:,}; training "
            f"{np.mean([i.seconds for _, i in items]):.1f} s per cell ({len(items)} cells, "
            f"{items[0][1].n_slices}+ slices, {settings.training.steps} steps)")
    report.notes.append(
        f"{task.id}: full test set ({len(test)} subjects, {len(trained)} head(s)) predicted and "
        f"scored in {inference_seconds:.1f} s; patch-token cache {sizes}")
    log.info("%s: %d cells written", task.id, len(trained))


def _cache_sizes(cache: PatchTokenCache, keys, requests, train_groups, samples) -> str:
    per: dict[str, list[int]] = {"test": [], "train": []}
    for sample in samples:
        if sample.id not in requests:
            continue
        total = sum(cache.nbytes(k) for r in requests[sample.id] for k in keys[r].values())
        per["train" if sample.group in train_groups else "test"].append(total)
    parts = [f"{np.mean(v) / 1e6:.1f} MB per {what} subject" for what, v in per.items() if v]
    return ", ".join(parts)
