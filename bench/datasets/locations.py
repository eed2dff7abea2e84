"""Where each dataset lives, configured once: a small TOML file and/or environment variables.

For dataset ``NAME`` the first of these wins:

1. ``BRAINBENCH_DATA_<NAME>`` (e.g. ``BRAINBENCH_DATA_ADNI=/mnt/adni/ADNI``);
2. ``[datasets] NAME = "/path"`` in the config file (``$BRAINBENCH_CONFIG``, else ``./brainbench.toml``);
3. ``DATA=/root`` / ``--data /root``: the folder holding ``<root>/<dataset folder>/``;
4. ``[data] root = "/path"`` in the config file.

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

from ._common import ADAPTERS

CONFIG_ENV = "BRAINBENCH_CONFIG"
CONFIG_FILE = "brainbench.toml"
ENV_PREFIX = "BRAINBENCH_DATA_"


@dataclass(frozen=True)
class DataLocations:
    """The resolved configuration: a common root and/or one folder per dataset."""

    root: Path | None = None
    datasets: Mapping[str, Path] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)  # dataset or "root" -> where it was set

    @property
    def real(self) -> bool:
        return self.root is not None or bool(self.datasets)

    def path_for(self, name: str) -> Path | None:
        """The dataset's own folder if configured, else the common root (adapters accept both)."""
        return self.datasets.get(name, self.root)

    def present(self, name: str) -> bool:
        """Whether dataset ``name`` can be looked for: its own folder, or its folder under root."""
        if name in self.datasets:
            return True
        if self.root is None:
            return False
        folder = ADAPTERS.get(name).folder.lower()
        return self.root.name.lower() == folder or any(
            p.is_dir() and p.name.lower() == folder for p in self.root.iterdir())

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
    return DataLocations(root=root, datasets=datasets, origins=origins)
