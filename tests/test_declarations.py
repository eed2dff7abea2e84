"""Declarations stated once: every list derived from one (intensities, phantom layouts, metric
directions) agrees with it, so adding a name in its one place is enough."""

from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pytest

from brainbench.backbone import BACKBONES, InputContract, create_backbone, load_plugins
from brainbench.datasets import ADAPTERS
from brainbench.errors import BenchError
from brainbench.metrics import PRIMARY_METRIC_DIRECTION, REGION_METRIC_DIRECTION, region_metric
from brainbench.phantoms import DATASETS
from brainbench.phantoms.cohorts import PHANTOMS
from brainbench.phantoms.layouts import FOLDERS
from brainbench.preprocess import INTENSITIES, NORMALISATIONS, volume_to_input
from brainbench.segmentation.metrics import region_scores
from brainbench.submission.card import read_card
from brainbench.submission.validate import contract_problems, synthetic_brain
from brainbench.targets import SegmentationTarget

load_plugins()


# ---- intensity normalisations ----------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_builtin_backbone_contract_passes_the_submission_check(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init warnings
        backbone = create_backbone(name, image_size=32, num_slices=2)
    assert backbone.contract.intensity in INTENSITIES
    assert contract_problems(backbone.contract) == []


@pytest.mark.parametrize("intensity", INTENSITIES)
def test_every_intensity_preprocesses_a_volume(intensity):
    channels = 3 if NORMALISATIONS[intensity].needs_three_channels else 1
    contract = InputContract("2d", channels, (16, 16), 4, intensity, ("cls",), 8)
    assert contract_problems(contract) == []
    x = volume_to_input(synthetic_brain(0), contract)
    assert x.shape == (4, channels, 16, 16) and bool(x.isfinite().all())


def _clip_card(path, in_channels: int):
    path.write_text(textwrap.dedent(f"""\
        name = "clip_like"
        family = "open_clip"
        architecture = "ViT-B-16"
        [contract]
        dims = "2d"
        in_channels = {in_channels}
        image_size = [224, 224]
        num_slices = 16
        intensity = "clip"
        tokens = ["cls"]
        feature_dim = 512
        """))
    return path


def test_a_card_with_clip_intensity_validates(tmp_path):
    card = read_card(_clip_card(tmp_path / "clip_like.toml", in_channels=3))
    assert card.contract.intensity == "clip"
    assert contract_problems(card.contract) == []


def test_channel_statistics_need_three_channels(tmp_path):
    with pytest.raises(BenchError, match=r"intensity 'clip' normalises 3 channels.*'robust_zscore'"):
        read_card(_clip_card(tmp_path / "clip_grey.toml", in_channels=1))
    grey = InputContract("2d", 1, (16, 16), 4, "imagenet", ("cls",), 8)
    assert any("normalises 3 channels" in p for p in contract_problems(grey))
    unknown = InputContract("2d", 3, (16, 16), 4, "minmax", ("cls",), 8)
    assert contract_problems(unknown) == [
        f"intensity must be one of {list(INTENSITIES)}, got 'minmax'"]


# ---- phantom layouts ---------------------------------------------------------------------------


def test_phantom_datasets_and_folders_come_from_the_adapters():
    assert DATASETS == tuple(PHANTOMS)
    assert set(PHANTOMS) == set(ADAPTERS.names())  # every reader has phantoms to be tested on
    assert FOLDERS == {name: ADAPTERS.get(name).folder for name in ADAPTERS}


# ---- metric directions -------------------------------------------------------------------------


def test_region_metric_names_and_directions_derive_from_the_regions():
    regions = SegmentationTarget().regions
    names = {region_metric(f, r) for f in REGION_METRIC_DIRECTION for r in regions}
    assert names == {"dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et"}
    for family, direction in REGION_METRIC_DIRECTION.items():
        for region in regions:
            assert PRIMARY_METRIC_DIRECTION[region_metric(family, region)] == direction
    masks = np.zeros((len(regions), 4, 4, 4), dtype=bool)
    assert set(region_scores(masks, masks, (1.0, 1.0, 1.0), regions)) == names


def test_the_encoding_loop_gets_three_channels_as_a_view_of_one():
    """contiguous=False (the decode workers' call): the grey channel repeated as a broadcast
    view, a third of the bytes, with the values of the contiguous slices the batch copies."""
    import torch

    contract = InputContract(dims="2d", in_channels=3, image_size=(32, 32), num_slices=6,
                             intensity="robust_zscore", tokens=("cls",), feature_dim=8)
    volume = np.asfortranarray(synthetic_brain(0))
    view = volume_to_input(volume, contract, contiguous=False)
    full = volume_to_input(volume, contract)
    assert view.shape == full.shape == (6, 3, 32, 32) and full.is_contiguous()
    assert view.stride(1) == 0 and view.untyped_storage().nbytes() * 3 == full.nbytes
    assert torch.equal(torch.cat([view[:4], view[4:]]), full)
