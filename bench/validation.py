"""Image validation shared by `data check` and `run`, before any compute.

What the data check rejects the run refuses, with the same words. Per image file:

* header plausibility (`image_info`): a 3D volume (a trailing singleton 4th axis allowed),
  each axis MIN_DIM..MAX_DIM voxels, voxel sizes MIN_VOXEL_MM..MAX_VOXEL_MM, a finite,
  non-singular affine with three distinct axis codes; the facts judged (`read_header`) of a
  header that passed are kept per file version in the voxel-hash cache (brainbench.leakage),
  so a warm rerun opens no file, and the rules still run on them every time;
* the voxels (`voxel_problems`), from the statistics the voxel hash's read computes anyway and
  the voxel-hash cache keeps beside the hash (brainbench.leakage), so a warm rerun reads
  nothing: no finite voxel, no nonzero voxel (empty) or one value in every nonzero voxel
  (constant: nothing to normalise) are errors; some NaN / inf voxels are a warning naming how
  many, since preprocessing treats them as background (0).

`check_images` reports every problem (the data check lists them); `validate_images` is the
run's step in `brainbench.pipeline.prepare_task`: it raises one BenchError naming every
unusable file, logs the warnings, and returns the voxel hashes.
"""

from __future__ import annotations

import functools
import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from brainbench.errors import BenchError
from brainbench.progress import progress_bar

if TYPE_CHECKING:  # pipeline imports this module
    from brainbench.leakage import HashCache
    from brainbench.pipeline import TaskSamples

log = logging.getLogger("brainbench")

# Plausible geometry of a brain MRI volume; outside these the file is mislabelled or damaged.
MIN_DIM, MAX_DIM = 8, 2048
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.1, 10.0
#: how many unusable files a run's error lists before "... and N more"
MAX_LISTED = 10


@dataclass(frozen=True)
class ImageInfo:
    shape: tuple[int, ...]
    voxel_mm: tuple[float, ...]
    orientation: str


def read_header(path: Path) -> dict:
    """The header facts validation judges: {"shape", "zooms" (first three), "affine" (4x4)},
    as plain lists (what the header cache stores). Raises what nibabel raises."""
    img = nib.load(str(path))
    return {"shape": [int(n) for n in img.shape],
            "zooms": [float(z) for z in img.header.get_zooms()[:3]],
            "affine": np.asarray(img.affine, dtype=float).tolist()}


def _well_formed_header(facts: object) -> bool:
    """Cached facts of the form `read_header` writes (a damaged cache entry is read again)."""
    if not isinstance(facts, dict) or set(facts) != {"shape", "zooms", "affine"}:
        return False
    shape, zooms, affine = facts["shape"], facts["zooms"], facts["affine"]

    def numbers(values: object, kind: tuple[type, ...]) -> bool:
        return isinstance(values, list) and all(
            isinstance(v, kind) and not isinstance(v, bool) for v in values)

    return (numbers(shape, (int,)) and 1 <= len(shape) <= 7 and numbers(zooms, (int, float))
            and isinstance(affine, list) and len(affine) == 4
            and all(numbers(row, (int, float)) and len(row) == 4 for row in affine))


def image_info(path: Path, header_cache: "HashCache | None" = None
               ) -> tuple[ImageInfo | None, list[tuple[str, str]]]:
    """Header-only look at one image: (info, [(level, problem)]).

    With a ``header_cache`` (brainbench.leakage.HashCache) the facts of a file version whose
    header passed before are taken from it instead of opening the file; the checks below run
    on them every time, so a changed rule applies to cached files too."""
    if not Path(path).is_file():
        return None, [("error", "missing file")]
    facts = header_cache.header(path) if header_cache is not None else None
    cached = _well_formed_header(facts)
    if not cached:
        try:
            facts = read_header(path)
        except Exception as exc:  # nibabel raises many types for damaged headers
            return None, [("error", f"unreadable header ({type(exc).__name__}: {exc})")]
    info, problems = _judge_header(facts)
    if header_cache is not None and not cached and info is not None and not problems:
        header_cache.remember_header(path, facts)
    return info, problems


def _judge_header(facts: dict) -> tuple[ImageInfo | None, list[tuple[str, str]]]:
    shape, zooms = tuple(facts["shape"]), tuple(float(z) for z in facts["zooms"])
    problems: list[tuple[str, str]] = []
    spatial = shape[:3]
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        return None, [("error", f"expected a 3D volume, got shape {shape}")]
    if any(not MIN_DIM <= n <= MAX_DIM for n in spatial):
        problems.append(("error", f"implausible shape {shape} (each axis {MIN_DIM}-{MAX_DIM} voxels)"))
    if any(not (np.isfinite(z) and MIN_VOXEL_MM <= z <= MAX_VOXEL_MM) for z in zooms):
        problems.append(("error", f"implausible voxel size {tuple(round(z, 4) for z in zooms)} mm "
                                  f"(expected {MIN_VOXEL_MM}-{MAX_VOXEL_MM} mm per axis)"))
    orientation, problem = _orientation(tuple(map(tuple, facts["affine"])))
    problems += [("error", problem)] if problem else []
    return ImageInfo(shape, tuple(round(z, 3) for z in zooms), orientation), problems


