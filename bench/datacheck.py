"""`data check`: validate a dataset for a task before any compute, and say why it is (un)usable.

It runs the run's own preparation (brainbench.pipeline: adapter, samples, duplicate merge,
split, leakage guard) and, before it, the run's own image validation (brainbench.validation)
on every image the task would use: headers for shape, voxel size and orientation (volumes
whose last axis is not axial are reported as reoriented to RAS, as preprocessing does), and (by
default) the voxels themselves, hashed for the leakage guard and checked for NaN/inf, empty
and constant volumes, so a bad file is found now rather than an hour into feature
extraction; where the run stops at the first unusable file set, the check lists them all. ``headers_only`` skips the voxel read and instead compares the
gzip trailer's length (or the file size) with what the header promises: cheap, catches
truncation, not bit rot. A segmentation task's label maps get the run's own check
(brainbench.segmentation.labels: shape and affine against each image, label values against the
scheme; values only when voxels are read). Nothing is written except the voxel-hash cache.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from brainbench.errors import BenchError
from brainbench.kinds import get_kind
from brainbench.leakage import HashCache
from brainbench.pipeline import load_samples, manifest_path, prepare_task
from brainbench.preprocess import CANONICAL_ORIENTATION, is_axial_last
from brainbench.segmentation.labels import check_label_maps
from brainbench.splits import read_manifest
from brainbench.targets import SegmentationTarget
from brainbench.taskspec import Sample, TaskSpec
from brainbench.validation import (MAX_DIM, MAX_VOXEL_MM, MIN_DIM, MIN_VOXEL_MM,  # noqa: F401
                                   ImageInfo, check_images, image_info, length_problem)

@dataclass(frozen=True)
class Finding:
    level: str  # "error": the dataset cannot be used as is; "warning": usable, worth a look
    where: str  # file or subject
    message: str


@dataclass
class DataCheckReport:
    task: str
    dataset: str
    location: str
    fatal: str | None = None
    n_subjects: int = 0
    n_samples: int = 0
    n_people: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    target_summary: str = ""
    strata: dict[str, int] = field(default_factory=dict)
    adapter_notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    orientations: dict[str, int] = field(default_factory=dict)
    reoriented: dict[str, int] = field(default_factory=dict)  # not axial-last: reoriented to RAS
    voxel_sizes: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)
    split: dict[str, object] = field(default_factory=dict)
    images_checked: int = 0
    voxels_read: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return self.fatal is None and not self.errors

    def render(self) -> str:
        return render(self)


# ------------------------------------------------------------------------------------- check


def _target_summary(task: TaskSpec, samples: Sequence[Sample]) -> str:
    values = [s.target for s in samples]
    unit = getattr(task.target, "unit", None)
    kind = get_kind(task.kind)
    return (kind.summary(task.target_description, values, unit) if unit is not None
            else kind.summary(task.target_description, values))


def check_task(task: TaskSpec, root: Path, *, data_source: str, results_dir: Path | None = None,
               hash_cache: HashCache | None = None, headers_only: bool = False,
               workers: int | None = None) -> DataCheckReport:
    """Everything a run would do before computing, reported instead of raised."""
    started = time.perf_counter()
    report = DataCheckReport(task=task.id, dataset=task.dataset, location=str(root))
    try:
        _check(task, Path(root), report, data_source, results_dir,
               hash_cache or HashCache(None), headers_only, workers)
    except BenchError as exc:
        report.fatal = str(exc)
    report.seconds = time.perf_counter() - started
    return report


def _check(task: TaskSpec, root: Path, report: DataCheckReport, data_source: str,
           results_dir: Path | None, hash_cache: HashCache, headers_only: bool, workers: int | None) -> None:
    loaded = load_samples(task, root)
    samples = loaded.samples
    report.location = str(loaded.cohort.root)
    report.n_subjects = len(loaded.cohort.subjects)
    report.adapter_notes = list(loaded.cohort.notes)
    report.excluded = list(loaded.excluded)

    # every image (and segmentation label) the task would read: the run's own validation
    images = check_images(loaded, None if headers_only else hash_cache, headers_only=headers_only,
                          workers=workers)
    infos = images.infos
    for path, found in images.problems.items():
        for level, message in found:
            report.findings.append(Finding(level, f"{images.owners.get(path, '?')}: {path}", message))
    report.images_checked = len(images.owners)
    report.orientations = dict(Counter(i.orientation for i in infos.values()).most_common())
    report.voxel_sizes = dict(Counter("x".join(f"{z:g}" for z in i.voxel_mm) for i in infos.values()).most_common(5))
    report.shapes = dict(Counter("x".join(map(str, i.shape)) for i in infos.values()).most_common(5))
    # what preprocessing does with each (brainbench.preprocess.reorientation): axial-last
    # volumes are sliced as stored, the others reoriented to RAS first
    known = {o: n for o, n in report.orientations.items() if o != "?"}
    report.reoriented = {o: n for o, n in known.items() if not is_axial_last(o)}
    as_stored = {o: n for o, n in known.items() if is_axial_last(o)}
    sliced = set(as_stored) | ({CANONICAL_ORIENTATION} if report.reoriented else set())
    if len(sliced) > 1:
        report.findings.append(Finding(
            "warning", task.dataset, f"mixed orientations {report.orientations}: volumes stored axial-last "
            f"({', '.join(as_stored)}) are sliced along their last axis as stored"
            + (f" and the others reoriented to {CANONICAL_ORIENTATION}" if report.reoriented else "")
            + ", so their slices are mirrored or rotated relative to each other"))
    for s in samples:  # modalities of one sample are averaged: they should share a grid
        grids = {infos[Path(p)].shape[:3] for _, p in s.images if Path(p) in infos}
        if len(grids) > 1:
            report.findings.append(Finding("warning", s.id, f"modalities on different grids {sorted(grids)}"))

    # label maps: the run's own check (shape and affine against each image, label values
    # against the scheme; values need the voxels, so headers only checks the geometry)
    if isinstance(task.target, SegmentationTarget):
        bad = images.bad
        readable = [s for s in samples if Path(s.target.path) not in bad
                    and not any(Path(p) in bad for _, p in s.images)]
        for sid, problem in check_label_maps(readable, task.target, voxels=not headers_only).items():
            report.findings.append(Finding("error", sid, problem + " (a run would stop)"))

    hashes = images.usable_hashes()  # samples reading an unusable image are left out
    report.voxels_read = images.voxels_read
    report.n_samples = len(samples)
    report.n_people = len({s.group for s in samples})
    report.labels = dict(sorted(Counter(s.fraction_stratum for s in samples).items()))
    report.strata = dict(sorted(Counter(s.split_stratum for s in samples).items()))
    report.target_summary = _target_summary(task, samples)

    # the run's own preparation: duplicate merge, split, leakage guard (no manifest written)
    prepared = prepare_task(task, root, data_source, loaded=loaded, hashes=hashes)
    report.duplicates = prepared.duplicates
    if report.duplicates:
        report.findings.append(Finding("warning", task.dataset, f"{len(report.duplicates)} set(s) of identical "
                                       "images; people sharing one are kept on one side of the split"))
    split, merged = prepared.split, prepared.samples
    test = set(split.test_groups)
    report.split = {
        "hash": split.hash, "train_people": len(split.train_groups), "test_people": len(split.test_groups),
        "train_samples": sum(1 for s in merged if s.group not in test),
        "test_samples": sum(1 for s in merged if s.group in test),
        "test_labels": dict(sorted(Counter(s.fraction_stratum for s in merged if s.group in test).items())),
    }
    if split.variant:
        report.split["variant"] = split.label
    if results_dir is not None:
        manifest = manifest_path(results_dir, data_source, task)
        report.split["manifest"] = str(manifest)
        if not manifest.exists():
            report.split["stored"] = "none yet (the first run writes it)"
        else:
            try:
                content = read_manifest(manifest)
            except BenchError as exc:  # unreadable or edited: verified by content, not trusted
                report.split["stored"] = "DOES NOT VERIFY"
                report.findings.append(Finding("error", str(manifest), str(exc).replace(
                    f"split manifest {manifest}: ", "") + " (a run would stop)"))
                return
            same = (content["hash"] == split.hash and content["train"] == sorted(split.train_groups)
                    and content["test"] == sorted(split.test_groups))
            stored = content["hash"]
            if same:
                report.split["stored"] = "matches"
            else:
                report.split["stored"] = f"DIFFERS (stored {str(stored)[:12]})"
                report.findings.append(Finding(
                    "error", str(manifest), f"the split differs from the stored manifest (stored "
                    f"{str(stored)[:12]}, now {split.hash[:12]}): a run would stop; restore the data or "
                    "delete the manifest to start a new split"))


# ------------------------------------------------------------------------------------- output


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def render(r: DataCheckReport, max_findings: int = 40) -> str:
    lines = [f"== data check: task {r.task} on {r.dataset} ({r.location})"]
    if r.fatal is not None:
        lines += ["UNUSABLE:", *("  " + line for line in r.fatal.splitlines())]
        if r.findings:
            lines += [f"  {f.level}: {f.where}: {f.message}" for f in r.findings[:max_findings]]
        return "\n".join(lines)
    lines += [
        f"subjects read: {r.n_subjects}; task samples: {r.n_samples} from {r.n_people} people",
        f"labels: {_counts(r.labels)}",
        f"target: {r.target_summary}",
        f"split strata: {_counts(r.strata)}",
        f"images: {r.images_checked} checked; {r.voxels_read} read in full (the others: header only"
        " or voxel hash cached)",
    ]
    lines += [f"  shapes: {_counts(r.shapes)}", f"  voxel sizes (mm): {_counts(r.voxel_sizes)}",
              f"  orientations: {_counts(r.orientations)}"]
    if r.reoriented:
        lines += [f"  reoriented to {CANONICAL_ORIENTATION} before slicing (last axis not axial, "
                  f"e.g. stored sagittally): {_counts(r.reoriented)}"]
    if r.adapter_notes:
        lines += ["resolved by the adapter (rows without images, images without rows, quirks):"]
        lines += [f"  - {n}" for n in r.adapter_notes]
    if r.excluded:
        lines += ["excluded from the task (no label / missing modality):"] + [f"  - {n}" for n in r.excluded]
    if r.duplicates:
        lines += ["identical image content:"] + [f"  - {d}" for d in r.duplicates]
    if r.split:
        s = r.split
        lines += [f"split: {s['train_people']} people ({s['train_samples']} samples) train, "
                  f"{s['test_people']} people ({s['test_samples']} samples) test; hash {str(s['hash'])[:12]}",
                  f"  test labels: {_counts(s['test_labels'])}"]
        if "variant" in s:
            lines += [f"  split variant: {s['variant']} (the test set is that whole site)"]
        if "manifest" in s:
            lines += [f"  manifest: {s['manifest']} ({s['stored']})"]
    for f in r.findings[:max_findings]:
        lines.append(f"{f.level}: {f.where}: {f.message}")
    if len(r.findings) > max_findings:
        lines.append(f"... and {len(r.findings) - max_findings} more finding(s)")
    n_err = len(r.errors)
    lines.append(f"result: {'OK' if r.ok else 'UNUSABLE'} ({n_err} error(s), "
                 f"{len(r.findings) - n_err} warning(s); {r.seconds:.1f} s)")
    return "\n".join(lines)
