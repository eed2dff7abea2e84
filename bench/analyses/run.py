"""``brainbench analyze``: the representation analyses of one or more backbones, end to end.

Data come the way ``brainbench run`` gets them (`brainbench.runner.prepare_data`: phantom
cohorts by default, DATA for real data) and each task cohort is prepared by the same pipeline
(`brainbench.pipeline.prepare_task`); all samples of a task are used (the probes are scored
out of fold, grouped by person). Features and patch tokens come from the content-addressed
caches (`brainbench.features`), so a second call does no backbone forward pass; the probes
themselves are refitted (seconds). Every number goes into the store's analyses table with its
version and provenance; ``site`` pages are written under the results folder.

Which data each analysis reads (phantoms, or the same datasets under DATA):
- pca_map, tissue_probe: ``brain_age`` (IXI) T1, reference slices at 35/50/65% of depth;
- lesion_probe: ``tumor_seg`` (BraTS 2021) FLAIR, per person the slices with most tumour;
- site_probe, cka, knn_agreement: volume features (CLS, mean over slices) of ``brain_age``
  (IXI) and ``neurodev_cls`` (ABIDE I) T1, whose adapters give each person's site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from brainbench.analyses import measures
from brainbench.analyses.patches import (TISSUE_CLASSES, brain_map, mask_map, pooled, resized,
                                         tissue_maps, tissue_source)
from brainbench.backbone import Backbone
from brainbench.errors import BenchError
from brainbench.profiles import Profile
from brainbench.store import AnalysisResult

log = logging.getLogger("brainbench")

#: the method version of each analysis (bump when its method changes: a new row, never a silent
#: overwrite of a number computed differently)
VERSIONS = {"pca_map": 1, "tissue_probe": 1, "lesion_probe": 1, "site_probe": 1, "cka": 1,
            "knn_agreement": 1}
TISSUE_TASK = ("brain_age", "t1")
LESION_TASK = ("tumor_seg", "flair")
SITE_TASKS = (("brain_age", "t1"), ("neurodev_cls", "t1"))
REFERENCE_DEPTHS = (0.35, 0.5, 0.65)  # reference slices, as fractions of the slice grid
LESION_SLICES = 3  # per person: the slices of the grid holding the most lesion
LESION_MIN = 0.3  # a patch is "lesion" with at least this lesion fraction ...
BRAIN_MIN = 0.5  # ... and "healthy" with none and at least this much brain
MIN_PATCHES = 10  # patch classes with fewer patches are left out of a probe
PCA_EXAMPLES = 3
KNN_K = 5
TRUTH_VERSION = 1


@dataclass(frozen=True)
class AnalyzeConfig:
    models: tuple[str, ...]
    profile: Profile
    cache_dir: Path
    results_dir: Path
    data_dir: Path | None = None
    db_url: str | None = None
    weights: Path | None = None  # only with a single model
    progress: bool = True
    n_boot: int = 1000
    seed: int = 0


@dataclass
class AnalyzeReport:
    data_source: str = ""
    results: list[AnalysisResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    forward_calls: int = 0
    store_url: str = ""
    site: Path | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class _Context:
    config: AnalyzeConfig
    report: AnalyzeReport
    prepared: dict[str, Any]  # task id -> PreparedTask
    data_source: str


def slug(text: str) -> str:
    """A file-name-safe form of a name from the store (figures, pages)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-120:]


def reference_slices(num_slices: int) -> tuple[int, ...]:
    """Indices into the contract's slice grid at REFERENCE_DEPTHS (distinct, in order)."""
    return tuple(sorted({min(num_slices - 1, max(0, int(round(d * (num_slices - 1)))))
                         for d in REFERENCE_DEPTHS}))


def _row(backbone: Backbone, ctx: _Context, analysis: str, dataset: str, metric: str,
         value: float | None, lower: float | None = None, upper: float | None = None,
         chance: float | None = None, details: dict | None = None) -> AnalysisResult:
    from brainbench.provenance import code_version

    return AnalysisResult(
        backbone=backbone.name, weights_id=backbone.weights.id,
        weights_status=backbone.weights.status, analysis=analysis, dataset=dataset,
        data_source=ctx.data_source, profile=ctx.config.profile.name,
        precision=getattr(backbone, "precision", "fp32"), metric=metric, value=value,
        lower=lower, upper=upper, chance=chance, version=VERSIONS[analysis],
        code_version=code_version(), details=dict(details or {}))


