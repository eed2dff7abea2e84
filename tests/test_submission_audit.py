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
from tests.helpers import cache_with_shared_phantoms
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


# ------------------------------------------------------------ bundles: a real tiny world

COMMON = ["--profile", "tiny", "--tasks", "brain_age", "--seeds", "0,1", "--fraction", "0.5",
          "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """`brainbench submit` of SUBMITTING.md's random-init Python file and of a pretrained
    ResNet-18 card (its .pth saved), into one store and one submissions folder."""
    root = tmp_path_factory.mktemp("audit")
    cache = cache_with_shared_phantoms(root / "cache", request)
    work = root / "work"
    work.mkdir()
    pyfile = _pyfile(work, "tinyconv_demo")
    _resnet18(work / "resnet18_demo.pth")
    card = work / "resnet18_demo.toml"
    write_card(card, name='"resnet18_demo"', weights='weights = "resnet18_demo.pth"')
    for backbone in (pyfile, card):
        assert main(["submit", str(backbone), *COMMON, "--cache", str(cache), "--results",
                     str(root / "results"), "--out", str(root / "subs")]) == 0
    return root


def _copy(world: Path, name: str, dest: Path) -> Path:
    return Path(shutil.copytree(world / "subs" / name, dest / name))


def _rewrite(bundle: Path, manifest=None, cell=None, backbone_file=None) -> Path:
    """Edit a bundle as a forger would: `manifest(m)`, `cell(c)` on every results cell (its
    id recomputed), `backbone_file(text) -> text` (the manifest's sha256 of it updated)."""
    data = read_manifest(bundle)
    if backbone_file is not None:
        path = bundle / data["backbone"]["file"]
        path.write_text(backbone_file(path.read_text()))
        data["backbone"]["file_sha256"] = sha256_file(path)
    if manifest is not None:
        manifest(data)
    (bundle / MANIFEST).write_text(json.dumps(data))
    for results in (bundle / "results").glob("*.json") if cell is not None else ():
        payload = json.loads(results.read_text())
        for item in payload["cells"]:
            cell(item["cell"])
            item["cell_id"] = Cell(**{**item["cell"],
                                      "fraction": float(item["cell"]["fraction"])}).cell_id
        results.write_text(json.dumps(payload))
    return bundle


def _relabel_pretrained(bundle: Path) -> Path:
    """The auditor's edit: status, flags and every cell say pretrained."""
    def manifest(m):
        m["weights"]["status"] = "pretrained"
        m["flags"] = [f for f in m["flags"] if f != "RANDOM-INIT"]

    def cell(c):
        c["weights_status"] = "pretrained"
        c["weights_id"] = f"pretrained:{c['weights_sha256'][:16]}"

    return _rewrite(bundle, manifest, cell)


def _imports(tmp_path: Path, capsys, bundle: Path, match: str | None = None,
             store: str = "elsewhere", out: str = "subs2") -> str:
    """import-bundle into a fresh store: rc 0, or (with `match`) rc 2 naming it, nothing
    written."""
    argv = ["import-bundle", str(bundle), "--results", str(tmp_path / store), "--out",
            str(tmp_path / out), "--cache", str(tmp_path / "nocache")]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    if match is None:
        assert code == 0, err
        return err
    assert code == 2 and re.search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / store / "results.db").exists() and not (tmp_path / out).exists()
    return err


def test_honest_bundles_import(world, tmp_path, capsys):
    for name in ("tinyconv_demo", "resnet18_demo"):
        _imports(tmp_path, capsys, world / "subs" / name, store=f"r_{name}", out=f"s_{name}")
    manifest = read_manifest(world / "subs" / "resnet18_demo")
    assert manifest["weights"]["file"] == "resnet18_demo.pth"
    assert manifest["weights"]["from_option"] is False


def test_a_random_init_python_file_relabelled_pretrained_is_refused(world, tmp_path, capsys):
    bundle = _relabel_pretrained(_copy(world, "tinyconv_demo", tmp_path))
    _imports(tmp_path, capsys, bundle, r"field 'weights\.file' is None but its results claim "
                                       r"weights_status 'pretrained'")
    _rewrite(bundle, lambda m: m["weights"].update(file="tinyconv_demo.pth"))
    _imports(tmp_path, capsys, bundle, r"the validation record's weights check says "
                                       r"'RANDOM-INIT \(torch init, seed 0\).*' but its results "
                                       r"claim weights_status 'pretrained'")


def test_a_random_init_card_relabelled_pretrained_is_refused(world, tmp_path, capsys):
    """A card without `weights` ran random-init, whatever the other records were made to say."""
    bundle = _copy(world, "resnet18_demo", tmp_path)
    _rewrite(bundle, backbone_file=lambda t: t.replace('weights = "resnet18_demo.pth"', ""))
    _imports(tmp_path, capsys, bundle, r"resnet18_demo\.toml: the card names no weights file "
                                       r"'resnet18_demo\.pth' \(field 'weights': None\) and "
                                       r"WEIGHTS= was not given, so its run was random-init")


def test_a_pretrained_card_relabelled_random_init_is_refused(world, tmp_path, capsys):
    bundle = _copy(world, "resnet18_demo", tmp_path)

    def manifest(m):
        m["weights"].update(status="random-init", file=None)
        m["flags"] = ["RANDOM-INIT", *m["flags"]]

    def cell(c):
        c["weights_status"] = "random-init"
        c["weights_id"] = f"random-init:{c['weights_sha256'][:16]}"

    _rewrite(bundle, manifest, cell)
    _imports(tmp_path, capsys, bundle, r"the validation record's weights check says "
                                       r"'pretrained, resnet18_demo\.pth sha256 .*' but its "
                                       r"results claim weights_status 'random-init'")


@pytest.mark.parametrize("backbone, match", [
    ({"kind": "name", "file": None, "file_sha256": None},
     r"field 'backbone\.kind' is 'name' but 'tinyconv_demo' is not a registered backbone"),
    ({"kind": "module"}, r"field 'backbone\.kind' is 'module'; expected one of \['name', "
                         r"'card', 'pyfile'\]"),
    ({"kind": "card"}, r"field 'backbone\.file' is 'tinyconv_demo\.py'; expected the name of "
                       r"the card inside the bundle \(\.toml\)")])
def test_a_bundle_cannot_drop_or_disguise_its_backbone_file(world, tmp_path, capsys, backbone,
                                                            match):
    bundle = _copy(world, "tinyconv_demo", tmp_path)
    _rewrite(bundle, lambda m: m["backbone"].update(backbone))
    if backbone.get("file", "") is None:
        (bundle / "tinyconv_demo.py").unlink()
    _imports(tmp_path, capsys, bundle, match)


@pytest.mark.parametrize("name, edit, match", [
    ("tinyconv_demo", lambda t: "PRETRAINING_DATASETS = 5\n" + t,
     r"the bundle's pyfile tinyconv_demo\.py does not read: backbone file .*tinyconv_demo\.py: "
     r"PRETRAINING_DATASETS must be a list of dataset names .* got int 5"),
    ("resnet18_demo", lambda t: "pretraining_datasets = 5\n" + t,
     r"the bundle's card resnet18_demo\.toml does not read: card .*: field "
     r"'pretraining_datasets' must be a list"),
    ("resnet18_demo", lambda t: t.replace('name = "resnet18_demo"', 'name = "other"'),
     r"resnet18_demo\.toml: field 'name' is 'other' but the bundle is 'resnet18_demo'")])
def test_a_bundle_whose_backbone_file_would_block_the_tables_is_refused(world, tmp_path, capsys,
                                                                       name, edit, match):
    """A bad declaration used to import, then stop every `results` / `table` / `leaderboard`."""
    _imports(tmp_path, capsys, _rewrite(_copy(world, name, tmp_path), backbone_file=edit),
             match)


def test_declared_bundles_import_and_the_tables_read_them(world, tmp_path, capsys,
                                                         monkeypatch):
    """The pretrained card's cells on IXI are marked contaminated (random-init rows never
    are); the tables read both files' declarations."""
    for name, declaration in (("resnet18_demo", 'pretraining_datasets = ["IXI"]\n'),
                              ("tinyconv_demo", 'PRETRAINING_DATASETS = ["IXI"]\n')):
        _imports(tmp_path, capsys, _rewrite(_copy(world, name, tmp_path),
                                            backbone_file=lambda t: declaration + t))
    for submissions, marked in ((tmp_path / "subs2", True), (world / "subs", False)):
        monkeypatch.setenv("BRAINBENCH_SUBMISSIONS", str(submissions))
        assert main(["results", "--results", str(tmp_path / "elsewhere")]) == 0
        assert ("‡" in capsys.readouterr().out) is marked


# ------------------------------------------------- one name, one backbone per folder

def test_another_backbone_of_the_same_name_never_replaces_a_bundle(world, tmp_path, capsys):
    """The same file with torch.manual_seed(1): other weights, other file, same name."""
    seed1 = _pyfile(tmp_path, "tinyconv_demo", seed=1)
    cache = ["--cache", str(world / "cache")]
    assert main(["submit", str(seed1), *COMMON, *cache, "--results", str(tmp_path / "r1"),
                 "--out", str(tmp_path / "subs1")]) == 0
    other = tmp_path / "subs1" / "tinyconv_demo"
    old = read_manifest(world / "subs" / "tinyconv_demo")
    home = ResultStore(default_url(world / "results"))
    rows = len(home.frame())
    message = (r"subs/tinyconv_demo holds the bundle of another backbone named 'tinyconv_demo' "
               rf"\(weights sha256 {old['weights']['sha256'][:16]}…, backbone file sha256 "
               rf"{old['backbone']['file_sha256'][:16]}…\); .* has weights sha256 "
               rf"{read_manifest(other)['weights']['sha256'][:16]}…, .* Give the new backbone "
               "a name of its own")
    capsys.readouterr()
    assert main(["import-bundle", str(other), "--results", str(world / "results"), "--out",
                 str(world / "subs")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert main(["submit", str(seed1), *COMMON, *cache, "--results", str(world / "results"),
                 "--out", str(world / "subs")]) == 2  # refused before the run: nothing stored
    assert re.search(message, capsys.readouterr().err)
    assert len(home.frame()) == rows
    assert read_manifest(world / "subs" / "tinyconv_demo") == old
    # the same backbone may replace its own bundle: a re-import, a re-submission
    assert main(["import-bundle", str(other), "--results", str(tmp_path / "r1"), "--out",
                 str(tmp_path / "subs1")]) == 0
    assert main(["submit", str(world / "work" / "tinyconv_demo.py"), *COMMON, *cache,
                 "--results", str(world / "results"), "--out", str(world / "subs")]) == 0
    assert read_manifest(world / "subs" / "tinyconv_demo")["weights"] == old["weights"]


def test_a_folder_that_is_no_bundle_is_not_deleted(world, tmp_path, capsys):
    (tmp_path / "subs2" / "tinyconv_demo").mkdir(parents=True)
    (tmp_path / "subs2" / "tinyconv_demo" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["import-bundle", str(world / "subs" / "tinyconv_demo"), "--results",
                 str(tmp_path / "r"), "--out", str(tmp_path / "subs2")]) == 2
    assert "exists but is not a readable bundle" in capsys.readouterr().err
    assert (tmp_path / "subs2" / "tinyconv_demo" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "r" / "results.db").exists()


# ------------------------------------------------------------- what an import reports

def test_a_bundle_import_counts_kept_and_replaced_cells(world, tmp_path):
    from brainbench.submission.bundle import import_bundle

    bundle = world / "subs" / "tinyconv_demo"
    here = import_bundle(bundle, ResultStore(default_url(world / "results")), tmp_path / "a")
    assert (here.cells, here.replaced, here.kept) == (2, 0, 2)  # computed there: kept
    assert here.bundle == tmp_path / "a" / "tinyconv_demo"
    elsewhere = ResultStore(default_url(tmp_path / "r"))
    first = import_bundle(bundle, elsewhere, tmp_path / "b")
    again = import_bundle(bundle, elsewhere, tmp_path / "b")
    assert [(r.cells, r.replaced, r.kept) for r in (first, again)] == [(2, 0, 0), (2, 2, 0)]


def test_a_results_file_named_twice_is_imported_once(world, tmp_path, capsys):
    results = world / "subs" / "tinyconv_demo" / "results" / "tinyconv_demo__brain_age.json"
    capsys.readouterr()
    assert main(["import", str(results), str(results.parent / ".." / "results" / results.name),
                 "--results", str(tmp_path / "r")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("imported")]
    assert len(lines) == 1 and lines[0].startswith("imported 2 cell(s) of tinyconv_demo")
    assert len(ResultStore(default_url(tmp_path / "r")).cells()) == 2


def test_an_unreadable_bundle_manifest_is_named_not_dropped_silently(tmp_path, caplog):
    import logging

    from brainbench.submission.bundle import MANIFEST, submission_flags

    folder = tmp_path / "subs" / "broken"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text('{"format": "brainbench-submission", "sche')  # truncated
    with caplog.at_level(logging.WARNING, logger="brainbench"):
        assert submission_flags(tmp_path / "subs") == {}
    assert any(str(folder) in r.getMessage() and "SUBMISSION / PARTIAL" in r.getMessage()
               for r in caplog.records)
