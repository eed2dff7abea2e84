"""A submitted backbone proves equality with its author's own code (issue 13).

A card (or Python backbone file) names a reference output in ``[parity]`` (``PARITY``): arrays
named like tokens, computed by the author's code with a stated weights file on
``numpy.random.default_rng(input_seed).standard_normal(shape)``. `validate` loads the backbone
with those weights (require_weights=True), feeds the same input and compares each array
(norm-relative). Here the "author's code" is timm run directly, outside brainbench.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from brainbench.errors import BenchError
from brainbench.profiles import PROFILES
from brainbench.submission.card import read_card
from brainbench.submission.validate import check_parity, parity_spec, validate

TINY = PROFILES.get("tiny")
KWARGS = {"img_size": 32, "depth": 2, "in_chans": 1}


def author_model() -> torch.nn.Module:
    """The author's network, built and seeded by the author (not through brainbench)."""
    import timm

    torch.manual_seed(123)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                              **KWARGS)
    with torch.no_grad():  # non-trivial norms and biases, so every path is exercised
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def author_reference(model: torch.nn.Module, seed: int, size: int = 32, batch: int = 2) -> dict:
    """The author's own code on the stated input: the class token and the mean patch token."""
    x = np.random.default_rng(seed).standard_normal((batch, 1, size, size)).astype(np.float32)
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(x))  # (B, 1 + N, 192), final norm
    return {"cls": tokens[:, 0].numpy(), "patch_mean": tokens[:, 1:].mean(dim=1).numpy()}


def write_card(folder: Path, parity: str, weights: str = 'weights = "vit.pth"') -> Path:
    card = folder / "vit_card.toml"
    card.write_text(textwrap.dedent(f"""\
        name = "parity_vit"
        family = "timm"
        architecture = "vit_tiny_patch16_224"
        {weights}
        [kwargs]
        img_size = 32
        depth = 2
        in_chans = 1
        [contract]
        dims = "2d"
        in_channels = 1
        image_size = [32, 32]
        num_slices = 4
        intensity = "robust_zscore"
        tokens = ["cls", "patch_mean"]
        feature_dim = 192
        [parity]
        """) + textwrap.dedent(parity))
    return card


PARITY = 'reference = "ref.npz"\ninput_seed = 7\ntolerance = 1e-5\n'


@pytest.fixture(scope="module")
def author(tmp_path_factory):
    folder = tmp_path_factory.mktemp("author")
    model = author_model()
    torch.save(model.state_dict(), folder / "vit.pth")
    return folder, model


def parity_check(report):
    (check,) = [c for c in report.checks if c.name == "parity"]
    return check


def test_a_card_equal_to_its_authors_code_passes(author):
    folder, model = author
    np.savez(folder / "ref.npz", **author_reference(model, 7))
    card = write_card(folder, PARITY)
    report = validate(card, TINY)
    assert report.ok, report.render()
    check = parity_check(report)
    assert check.detail.startswith("PASS: equals ref.npz within 1e-05")
    assert "standard_normal((2, 1, 32, 32))" in check.detail and "vit.pth" in check.detail
    assert set(report.parity["errors"]) == {"cls", "patch_mean"}
    assert max(report.parity["errors"].values()) <= 1e-5
    assert report.measures["parity_error_cls"] <= 1e-5  # the figures travel to the bundle
    assert "[ok] parity: PASS" in report.render()


def test_a_perturbed_reference_fails_with_the_error(author):
    folder, model = author
    ref = author_reference(model, 7)
    ref["cls"] = ref["cls"] * 1.01  # 1 % off: far beyond 1e-5
    np.savez(folder / "ref_off.npz", cls=ref["cls"])  # cls only: patch_mean not compared
    card = write_card(folder, PARITY.replace("ref.npz", "ref_off.npz"))
    report = validate(card, TINY)
    assert not report.ok
    failed = {c.name: c.detail for c in report.failures}
    assert list(failed) == ["parity"]
    assert failed["parity"].startswith("FAIL: differs from ref_off.npz beyond the tolerance")
    assert "cls 0.0099" in failed["parity"] and "> 1e-05" in failed["parity"]
    assert "not in the reference: ['patch_mean']" in failed["parity"]
    assert report.parity["errors"]["cls"] == pytest.approx(0.01 / 1.01, rel=1e-3)