def _probe_rows(backbone: Backbone, ctx: _Context, analysis: str, dataset: str,
                score: measures.ProbeScore, details: dict) -> list[AnalysisResult]:
    info = {**score.details, **details}
    return [_row(backbone, ctx, analysis, dataset, score.metric, score.value, score.lower,
                 score.upper, score.chance, info),
            _row(backbone, ctx, analysis, dataset, f"{score.metric}:shuffled", score.shuffled,
                 chance=score.chance, details={**info, "control": "labels shuffled across "
                                               "items, same probe and folds"})]


def _image(sample, modality: str) -> Path | None:
    paths = dict(sample.images)
    return Path(paths[modality]) if modality in paths else None


# ------------------------------------------------------------------------------ data


def prepare(config: AnalyzeConfig, report: AnalyzeReport) -> _Context:
    """Data roots and prepared task cohorts (BenchError when none of the data is there)."""
    from brainbench.leakage import HashCache
    from brainbench.pipeline import manifest_path, prepare_task
    from brainbench.runconfig import RunConfig
    from brainbench.runner import prepare_data
    from brainbench.taskspec import get_task

    task_ids = dict.fromkeys([TISSUE_TASK[0], LESION_TASK[0], *(t for t, _ in SITE_TASKS)])
    tasks = {t: get_task(t) for t in task_ids}
    run_config = RunConfig(model=config.models[0], fractions=(1.0,), profile=config.profile,
                           cache_dir=config.cache_dir, results_dir=config.results_dir,
                           data_dir=config.data_dir, progress=config.progress)
    roots, data_source = prepare_data(run_config, {t.dataset for t in tasks.values()})
    if not roots:
        raise BenchError("none of the analyses' datasets ("
                         + ", ".join(sorted({t.dataset for t in tasks.values()}))
                         + ") was found under DATA; see README 'Real data'")
    report.data_source = data_source
    prepared = {}
    for task_id, task in tasks.items():
        task = task.for_profile(config.profile, data_source)
        if task.dataset not in roots:
            report.note(f"{task_id}: dataset {task.dataset} not found; its analyses are skipped")
            continue
        prepared[task_id] = prepare_task(
            task, roots[task.dataset], data_source,
            hash_cache=HashCache(config.cache_dir / "voxel_hashes.json"),
            manifest=manifest_path(config.results_dir, data_source, task))
    return _Context(config, report, prepared, data_source)


def _sites(prepared) -> dict[str, str]:
    """Sample id -> acquisition site, from the adapter's subject meta."""
    by_id = {s.id: s for s in prepared.loaded.cohort.subjects}
    return {s.id: str(by_id[s.id].meta["site"]) for s in prepared.samples
            if s.id in by_id and by_id[s.id].meta.get("site") not in (None, "")}


def _label_file(prepared, sample) -> Path | None:
    subject = next((s for s in prepared.loaded.cohort.subjects if s.id == sample.id), None)
    if subject is None:
        return None
    for key in ("seg", "lesion"):
        value = subject.targets.get(key)
        if value and Path(value).is_file():
            return Path(value)
    return None


# ------------------------------------------------------------------------------ features


def volume_vectors(backbone: Backbone, ctx: _Context, task_id: str, modality: str
                   ) -> dict[str, np.ndarray]:
    """Sample id -> volume feature (CLS, mean over slices) through the run's feature cache."""
    from brainbench.aggregate import sample_vector
    from brainbench.features import FeatureCache, extract_features

    prepared = ctx.prepared[task_id]
    paths = {s.id: _image(s, modality) for s in prepared.samples}
    paths = {k: v for k, v in paths.items() if v is not None}
    tokens, stats = extract_features(backbone, list(paths.values()),
                                     FeatureCache(ctx.config.cache_dir / "features"),
                                     batch_size=ctx.config.profile.batch_size,
                                     progress=ctx.config.progress,
                                     desc=f"{backbone.name} {task_id}")
    ctx.report.forward_calls += stats.forward_calls
    return {k: sample_vector([tokens[p]], "cls", "mean") for k, p in paths.items()}


def _patch_layer(backbone: Backbone) -> int | None:
    if backbone.contract.dims != "2d":
        return None
    try:
        return backbone.num_patch_layers() - 1
    except NotImplementedError:
        return None


