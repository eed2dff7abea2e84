"""The auditor's findings on submissions and bundle imports, each reproduced and refused:
strict loads of checkpoints without BatchNorm counters, pretrained claims whose digest cannot
be re-checked, pretraining declarations of a Python file, relabelled or cardless bundles, a
bundle that would replace another backbone's folder, and what an import reports."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.profiles import PROFILES
from brainbench.store import Cell, ResultStore, default_url
from brainbench.submission.bundle import MANIFEST, read_manifest
from brainbench.submission.validate import validate
from brainbench.weights import load_state_strict, sha256_file

TINY = PROFILES.get("tiny")


# ------------------------------------------------------- strict loads without BN counters

def _bn_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                               torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4))


def test_allowed_missing_batchnorm_counters_load():
    """torch's BatchNorm fills a missing num_batches_tracked itself when the dict carries no
    module versions; the allowed counters must still load (and be reported as left at init)."""
    source = _bn_model()
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = {k: v for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    with pytest.raises(BenchError, match=r"2 missing key\(s\).*1\.num_batches_tracked"):
        load_state_strict(_bn_model(), state, source="nonbt.pth")
    target = _bn_model()
    report = load_state_strict(target, state, source="nonbt.pth",
                               allowed_missing={"*.num_batches_tracked": "BatchNorm counters"})
    assert sorted(report.skipped_missing) == ["1.num_batches_tracked", "3.num_batches_tracked"]
    assert report.loaded == len(state)
    assert torch.equal(target[1].weight, source[1].weight)
    assert int(target[1].num_batches_tracked) == 0  # left at init


class _Liar(torch.nn.Linear):
    """A module whose loader disagrees with its state_dict(): it says its weight is missing."""

    def _load_from_state_dict(self, state_dict, prefix, metadata, strict, missing, unexpected,
                              errors):
        super()._load_from_state_dict(state_dict, prefix, metadata, strict, missing,
                                      unexpected, errors)
        missing.append(prefix + "weight")


@pytest.mark.parametrize("allowed", [{}, {"0.bias": "not trained"}])
def test_a_loader_that_disagrees_with_the_pre_check_is_named(allowed):
    model = torch.nn.Sequential(_Liar(2, 2))
    state = {k: v for k, v in model.state_dict().items() if k not in allowed}
    with pytest.raises(BenchError, match=r"weights w\.pth: torch reported missing "
                                         r"\[.*'0\.weight'.*\] / unexpected \[\] after the "
                                         r"pre-check passed"):
        load_state_strict(model, state, source="w.pth", allowed_missing=allowed)


CARD = textwrap.dedent("""\
    name = "{name}"
    family = "timm"
    architecture = "resnet18"
    {weights}
    [kwargs]
    in_chans = 1
    [contract]
    dims = "2d"
    in_channels = 1
    image_size = [112, 112]
    num_slices = 16
    intensity = "robust_zscore"
    tokens = ["cls", "patch_mean"]
    feature_dim = 512
    {extra}
    """)


def _resnet18(path: Path, drop: str = "") -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0, in_chans=1, zero_init_last=False)
    torch.save({k: v for k, v in model.state_dict().items() if not drop or not k.endswith(drop)},
               path)
    return path


def test_a_card_allowing_missing_batchnorm_counters_validates(tmp_path):
    _resnet18(tmp_path / "nonbt.pth", drop="num_batches_tracked")
    card = tmp_path / "nonbt.toml"
    card.write_text(CARD.format(name="nonbt", weights='weights = "nonbt.pth"', extra=""))
    failed = {c.name: c.detail for c in validate(card, TINY).failures}
    assert re.search(r"20 missing key\(s\).*num_batches_tracked", failed["load"])
    card.write_text(CARD.format(name="nonbt", weights='weights = "nonbt.pth"', extra=(
        '[allowed_missing]\n"*.num_batches_tracked" = "BatchNorm counters, not saved by our '
        'trainer"')))
    report = validate(card, TINY)
    assert report.ok, report.render()
    strict = next(c.detail for c in report.checks if c.name == "weights: strict load")
    assert "left at init (not in file) layer4.1.bn2.num_batches_tracked: BatchNorm" in strict
