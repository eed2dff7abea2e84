"""Pieces every adapter shares: the adapter record, finding the dataset folder, rows by key,
images, notes, finishing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable, Generic, Hashable, Iterable, Mapping, Sequence, TypeVar

from brainbench.errors import BenchError
from brainbench.registry import Registry
from brainbench.subjects import Cohort, Subject

from ._tables import Row, Table, preview

NIFTI_SUFFIXES = (".nii.gz", ".nii")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class DatasetAdapter:
    """How to read one dataset exactly as distributed.

    name:          registry name (``ixi``, ``brats2021`` ...).
    title:         human name of the release.
    folder:        the top folder the release unpacks to (``IXI``); ``load_cohort`` accepts the
                   folder that contains it or the folder itself.
    expected_tree: a short picture of the layout, shown in errors and the README.
    read:          dataset folder (or its parent) -> Cohort; paths only, no voxels are loaded.
    signature:     how the dataset's own folder is recognised whatever it is called: glob
                   patterns relative to it (label files such as ``ADNIMERGE.csv``, image paths
                   such as ``BraTS2021_?????/BraTS2021_?????_t1.nii*``), matched case-insensitively;
                   one match is enough. A folder named ``folder`` is recognised too.
    parts:         for releases distributed in parts (BraTS 2021 from TCIA groups its cases by
                   source collection: ``BraTS2021_TrainingSet/<collection>/BraTS2021_NNNNN/``):
                   whether a folder whose subfolders are all parts of one release is the
                   dataset's folder (``read`` then reads every part as one cohort).
    parts_text:    what ``parts`` looks for, in words.
    """

    name: str
    title: str
    folder: str
    expected_tree: str
    read: Callable[[Path], Cohort]
    signature: tuple[str, ...] = ()
    parts: Callable[[Path], bool] | None = None
    parts_text: str = ""

    def recognises(self, path: Path) -> bool:
        """Whether ``path`` is this dataset's own folder: named ``folder`` or matching the
        signature (or holding its parts). Only names are listed (a few folders), no file is opened."""
        path = Path(path)
        return path.name.lower() == self.folder.lower() or self.recognises_content(path)

    def matches_signature(self, path: Path, *, label_files: bool | None = None) -> bool:
        """Whether a file under ``path`` matches the signature: label files only (patterns
        without ``/``), image paths only (with ``/``), or either (``label_files=None``)."""
        return any(matches(path, p) for p in self.signature
                   if label_files is None or label_files == ("/" not in p.strip("/")))

    def recognises_content(self, path: Path) -> bool:
        """Whether ``path``'s files are this dataset's (its name aside)."""
        return Path(path).is_dir() and (self.matches_signature(path) or self.holds_parts(path))

    def holds_parts(self, path: Path) -> bool:
        return self.parts is not None and Path(path).is_dir() and self.parts(Path(path))

    def looked_for(self) -> str:
        """What `recognises` looks for, in words (for 'not found' messages)."""
        return " or ".join([f"a folder named {self.folder}/", *self.signature,
                            *([self.parts_text] if self.parts_text else [])])


ADAPTERS: "Registry[DatasetAdapter]" = Registry("dataset")


def register_adapter(name: str, title: str, folder: str, expected_tree: str,
                     read: Callable[[Path], Cohort], signature: Iterable[str] = (),
                     parts: Callable[[Path], bool] | None = None,
                     parts_text: str = "") -> DatasetAdapter:
    """Build and register an adapter: each module ends with ``ADAPTER = register_adapter(...)``."""
    return ADAPTERS.register(name, DatasetAdapter(name, title, folder, expected_tree, read,
                                                  tuple(signature), parts, parts_text))


def matches(folder: Path | str, pattern: str) -> bool:
    """Whether glob ``pattern`` (``/``-separated, no ``**``) matches a file under ``folder``,
    case-insensitively; stops at the first match and lists only the folders the pattern walks."""
    return _matches(str(folder), [part.lower() for part in pattern.split("/") if part])


def _matches(folder: str, parts: list[str]) -> bool:
    head, rest = parts[0], parts[1:]
    try:
        with os.scandir(folder) as entries:
            candidates = [e for e in entries if fnmatchcase(e.name.lower(), head)]
    except OSError:
        return False
    for entry in sorted(candidates, key=lambda e: e.name):
        try:
            if not rest and entry.is_file():
                return True
            if rest and entry.is_dir() and _matches(entry.path, rest):
                return True
        except OSError:
            continue
    return False


def layout_error(title: str, message: str, expected_tree: str) -> BenchError:
    return BenchError(f"{title}: {message}\nexpected layout:\n{expected_tree}")


def locate(
    root: Path | str,
    *,
    folder: str,
    title: str,
    expected_tree: str,
    markers: Iterable[str] = (),
    alt_folders: Iterable[str] = (),
    looks_like: Callable[[Path], bool] | None = None,
) -> Path:
    """Resolve ``root`` to the dataset folder.

    Accepted: ``root/<folder>`` (also any of ``alt_folders``, case-insensitively), or ``root`` itself
    when it is named ``<folder>``, holds one of the ``markers`` (the label file) or
    ``looks_like(root)`` is true (for releases that have no label file, e.g. BraTS), or matches the
    signature of the registered adapter whose folder is ``folder`` (so every folder that
    `brainbench.datasets.locations` recognises is read as that dataset, whatever its name).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise layout_error(title, f"{root} does not exist", expected_tree)
    if not root.is_dir():
        raise layout_error(title, f"{root} is not a folder", expected_tree)
    names = [folder, *alt_folders]
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = {n.lower() for n in names}
    children = sorted(p for p in root.iterdir() if p.is_dir())
    for child in children:
        if child.name.lower() in wanted:
            return child
    if root.name.lower() in wanted:
        return root
    if any((root / m).exists() for m in markers) or (looks_like is not None and looks_like(root)):
        return root
    if any(a.folder == folder and a.recognises(root) for a in map(ADAPTERS.get, ADAPTERS.names())):
        return root
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(root.iterdir())[:12]) or "(empty)"
    raise layout_error(
        title,
        f"{root} is neither the {folder}/ folder nor a folder containing it (found: {found})",
        expected_tree,
    )