def test_a_different_input_seed_is_a_failure_and_batch_is_stated(author):
    folder, model = author
    np.savez(folder / "ref8.npz", **author_reference(model, 8, batch=3))
    report = validate(write_card(folder, 'reference = "ref8.npz"\ninput_seed = 7\nbatch = 3\n'),
                      TINY)
    assert "FAIL" in parity_check(report).detail  # made from seed 8, stated as 7
    card = write_card(folder, 'reference = "ref8.npz"\ninput_seed = 8\nbatch = 3\n')
    result = check_parity(card, parity_spec(card))
    assert result["ok"] and result["input_shape"] == [3, 1, 32, 32]
    # a 2d reference may be made at another square size than the card's (image_size)
    assert read_card(write_card(folder, PARITY + "image_size = 48\n")).parity.image_size == 48


def test_parity_weights_may_differ_from_the_card_weights(author, tmp_path):
    folder, model = author
    np.savez(tmp_path / "ref.npz", **author_reference(model, 7))
    (tmp_path / "small.pth").write_bytes((folder / "vit.pth").read_bytes())
    card = write_card(tmp_path, PARITY + 'weights = "small.pth"\n', weights="")
    spec = read_card(card).parity
    assert spec.weights == (tmp_path / "small.pth").resolve() and spec.tolerance == 1e-5
    result = check_parity(card, spec)
    assert result["ok"] and result["weights"].endswith("small.pth")
    # without any weights file there is nothing the reference could have been made with
    bare = write_card(tmp_path, PARITY, weights="")
    with pytest.raises(BenchError, match=r"\[parity\] needs the weights file"):
        parity_spec(bare)


def test_bad_reference_files_are_named_errors(author, tmp_path):
    folder, model = author
    (tmp_path / "vit.pth").write_bytes((folder / "vit.pth").read_bytes())
    good = author_reference(model, 7)

    def failure(parity: str) -> str:
        report = validate(write_card(tmp_path, parity), TINY)
        return parity_check(report).detail

    ref = str((tmp_path / "ref.npz").resolve())
    assert f"parity reference {ref} (parity.reference in card" in failure(PARITY)
    assert "does not exist" in failure(PARITY)
    (tmp_path / "ref.npz").write_text("not numpy at all")
    assert "is not a readable .npz" in failure(PARITY)
    np.save(tmp_path / "one.npy", good["cls"])
    (tmp_path / "one.npy").rename(tmp_path / "ref.npz")
    assert "holds one unnamed array" in failure(PARITY)
    np.savez(tmp_path / "ref.npz", cls=good["cls"], cls_token=good["cls"])
    assert "array(s) ['cls_token'] are not tokens of this backbone" in failure(PARITY)
    np.savez(tmp_path / "ref.npz", cls=good["cls"][:, :100])
    assert "array 'cls' has shape (2, 100)" in failure(PARITY)
    assert "give (2, 192) (batch, feature_dim)" in failure(PARITY)
    np.savez(tmp_path / "ref.npz", cls=good["cls"].astype(np.int32))
    assert "dtype int32" in failure(PARITY)
    np.savez(tmp_path / "ref.npz", cls=np.zeros_like(good["cls"]))
    assert "all zeros" in failure(PARITY)
    np.savez(tmp_path / "ref.npz", cls=np.full_like(good["cls"], np.nan))
    assert "NaN or inf" in failure(PARITY)
    np.savez(tmp_path / "ref.npz")
    assert "holds no arrays" in failure(PARITY)


