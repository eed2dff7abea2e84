"""Small phantom cohorts of every dataset, generated once per machine and shared by test files.

Generation is deterministic and ``generate_phantoms`` checks its manifest (version, seed, sizes),
so the copy kept in pytest's cache directory is reused only when it is exactly what would be
generated now. Tests that damage files work on copies (``copy_dataset``), never on this root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brainbench.phantoms import DATASETS, PHANTOM_VERSION, generate_phantoms
from brainbench.phantoms.layouts import FOLDERS

N = 14  # people per dataset: enough for every class on both sides of every split ...
SIZES = {**{d: N for d in DATASETS}, "adni": 24}  # ... except ADNI, whose MCI often appears only at m12
SEED = 0


@pytest.fixture(scope="session")
def phantoms(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir("brainbench-phantoms") if cache is not None else tmp_path_factory.mktemp("phantoms")
    return generate_phantoms(base / f"v{PHANTOM_VERSION}-seed{SEED}-n{N}-adni{SIZES['adni']}", SIZES,
                             seed=SEED, workers=2, progress=False)


def copy_dataset(phantoms: Path, dataset: str, dest: Path) -> Path:
    """A private copy of one phantom dataset under ``dest``; returns the dataset folder."""
    target = dest / FOLDERS[dataset]
    shutil.copytree(phantoms / FOLDERS[dataset], target)
    return target
