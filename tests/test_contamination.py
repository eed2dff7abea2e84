"""Pretraining contamination (issue 18): declarations, matching, marking and hiding cells."""

from __future__ import annotations

import pytest

from brainbench.analyses.contamination import (check_pretraining_datasets,
                                               evaluation_datasets, lookup)
from brainbench.backbone import PRETRAINING_DATASETS
from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.submission.card import read_card
from tests.test_stats import build_store

CARD = """name = "demo_card"
family = "timm"
architecture = "resnet18"
{field}
[contract]
dims = "2d"
in_channels = 3
image_size = [32, 32]
num_slices = 4
intensity = "imagenet"
tokens = ["cls"]
feature_dim = 512
"""


def test_declarations_are_checked_and_matched():
    assert check_pretraining_datasets("unknown", "f") is None
    assert check_pretraining_datasets([], "f") == ()
    assert evaluation_datasets(["ImageNet-1k", "BraTS 2021", "adni"]) == ("adni", "brats2021")
    assert evaluation_datasets(["LVD-142M", "LAION-2B"]) == ()
    for bad in ("BraTS", [1], ["IXI", "IXI"], ["", "x"], ["unknown", "IXI"], {"a": 1}):
        with pytest.raises(BenchError, match="pretraining"):
            check_pretraining_datasets(bad, "field pretraining_datasets")


def test_built_ins_declare_their_pretraining():
    found = lookup(["random", "intensity", "dinov2", "braindino", "never-registered"])
    assert found["random"].datasets == () and found["intensity"].datasets == ()
    assert found["dinov2"].datasets == ("LVD-142M",) and not found["dinov2"].overlap
    assert not found["braindino"].known and not found["never-registered"].known


@pytest.mark.parametrize("field", ['pretraining_datasets = "BraTS"',
                                   "pretraining_datasets = [3]",
                                   'pretraining_datasets = ["IXI", "IXI"]'])
def test_card_with_a_malformed_field_is_refused_naming_it(tmp_path, field, capsys):
    card = tmp_path / "demo.toml"
    card.write_text(CARD.format(field=field))
    with pytest.raises(BenchError, match="field 'pretraining_datasets'"):
        read_card(card)
    assert main(["validate", str(card), "--profile", "tiny"]) == 2
    assert "pretraining_datasets" in capsys.readouterr().err


def test_card_declaration_is_read(tmp_path):
    card = tmp_path / "demo.toml"
    card.write_text(CARD.format(field='pretraining_datasets = ["ImageNet-1k", "IXI"]'))
    assert read_card(card).pretraining_datasets == ("ImageNet-1k", "IXI")
    card.write_text(CARD.format(field=""))
    assert read_card(card).pretraining_datasets is None  # not declared: unknown


def _rows(markdown: str) -> dict[str, list[str]]:
    """The first table's rows by backbone (the McNemar table follows after a blank line)."""
    table = markdown.split("\n\n")[0].splitlines()[2:]
    return {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in table}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("contamination") / "r.db",
                       backbones=("base", "strong"))


def test_tables_mark_and_hide_contaminated_cells(store, tmp_path, monkeypatch, capsys):
    # "strong" declares ADNI (neurodegen_cls's dataset) and a natural-image corpus
    monkeypatch.setitem(PRETRAINING_DATASETS, "strong", ("ADNI", "ImageNet-1k"))
    common = ["--db", store.url, "--models", "base,strong", "--bootstrap", "50",
              "--fraction", "1.0"]
    assert main(["table", *common, "--out", str(tmp_path / "a")]) == 0
    text = (tmp_path / "a" / "table_f1.md").read_text()
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    column = next(i for i, h in enumerate(header) if h.startswith("neurodegen_cls"))
    rows = _rows(text)
    assert rows["strong"][column].endswith("‡") and not rows["base"][column].endswith("‡")
    other = next(i for i, h in enumerate(header) if h.startswith("brain_age"))
    assert not rows["strong"][other].endswith("‡")  # IXI is not declared
    assert "CONTAMINATED = " in text and "Pretraining data not declared (unknown) for base" in text
    assert "\\ddag" in (tmp_path / "a" / "table_f1.tex").read_text()

    assert main(["table", *common, "--hide-contaminated", "--out", str(tmp_path / "b")]) == 0
    hidden = (tmp_path / "b" / "table_f1.md").read_text()
    rows = _rows(hidden)
    assert rows["strong"][column] == "–" and rows["base"][column] != "–"
    assert "‡" not in rows["strong"][column] and "contaminated cell(s) hidden" in hidden

    capsys.readouterr()
    assert main(["results", "--db", store.url, "--models", "base,strong"]) == 0
    plain = capsys.readouterr().out
    marked = [line for line in plain.splitlines() if line.startswith("neurodegen_cls")]
    assert marked and all("‡" in line for line in marked)
    assert main(["results", "--db", store.url, "--models", "base,strong",
                 "--hide-contaminated"]) == 0
    assert "‡" not in capsys.readouterr().out.split("\n* primary")[0]


def test_site_badges_contaminated_cells(store, tmp_path, monkeypatch):
    monkeypatch.setitem(PRETRAINING_DATASETS, "strong", ("ADNI",))
    out = tmp_path / "site"
    assert main(["leaderboard", "--db", store.url, "--models", "base,strong", "--bootstrap",
                 "50", "--out", str(out), "--submissions", str(tmp_path / "none")]) == 0
    index = (out / "index.html").read_text()
    assert index.count(">CONTAMINATED</span>") >= 2  # the cells and the legend
    assert main(["leaderboard", "--db", store.url, "--models", "base,strong", "--bootstrap",
                 "50", "--out", str(out), "--submissions", str(tmp_path / "none"),
                 "--hide-contaminated"]) == 0
    assert ">CONTAMINATED</span>" not in (out / "index.html").read_text().split("<ul")[0]


def test_a_bad_declaration_in_an_old_bundle_is_unknown_not_a_stop(store, tmp_path, caplog,
                                                                   monkeypatch):
    """Imports now refuse a Python file whose PRETRAINING_DATASETS the tables cannot read, but
    a bundle placed earlier may hold one: its backbone's pretraining data are then unknown,
    with a warning naming the file, and every table is still made."""
    import json
    import logging

    folder = tmp_path / "subs" / "strong"
    folder.mkdir(parents=True)
    (folder / "strong.py").write_text("PRETRAINING_DATASETS = 5\n")
    (folder / "good.py").write_text('PRETRAINING_DATASETS = ["ADNI"]\n')
    manifest = {"name": "strong", "backbone": {"kind": "pyfile", "file": "strong.py"}}
    (folder / "submission.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="brainbench"):
        found = lookup(["strong"], tmp_path / "subs")
    assert not found["strong"].known
    assert any("strong.py" in r.getMessage() and "unknown" in r.getMessage()
               for r in caplog.records)
    manifest["backbone"]["file"] = "good.py"  # the same reader, a readable declaration
    (folder / "submission.json").write_text(json.dumps(manifest))
    assert lookup(["strong"], tmp_path / "subs")["strong"].datasets == ("ADNI",)
    manifest["backbone"]["file"] = "strong.py"
    (folder / "submission.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("BRAINBENCH_SUBMISSIONS", str(tmp_path / "subs"))
    assert main(["table", "--db", store.url, "--models", "base,strong", "--bootstrap", "20",
                 "--fraction", "1.0", "--out", str(tmp_path / "t")]) == 0
