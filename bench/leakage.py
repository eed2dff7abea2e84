"""Leakage guards: identical image content under two IDs never straddles train and test.

Subject grouping (every scan of a person shares ``Sample.group``) is the adapters' job; this
module catches what IDs cannot: the same voxels filed under two people (a re-released scan, a
copy under a new ID). The hash covers the voxel values (after the file's scaling, as float32)
and the shape, not the file bytes, so a copy re-compressed or with an edited header still
matches. Samples whose images share a hash are merged into one group *before* the split, so
they land on the same side; the merge is reported.

Hashes are cached per file by (resolved path, size, mtime) in one JSON file, so only new or
changed files are read again. The same read yields the voxel statistics validation needs
(brainbench.validation: non-finite, empty, constant volumes); they are cached beside the hash
(an entry ``{"hash": ..., "stats": {...}}``; an older entry holding only the hash is read again
once), so a warm rerun validates without reading a voxel. The same file also keeps, under
``headers``, the header facts of every file version whose header passed validation (shape,
voxel sizes, affine: brainbench.validation.read_header), so a warm rerun checks headers
without opening a file either (1,507 header reads were ~1.1 s of a ~5 s warm default run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from brainbench.errors import BenchError
from brainbench.preprocess import read_voxels, voxel_stats
from brainbench.progress import progress_bar
from brainbench.taskspec import Sample

log = logging.getLogger("brainbench")

HASH_SCHEMA = 2  # 2: voxels read through preprocess.read_voxels


def voxel_hash(path: Path) -> str:
    """sha256 of (shape, float32 voxel values); a trailing singleton 4th axis is dropped."""
    return voxel_hash_and_stats(path)[0]


def voxel_hash_and_stats(path: Path) -> tuple[str, dict]:
    """The voxel hash and `preprocess.voxel_stats` from one read of the file."""
    data = read_voxels(path)
    digest = hashlib.sha256(f"voxels-v{HASH_SCHEMA}:{data.shape}".encode())
    digest.update(np.ascontiguousarray(data, dtype="<f4").tobytes())
    return digest.hexdigest(), voxel_stats(data)


_STAT_INTS = ("n", "nonfinite", "nonzero")


def _valid_stats(stats: object) -> bool:
    if not isinstance(stats, dict) or set(stats) != {*_STAT_INTS, "min", "max"}:
        return False
    if not all(isinstance(stats[k], int) and not isinstance(stats[k], bool) and stats[k] >= 0
               for k in _STAT_INTS):
        return False
    bounds = [stats["min"], stats["max"]]
    if stats["nonzero"] == 0:
        return bounds == [None, None]
    return all(isinstance(b, (int, float)) and not isinstance(b, bool) and np.isfinite(b)
               for b in bounds)


def _stat_key(path: Path) -> str:
    """What identifies a file version cheaply; an Analyze/NIfTI pair counts its header too."""
    parts = [str(path.resolve())]
    for p in (path, path.with_suffix(".hdr")) if path.suffix == ".img" else (path,):
        st = p.stat()
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    return "|".join(parts)


class HashCache:
    """Voxel hashes (and header facts, `header`) by file version, persisted as one JSON file
    (``None``: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, str] = {}  # file version -> voxel hash
        self.entry_stats: dict[str, dict] = {}  # file version -> voxel statistics
        self.headers: dict[str, dict] = {}  # file version -> header facts (validation)
        if self.path is not None and self.path.exists():
            self.entries, self.entry_stats, self.headers = self._load(self.path)
        self.computed = 0
        self.stats: dict[Path, dict] = {}  # path -> voxel statistics of what was hashed
        self._unsaved_headers = 0

    def header(self, path: Path) -> dict | None:
        """The cached header facts of this version of `path` (None: not cached). The caller
        (brainbench.validation) checks their form and reads the file again if it is wrong."""
        try:
            return self.headers.get(_stat_key(Path(path)))
        except OSError:
            return None

    def remember_header(self, path: Path, facts: dict) -> None:
        """Keep header facts for this version of `path`; written by `save_headers`."""
        self.headers[_stat_key(Path(path))] = facts
        self._unsaved_headers += 1

    def save_headers(self) -> None:
        """Write the cache if headers were remembered since the last write. Header facts only
        save time, so a cache folder that cannot be written is a warning here, not an error
        (a run whose hashes are all cached never had to write)."""
        if self._unsaved_headers and self.path is not None:
            try:
                self._save()
            except BenchError as exc:
                log.warning("%s; image headers will be read again next time", exc)
                self._unsaved_headers = 0

    @staticmethod
    def _load(path: Path) -> tuple[dict[str, str], dict[str, dict], dict[str, dict]]:
        """The stored entries; a damaged cache is only a cache: it is rebuilt (with a note
        naming the file), never half-trusted."""
        if path.is_dir():
            raise BenchError(f"voxel hash cache {path} is a folder, expected a JSON file; "
                             "remove it or pass another cache folder (--cache)")
        try:
            stored = json.loads(path.read_text())
        except PermissionError as exc:
            raise BenchError(f"voxel hash cache {path} is not readable ({exc.strerror}); fix "
                             "its permissions or pass another cache folder (--cache)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("voxel hash cache %s is malformed (%s); rebuilding it", path, exc)
            return {}, {}, {}
        entries = stored.get("entries") if isinstance(stored, dict) else None
        if not isinstance(stored, dict) or stored.get("schema") != HASH_SCHEMA:
            if not (isinstance(stored, dict) and isinstance(stored.get("schema"), int)):
                log.warning("voxel hash cache %s is not a brainbench hash cache; rebuilding it",
                            path)
            return {}, {}, {}  # an older schema is simply rebuilt

        def hash_of(value: object) -> object:  # "hash" (older entries) or {"hash", "stats"}
            return value.get("hash") if isinstance(value, dict) else value

        if not isinstance(entries, dict) or not all(
                isinstance(k, str) and isinstance(hash_of(v), str) and len(hash_of(v)) == 64
                for k, v in entries.items()):
            log.warning("voxel hash cache %s holds malformed entries; rebuilding it", path)
            return {}, {}, {}
        stats = {k: v["stats"] for k, v in entries.items()
                 if isinstance(v, dict) and _valid_stats(v.get("stats"))}  # others: read again
        headers = stored.get("headers")
        headers = ({k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, dict)}
                   if isinstance(headers, dict) else {})  # a file without them: read again
        return {k: hash_of(v) for k, v in entries.items()}, stats, headers

    def hashes(self, paths: Iterable[Path], workers: int | None = None) -> dict[Path, str]:
        """Hash of every path (reading only files not cached); raises on the first bad file."""
        hashes, errors = self.try_hashes(paths, workers)
        if errors:
            path, message = next(iter(errors.items()))
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise BenchError(message + more)
        return hashes

    def try_hashes(self, paths: Iterable[Path], workers: int | None = None
                   ) -> tuple[dict[Path, str], dict[Path, str]]:
        """(hashes, errors by path) so a report can name every unreadable file.

        workers: reading threads; None: one per available core
        (brainbench.device.available_cores)."""
        if workers is None:
            from brainbench.device import available_cores

            workers = available_cores()
        hashes: dict[Path, str] = {}
        errors: dict[Path, str] = {}
        todo: list[tuple[Path, str]] = []
        for path in dict.fromkeys(Path(p) for p in paths):
            try:
                key = _stat_key(path)
            except FileNotFoundError:
                errors[path] = f"image file not found: {path}"
                continue
            if key in self.entries and key in self.entry_stats:
                hashes[path] = self.entries[key]
                self.stats[path] = self.entry_stats[key]
            else:
                todo.append((path, key))

        def one(item: tuple[Path, str]) -> tuple[Path, str, tuple[str, dict] | None, str | None]:
            path, key = item
            try:
                return path, key, voxel_hash_and_stats(path), None
            except BenchError as exc:
                return path, key, None, str(exc)

        # reading every voxel of a new cohort takes a while (~30 s for the default phantoms):
        # a bar appears on a terminal once it has run for 2 s
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
                progress_bar(total=len(todo), desc="voxel hashes", unit="file",
                             delay=2.0) as bar:
            for path, key, value, error in pool.map(one, todo):
                bar.update(1)
                if error is not None:
                    errors[path] = error
                else:
                    hashes[path] = self.entries[key] = value[0]
                    self.stats[path] = self.entry_stats[key] = value[1]
                    self.computed += 1
        if todo and self.path is not None and len(errors) < len(todo):
            self._save()
        return hashes, errors

    def _save(self) -> None:
        from brainbench.splits import write_json_atomic

        try:
            entries = {k: {"hash": v, "stats": self.entry_stats[k]} if k in self.entry_stats else v
                       for k, v in self.entries.items()}
            write_json_atomic(self.path, {"schema": HASH_SCHEMA, "entries": entries,
                                          "headers": self.headers})
            self._unsaved_headers = 0
        except OSError as exc:
            raise BenchError(f"cannot write the voxel hash cache {self.path}: "
                             f"{exc.strerror or exc} ({exc.filename or self.path.parent}); "
                             "pass a writable cache folder (--cache / BRAINBENCH_CACHE)") from None