def require_dir(path: Path, title: str, expected_tree: str, what: str = "image folder") -> Path:
    if not path.is_dir():
        raise layout_error(title, f"missing {what} {path}", expected_tree)
    return path


@dataclass
class KeyedRows(Generic[K]):
    """A label table's rows by subject key. ``rows[key]`` is None for a key dropped because its
    rows disagree; ``repeats`` lists each repeated key in file order with whether the repeat
    equals the row kept; ``unkeyed`` counts rows without a key (skipped)."""

    rows: dict[K, Row | None] = field(default_factory=dict)
    repeats: list[tuple[K, bool]] = field(default_factory=list)
    unkeyed: int = 0

    def repeated(self, identical: bool | None = None) -> list[K]:
        """Repeated keys, all of them or only those whose repeat was (not) identical."""
        return [k for k, same in self.repeats if identical is None or same == identical]


def key_rows(table: Table, key_of: Callable[[Row], K | None], *, drop_conflicts: bool = False,
             ignore: Iterable[str] = ()) -> KeyedRows[K]:
    """One row per key (``key_of`` returns None for rows to skip). A repeated key keeps its first
    row; with ``drop_conflicts`` a repeat that differs (outside the ``ignore`` columns) drops the
    key, since neither row can be trusted."""
    ignored = set(ignore)
    out: KeyedRows[K] = KeyedRows()
    for row in table:
        key = key_of(row)
        if key is None:
            out.unkeyed += 1
            continue
        if key in out.rows:
            kept = out.rows[key]
            same = kept is not None and _values(kept, ignored) == _values(row, ignored)
            out.repeats.append((key, same))
            if drop_conflicts and not same:
                out.rows[key] = None
            continue
        out.rows[key] = row
    return out


def _values(row: Row, ignored: set[str]) -> dict[str, str]:
    return {k: v for k, v in row.values.items() if k not in ignored}


def find_image(folder: Path, *stems: str) -> Path | None:
    """``folder/<stem>.nii.gz`` (or ``.nii``) for the first of ``stems`` that exists as a file."""
    for stem in stems:
        for suffix in NIFTI_SUFFIXES:
            p = folder / (stem + suffix)
            if p.is_file():
                return p
    return None


def find_contrasts(folder: Path, suffixes: Mapping[str, str],
                   *prefixes: str) -> tuple[dict[str, Path], list[str]]:
    """Each contrast's image ``folder/<prefix><suffix>`` ({our name: file suffix}, the first
    prefix that exists), and the suffixes of the contrasts not found."""
    images, absent = {}, []
    for ours, suffix in suffixes.items():
        path = find_image(folder, *(prefix + suffix for prefix in prefixes))
        if path is None:
            absent.append(suffix)
        else:
            images[ours] = path
    return images, absent


def counted(items: Sequence[object], text: str, n: int = 5) -> str:
    """A note ``'<count> <text>: a, b, ...'``; empty (dropped by `finish`) when nothing happened."""
    return f"{len(items)} {text}: {preview(items, n)}" if items else ""


def listed(items: Sequence[object], text: str) -> str:
    """A note ``'<text>: a, b, ...'``; empty (dropped by `finish`) when nothing happened."""
    return f"{text}: {preview(items)}" if items else ""


def strip_nifti(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def finish(
    name: str,
    title: str,
    folder: Path,
    subjects: Iterable[Subject],
    notes: Iterable[str],
    expected_tree: str,
) -> Cohort:
    """Sort by id, check ids are unique and that something is usable, build the Cohort."""
    subjects = sorted(subjects, key=lambda s: s.id)
    notes = tuple(n for n in notes if n)
    ids = [s.id for s in subjects]
    if len(set(ids)) != len(ids):  # adapters resolve duplicates; this is a bug guard
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BenchError(f"{title}: duplicate subject ids after reading {folder}: {', '.join(dup[:5])}")
    if not subjects:
        why = ("\nwhat was resolved:\n  - " + "\n  - ".join(notes)) if notes else ""
        raise BenchError(
            f"{title}: no usable subjects in {folder}{why}\nexpected layout:\n{expected_tree}"
        )
    return Cohort(dataset=name, root=folder, subjects=tuple(subjects), notes=notes)
