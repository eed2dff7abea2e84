"""``intensity``: a hand-crafted control - brain intensity histograms and size proxies, no learning.

Why: a pretrained encoder earns its place only where it beats what trivial image statistics
already give. Sequence contrast, atrophy (less brain, more CSF-dark voxels), oedema and
lesion load all shift the intensity distribution, so this control shows how much of a task is
solvable without any learned representation. It sits between chance and the oracle on every
table and is marked ``control`` wherever it is shown.

Features (one vector per volume, computed from the contract's robust z-scored volume resampled
to 64^3): the brain's share of the grid; a 24-bin histogram of brain voxels on [-3, 3] plus the
two tails; the 5/25/50/75/95th percentiles; and per axial third its brain share and mean.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from brainbench.backbone import Backbone, InputContract, WeightsInfo, register_backbone

SIZE = 64
EDGES = torch.linspace(-3.0, 3.0, 25)
QUANTILES = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
FEATURE_DIM = 1 + (len(EDGES) + 1) + len(QUANTILES) + 2 * 3
DEFINITION = {"model": "intensity-histogram", "version": 1, "size": SIZE,
              "edges": [round(float(e), 4) for e in EDGES], "quantiles": QUANTILES.tolist(),
              "thirds": "axial share and mean"}


def _volume_features(volume: torch.Tensor) -> torch.Tensor:
    """(D, H, W) z-scored volume (background 0) -> (FEATURE_DIM,) features."""
    brain = volume.abs() > 1e-6  # resampling blurs the zero background only at the brain edge
    values = volume[brain]
    if values.numel() == 0:
        return torch.zeros(FEATURE_DIM)
    bins = torch.bucketize(values, EDGES)  # 0: below -3, len(EDGES): above 3
    histogram = torch.bincount(bins, minlength=len(EDGES) + 1).float() / values.numel()
    quantiles = torch.quantile(values.float(), QUANTILES)
    thirds = []
    for part, mask in zip(torch.tensor_split(volume, 3, dim=0), torch.tensor_split(brain, 3, dim=0)):
        share = mask.float().mean()
        thirds += [share, part[mask].mean() if mask.any() else torch.tensor(0.0)]
    return torch.cat([brain.float().mean().reshape(1), histogram, quantiles,
                      torch.stack(thirds)])


class IntensityBackbone(Backbone):
    name = "intensity"

    def __init__(self) -> None:
        self.contract = InputContract("3d", 1, (SIZE, SIZE, SIZE), None, "robust_zscore",
                                      ("cls", "patch_mean"), FEATURE_DIM)
        definition = hashlib.sha256(json.dumps(DEFINITION, sort_keys=True).encode()).hexdigest()
        self.weights = WeightsInfo("control", "hand-crafted intensity features (no learning)",
                                   definition)

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.stack([_volume_features(v[0].float()) for v in batch])
        return {"cls": features, "patch_mean": features}  # one vector: both names, same values

    def architecture(self) -> dict:
        return dict(DEFINITION)

    def parameter_count(self) -> int:
        return 0


@register_backbone("intensity", pretraining_datasets=())  # no learned weights
def make_intensity(*, weights: Path | None = None, require_weights: bool = False,
                   image_size: int | None = None, num_slices: int | None = None
                   ) -> IntensityBackbone:
    """Factory of the ``intensity`` control (it has no weights; profile sizes do not apply)."""
    from brainbench.errors import BenchError

    if weights is not None:
        raise BenchError("backbone 'intensity' is a hand-crafted control and takes no weights "
                         f"(got WEIGHTS={weights})")
    return IntensityBackbone()