@dataclass(frozen=True)
class DuplicateSet:
    """One voxel hash found in several samples: (sample id, path) pairs and their groups."""

    hash: str
    images: tuple[tuple[str, Path], ...]
    groups: tuple[str, ...]

    def describe(self) -> str:
        names = ", ".join(f"{sid} ({path.name})" for sid, path in self.images)
        where = f"people {', '.join(self.groups)} merged into one group" if len(self.groups) > 1 \
            else f"within person {self.groups[0]}"
        return f"identical voxel data {self.hash[:12]}: {names}; {where}"


def find_duplicates(samples: Sequence[Sample], hashes: Mapping[Path, str]) -> list[DuplicateSet]:
    """Hashes shared by two or more distinct images or samples (same file twice is not a duplicate)."""
    by_hash: dict[str, dict[tuple[str, Path], str]] = {}
    for sample in samples:
        for _, path in sample.images:
            by_hash.setdefault(hashes[Path(path)], {})[(sample.id, Path(path))] = sample.group
    found = []
    for value, members in sorted(by_hash.items()):
        paths = {p for _, p in members}
        ids = {sid for sid, _ in members}
        if len(paths) > 1 or (len(ids) > 1 and len(set(members.values())) > 1):
            found.append(DuplicateSet(value, tuple(sorted(members)), tuple(sorted(set(members.values())))))
    return found


