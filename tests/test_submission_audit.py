"""The auditor's findings on submissions and bundle imports, each reproduced and refused:
strict loads of checkpoints without BatchNorm counters, pretrained claims whose digest cannot
be re-checked, pretraining declarations of a Python file, relabelled or cardless bundles, a
bundle that would replace another backbone's folder, and what an import reports."""

from __future__ import annotations

import json
import re
import shutil
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
from tests.test_submission import write_card
from tests.test_submission_pyfile_errors import write_backbone

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


def _resnet18(path: Path, drop: str = "") -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0, in_chans=1, zero_init_last=False)
    torch.save({k: v for k, v in model.state_dict().items() if not drop or not k.endswith(drop)},
               path)
    return path


def test_a_card_allowing_missing_batchnorm_counters_validates(tmp_path):
    _resnet18(tmp_path / "nonbt.pth", drop="num_batches_tracked")
    card = write_card(tmp_path / "nonbt.toml", name='"nonbt"', weights='weights = "nonbt.pth"')
    failed = {c.name: c.detail for c in validate(card, TINY).failures}
    assert re.search(r"20 missing key\(s\).*num_batches_tracked", failed["load"])
    card.write_text(card.read_text() + '[allowed_missing]\n"*.num_batches_tracked" = '
                    '"BatchNorm counters, not saved by our trainer"\n')
    report = validate(card, TINY)
    assert report.ok, report.render()
    strict = next(c.detail for c in report.checks if c.name == "weights: strict load")
    assert "left at init (not in file) layer4.1.bn2.num_batches_tracked: BatchNorm" in strict


# ------------------------------------------------- pretrained claims of a Python file

def _pyfile(folder: Path, stem: str, weights: str | None = None, seed: int = 0,
            head: str = "") -> Path:
    """SUBMITTING.md's tinyconv file named `stem`: `weights` replaces its WeightsInfo(...)
    expression, `seed` its torch seed, `head` goes before it."""
    path = write_backbone(folder, stem, head=head)
    source = path.read_text().replace("torch.manual_seed(0)", f"torch.manual_seed({seed})")
    if weights is not None:
        source, n = re.subn(r"WeightsInfo\(\"random-init\".*?\)\)", weights, source,
                            flags=re.S)
        assert n == 1
    path.write_text(source)
    return path


def test_a_pretrained_claim_that_cannot_be_re_checked_is_refused(tmp_path, capsys):
    """'/nonexistent.pth' passed validation and ran as pretrained, unmarked everywhere."""
    from tests.test_submission_pyfile_errors import run_cli, stored_backbones

    claim = "WeightsInfo('pretrained', '/nonexistent.pth', 'ab' * 32)"
    path = _pyfile(tmp_path, "claims", weights=claim)
    failed = {c.name: c.detail for c in validate(path, TINY).failures}
    assert re.search(r"backbone file .*claims\.py: weights\.source '/nonexistent\.pth' is "
                     r"not a file, so the sha256 of this 'pretrained' claim cannot be "
                     r"re-checked; set WeightsInfo\('pretrained', str\(path\)",
                     failed["load"])
    code, err = run_cli(path, tmp_path / "cache", tmp_path / "results", capsys)
    assert code == 2 and "'/nonexistent.pth' is not a file" in err and "Traceback" not in err
    assert stored_backbones(tmp_path / "results") == set()


def test_a_pretrained_claim_is_re_hashed(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.ones(2)}, weights)
    wrong = _pyfile(tmp_path, "wrong", weights=f"WeightsInfo('pretrained', {str(weights)!r}, "
                                               "'0' * 64)")
    failed = {c.name: c.detail for c in validate(wrong, TINY).failures}
    assert re.search(r"weights\.sha256 0{16}… is not the sha256 of weights\.source .*w\.pth",
                     failed["load"])
    right = _pyfile(tmp_path, "right", weights=f"WeightsInfo('pretrained', {str(weights)!r}, "
                                               f"{sha256_file(weights)!r})")
    report = validate(right, TINY)
    assert report.ok, report.render()
    assert next(c.detail for c in report.checks if c.name == "weights") == (
        f"pretrained, w.pth sha256 {sha256_file(weights)[:16]}…")


def test_validate_fails_an_unverifiable_claim_of_any_backbone():
    """Backbones that are not files (entry points) reach the weights check itself."""
    from types import SimpleNamespace

    from brainbench.backbone import WeightsInfo
    from brainbench.submission.validate import ValidationReport, _check_weights

    report = ValidationReport("plugin", "tiny")
    _check_weights(report, SimpleNamespace(weights=WeightsInfo("pretrained", "hf-hub:x/y",
                                                               "ab" * 32)))
    assert [(c.name, c.ok) for c in report.checks] == [("weights", False)]
    assert "'hf-hub:x/y' is not a file" in report.checks[0].detail


# ------------------------------------------------- PRETRAINING_DATASETS of a Python file

@pytest.mark.parametrize("declaration, shown", [
    ('PRETRAINING_DATASETS = ["IXI"]\n', "IXI; results on ixi will be marked CONTAMINATED"),
    ("PRETRAINING_DATASETS = []\n", "none; no evaluation dataset among them"),
    ("", "not declared (unknown)")])
def test_validate_reports_the_declaration(tmp_path, declaration, shown):
    report = validate(_pyfile(tmp_path, "declares", head=declaration), TINY)
    assert report.ok, report.render()
    assert next(c.detail for c in report.checks if c.name == "pretraining data").startswith(
        shown)


@pytest.mark.parametrize("declaration, match", [
    ("PRETRAINING_DATASETS = 5\n", r" must be a list of dataset names .* "
                                   r"got int 5"),
    ('PRETRAINING_DATASETS = list(("IXI",))\n', r" = list\(\('IXI',\)\) is not a literal"),
    ('PRETRAINING_DATASETS: list = ["IXI"]\n', r" must be a plain assignment"),
    ('PRETRAINING_DATASETS = ["IXI", "IXI"]\n', r": dataset\(s\) \['IXI'\] listed twice")])
def test_validate_run_and_submit_refuse_a_bad_declaration(tmp_path, capsys, declaration, match):
    from tests.test_submission_pyfile_errors import run_cli

    path = _pyfile(tmp_path, "declares", head=declaration)
    failed = {c.name: c.detail for c in validate(path, TINY).failures}
    assert re.search(r"backbone file .*declares\.py: PRETRAINING_DATASETS" + match,
                     failed["load"]), failed
    code, err = run_cli(path, tmp_path / "cache", tmp_path / "results", capsys)
    assert code == 2 and re.search(match, err) and "Traceback" not in err


def test_the_class_and_the_module_must_not_declare_differently(tmp_path):
    path = _pyfile(tmp_path, "twice", head='PRETRAINING_DATASETS = ["IXI"]\n')
    path.write_text(path.read_text().replace("    name = 'twice'\n", "    name = 'twice'\n"
                                             "    pretraining_datasets = ('ADNI',)\n"))
    failed = {c.name: c.detail for c in validate(path, TINY).failures}
    assert "the backbone's pretraining_datasets ('ADNI',) is not the file's module-level " \
           "PRETRAINING_DATASETS (('IXI',))" in failed["load"]

