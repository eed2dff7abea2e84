"""``oracle``: a control that reads the phantom ground truth instead of the image (phantoms only).

Why: the room a benchmark has to rank encoders lies between chance and what the image could
possibly tell. On phantom cohorts that ceiling is known: the latent truths that generated each
image (``_truth/<dataset>.csv``, written beside the dataset folders). The oracle's features
are those covariates (brainbench.phantoms.oracle.COVARIATES, the same declaration the
learnability check uses) plus the image's true contrast, so every probe protocol and statistic
applies to it unchanged. It is marked ``control`` wherever it is shown; on real data there is no
truth to read and it refuses to run.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo, register_backbone
from brainbench.errors import BenchError

TRUTH_DIR = "_truth"
#: filename endings of the contrasts (BraTS, UCSF-PDGM, UPENN-GBM and single-T1 datasets)
CONTRASTS = {"t1": ("_t1", "-t1w", "_t1w", "t1"), "t1c": ("_t1ce", "_t1c", "_t1gd"),
             "t2": ("_t2", "_t2w"), "flair": ("_flair", "_t2f")}
FEATURE_DIM = 16  # covariates (at most 10 per dataset), the contrast one-hot, zero padding


def contrast_of(path: Path) -> str:
    stem = path.name.lower().removesuffix(".gz").removesuffix(".nii")
    for contrast in ("t1c", "flair", "t2", "t1"):  # most specific ending first
        if stem.endswith(CONTRASTS[contrast]):
            return contrast
    return "t1"


@lru_cache(maxsize=32)
def _truth(path: Path, dataset: str) -> pd.DataFrame:
    """The dataset's truth table, checked once: a malformed one is a BenchError naming the file
    and the missing columns (the covariates and 'image')."""
    from brainbench.phantoms.oracle import read_truth

    return read_truth(path, dataset, columns=("image",))


def _locate(path: Path) -> tuple[str, pd.DataFrame, str]:
    """(dataset, its truth table, the image path relative to the dataset folder)."""
    from brainbench.phantoms.layouts import FOLDERS

    datasets = {folder: name for name, folder in FOLDERS.items()}
    for root in path.parents:
        if (root / TRUTH_DIR).is_dir():
            folder = path.relative_to(root).parts[0]
            if folder in datasets and (root / TRUTH_DIR / f"{datasets[folder]}.csv").is_file():
                dataset = datasets[folder]
                return (dataset, _truth(root / TRUTH_DIR / f"{dataset}.csv", dataset),
                        path.relative_to(root / folder).as_posix())
    raise BenchError(f"backbone 'oracle' reads the phantom ground truth, but {path} has no "
                     f"{TRUTH_DIR}/<dataset>.csv above it: the oracle exists for phantom cohorts "
                     "only (run without DATA=)")


class OracleBackbone(Backbone):
    name = "oracle"
    reads_files = True  # brainbench.features calls encode_file instead of embed

    def __init__(self) -> None:
        from brainbench.phantoms.oracle import COVARIATES

        self.contract = InputContract("3d", 1, (1, 1, 1), None, "zscore",
                                      ("cls", "patch_mean"), FEATURE_DIM)
        self._definition = {"model": "phantom-oracle", "version": 1,
                            "covariates": {d: [n for n, _ in c] for d, c in COVARIATES.items()},
                            "contrasts": sorted(CONTRASTS)}
        sha = hashlib.sha256(json.dumps(self._definition, sort_keys=True).encode()).hexdigest()
        self.weights = WeightsInfo("control", "phantom ground-truth covariates (no learning)", sha)

    def encode_file(self, path: Path) -> dict[str, np.ndarray]:
        from brainbench.phantoms.oracle import covariate_matrix

        dataset, table, relative = _locate(Path(path).resolve())
        rows = table[table["image"].astype(str) == relative]
        if rows.empty:  # other contrasts of the same subject share the folder of its image
            folder = relative.rpartition("/")[0]
            rows = table[table["image"].astype(str).str.rpartition("/")[0] == folder]
        if len(rows) != 1:
            raise BenchError(f"backbone 'oracle': no single truth row for {path} in "
                             f"{TRUTH_DIR}/{dataset}.csv (column 'image')")
        try:
            covariates = covariate_matrix(dataset, rows.reset_index(drop=True))[0]
        except (ValueError, TypeError) as exc:
            raise BenchError(f"backbone 'oracle': the truth row of {path} in "
                             f"{TRUTH_DIR}/{dataset}.csv holds a value that is not a number "
                             f"({exc})") from None
        contrast = np.array([contrast_of(Path(path)) == c for c in sorted(CONTRASTS)], float)
        vector = np.zeros(FEATURE_DIM, dtype=np.float32)
        values = np.concatenate([covariates, contrast])
        vector[:values.size] = values
        return {"cls": vector[None], "patch_mean": vector[None].copy()}

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        raise BenchError("backbone 'oracle' reads the phantom truth of each file, not images")

    def architecture(self) -> dict:
        return dict(self._definition)

    def parameter_count(self) -> int:
        return 0


@register_backbone("oracle", pretraining_datasets=())  # no learned weights
def make_oracle(*, weights: Path | None = None, require_weights: bool = False,
                image_size: int | None = None, num_slices: int | None = None) -> OracleBackbone:
    """Factory of the ``oracle`` control (phantoms only; it has no weights)."""
    if weights is not None:
        raise BenchError("backbone 'oracle' is a control and takes no weights "
                         f"(got WEIGHTS={weights})")
    return OracleBackbone()
