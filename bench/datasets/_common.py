"""Pieces every adapter shares: the adapter record, finding the dataset folder, images, finishing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from brainbench.errors import BenchError
from brainbench.registry import Registry
from brainbench.subjects import Cohort, Subject

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class DatasetAdapter:
    """How to read one dataset exactly as distributed.

    name:          registry name (``ixi``, ``brats2021`` ...).
    title:         human name of the release.
    folder:        the top folder the release unpacks to (``IXI``); ``load_cohort`` accepts the
                   folder that contains it or the folder itself.
    expected_tree: a short picture of the layout, shown in errors and the README.
    read:          dataset folder (or its parent) -> Cohort; paths only, no voxels are loaded.
    """

    name: str
    title: str
    folder: str
    expected_tree: str
    read: Callable[[Path], Cohort]


ADAPTERS: "Registry[DatasetAdapter]" = Registry("dataset")


def register_adapter(name: str, title: str, folder: str, expected_tree: str,
                     read: Callable[[Path], Cohort]) -> DatasetAdapter:
    """Build and register an adapter: each module ends with ``ADAPTER = register_adapter(...)``."""
    return ADAPTERS.register(name, DatasetAdapter(name, title, folder, expected_tree, read))


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
    ``looks_like(root)`` is true (for releases that have no label file, e.g. BraTS).
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


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` (or ``.nii``) if it exists as a file."""
    for suffix in NIFTI_SUFFIXES:
        p = folder / (stem + suffix)
        if p.is_file():
            return p
    return None


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
