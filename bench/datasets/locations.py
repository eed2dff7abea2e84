"""Where each dataset lives, configured once: a small TOML file and/or environment variables.

For dataset ``NAME`` the first of these wins:

1. ``BRAINBENCH_DATA_<NAME>`` (e.g. ``BRAINBENCH_DATA_ADNI=/mnt/adni/ADNI``);
2. ``[datasets] NAME = "/path"`` in the config file (``$BRAINBENCH_CONFIG``, else ``./brainbench.toml``);
3. ``DATA=/root`` / ``--data /root``: a dataset's own folder or a folder holding datasets;
4. ``[data] root = "/path"`` in the config file.

Under a root, datasets are recognised by their files, whatever their folders are called: each
adapter declares a ``signature`` (label files such as ``ADNIMERGE.csv``, image patterns such as
``BraTS2021_?????/BraTS2021_?????_t1.nii*``; see ``DatasetAdapter.recognises``). The root itself
and the folders up to ``SEARCH_DEPTH`` levels below it are searched, listing names only (no image
is read); a folder named like the dataset (``<root>/BraTS2021/``, the layout the phantoms use)
wins as before, unless its files are another dataset's (a BraTS source subfolder named
``UPENN-GBM`` holds BraTS cases, not the UPENN-GBM release). A release distributed in parts (the
TCIA BraTS 2021 package: ``BraTS2021_TrainingSet/<collection>/BraTS2021_NNNNN/``) is recognised
as the folder holding the parts and read as one cohort. A recognised folder is not searched
further, so nothing inside one dataset's folder is taken for another dataset. When the root holds
no recognisable dataset at all (and no dataset has its own folder configured), looking a dataset
up raises a BenchError that lists, per dataset, what was looked for and the folders searched.
When one dataset is recognised in several folders, none is picked silently: looking it up raises
a BenchError naming the folders and how to point at one (``BRAINBENCH_DATA_<NAME>``, the config).

When none is set, runs use the phantom cohorts. Relative paths in the file are relative to the
file. Unknown dataset names and paths that do not exist are errors naming the file and key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from brainbench.errors import BenchError

from ._common import ADAPTERS, DatasetAdapter

CONFIG_ENV = "BRAINBENCH_CONFIG"
CONFIG_FILE = "brainbench.toml"
ENV_PREFIX = "BRAINBENCH_DATA_"
SEARCH_DEPTH = 2  # the root and the folders up to two levels below it
SHOWN_FOLDERS = 12  # searched folders listed in a 'not found' message


def _adapters() -> list[DatasetAdapter]:
    return [ADAPTERS.get(name) for name in ADAPTERS.names()]


def _named(root: Path, adapter: DatasetAdapter) -> bool:
    """The named layout: ``root`` is ``<folder>/`` or holds it (case-insensitively), and that
    folder's files are not another dataset's (see `_recognised_in`)."""
    folder = adapter.folder.lower()
    candidates = [root] if root.name.lower() == folder else []
    candidates += [p for p in _subfolders(root) if p.name.lower() == folder]
    adapters = _adapters()
    return any(adapter.name in _recognised_in(p, adapters) for p in candidates)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _recognised_in(folder: Path, adapters: list[DatasetAdapter]) -> list[str]:
    """The datasets whose own folder ``folder`` is, by its files: label files first, image
    patterns (which walk subfolders) only when no label file matches, parts of a release (BraTS
    source collections) only when neither does. A folder named like a dataset is that dataset's
    unless its files are only another dataset's (``UPENN-GBM/BraTS2021_00001/...``, a BraTS
    source collection, is BraTS: named folders count only with their own files, or when nothing
    in them is recognisable, so the adapter can say what is missing)."""
    content = [a.name for a in adapters if a.matches_signature(folder, label_files=True)]
    if not content:
        content = [a.name for a in adapters if a.matches_signature(folder, label_files=False)]
    if not content:
        content = [a.name for a in adapters if a.holds_parts(folder)]
    named = [a for a in adapters if folder.name.lower() == a.folder.lower()]
    if not content:
        return [a.name for a in named]
    own = [a.name for a in named if a.name in content or a.recognises_content(folder)]
    return own + [n for n in content if n not in own]


def recognise_all(root: Path, depth: int = SEARCH_DEPTH) -> tuple[dict[str, list[Path]], list[Path]]:
    """Search ``root`` and the folders up to ``depth`` levels below it (breadth first, by name)
    for dataset folders. Returns {dataset: every folder recognised as it} and the folders
    searched. A recognised folder is not searched further (what is inside one dataset's folder
    is never taken for another dataset)."""
    adapters = _adapters()
    found: dict[str, list[Path]] = {}
    searched: list[Path] = []
    level = [Path(root)]
    for d in range(depth + 1):
        below: list[Path] = []
        for folder in level:
            searched.append(folder)
            names = _recognised_in(folder, adapters)
            for name in names:
                found.setdefault(name, []).append(folder)
            if not names and d < depth:
                below += _subfolders(folder)
        level = below
    return found, searched


def recognise(root: Path, depth: int = SEARCH_DEPTH) -> tuple[dict[str, Path], list[Path]]:
    """`recognise_all`, keeping the datasets recognised in exactly one folder: {dataset: its
    folder} and the folders searched."""
    found, searched = recognise_all(root, depth)
    return {n: paths[0] for n, paths in found.items() if len(paths) == 1}, searched


def ambiguity_message(name: str, folders: Iterable[Path], root: Path, origin: str) -> str:
    """Why a dataset recognised in several folders is not read, and how to point at one."""
    folders = list(folders)
    adapter = ADAPTERS.get(name)
    shown = "\n".join(f"  {p}" for p in folders)
    return (f"{name} ({adapter.title}) was recognised in {len(folders)} folders under {root} "
            f"(the data root, set by {origin}):\n{shown}\n"
            "brainbench reads one folder per dataset and does not pick one silently (copies, "
            "releases or halves of a cohort would be mixed or dropped). Point at the one to read: "
            f"{ENV_PREFIX}{name.upper()}={folders[0]} (or [datasets] {name} = \"{folders[0]}\" in "
            f"{CONFIG_FILE}), or move the other folder(s) out of {root}")


def describe_search(names: Iterable[str], searched: Iterable[Path]) -> str:
    """Per dataset what was looked for, and where (for 'not found' messages)."""
    searched = list(searched)
    shown = ", ".join(str(p) for p in searched[:SHOWN_FOLDERS])
    if len(searched) > SHOWN_FOLDERS:
        shown += f", ... ({len(searched) - SHOWN_FOLDERS} more)"
    looked = "\n".join(f"  {n} ({ADAPTERS.get(n).title}): {ADAPTERS.get(n).looked_for()}"
                       for n in names)
    return (f"searched {len(searched)} folder(s) (the root and up to {SEARCH_DEPTH} levels below): "
            f"{shown}\nlooked for (a dataset's folder has any of these, paths relative to it):\n{looked}"
            "\nsee README 'Real data' for the expected trees")


@dataclass(frozen=True)
class DataLocations:
    """The resolved configuration: a common root and/or one folder per dataset."""

    root: Path | None = None
    datasets: Mapping[str, Path] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)  # dataset or "root" -> where it was set
    found: Mapping[str, Path] = field(default_factory=dict)  # recognised under root by its files
    searched: tuple[Path, ...] = ()  # the folders under root that were searched
    ambiguous: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)  # in several folders

    @property
    def real(self) -> bool:
        return self.root is not None or bool(self.datasets)

    def path_for(self, name: str) -> Path | None:
        """The dataset's own folder if configured, else the folder recognised under the root,
        else the common root (adapters accept the root holding ``<folder>/`` and the folder).
        Raises a BenchError for a dataset recognised in several folders under the root."""
        self._refuse_ambiguous(name)
        return self.datasets.get(name, self.found.get(name, self.root))

    def _refuse_ambiguous(self, name: str) -> None:
        if name in self.ambiguous and name not in self.datasets and self.root is not None:
            raise BenchError(ambiguity_message(name, self.ambiguous[name], self.root,
                                               self.origins.get("root", "DATA / --data")))

    def present(self, name: str) -> bool:
        """Whether dataset ``name`` can be looked for: its own folder, its folder under root by
        name, or a folder under root recognised by its files. Raises a BenchError listing what
        was looked for and where when the root holds no dataset at all (and none is configured
        on its own), or naming the folders when the dataset was recognised in several."""
        if name in self.datasets:
            return True
        if self.root is None:
            return False
        self._refuse_ambiguous(name)
        if name in self.found or _named(self.root, ADAPTERS.get(name)):
            return True
        if (not self.datasets and not self.found and not self.ambiguous
                and not any(_named(self.root, a) for a in _adapters())):
            origin = self.origins.get("root", "DATA / --data")
            raise BenchError(f"no dataset recognised in {self.root} (the data root, set by {origin})\n"
                             + self.not_found(ADAPTERS.names()))
        return False

    def not_found(self, names: Iterable[str]) -> str:
        """Why datasets ``names`` were not found under the root: what was looked for, and where
        (for the runner's and data check's 'not found' messages)."""
        return describe_search(sorted(set(names)), self.searched or ([self.root] if self.root else []))

    def source_label(self, names: Iterable[str]) -> str:
        """What goes into every result row as ``data_source`` (unchanged for a plain DATA root)."""
        names = sorted(set(names))
        own = [n for n in names if n in self.datasets]
        if not own and self.root is not None:
            return f"real:{self.root.resolve()}"
        return "real:" + ";".join(f"{n}={Path(self.path_for(n)).resolve()}" for n in names
                                  if self.path_for(n) is not None)


def config_path(env: Mapping[str, str] = os.environ) -> Path | None:
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV]).expanduser()
        if not path.is_file():
            raise BenchError(f"{CONFIG_ENV}={path} is not a file")
        return path
    local = Path.cwd() / CONFIG_FILE
    return local if local.is_file() else None


def _existing(path: Path, where: str) -> Path:
    if not path.exists():
        raise BenchError(f"{where}: {path} does not exist")
    return path


def data_locations(data_dir: Path | str | None = None, env: Mapping[str, str] = os.environ,
                   config_file: Path | None = None) -> DataLocations:
    """Read the environment, the config file and ``DATA``; the precedence is in the module doc."""
    config_file = config_file if config_file is not None else config_path(env)
    datasets: dict[str, Path] = {}
    origins: dict[str, str] = {}
    root: Path | None = None
    if config_file is not None:
        try:
            config = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BenchError(f"cannot read dataset config {config_file}: {exc}") from None
        base = Path(config_file).resolve().parent
        unknown = sorted(set(config) - {"data", "datasets"})
        if unknown:
            raise BenchError(f"{config_file}: unknown section(s) {unknown}; expected [data] and [datasets]")
        for name, value in dict(config.get("datasets", {})).items():
            if name not in ADAPTERS:
                raise BenchError(f"{config_file}: [datasets] {name!r} is not a dataset; valid names: "
                                 f"{', '.join(ADAPTERS.names())}")
            datasets[name] = _existing(base / Path(str(value)).expanduser(), f"{config_file} [datasets] {name}")
            origins[name] = f"{config_file} [datasets]"
        if "root" in config.get("data", {}):
            root = _existing(base / Path(str(config["data"]["root"])).expanduser(), f"{config_file} [data] root")
            origins["root"] = f"{config_file} [data]"
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise BenchError(f"DATA={root} is not a folder")
        origins["root"] = "DATA / --data"
    for name in ADAPTERS.names():
        value = env.get(ENV_PREFIX + name.upper())
        if value:
            datasets[name] = _existing(Path(value).expanduser(), f"{ENV_PREFIX}{name.upper()}")
            origins[name] = f"${ENV_PREFIX}{name.upper()}"
    found: dict[str, Path] = {}
    ambiguous: dict[str, tuple[Path, ...]] = {}
    searched: list[Path] = []
    if root is not None:
        pending = {a.name for a in _adapters() if a.name not in datasets and not _named(root, a)}
        if pending:  # the named layout (phantoms) needs no search
            candidates, searched = recognise_all(root)
            for name, folders in candidates.items():
                if name in pending and len(folders) == 1:
                    found[name] = folders[0]
                elif name in pending:
                    ambiguous[name] = tuple(folders)
    return DataLocations(root=root, datasets=datasets, origins=origins, found=found,
                         searched=tuple(searched), ambiguous=ambiguous)
