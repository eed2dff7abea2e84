"""3D per-subject Dice and HD95 (mm) per region with MONAI, with explicit empty-mask rules.

Conventions (also in the README), applied per subject and region:
- truth and prediction both empty: Dice 1, HD95 0 mm (nothing to find, nothing found);
- exactly one of them empty: Dice 0, HD95 = the image diagonal in mm (the largest distance
  the grid allows; 373.13 mm for a BraTS 240x240x155 volume at 1 mm, the challenge's value);
- otherwise MONAI DiceMetric and HausdorffDistanceMetric(percentile=95) with the voxel
  spacing from the label map's header.
Task metrics are means over test subjects, so no subject is dropped for being empty.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from brainbench.metrics import REGION_METRIC_DIRECTION, region_metric

CONVENTIONS = (
    "truth and prediction both empty: Dice 1, HD95 0 mm; exactly one empty: Dice 0, HD95 = "
    "image diagonal in mm (373.13 mm for BraTS 240x240x155 at 1 mm); otherwise MONAI "
    "DiceMetric / HausdorffDistanceMetric(percentile=95) in mm from the header spacing; "
    "means over test subjects"
)


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def region_scores(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                  regions: Sequence[str]) -> dict[str, float]:
    """prediction, truth: (R, X, Y, Z) bool -> {dice_wt, hd95_wt, dice_tc, ...}: every family of
    `REGION_METRIC_DIRECTION` for each region."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric  # lazy: see preprocess

    pred = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None]
    gt = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred, gt)[0]
    pred_any = prediction.reshape(len(regions), -1).any(axis=1)
    gt_any = truth.reshape(len(regions), -1).any(axis=1)
    both = pred_any & gt_any
    hd = np.zeros(len(regions))
    if both.any():
        metric = HausdorffDistanceMetric(include_background=True, percentile=95,
                                         reduction="none")
        rows = torch.from_numpy(np.flatnonzero(both))
        with warnings.catch_warnings():  # MONAI 1.5+ deprecation notice inside its own code
            warnings.simplefilter("ignore", FutureWarning)
            values = metric(pred[:, rows], gt[:, rows], spacing=list(map(float, spacing)))[0]
        hd[both] = values.numpy()
    hd[pred_any != gt_any] = diagonal_mm(prediction.shape[1:], spacing)
    dice = np.where(pred_any | gt_any, dice.numpy(), 1.0)  # both empty: Dice 1
    values = {"dice": dice, "hd95": hd}
    return {region_metric(family, region): float(values[family][i])
            for i, region in enumerate(regions) for family in REGION_METRIC_DIRECTION}