@pytest.mark.parametrize("parity, message", [
    ('input_seed = 7\n', "missing field parity.reference"),
    ('reference = "ref.npz"\n', "missing field parity.input_seed"),
    ('reference = "ref.npz"\ninput_seed = -1\n', "parity.input_seed must be an integer >= 0"),
    ('reference = "ref.npz"\ninput_seed = 7\ntolerance = 0\n', "parity.tolerance must be a "
     "positive number"),
    ('reference = "ref.npz"\ninput_seed = 7\ntolerance = "1e-5"\n', "parity.tolerance must be"),
    ('reference = "ref.npz"\ninput_seed = 7\nseed = 7\n', r"unknown \[parity\] field\(s\) "
     r"\['seed'\]"),
    ('reference = 3\ninput_seed = 7\n', "parity.reference must be the .npz file"),
])
def test_malformed_parity_fields_are_named(tmp_path, parity, message):
    with pytest.raises(BenchError, match=message):
        read_card(write_card(tmp_path, parity))


def test_missing_parity_weights_file_is_named(author, tmp_path):
    folder, model = author
    (tmp_path / "vit.pth").write_bytes((folder / "vit.pth").read_bytes())
    np.savez(tmp_path / "ref.npz", **author_reference(model, 7))
    report = validate(write_card(tmp_path, PARITY + 'weights = "gone.pth"\n'), TINY)
    assert "parity.weights" in parity_check(report).detail
    assert "gone.pth does not exist" in parity_check(report).detail


PYFILE = '''
import timm, torch
from brainbench.backbone import Backbone, InputContract, WeightsInfo
from brainbench.weights import load_checkpoint, load_state_strict, sha256_file

PARITY = {"reference": "ref.npz", "input_seed": 7, "weights": "vit.pth"}


class MyVit(Backbone):
    name = "my_parity_vit"

    def __init__(self, weights=None, require_weights=False):
        self.model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32,
                                       depth=2, in_chans=1).eval().requires_grad_(False)
        self.contract = InputContract("2d", 1, (32, 32), 4, "robust_zscore",
                                      ("cls", "patch_mean"), 192)
        if weights is None:
            if require_weights:
                raise RuntimeError("no weights")
            self.weights = WeightsInfo("random-init", "timm init", "0" * 64)
        else:
            self.load_report = load_state_strict(self.model, load_checkpoint(weights),
                                                 source=str(weights))
            self.weights = WeightsInfo("pretrained", str(weights), sha256_file(weights))

    def embed(self, batch):
        with torch.inference_mode():
            t = self.model.forward_features(batch)
            return {"cls": t[:, 0].clone(), "patch_mean": t[:, 1:].mean(1).clone()}

    def architecture(self):
        return {"model": "vit tiny, 2 blocks"}

    def parameter_count(self):
        return sum(p.numel() for p in self.model.parameters())
'''


def test_a_python_backbone_file_names_its_reference_in_PARITY(author, tmp_path):
    folder, model = author
    (tmp_path / "vit.pth").write_bytes((folder / "vit.pth").read_bytes())
    ref = author_reference(model, 7)
    np.savez(tmp_path / "ref.npz", **ref)
    path = tmp_path / "my_vit.py"
    path.write_text(PYFILE)
    report = validate(path, TINY)
    assert report.ok, report.render()
    assert parity_check(report).detail.startswith("PASS")
    np.savez(tmp_path / "ref.npz", patch_mean=ref["patch_mean"] + 0.1)
    report = validate(path, TINY)
    assert parity_check(report).detail.startswith("FAIL") and "patch_mean" in \
        parity_check(report).detail
    bad = tmp_path / "bad_vit.py"
    bad.write_text(PYFILE.replace('"input_seed": 7', '"input_seed": "7"'))
    report = validate(bad, TINY)
    assert "PARITY['input_seed'] must be an integer >= 0" in parity_check(report).detail


def test_cli_validate_prints_the_parity_failure(author, tmp_path):
    folder, model = author
    (tmp_path / "vit.pth").write_bytes((folder / "vit.pth").read_bytes())
    ref = author_reference(model, 7)
    np.savez(tmp_path / "ref.npz", cls=ref["cls"] * 1.01)
    card = write_card(tmp_path, PARITY)
    done = subprocess.run([sys.executable, "-m", "brainbench.cli", "validate", str(card),
                           "--profile", "tiny"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "[FAIL] parity: FAIL: differs from ref.npz" in done.stdout
    assert "parity: FAIL" in done.stderr
