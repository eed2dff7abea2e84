"""The segmentation evaluator: dense heads on frozen patch tokens (the tumor_seg endpoint).

Per prepared task: per (head, fraction, seed) the subset of training SUBJECTS -> every label
checked before any compute -> patch tokens of the slices used (cached) -> one head per cell
trained on foreground-aware slices of its subset -> the test subjects streamed once, every head
predicting each whole volume slice by slice -> per-subject 3D metrics in the label's grid ->
means stored, one row per metric, the per-subject scores kept as the cell's predictions.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from brainbench.backbone import Backbone
from brainbench.errors import BenchError
from brainbench.evaluators import EVALUATORS
from brainbench.evaluators.base import EvaluatedCell, Evaluator
from brainbench.features import PatchTokenCache, TokenRequest, extract_patch_tokens
from brainbench.pipeline import PlannedCell, PreparedTask, plan_cells
from brainbench.progress import progress_bar
from brainbench.runconfig import RunConfig, RunReport
from brainbench.segmentation.data import choose_slices, grid_shape, to_slice_grid
from brainbench.segmentation.heads import HEADS, head_layers, make_head, trainable_parameters
from brainbench.segmentation.labels import read_regions, refuse_label_maps
from brainbench.segmentation.metrics import CONVENTIONS, region_scores
from brainbench.segmentation.train import (HEAD_INIT_LOCK, TrainConfig, head_threads,
                                           predict_volume, run_head_jobs, train_head)
from brainbench.splits import digest
from brainbench.taskspec import TaskSpec

log = logging.getLogger("brainbench")

HEADS_ENV = "BRAINBENCH_SEG_HEADS"
BUDGET_ENV = "BRAINBENCH_TOKEN_BUDGET_GB"
SELECTION = "fixed head settings, no selection step (the test split feeds no choice)"


@dataclass(frozen=True)
class SegmentationConfig:
    """Workload of the segmentation endpoint (sized so the cpu profile stays in budget).

    heads: which heads get cells (default the linear one; BRAINBENCH_SEG_HEADS=linear,multiscale
        adds the decoder). slices_per_subject: training slices per training subject (of the
        profile's slice grid), foreground_share of them through the tumour.
    token_budget_gb: disk the test subjects' patch tokens may take in the cache
        (BRAINBENCH_TOKEN_BUDGET_GB). Within it they are cached (a rerun with other fractions
        or seeds encodes nothing); over it each test subject is encoded, predicted by every
        head and its tokens dropped (streamed: one forward pass per run, never more than one
        subject's tokens on disk). Training subjects' few slices are always cached. At the
        paper profile a 4-contrast test subject costs ~154 MB per layer, so BraTS' ~250 test
        subjects (~38 GB) stream under the default.
    """

    heads: tuple[str, ...] = ("linear",)
    slices_per_subject: int = 8
    foreground_share: float = 0.75
    training: TrainConfig = field(default_factory=TrainConfig)
    token_budget_gb: float = 20.0

    @classmethod
    def from_env(cls) -> "SegmentationConfig":
        settings = cls()
        text = os.environ.get(HEADS_ENV, "").strip()
        if text:
            heads = tuple(dict.fromkeys(h.strip() for h in text.split(",") if h.strip()))
            unknown = [h for h in heads if h not in HEADS]
            if unknown or not heads:
                raise BenchError(f"{HEADS_ENV}={text!r}: unknown head(s) {unknown}; choose "
                                 f"from {list(HEADS)}, comma-separated")
            settings = replace(settings, heads=heads)
        budget = os.environ.get(BUDGET_ENV, "").strip()
        if budget:
            try:
                value = float(budget)
            except ValueError:
                value = float("nan")
            if not value >= 0 or value == float("inf"):
                raise BenchError(f"{BUDGET_ENV}={budget!r}: expected a size in GB >= 0 (e.g. "
                                 "20; 0 streams every test subject)")
            settings = replace(settings, token_budget_gb=value)
        return settings


def unsupported_reason(backbone: Backbone) -> str:
    """Why this backbone cannot be segmented with (empty if it can)."""
    if getattr(backbone, "reads_files", False):
        return (f"backbone {backbone.name} is a control that reads ground truth, not images: "
                "it has no patch tokens to segment from")
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


class SegmentationEvaluator(Evaluator):
    name = "segmentation"

    def __init__(self, settings: SegmentationConfig | None = None) -> None:
        self.settings = settings or SegmentationConfig.from_env()

    def unsupported_reason(self, backbone: Backbone) -> str:
        return unsupported_reason(backbone)

    def plan(self, prepared: PreparedTask, backbone: Backbone,
             config: RunConfig) -> list[PlannedCell]:
        depth = backbone.num_patch_layers()
        planned: list[PlannedCell] = []
        for head in self.settings.heads:
            layers = head_layers(head, depth)
            planned += plan_cells(
                prepared, backbone, config.profile, head=head,
                config_hash=_config_hash(prepared.task, backbone, config.profile, head, layers,
                                         self.settings),
                fractions=config.fractions, seeds=config.seeds_for(prepared.task),
                selection=SELECTION, detail=layers)
        return planned

    def evaluate(self, prepared: PreparedTask, cells: Sequence[PlannedCell], backbone: Backbone,
                 config: RunConfig, store_url: str, report: RunReport
                 ) -> Iterator[EvaluatedCell]:
        settings, task, test = self.settings, prepared.task, prepared.test
        train_groups = set().union(*[set(p.groups) for p in cells])
        train_all = prepared.members(train_groups)
        contract = backbone.contract
        # every label map is checked before any forward pass
        slices: dict[str, tuple[int, ...]] = {}
        truth: dict[str, np.ndarray] = {}
        empty: list[str] = []
        bad: dict[str, str] = {}  # every unusable label map is named, not only the first
        # heads train for seconds each and the test set is predicted volume by volume: each
        # loop shows a bar on a terminal once it has run for 2 s
        for sample in progress_bar(train_all + test, desc=f"{task.id} label maps",
                                   unit="subject", delay=2.0, enabled=config.progress):
            try:
                regions = read_regions(sample.id, sample.target, dict(sample.images),
                                       task.target)
            except BenchError as exc:
                bad[sample.id] = str(exc).removeprefix(f"subject {sample.id}: ")
                continue
            if regions.empty_regions:
                names = [task.target.regions[i] for i in regions.empty_regions]
                empty.append(f"{sample.id} (no {'/'.join(names)})")
            if sample.group in train_groups:
                grid = to_slice_grid(regions.masks, contract)
                chosen = choose_slices(grid[:, 0].sum(axis=(1, 2)), settings.slices_per_subject,
                                       settings.foreground_share, salt=sample.id)
                slices[sample.id], truth[sample.id] = chosen, grid[list(chosen)]
        refuse_label_maps(bad)
        if empty:
            report.notes.append(f"{task.id}: {len(empty)} subject(s) with empty tumour regions, "
                                f"scored by the empty-mask conventions: {', '.join(empty[:5])}"
                                + (" ..." if len(empty) > 5 else ""))
        all_slices = tuple(range(grid_shape(contract)[2]))
        requests = {s.id: [TokenRequest(Path(p), slices.get(s.id, all_slices)) for _, p in s.images]
                    for s in train_all + test}
        layers = tuple(sorted({layer for p in cells for layer in p.detail}))
        token_cache = PatchTokenCache(config.cache_dir / "patch_tokens")
        keys, stats = extract_patch_tokens(
            backbone, [r for s in train_all for r in requests[s.id]], layers, token_cache,
            batch_size=config.profile.batch_size, progress=config.progress, desc=task.id,
            workers=config.workers)
        # the test set's size from a real training grid (bytes per slice, every layer and
        # contrast), so the budget holds for any backbone's token shape
        grids = token_cache.load_sample(keys, requests[train_all[0].id], layers)
        per_slice = sum(g.nbytes / g.shape[0] for g in grids)
        test_bytes = per_slice * sum(len(requests[s.id][0].slices) for s in test)
        stream = test_bytes > settings.token_budget_gb * 1e9
        cached = train_all if stream else train_all + test
        if not stream:
            test_keys, test_stats = extract_patch_tokens(
                backbone, [r for s in test for r in requests[s.id]], layers, token_cache,
                batch_size=config.profile.batch_size, progress=config.progress,
                desc=f"{task.id} test", workers=config.workers)
            keys.update(test_keys)
            stats.merge(test_stats)
        report.extraction.merge(stats)
        all_keys = list(stats.keys)
        if stream:
            report.notes.append(
                f"{task.id}: the test subjects' patch tokens ({test_bytes / 1e9:.3g} GB) exceed "
                f"the {settings.token_budget_gb:g} GB budget ({BUDGET_ENV}): each test subject "
                "is encoded, predicted by every head and its tokens dropped")

        regions = task.target.regions
        height, width, _ = grid_shape(contract)

        def fit(plan: PlannedCell):
            per_sample = [token_cache.load_sample(keys, requests[s.id], plan.detail)
                          for s in prepared.members(plan.groups)]
            inputs = [np.concatenate([grids[i] for grids in per_sample])
                      for i in range(len(plan.detail))]
            del per_sample
            targets = np.concatenate([truth[s.id] for s in prepared.members(plan.groups)])
            with HEAD_INIT_LOCK:
                head = make_head(plan.cell.head, [a.shape[1] for a in inputs], len(regions),
                                 (height, width), tuple(inputs[0].shape[2:]),
                                 seed=plan.cell.seed)
            n_params = trainable_parameters(head)  # counted before training freezes it
            info = train_head(head, inputs, targets, settings.training, seed=plan.cell.seed)
            return plan, head, info, n_params

        # the cells' heads train side by side, one thread each, as many as their training
        # grids fit in memory (float16 as loaded plus the float32 copy training makes, every
        # layer: an upper bound)
        jobs = [partial(fit, plan) for plan in cells]
        largest = max(3 * per_slice * sum(len(slices[s.id]) for s in prepared.members(p.groups))
                      for p in cells)
        threads = head_threads(len(jobs), job_bytes=largest)
        trained = list(progress_bar(run_head_jobs(jobs, threads),
                                    desc=f"{task.id} heads", unit="cell", total=len(jobs),
                                    delay=2.0, enabled=config.progress))

        started = time.perf_counter()
        scores: list[list[dict[str, float]]] = [[] for _ in trained]
        for sample in progress_bar(test, desc=f"{task.id} test", unit="subject", delay=2.0,
                                   enabled=config.progress):
            volume = read_regions(sample.id, sample.target, dict(sample.images), task.target)
            if stream:
                loaded, subject_keys = _streamed_tokens(backbone, requests[sample.id], layers,
                                                        config.cache_dir / "patch_tokens",
                                                        config, report)
                all_keys += subject_keys
            else:
                loaded = token_cache.load_sample(keys, requests[sample.id], layers)
            grids = dict(zip(layers, loaded))
            for j, (plan, head, _, _) in enumerate(trained):
                prediction = predict_volume(head, [grids[layer] for layer in plan.detail],
                                            volume.masks.shape[1:], settings.training.threshold)
                scores[j].append(region_scores(prediction, volume.masks, volume.spacing, regions))
        inference_seconds = time.perf_counter() - started
        cache_digest = digest(sorted(all_keys))  # streamed or cached: the same digest

        backbone_params = backbone.parameter_count()
        for (plan, head, info, head_params), per_subject in zip(trained, scores):
            metrics = {name: float(np.mean([s[name] for s in per_subject]))
                       for name in per_subject[0]}
            metrics.update(head_params=float(head_params), backbone_params=float(backbone_params))
            hyper = {"head": plan.cell.head, "layers": list(plan.detail),
                     "head_params": head_params, "backbone_params": backbone_params,
                     "train_slices": info.n_slices, "slices_per_subject": settings.slices_per_subject,
                     "foreground_share": settings.foreground_share,
                     "training": settings.training.as_dict(), "conventions": CONVENTIONS}
            final = replace(plan.cell, hyperparameters=hyper, cache_key=cache_digest)
            yield EvaluatedCell(final, metrics, list(zip(
                [s.id for s in test], [prepared.kind.stored_target(s.target) for s in test],
                per_subject)), prepared.test_persons)

        by_head: dict[str, list] = {}
        for plan, _, info, n_params in trained:
            by_head.setdefault(plan.cell.head, []).append((n_params, info))
        sizes = _cache_sizes(token_cache, keys, {s.id: requests[s.id] for s in cached},
                             train_groups, prepared.samples)
        for name, items in by_head.items():
            report.notes.append(
                f"{task.id}: head {name}: {items[0][0]:,} trainable "
                f"parameters beside the frozen backbone's {backbone_params:,}; training "
                f"{np.mean([i.seconds for _, i in items]):.1f} s per cell ({len(items)} cells "
                f"on {threads} thread{'s' if threads > 1 else ''}, "
                f"{items[0][1].n_slices}+ slices, {settings.training.steps} steps)")
        report.notes.append(
            f"{task.id}: full test set ({len(test)} subjects, {len(trained)} head(s)) predicted "
            f"and scored in {inference_seconds:.1f} s; patch-token cache {sizes}")
        log.info("%s: %d cells written", task.id, len(trained))


def _streamed_tokens(backbone: Backbone, requests: Sequence[TokenRequest],
                     layers: Sequence[int], cache_root: Path, config: RunConfig,
                     report: RunReport) -> tuple[list[np.ndarray], list[str]]:
    """One test subject's patch grids, encoded into a scratch cache that is removed at once
    (the run's cache never holds more than this subject's tokens beyond the budget)."""
    cache_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".stream-", dir=cache_root))
    try:
        cache = PatchTokenCache(scratch)
        keys, stats = extract_patch_tokens(backbone, list(requests), layers, cache,
                                           batch_size=config.profile.batch_size,
                                           progress=False, workers=config.workers)
        report.extraction.merge(stats)
        return cache.load_sample(keys, requests, layers), list(stats.keys)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cache_sizes(cache: PatchTokenCache, keys, requests, train_groups, samples) -> str:
    per: dict[str, list[int]] = {"test": [], "train": []}
    for sample in samples:
        if sample.id not in requests:
            continue
        total = sum(cache.nbytes(k) for r in requests[sample.id] for k in keys[r].values())
        per["train" if sample.group in train_groups else "test"].append(total)
    parts = [f"{np.mean(v) / 1e6:.1f} MB per {what} subject" for what, v in per.items() if v]
    return ", ".join(parts)


EVALUATORS.register(SegmentationEvaluator.name, SegmentationEvaluator)
