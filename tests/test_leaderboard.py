"""Tables, curves, the static site and the results file format, on real stored cells."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainbench.cli import main
from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.curves import write_curves
from brainbench.leaderboard.site import build_site, reproduce_command
from brainbench.leaderboard.tables import stats_table
from brainbench.results_io import SCHEMA_VERSION, export_results, import_results
from brainbench.store import ResultStore
from tests.test_stats import build_store

MODELS = ["base", "strong", "rand", "<script>"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("lb") / "r.db",
                       backbones=("base", "strong", "rand", "<script>"))


@pytest.fixture(scope="module")
def analysis(store):
    return load_analysis(store, models=MODELS, n_boot=200)


def _row(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {name} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_table_marks_best_significance_and_random_init(analysis):
    text = stats_table(analysis, 1.0, "markdown")
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert header[:2] == ["backbone", "weights"] and "brain_age mae ↓" in header
    assert "idh_status auc ↑" in header and header[-1] == "mean rank [95% CI]"
    strong, base, rand = _row(text, "strong"), _row(text, "base"), _row(text, "rand [random-init]")
    for cell in strong[2:-1]:
        assert cell.startswith("**") and cell.endswith("▲"), cell
    assert all(c.endswith("(ref)") for c in base[2:-1])
    assert rand[1] == "RANDOM-INIT" and all(c.endswith("▼") for c in rand[2:-1])
    # the cell shows the same mean and interval as the analysis
    s = analysis.summary(analysis.entries[1], "brain_age", 1.0)
    assert f"{s.mean:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]" in strong[header.index(
        "brain_age mae ↓")]
    assert "&lt;script&gt;" in text and "<script>" not in text
    assert "RANDOM-INIT = " in text and "Holm" in text


def test_latex_table_is_escaped(analysis):
    tex = stats_table(analysis, 1.0, "latex")
    assert tex.startswith(r"\begin{tabular}") and r"\end{tabular}" in tex
    assert r"\textless{}script\textgreater{}" in tex and r"brain\_age" in tex
    assert r"\textbf{" in tex and r"$\blacktriangle$" in tex
    assert "95\\% CI" in tex and "<script>" not in tex


def test_curves_png_and_svg(analysis, tmp_path):
    png, svg = write_curves(analysis, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = svg.read_text()
    assert "rand [random-init]" in text  # legend label (SVG keeps text as a comment)
    assert "stroke-dasharray" in text  # the dashed random-init line
    assert "<script>" not in text  # matplotlib escapes the comment


def test_curves_show_each_interval_as_a_bar_and_the_chance_range_as_a_box(analysis):
    """A band needs two fractions, so a run at one fraction showed no interval: every point
    now carries its interval as an error bar, and each fraction has the chance row's 95%
    range as a grey box with its mean dotted: the numbers of the tables' rows."""
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from brainbench.leaderboard.curves import draw_task

    task = analysis.tasks[0].id
    fig, ax = plt.subplots()
    try:
        assert draw_task(ax, analysis, task) == len(analysis.entries)
        bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
        assert set(bars) == {e.display for e in analysis.entries}
        for entry in analysis.entries:
            (vertical,) = bars[entry.display].lines[2]
            fractions = analysis.fractions(task, entry)
            assert len(vertical.get_segments()) == len(fractions) > 1
            for fraction, ((x0, y0), (x1, y1)) in zip(fractions, vertical.get_segments()):
                summary = analysis.summary(entry, task, fraction)
                assert x0 == x1 == fraction
                assert (min(y0, y1), max(y0, y1)) == pytest.approx(
                    (min(summary.ci_low, summary.mean), max(summary.ci_high, summary.mean)))

        chance = [analysis.chance(task, f) for f in analysis.fractions(task)]
        assert all(c is not None for c in chance)
        boxes = [c for c in ax.collections if c.get_gid() == "chance-range"]
        means = [c for c in ax.collections if c.get_gid() == "chance-mean"]
        assert len(boxes) == len(means) == len(chance)
        for box, mean, expected in zip(boxes, means, chance):
            heights = box.get_paths()[0].vertices[:, 1]
            assert (heights.min(), heights.max()) == pytest.approx(
                (expected.ci_low, expected.ci_high))
            ((_, y0), (_, y1)), = mean.get_segments()
            assert y0 == y1 == pytest.approx(expected.mean)
        labels = [c.get_label() for c in boxes]
        assert labels[0] == "chance (shuffled labels)"  # one legend entry, however many boxes
        assert all(label.startswith("_") for label in labels[1:])
    finally:
        plt.close(fig)