def _patch_grids(backbone: Backbone, ctx: _Context, requests, layer: int) -> list[np.ndarray]:
    """Last-block patch grids (slices, D, h, w) of each request, through the token cache."""
    from brainbench.features import PatchTokenCache, extract_patch_tokens

    cache = PatchTokenCache(ctx.config.cache_dir / "patch_tokens")
    keys, stats = extract_patch_tokens(backbone, requests, [layer], cache,
                                       batch_size=ctx.config.profile.batch_size,
                                       progress=ctx.config.progress,
                                       desc=f"{backbone.name} patch tokens")
    ctx.report.forward_calls += stats.forward_calls
    return [cache.load(keys[r][layer]).astype(np.float32) for r in requests]


def _cached_truth(ctx: _Context, kind: str, paths: Sequence[Path], contract, slices, grid,
                  compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Pooled truth fractions, cached on disk like features (the phantom truth takes ~0.5 s)."""
    from brainbench.features import FeatureCache
    from brainbench.preprocess import image_sha256
    from brainbench.splits import digest

    cache = FeatureCache(ctx.config.cache_dir / "analysis_truth")
    key = digest({"version": TRUTH_VERSION, "kind": kind,
                  "files": [image_sha256(p) for p in paths],
                  "image_size": list(contract.image_size), "num_slices": contract.num_slices,
                  "slices": list(slices), "grid": list(grid)})
    hit = cache.load(key)
    if hit is not None and "fractions" in hit:
        return hit["fractions"]
    value = compute()
    cache.save(key, {"fractions": value.astype(np.float32)})
    return value


# ------------------------------------------------------------------------------ analyses


def tissue_analyses(backbone: Backbone, ctx: _Context) -> list[AnalysisResult]:
    """PCA map figure and the patch tissue-class probe on the reference slices."""
    from brainbench.features import TokenRequest

    task_id, modality = TISSUE_TASK
    layer = _patch_layer(backbone)
    if task_id not in ctx.prepared:
        return []
    if layer is None:
        ctx.report.note(f"{backbone.name}: no patch tokens (dims {backbone.contract.dims}); "
                        "pca_map, tissue_probe and lesion_probe are skipped")
        return []
    prepared = ctx.prepared[task_id]
    dataset = prepared.task.dataset
    samples = [s for s in prepared.samples if _image(s, modality) is not None]
    with_truth = [s for s in samples if tissue_source(_image(s, modality)) is not None]
    contract = backbone.contract
    slices = reference_slices(contract.num_slices)
    requests = [TokenRequest(_image(s, modality), slices) for s in samples]
    grids = _patch_grids(backbone, ctx, requests, layer)
    rows = [_pca(backbone, ctx, dataset, samples, grids, slices)]
    if len(with_truth) < len(samples) or not samples:
        ctx.report.note(f"{dataset}: {len(samples) - len(with_truth)} of {len(samples)} images "
                        "have no tissue segmentation (phantom truth or *_dseg.nii.gz beside the "
                        "image); tissue_probe is skipped")
        return rows
    features, labels, persons = [], [], []
    for sample, grid in zip(samples, grids):
        path = _image(sample, modality)
        fractions = _cached_truth(
            ctx, "tissue", [path], contract, slices, grid.shape[2:],
            lambda: pooled(resized(tissue_maps(path), contract), slices, grid.shape[2:]))
        features.append(grid.transpose(0, 2, 3, 1).reshape(-1, grid.shape[1]))
        labels += [TISSUE_CLASSES[i] for i in fractions.argmax(axis=0).reshape(-1)]
        persons += [sample.group] * (grid.shape[0] * grid.shape[2] * grid.shape[3])
    try:
        score = measures.classify(np.concatenate(features), labels, persons,
                                  metric="balanced_accuracy", seed=ctx.config.seed,
                                  n_boot=ctx.config.n_boot, key=f"tissue|{dataset}",
                                  min_items=MIN_PATCHES)
    except BenchError as exc:
        ctx.report.note(f"{dataset}: tissue_probe skipped on the {grids[0].shape[2:]} patch "
                        f"grid of profile {ctx.config.profile.name}: {exc}")
        return rows
    return rows + _probe_rows(backbone, ctx, "tissue_probe", dataset, score, {
        "task": task_id, "modality": modality, "slices": list(slices), "layer": layer,
        "grid": list(grids[0].shape[2:]), "label": "the class with the largest fraction in "
        "the patch (phantom truth or supplied segmentation)"})


def _pca(backbone: Backbone, ctx: _Context, dataset: str, samples, grids, slices
         ) -> AnalysisResult:
    from brainbench.analyses.figures import pca_figure, pca_rgb
    from brainbench.preprocess import load_volume, volume_to_input

    middle = len(slices) // 2
    maps, ratios = pca_rgb([g[i] for g in grids for i in range(g.shape[0])], ctx.config.seed)
    shown = list(range(min(PCA_EXAMPLES, len(samples))))
    images = []
    for i in shown:
        volume = volume_to_input(load_volume(_image(samples[i], TISSUE_TASK[1])),
                                 backbone.contract)
        images.append(volume[slices[middle], 0].numpy())
    picked = [maps[i * len(slices) + middle] for i in shown]
    folder = _figure_folder(backbone, ctx)
    out = pca_figure(images, picked, [f"{samples[i].id}, slice {slices[middle]}" for i in shown],
                     folder / f"pca_{dataset}.png",
                     f"{backbone.name} [{backbone.weights.status}] {dataset}: patch-token PCA")
    ctx.report.figures.append(out)
    return _row(backbone, ctx, "pca_map", dataset, "explained_variance_3", float(sum(ratios)),
                details={"figure": out.relative_to(ctx.config.results_dir).as_posix(),
                         "explained_variance_ratio": ratios, "n_patches": int(sum(
                             g.shape[0] * g.shape[2] * g.shape[3] for g in grids)),
                         "slices": list(slices), "examples": [samples[i].id for i in shown]})


def _figure_folder(backbone: Backbone, ctx: _Context) -> Path:
    tag = f"{backbone.name}-{backbone.weights.id.split(':')[-1][:8]}-{ctx.config.profile.name}"
    return Path(ctx.config.results_dir) / "analyses" / slug(tag)


def lesion_analyses(backbone: Backbone, ctx: _Context) -> list[AnalysisResult]:
    """Patch probe separating lesion patches from healthy brain patches (AUC)."""
    from brainbench.features import TokenRequest

    task_id, modality = LESION_TASK
    layer = _patch_layer(backbone)
    if task_id not in ctx.prepared or layer is None:
        return []
    prepared = ctx.prepared[task_id]
    dataset = prepared.task.dataset
    contract = backbone.contract
    chosen = []
    for sample in prepared.samples:
        image = _image(sample, modality) or Path(sample.images[0][1])
        label = _label_file(prepared, sample)
        if label is None:
            continue
        maps = resized(np.concatenate([mask_map(label), brain_map(image)]), contract)
        area = maps[0].sum(axis=(1, 2))
        top = [int(i) for i in np.argsort(-area, kind="stable")[:LESION_SLICES] if area[i] > 0]
        if top:
            chosen.append((sample, image, tuple(sorted(top)), maps))
    if not chosen:
        ctx.report.note(f"{dataset}: no image with a lesion label; lesion_probe is skipped")
        return []
    grids = _patch_grids(backbone, ctx, [TokenRequest(i, s) for _, i, s, _ in chosen], layer)
    features, labels, persons = [], [], []
    for (sample, _, slices, maps), grid in zip(chosen, grids):
        lesion, brain = pooled(maps, slices, grid.shape[2:])
        flat = grid.transpose(0, 2, 3, 1).reshape(-1, grid.shape[1])
        lesion, brain = lesion.reshape(-1), brain.reshape(-1)
        keep = (lesion >= LESION_MIN) | ((lesion == 0) & (brain >= BRAIN_MIN))
        features.append(flat[keep])
        labels += ["lesion" if v >= LESION_MIN else "healthy" for v in lesion[keep]]
        persons += [sample.group] * int(keep.sum())
    if len(set(labels)) < 2:
        ctx.report.note(f"{dataset}: the patch grid {grids[0].shape[2:]} leaves no "
                        f"{'lesion' if 'lesion' not in labels else 'healthy'} patch; "
                        "lesion_probe is skipped (a larger profile has finer patches)")
        return []
    try:
        score = measures.classify(np.concatenate(features), labels, persons, metric="auc",
                                  seed=ctx.config.seed, n_boot=ctx.config.n_boot,
                                  key=f"lesion|{dataset}", min_items=MIN_PATCHES)
    except BenchError as exc:
        ctx.report.note(f"{dataset}: lesion_probe skipped: {exc}")
        return []
    return _probe_rows(backbone, ctx, "lesion_probe", dataset, score, {
        "task": task_id, "modality": modality, "layer": layer, "grid": list(grids[0].shape[2:]),
        "slices_per_person": LESION_SLICES, "lesion_min_fraction": LESION_MIN,
        "healthy": f"no lesion and brain fraction >= {BRAIN_MIN}",
        "label": "tumour / lesion mask > 0 (BraTS: whole tumour)"})


def site_analyses(backbone: Backbone, ctx: _Context, vectors: dict[str, dict[str, np.ndarray]]
                  ) -> list[AnalysisResult]:
    rows = []
    for task_id, _ in SITE_TASKS:
        if task_id not in vectors:
            continue
        prepared = ctx.prepared[task_id]
        dataset = prepared.task.dataset
        sites = _sites(prepared)
        ids = [s.id for s in prepared.samples if s.id in sites and s.id in vectors[task_id]]
        if len(set(sites[i] for i in ids)) < 2:
            ctx.report.note(f"{dataset}: fewer than two acquisition sites; site_probe skipped")
            continue
        group = {s.id: s.group for s in prepared.samples}
        try:
            score = measures.classify(np.stack([vectors[task_id][i] for i in ids]),
                                      [sites[i] for i in ids], [group[i] for i in ids],
                                      metric="balanced_accuracy", seed=ctx.config.seed,
                                      n_boot=ctx.config.n_boot, key=f"site|{dataset}")
        except BenchError as exc:
            ctx.report.note(f"{dataset}: site_probe skipped: {exc}")
            continue
        rows += _probe_rows(backbone, ctx, "site_probe", dataset, score, {
            "task": task_id, "features": "CLS, mean over slices",
            "reading": "lower is more invariant to the acquisition site"})
    return rows


def similarity(backbones: Sequence[Backbone], ctx: _Context,
               vectors: dict[str, dict[str, dict[str, np.ndarray]]]) -> list[AnalysisResult]:
    """Linear CKA and kNN agreement of every ordered pair (itself included) per dataset."""
    rows = []
    for task_id, _ in SITE_TASKS:
        have = [b for b in backbones if task_id in vectors[b.name]]
        if not have:
            continue
        dataset = ctx.prepared[task_id].task.dataset
        ids = sorted(set.intersection(*(set(vectors[b.name][task_id]) for b in have)))
        if len(ids) < 3:
            continue
        matrix = {b.name: np.stack([vectors[b.name][task_id][i] for i in ids]) for b in have}
        for a in have:
            for b in have:
                other = {"other": b.name, "other_weights_id": b.weights.id,
                         "other_weights_status": b.weights.status, "n": len(ids),
                         "task": task_id, "features": "CLS, mean over slices"}
                cka = measures.linear_cka(matrix[a.name], matrix[b.name])
                agreement, chance, k = measures.knn_agreement(matrix[a.name], matrix[b.name],
                                                              KNN_K)
                rows.append(_row(a, ctx, "cka", dataset, f"cka:{b.name}", cka,
                                 details=other))
                rows.append(_row(a, ctx, "knn_agreement", dataset, f"knn_agreement:{b.name}",
                                 agreement, chance=chance,
                                 details={**other, "k": k, "metric": "cosine"}))
    return rows


def analyze(config: AnalyzeConfig) -> AnalyzeReport:
    """Every analysis of every model in ``config.models``; rows stored, site pages written."""
    from brainbench.backbone import create_backbone
    from brainbench.store import ResultStore, default_url

    if not config.models:
        raise BenchError("analyze needs at least one backbone (--model or --models)")
    if config.weights is not None and len(config.models) > 1:
        raise BenchError(f"--weights applies to one backbone; got {len(config.models)} "
                         f"(--models {','.join(config.models)})")
    store = ResultStore(config.db_url or default_url(config.results_dir))
    report = AnalyzeReport(store_url=store.shown)
    ctx = prepare(config, report)
    backbones, vectors = [], {}
    for name in config.models:
        backbone = create_backbone(name, weights=config.weights,
                                   image_size=config.profile.slice_size,
                                   num_slices=config.profile.num_slices)
        backbones.append(backbone)
        vectors[backbone.name] = {t: volume_vectors(backbone, ctx, t, m) for t, m in SITE_TASKS
                                  if t in ctx.prepared}
        report.results += tissue_analyses(backbone, ctx)
        report.results += lesion_analyses(backbone, ctx)
        report.results += site_analyses(backbone, ctx, vectors[backbone.name])
    report.results += similarity(backbones, ctx, vectors)
    store.write_analyses(report.results)
    from brainbench.leaderboard.analysis_pages import write_analysis_site

    import os

    site = os.environ.get("BRAINBENCH_SITE") or Path(config.results_dir) / "site"
    report.site = write_analysis_site(Path(site), store.analyses(), Path(config.results_dir))
    return report