@functools.lru_cache(maxsize=4096)
def _orientation(affine_rows: tuple[tuple[float, ...], ...]) -> tuple[str, str | None]:
    """(axis codes or "?", problem or None) of one affine. Memoised: a cohort's files share a
    few affines, and nibabel's SVD-based orientation was most of a cached header check."""
    affine = np.asarray(affine_rows, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        return "?", ("degenerate affine (zero, singular or non-finite: orientation cannot be "
                     "determined)")
    codes = nib.aff2axcodes(affine)
    if None in codes or len(set(codes)) < 3:
        return "?", f"implausible orientation {codes}"
    return "".join(codes), None


def voxel_problems(stats: dict) -> list[tuple[str, str]]:
    """[(level, problem)] for one volume's `preprocess.voxel_stats`."""
    n, nonfinite, nonzero = stats["n"], stats["nonfinite"], stats["nonzero"]
    if n and nonfinite >= n:
        return [("error", f"no finite voxels (all {n} are NaN/inf)")]
    problems: list[tuple[str, str]] = []
    if nonfinite:
        problems.append(("warning", f"{nonfinite} of {n} voxels ({100 * nonfinite / n:.2g}%) are "
                                    "NaN/inf; they are treated as background (0)"))
    if nonzero == 0:
        problems.append(("error", "empty volume: every finite voxel is 0"))
    elif stats["min"] == stats["max"]:
        problems.append(("error", f"constant volume: every nonzero voxel is {stats['min']:g} "
                                  "(nothing to normalise)"))
    return problems


def length_problem(path: Path) -> str | None:
    """Without decompressing: does the stored data length match what the header promises?
    (The same check every voxel read runs first: brainbench.preprocess.size_problem.)"""
    from brainbench.preprocess import size_problem

    return size_problem(Path(path))


def _readable_gzip(path: Path) -> str | None:  # used only when voxels are not read
    try:
        with gzip.open(path, "rb") as fh:
            fh.read(352)
    except (OSError, EOFError) as exc:
        return f"not a readable gzip file ({exc})"
    return None


@dataclass
class ImageCheck:
    """Every file a task reads, checked: problems by path ((level, message), messages without
    the path), header infos, and the voxel hashes of the images that could be read."""

    owners: dict[Path, str]  # path -> (first) sample id reading it
    infos: dict[Path, ImageInfo] = field(default_factory=dict)
    problems: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)
    hashes: dict[Path, str] | None = None
    voxels_read: int = 0

    def add(self, path: Path, level: str, message: str) -> None:
        self.problems.setdefault(path, []).append((level, message))

    def of_level(self, level: str) -> list[tuple[Path, str]]:
        return [(p, m) for p, found in self.problems.items() for lv, m in found if lv == level]

    @property
    def bad(self) -> set[Path]:
        return {p for p, _ in self.of_level("error")}

    def usable_hashes(self) -> dict[Path, str] | None:
        """The hashes of images without errors (samples reading a bad file are dropped)."""
        if self.hashes is None:
            return None
        bad = self.bad
        return {p: h for p, h in self.hashes.items() if p not in bad}


def check_images(loaded: "TaskSamples", hash_cache: "HashCache | None", *,
                 headers_only: bool = False, workers: int | None = None) -> ImageCheck:
    """Headers of every image and label map the task reads, then (unless ``headers_only``, or
    without a hash cache) the images' voxels through the hash cache."""
    owners: dict[Path, str] = {}
    for s in loaded.samples:
        for _, p in s.images:
            owners.setdefault(Path(p), s.id)
        if hasattr(s.target, "path"):
            owners.setdefault(Path(s.target.path), s.id)
    check = ImageCheck(owners)
    # one header read per file (~5 ms; 1,280 files ~6 s on the shared 2-core machine): a bar
    # appears on a terminal once it has run for 2 s, as for the voxel hashes that follow
    for path in progress_bar(owners, desc="image headers", unit="file", delay=2.0):
        info, problems = image_info(path, hash_cache)
        if info is not None:
            check.infos[path] = info
        if headers_only and info is not None and not problems:
            problem = length_problem(path) or (_readable_gzip(path) if path.name.endswith(".gz") else None)
            problems += [("error", problem)] if problem else []
        for level, message in problems:
            check.add(path, level, message)
    if hash_cache is not None:
        hash_cache.save_headers()
    if headers_only or hash_cache is None:
        return check
    bad = check.bad
    images = [p for p in dict.fromkeys(loaded.image_paths()) if p not in bad]
    before = hash_cache.computed
    hashes, errors = hash_cache.try_hashes(images, workers=workers)
    check.voxels_read = hash_cache.computed - before
    for path, message in errors.items():
        check.add(path, "error", message.replace(f" {path}", "").rstrip(":"))
    for path in hashes:
        for level, message in voxel_problems(hash_cache.stats[path]):
            check.add(path, level, message)
    check.hashes = hashes
    return check


def validate_images(loaded: "TaskSamples", hash_cache: "HashCache", workers: int | None = None
                    ) -> dict[Path, str]:
    """The run's validation: the voxel hashes of every image, or one BenchError naming every
    file the data check would reject; warnings (NaN/inf voxels) are logged with their count."""
    check = check_images(loaded, hash_cache, workers=workers)
    for path, message in check.of_level("warning"):
        log.warning("%s: %s: %s", check.owners.get(path, "?"), path, message)
    errors = check.of_level("error")
    if errors:
        lines = [f"  {check.owners.get(p, '?')}: {p}: {m}" for p, m in errors[:MAX_LISTED]]
        if len(errors) > MAX_LISTED:
            lines.append(f"  ... and {len(errors) - MAX_LISTED} more")
        raise BenchError(f"task {loaded.task.id}: {len({p for p, _ in errors})} image file(s) "
                         "cannot be used (nothing was computed; `brainbench data-check` reports "
                         "the whole dataset):\n" + "\n".join(lines))
    assert check.hashes is not None
    return check.hashes