def test_site_is_self_contained_escaped_and_has_provenance(analysis, tmp_path):
    index = build_site(analysis, tmp_path / "site")
    page = index.read_text()
    assert page.count("<script>") == 1  # ours; the backbone named <script> is text
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "RANDOM-INIT" in page and 'class="random"' in page
    assert 'id="overall"' in page and "▲" in page and "▼" in page
    task_page = (tmp_path / "site" / "task-brain_age.html").read_text()
    record = next(r for k, r in analysis.cells.items()
                  if k[0].backbone == "strong" and k[1] == "brain_age")
    for needle in (record.provenance["code_version"], record.provenance["weights_sha256"][:16],
                   record.provenance["split_hash"][:12], record.provenance["created_at"]):
        assert needle in task_page
    command = reproduce_command(record)
    assert command.startswith("make bench MODEL=strong FRACTION=") and "TASKS=brain_age" in command
    assert "REQUIRE_WEIGHTS=1" in command and html.escape(command) in task_page
    assert record.provenance["weights_sha256"] in command
    assert "Label efficiency" in task_page and (tmp_path / "site/figures/brain_age.png").exists()
    assert "grey boxes: the chance row" in task_page and "grey boxes: the chance row" in page
    rand = next(r for k, r in analysis.cells.items() if k[0].backbone == "rand")
    assert "WEIGHTS" not in reproduce_command(rand)
    # rebuilding replaces the site; a foreign folder is never deleted
    build_site(analysis, tmp_path / "site")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(BenchError, match="not a brainbench site"):
        build_site(analysis, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").exists()


def test_export_import_round_trip_and_validation(store, tmp_path):
    paths = export_results(store, tmp_path / "export", ["strong"], ["brain_age", "idh_status"])
    assert sorted(p.name for p in paths) == ["strong__brain_age.json", "strong__idh_status.json"]
    payload = json.loads(paths[0].read_text())
    assert payload["schema_version"] == SCHEMA_VERSION and payload["backbone"] == "strong"
    assert len(payload["cells"]) == 9 and len(payload["cells"][0]["predictions"]) == 40

    fresh = ResultStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    for path in paths:
        import_results(fresh, path)
    cols = ["cell_id", "metric", "value", "created_at", "split_hash", "code_version"]
    a = store.frame(backbone="strong", task=["brain_age", "idh_status"])[cols]
    b = fresh.frame()[cols]
    pd.testing.assert_frame_equal(a.sort_values(cols[:2]).reset_index(drop=True),
                                  b.sort_values(cols[:2]).reset_index(drop=True))
    left = load_analysis(store, models=["strong"], tasks=["brain_age"], n_boot=50)
    right = load_analysis(fresh, models=["strong"], tasks=["brain_age"], n_boot=50)
    e1, e2 = left.entries[0], right.entries[0]
    np.testing.assert_array_equal(left.replicates(e1, "brain_age", 0.3),
                                  right.replicates(e2, "brain_age", 0.3))

    def broken(change, match):
        data = json.loads(paths[0].read_text())
        change(data)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        target = ResultStore(f"sqlite:///{tmp_path / 'target.db'}")
        with pytest.raises(BenchError, match=match):
            import_results(target, bad)
        assert target.frame().empty  # nothing half-imported

    broken(lambda d: d.update(schema_version=99), "schema_version 99 is not supported")
    broken(lambda d: d["cells"][3]["metrics"].update(mae=0.5), "mae=0.5 but the predictions")
    broken(lambda d: d["cells"][5]["cell"].update(seed=7), "does not match the cell's fields")
    broken(lambda d: d["cells"][1]["cell"].pop("split_hash"), "missing field 'split_hash'")
    broken(lambda d: d["cells"][2].update(predictions=d["cells"][2]["predictions"][:3]),
           "3 predictions but n_test=40")
    broken(lambda d: d.update(format="other"), "not a brainbench results file")


def test_cli_commands(store, tmp_path, capsys):
    db = store.url
    assert main(["table", "--db", db, "--models", "base,strong", "--fraction", "0.3",
                 "--bootstrap", "100", "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "Label fraction 0.3" in out and (tmp_path / "rep" / "table_f0.3.tex").exists()
    assert main(["curves", "--db", db, "--models", "base,rand", "--tasks", "brain_age",
                 "--bootstrap", "100", "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "label_scarcity.svg").exists()
    assert main(["leaderboard", "--db", db, "--bootstrap", "100",
                 "--out", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "index.html").exists()
    assert main(["export", "--db", db, "--models", "rand", "--tasks", "survival_cox",
                 "--out", str(tmp_path / "exp")]) == 0
    target = f"sqlite:///{tmp_path / 'imp.db'}"
    assert main(["import", "--db", target, str(tmp_path / "exp" / "rand__survival_cox.json")]) == 0
    assert "imported 9 cell(s) of rand on survival_cox" in capsys.readouterr().out
    assert main(["table", "--db", db, "--models", "nope"]) == 2
    assert "no results for backbone(s) ['nope']" in capsys.readouterr().err


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_outputs_go_to_the_results_folder_never_the_source_tree(tmp_path, monkeypatch, capsys):
    """table / curves / leaderboard, run from the repository root with only --results: what
    they write lands in <results>/reports, figures and site; leaderboard/ gains nothing."""
    source = Path(__file__).resolve().parent.parent / "leaderboard"
    before = _tree(source)
    results = tmp_path / "results"
    results.mkdir()
    build_store(results / "results.db", backbones=("base", "rand"))  # the default store there
    monkeypatch.chdir(source.parent)
    monkeypatch.delenv("BRAINBENCH_SITE", raising=False)
    common = ["--results", str(results), "--bootstrap", "50"]
    assert main(["table", "--fraction", "0.3", *common]) == 0
    assert main(["curves", "--tasks", "brain_age", *common]) == 0
    assert main(["leaderboard", *common]) == 0
    capsys.readouterr()
    assert _tree(source) == before
    assert {"table_f0.3.md", "table_f0.3.tex"} <= _tree(results / "reports")
    assert {"label_scarcity.png", "label_scarcity.svg"} <= _tree(results / "figures")
    assert "index.html" in _tree(results / "site")
    elsewhere = tmp_path / "elsewhere"  # BRAINBENCH_RESULTS instead of --results
    elsewhere.mkdir()
    shutil.copy(results / "results.db", elsewhere / "results.db")
    monkeypatch.setenv("BRAINBENCH_RESULTS", str(elsewhere))
    assert main(["curves", "--tasks", "brain_age", "--bootstrap", "20"]) == 0
    assert (elsewhere / "figures" / "label_scarcity.svg").exists()
    assert _tree(source) == before


@pytest.mark.slow
def test_statistics_on_a_tiny_real_run(tmp_path_factory):
    """The real runner's stored cells (classification, regression, survival) reload with
    recomputed metrics equal to the stored ones, and the outputs build from them."""
    from brainbench.profiles import PROFILES
    from brainbench.runner import RunConfig, run
    from brainbench.store import default_url

    work = tmp_path_factory.mktemp("real")
    run(RunConfig(model="braindino", fractions=(0.5, 1.0), seeds=(0, 1),
                  tasks=("idh_status", "survival_cox"), profile=PROFILES.get("tiny"),
                  cache_dir=work / "cache", results_dir=work / "results", progress=False))
    store = ResultStore(default_url(work / "results"))
    analysis = load_analysis(store, n_boot=100)  # raises if any recomputation disagrees
    assert len(analysis.cells) == 8 and analysis.entries[0].is_random
    assert "[random-init]" in stats_table(analysis, 1.0, "markdown")
    assert analysis.efficiency(analysis.entries[0], "idh_status") is not None
    build_site(analysis, work / "site")
    shutil.rmtree(work / "cache", ignore_errors=True)
