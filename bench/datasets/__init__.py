"""Dataset adapters: read each dataset exactly as distributed (label files + image layout) into a Cohort.

    from brainbench.datasets import load_cohort, ADAPTERS
    cohort = load_cohort("ixi", Path("/data"))        # /data/IXI/... or Path("/data/IXI")

Adapters only look at paths and label tables (no voxels are loaded). Bad input raises a
BenchError naming the file, column, line and value; resolved quirks (duplicates, missing
values, rows without images) are listed in ``Cohort.notes``.
"""

from __future__ import annotations

from pathlib import Path

from brainbench.subjects import Cohort

# importing an adapter module registers it (each ends with ``ADAPTER = register_adapter(...)``)
from . import abide, adni, atlas, bids, brats, ixi, oasis1, ucsf_pdgm, upenn_gbm  # noqa: F401
from ._common import ADAPTERS, DatasetAdapter


def load_cohort(name: str, root: Path | str) -> Cohort:
    """Read dataset ``name`` from ``root``: the folder containing ``<adapter.folder>/`` or that folder itself."""
    return ADAPTERS.get(name).read(Path(root).expanduser())


def layouts_markdown() -> str:
    """Every adapter's expected layout as Markdown (for the README and `--help` texts)."""
    parts = []
    for name in ADAPTERS:
        a = ADAPTERS.get(name)
        parts.append(f"### `{name}`: {a.title}\n\n```\n{a.expected_tree}\n```\n")
    return "\n".join(parts)


__all__ = ["ADAPTERS", "DatasetAdapter", "layouts_markdown", "load_cohort"]