def merge_duplicate_groups(samples: Sequence[Sample], hashes: Mapping[Path, str]
                           ) -> tuple[list[Sample], list[str]]:
    """Samples sharing image content get one group (the smallest name of those merged).

    Union-find over groups, so chains (A~B, B~C) end in one group. Without duplicates the
    samples come back unchanged, and so does the split computed from them.
    """
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    duplicates = find_duplicates(samples, hashes)
    for dup in duplicates:
        roots = sorted({find(g) for g in dup.groups})
        for g in roots[1:]:
            parent[g] = roots[0]
    merged = [s if find(s.group) == s.group else replace(s, group=find(s.group)) for s in samples]
    return merged, [d.describe() for d in duplicates]


def assert_no_leakage(task: str, samples: Sequence[Sample], test_groups: Iterable[str],
                      hashes: Mapping[Path, str]) -> None:
    """The guard the runner applies after splitting: no id, group or image hash on both sides."""
    test_groups = set(test_groups)
    train = [s for s in samples if s.group not in test_groups]
    test = [s for s in samples if s.group in test_groups]
    for what, key in (("sample id", lambda s: {s.id}), ("person", lambda s: {s.group}),
                      ("image hash", lambda s: {hashes[Path(p)] for _, p in s.images})):
        both = set().union(*map(key, train)) & set().union(*map(key, test)) if train and test else set()
        if both:
            raise BenchError(f"task {task}: {what} on both sides of the split: {sorted(both)[:5]}")
