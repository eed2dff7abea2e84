"""Submission layer: the SUBMITTING.md flow run from the document itself, and validation that
catches what it promises to catch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from brainbench.errors import BenchError
from brainbench.profiles import PROFILES
from brainbench.submission.bundle import (SubmitConfig, import_bundle, read_manifest,
                                          submission_flags, submit)
from brainbench.submission.card import read_card
from brainbench.submission.validate import validate
from tests.helpers import cache_with_shared_phantoms

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "SUBMITTING.md"
TINY = PROFILES.get("tiny")


def fenced(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), re.S | re.M)


def write_card(path: Path, **changes: str) -> Path:
    fields = {"name": '"r18_test"', "family": '"timm"', "architecture": '"resnet18"',
              "feature_dim": "512", "tokens": '["cls"]', **changes}
    path.write_text(textwrap.dedent(f"""\
        name = {fields['name']}
        family = {fields['family']}
        architecture = {fields['architecture']}
        {fields.get('weights', '')}
        [kwargs]
        in_chans = 1
        [contract]
        dims = "2d"
        in_channels = 1
        image_size = [64, 64]
        num_slices = 8
        intensity = "robust_zscore"
        tokens = {fields['tokens']}
        feature_dim = {fields['feature_dim']}
        """))
    return path


@pytest.mark.slow
def test_the_documented_commands_validate_submit_and_show_on_the_leaderboard(tmp_path, request):
    """Every ```bash block of SUBMITTING.md, verbatim, in order, in one shell."""
    blocks = fenced("bash")
    assert any("make submit" in b for b in blocks) and any("make leaderboard" in b for b in blocks)
    cache = cache_with_shared_phantoms(tmp_path / "cache", request)
    stamp = tmp_path / "installed"  # the venv running this test is installed already
    stamp.touch()
    env = {**os.environ, "WORK": str(tmp_path / "work"), "BRAINBENCH_CACHE": str(cache),
           "BRAINBENCH_RESULTS": str(tmp_path / "results"),
           "BRAINBENCH_SUBMISSIONS": str(tmp_path / "submissions"),
           "BRAINBENCH_SITE": str(tmp_path / "site"), "MAKEFLAGS": f"STAMP={stamp}"}
    script = "set -euo pipefail\n" + "\n".join(blocks)
    done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result: PASSED" in done.stdout

    bundle = tmp_path / "submissions" / "resnet18_demo"
    manifest = read_manifest(bundle)
    weights_file = tmp_path / "work" / "resnet18_demo.pth"
    from brainbench.weights import sha256_file

    assert manifest["weights"] == {"status": "pretrained", "sha256": sha256_file(weights_file),
                                   "file": "resnet18_demo.pth", "from_option": False}
    assert manifest["run"]["tasks_run"] == ["brain_age"]
    assert manifest["flags"][0].startswith("PARTIAL: 1 of 9 endpoints")
    assert manifest["run"]["split_hashes"]["brain_age"]
    assert manifest["environment"]["packages"]["torch"] == torch.__version__.split("+")[0] or \
        manifest["environment"]["packages"]["torch"]
    assert (bundle / "resnet18_demo.toml").read_text() == (
        tmp_path / "work" / "resnet18_demo.toml").read_text()
    payload = json.loads((bundle / "results" / "resnet18_demo__brain_age.json").read_text())
    assert {c["cell"]["weights_sha256"] for c in payload["cells"]} == {
        manifest["weights"]["sha256"]}
    summary = (bundle / "SUMMARY.md").read_text()
    assert "random2d [RANDOM-INIT]" in summary and "PARTIAL" in summary

    site = (tmp_path / "site" / "index.html").read_text()
    assert "resnet18_demo" in site and ">PARTIAL<" in site and ">SUBMISSION<" in site
    from brainbench.store import ResultStore, default_url

    elsewhere = ResultStore(default_url(tmp_path / "work" / "another_store")).frame()
    assert set(elsewhere["backbone"]) == {"resnet18_demo"}


def test_wrong_feature_dim_is_named_and_nothing_is_stored(tmp_path):
    card = write_card(tmp_path / "card.toml", feature_dim="768")
    report = validate(card, TINY)
    assert not report.ok
    failed = {c.name: c.detail for c in report.failures}
    assert "embed() returned shape (4, 512) for token 'cls'" in failed["output"]
    assert "declares feature_dim 768" in failed["output"]
    with pytest.raises(BenchError, match="failed validation"):
        submit(SubmitConfig(backbone=card, profile=TINY, fractions=(0.5,),
                            cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                            out_root=tmp_path / "subs", tasks=("brain_age",), seeds=(0,)))
    assert not (tmp_path / "results").exists() and not (tmp_path / "subs").exists()


def test_card_fields_and_strict_load_errors(tmp_path):
    with pytest.raises(BenchError, match="family must be one of"):
        read_card(write_card(tmp_path / "a.toml", family='"keras"'))
    with pytest.raises(BenchError, match="is a built-in backbone"):
        validate_or_raise(write_card(tmp_path / "b.toml", name='"dinov2"'))
    state = {"weight": torch.zeros(3)}
    torch.save(state, tmp_path / "w.pth")
    report = validate(write_card(tmp_path / "c.toml", weights='weights = "w.pth"'), TINY)
    assert not report.ok
    detail = report.failures[0].detail
    assert "strict load" in detail and "unexpected key(s)" in detail and "weight" in detail


def validate_or_raise(card: Path) -> None:
    report = validate(card, TINY)
    if not report.ok:
        raise BenchError(report.failures[0].detail)


def test_the_documented_python_file_validates_as_random_init(tmp_path):
    (source,) = fenced("python")
    path = tmp_path / "tinyconv.py"
    path.write_text(source)
    report = validate(path, TINY)
    assert report.ok, report.render()
    assert report.weights["status"] == "random-init"
    assert report.contract["image_size"] == (32, 32)  # the profile's size reached the class
    assert report.architecture["source_sha256"]  # editing the file changes the cache key


TRAIN_MODE_BN = '''
import torch
from brainbench.backbone import Backbone, InputContract, WeightsInfo

class Leaky(Backbone):
    name = "leaky_bn"
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8))
        self.model.train()  # the bug: batch statistics, running stats updated
        self.contract = InputContract("2d", 1, (32, 32), 4, "zscore", ("cls",), 8)
        self.weights = WeightsInfo("random-init", "seed 0", "0" * 64)
    def embed(self, batch):
        return {"cls": self.model(batch).mean(dim=(2, 3))}
    def architecture(self):
        return {"model": "bn"}
    def parameter_count(self):
        return 1
'''


def test_a_backbone_that_is_not_frozen_fails_with_the_fix(tmp_path):
    path = tmp_path / "leaky.py"
    path.write_text(TRAIN_MODE_BN)
    report = validate(path, TINY)
    failed = {c.name: c.detail for c in report.failures}
    assert "requires_grad_(False)" in failed["frozen: requires_grad"]
    assert "parameter_count() returned 1" in failed["parameter_count"]
    assert "autograd history" in failed["output"]


def test_entry_point_backbones_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "ep_demo_pkg.py").write_text(fenced("python")[0].replace(
        'name = "tinyconv_demo"', 'name = "ep_tinyconv"') + "\nmake = TinyConv\n")
    dist = tmp_path / "ep_demo_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-demo-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[brainbench.backbones]\nep_tinyconv = ep_demo_pkg:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from brainbench.backbone import BACKBONES, create_backbone

    backbone = create_backbone("ep_tinyconv", image_size=32, num_slices=4)
    assert backbone.name == "ep_tinyconv" and "ep_tinyconv" in BACKBONES
    assert backbone.embed(torch.zeros(2, 1, 32, 32))["cls"].shape == (2, 32)


def test_import_refuses_a_bundle_whose_flags_were_edited(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "submission.json").write_text(json.dumps({
        "format": "brainbench-submission", "schema_version": 1, "name": "intensity", "flags": [],
        "weights": {"sha256": "0" * 64}, "run": {"tasks_all": ["brain_age", "idh_status"]},
        "results": []}))
    from brainbench.store import ResultStore

    with pytest.raises(BenchError, match="flags .* do not match"):
        import_bundle(bundle, ResultStore(f"sqlite:///{tmp_path / 'r.db'}"), tmp_path / "subs")
    assert submission_flags(tmp_path / "subs") == {}


def test_cli_validate_exits_2_with_the_reason(tmp_path):
    card = write_card(tmp_path / "card.toml", feature_dim="100")
    done = subprocess.run([sys.executable, "-m", "brainbench.cli", "validate", str(card),
                           "--profile", "tiny"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "declares feature_dim 100" in done.stderr


def test_the_summary_never_pools_precisions_weights_or_split_variants(tmp_path):
    """SUMMARY.md puts the submission beside the store's other backbones with the columns of
    `brainbench results`: bf16 and fp32 cells of a reference, two weights of one backbone and
    site-held-out cells are never averaged into one figure."""
    from dataclasses import replace

    from brainbench.store import Cell, ResultStore
    from brainbench.submission.bundle import summary_markdown

    base = Cell(backbone="mine", weights_id="pretrained:m", weights_status="pretrained",
                weights_sha256="m", task="brain_age", dataset="ixi", data_source="phantom:x",
                profile="tiny", head="linear", fraction=0.5, seed=0, n_train=8, n_test=4,
                hyperparameters={}, selection="", code_version="c", config_hash="h",
                split_hash="s", subset_hash="u", cache_key="k")
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    ref = dict(backbone="braindino", weights_status="random-init")
    for seed in (0, 1):
        store.write_cell(replace(base, seed=seed), {"mae": 3.0}, [])
        store.write_cell(replace(base, seed=seed, weights_id="random-init:r1", **ref),
                         {"mae": 10.0}, [])
        store.write_cell(replace(base, seed=seed, weights_id="random-init:r1", precision="bf16",
                                 **ref), {"mae": 20.0}, [])
        store.write_cell(replace(base, seed=seed, weights_id="pretrained:p2", weights_sha256="p2",
                                 backbone="braindino"), {"mae": 40.0}, [])
        store.write_cell(replace(base, seed=seed, weights_id="random-init:r1",
                                 split="site-held-out:3", **ref), {"mae": 80.0}, [])
    manifest = {"name": "mine", "run": {"tasks_run": ["brain_age"], "profile": "tiny",
                                        "data_source": "phantom:x", "fractions": [0.5],
                                        "seeds": [0, 1]},
                "weights": {"status": "pretrained", "sha256": "m"},
                "backbone": {"kind": "card", "file": "mine.toml", "contract": {"dims": "2d"}},
                "code_version": "c", "flags": [], "validation": {"measures": {}}}
    text = summary_markdown(manifest, store)
    header = next(line for line in text.splitlines() if line.startswith("| task"))
    assert header.index("mine") < header.index("braindino")
    row = next(line for line in text.splitlines() if line.startswith("| brain_age"))
    for figure in ("3.000 ± 0.000 (k=2)", "10.000 ± 0.000 (k=2)", "20.000 ± 0.000 (k=2)",
                   "40.000 ± 0.000 (k=2)"):
        assert figure in row
    assert "80.000" not in row and "15.000" not in row and "25.000" not in row


def test_submit_reads_the_data_folder_it_is_given(tmp_path, capsys):
    """`make submit DATA=...` runs on that folder, as `make bench DATA=...` does: an empty one
    stops the run naming what is missing, and nothing is bundled or stored."""
    from brainbench.cli import main

    (source,) = fenced("python")
    path = tmp_path / "tinyconv.py"
    path.write_text(source)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["submit", str(path), "--profile", "tiny", "--tasks", "brain_age", "--seeds", "0",
            "--fraction", "1", "--data", str(empty), "--cache", str(tmp_path / "cache"),
            "--results", str(tmp_path / "r"), "--out", str(tmp_path / "subs"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"no dataset recognised in {empty}" in err and "Traceback" not in err
    assert not (tmp_path / "subs").exists()
    assert not (tmp_path / "cache" / "phantoms").exists()  # no phantom run instead


def test_bf16_asked_of_an_fp32_only_python_backbone_is_said(tmp_path, capsys):
    from brainbench.cli import main

    (source,) = fenced("python")
    path = tmp_path / "tinyconv.py"
    path.write_text(source)
    assert main(["run", "--model", str(path), "--profile", "tiny", "--tasks", "brain_age",
                 "--seeds", "0", "--fraction", "1", "--precision", "bf16", "--cache",
                 str(tmp_path / "cache"), "--results", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "runs fp32 only" in out and "PRECISION=bf16 ran fp32" in out
    from brainbench.store import ResultStore, default_url

    assert set(ResultStore(default_url(tmp_path / "r")).frame()["precision"]) == {"fp32"}


def test_a_python_backbone_declaring_bf16_runs_it(tmp_path):
    """`precisions = ("fp32", "bf16")` on the author's class (SUBMITTING.md): PRECISION=bf16
    reaches its `self.precision`, and the cache key differs from the fp32 one."""
    from brainbench.backbone import create_backbone
    from brainbench.features import FeatureCache

    (source,) = fenced("python")
    path = tmp_path / "tinyconv_bf16.py"
    path.write_text(source.replace("class TinyConv(Backbone):",
                                   'class TinyConv(Backbone):\n    precisions = ("fp32", "bf16")'))
    assert 'precisions = ("fp32", "bf16")' in path.read_text()
    bf16 = create_backbone(str(path), precision="bf16", image_size=32, num_slices=4)
    fp32 = create_backbone(str(path), precision="fp32", image_size=32, num_slices=4)
    assert bf16.precision == "bf16" and bf16.inner.precision == "bf16"
    assert fp32.precision == "fp32" and fp32.inner.precision == "fp32"
    cache = FeatureCache(tmp_path / "features")
    assert cache.key(bf16, "0" * 64) != cache.key(fp32, "0" * 64)
