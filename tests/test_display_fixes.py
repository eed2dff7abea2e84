"""What `table`, `curves`, `results`, the site and a submission's SUMMARY.md show, on a real
tiny run: a built-in control, a submitted Python backbone, and that bundle imported elsewhere
(unverifiable there)."""

from __future__ import annotations

import html
import os
import re
import subprocess
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from brainbench.cli import main
from brainbench.leaderboard import curves
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.tables import detectable_text
from brainbench.results_io import unverified_fields
from brainbench.store import ResultStore, default_url
from tests.helpers import cache_with_shared_phantoms
from tests.test_stats import build_store

REPO = Path(__file__).resolve().parent.parent
NAME = "tinyconv_display"
TASKS = "brain_age,idh_status"
FRACTIONS = (0.1, 0.5, 1.0)
BOOT = ["--bootstrap", "100"]

BACKBONE = textwrap.dedent(f'''\
    import torch

    from brainbench.backbone import Backbone, InputContract, WeightsInfo
    from brainbench.weights import state_dict_sha256


    class TinyConv(Backbone):
        name = "{NAME}"

        def __init__(self, image_size=None, num_slices=None):
            size = image_size or 64
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(
                torch.nn.Conv2d(1, 16, 3, stride=2, padding=1), torch.nn.GELU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)).eval().requires_grad_(False)
            self.contract = InputContract("2d", 1, (size, size), num_slices or 8,
                                          "robust_zscore", ("cls",), 32)
            self.weights = WeightsInfo("random-init", "torch init, seed 0",
                                       state_dict_sha256(self.model))

        def embed(self, batch):
            with torch.inference_mode():
                return {{"cls": self.model(batch).mean(dim=(2, 3)).float().clone()}}

        def architecture(self):
            return {{"model": "two-conv demo"}}

        def parameter_count(self):
            return sum(p.numel() for p in self.model.parameters())
    ''')


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """`make bench MODEL=intensity` and `make submit` of a .py backbone into one store (three
    fractions, two seeds), and the bundle imported into a second store without its cohort."""
    root = tmp_path_factory.mktemp("display")
    cache = cache_with_shared_phantoms(root / "cache", request)
    (root / "work").mkdir()
    source = root / "work" / f"{NAME}.py"
    source.write_text(BACKBONE)
    common = ["--profile", "tiny", "--tasks", TASKS, "--seeds", "0,1",
              "--fraction", ",".join(f"{f:g}" for f in FRACTIONS), "--cache", str(cache),
              "--results", str(root / "results"), "--no-progress"]
    assert main(["run", "--model", "intensity", *common]) == 0
    assert main(["submit", str(source), *common, "--out", str(root / "subs")]) == 0
    assert main(["import-bundle", str(root / "subs" / NAME), "--cache", str(root / "empty"),
                 "--results", str(root / "elsewhere"), "--out", str(root / "subs2")]) == 0
    return root


def _store(folder: Path) -> ResultStore:
    return ResultStore(default_url(folder))


@pytest.mark.slow
def test_reproduce_commands_on_the_site_run_and_recompute_the_cell(world, capsys):
    """The task page's command of a submitted backbone names its bundle's file (which `make
    bench MODEL=` accepts), a built-in keeps its name (a control takes no WEIGHTS), and both
    commands, run as printed, recompute the stored value."""
    assert main(["leaderboard", "--results", str(world / "results"), "--submissions",
                 str(world / "subs"), "--out", str(world / "site"), *BOOT]) == 0
    page = (world / "site" / "task-brain_age.html").read_text()
    commands = [html.unescape(c) for c in re.findall(r"<code>(make bench [^<]*)</code>", page)]
    mine = next(c for c in commands if NAME in c and "FRACTION=0.5 " in c and "SEEDS=1 " in c)
    control = next(c for c in commands if c.startswith("make bench MODEL=intensity ")
                   and "FRACTION=0.5 " in c and "SEEDS=1 " in c)
    store = _store(world / "results")

    def value(backbone: str) -> float:
        frame = store.frame(backbone=backbone, task=["brain_age"])
        row = frame[(frame["fraction"] == 0.5) & (frame["seed"] == 1) & (frame["metric"] == "mae")]
        assert len(row) == 1
        return float(row["value"].iloc[0])

    before = {b: value(b) for b in (NAME, "intensity")}
    stamp = world / "installed"  # the venv running this test is installed already
    stamp.touch()
    env = {**os.environ, "BRAINBENCH_CACHE": str(world / "cache"),
           "BRAINBENCH_RESULTS": str(world / "results"), "MAKEFLAGS": f"STAMP={stamp}"}
    for command in (mine, control):
        done = subprocess.run(["bash", "-c", command + " FORCE=1"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, command + "\n" + done.stdout[-2000:] + done.stderr[-2000:]
        assert "cells: 1 computed" in done.stdout
    after = {b: value(b) for b in (NAME, "intensity")}
    assert after == pytest.approx(before, rel=1e-9)
    assert mine.startswith(f"make bench MODEL={world / 'subs' / NAME / (NAME + '.py')} ")
    assert "WEIGHTS" not in control  # `intensity` refuses a checkpoint


@pytest.mark.slow
def test_site_tables_and_summary_state_the_minimum_detectable_difference(world, capsys):
    """Every site table ends with the minimum detectable difference `make table` states (the
    same Analysis computation); SUMMARY.md carries the precision and MDD notes that
    `brainbench results` prints for the same cells."""
    results = world / "results"
    assert main(["leaderboard", "--results", str(results), "--submissions",
                 str(world / "subs"), "--out", str(world / "site"), *BOOT]) == 0
    analysis = load_analysis(_store(results), n_boot=100)
    page = (world / "site" / "task-idh_status.html").read_text()
    row = re.search(r'<tr class="detectable">(.*?)</tr>', page).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", row)[1:]
    assert cells == [html.escape(detectable_text(*analysis.detectable_differences(f)[
        "idh_status"])) for f in FRACTIONS]
    assert all("test people" in c for c in cells)
    index = (world / "site" / "index.html").read_text()
    headline = index.split('id="overall"')[1].split("</table>")[0]
    row = re.search(r'<tr class="detectable">(.*?)</tr>', headline).group(1)
    expected = analysis.detectable_differences(1.0)
    assert re.findall(r"<td>([^<]*)</td>", row)[2:] == [
        html.escape(detectable_text(*expected[t])) for t in ("brain_age", "idh_status")]
    assert "Minimum detectable difference (each table's last row)" in index

    summary = (world / "subs" / NAME / "SUMMARY.md").read_text()
    capsys.readouterr()
    assert main(["results", "--results", str(results), "--tasks", TASKS, "--profile",
                 "tiny"]) == 0
    printed = capsys.readouterr().out.splitlines()
    detectable = next(line for line in printed if line.startswith("Minimum detectable"))
    assert detectable in summary.splitlines()
    assert re.search(r"brain_age mae [0-9.]+(-[0-9.]+)? \(\d+ test people\)", detectable)
    precision = next(line for line in summary.splitlines() if line.startswith("Feature precision"))
    assert f"{NAME} [RANDOM-INIT] (" in precision and "intensity [CONTROL] (" in precision
    assert precision.count(": fp32") == 2


@pytest.mark.slow
def test_results_marks_an_unverified_column_in_its_header(world, capsys):
    """Imported cells that could not all be verified mark their column's header, and the
    footer says what the mark means and which fields were not verified; cells computed here
    carry no mark."""
    capsys.readouterr()
    assert main(["results", "--results", str(world / "elsewhere")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert f"{NAME} [RANDOM-INIT] [UNVERIFIED] (" in header
    frame = _store(world / "elsewhere").frame(backbone=NAME)
    fields = sorted({f for h in frame["hyperparameters"] for f in unverified_fields(h)})
    assert fields  # the cohort is absent here: n_train, subset_hash, ... stay unchecked
    footer = next(line for line in out.splitlines() if line.startswith("UNVERIFIED = "))
    assert footer.endswith(f"not verified: {NAME} ({header.split('(')[1][:8]}): "
                           + ", ".join(fields) + ".")
    assert main(["results", "--results", str(world / "results")]) == 0
    out = capsys.readouterr().out
    assert f"{NAME} [RANDOM-INIT] (" in out.splitlines()[0] and "UNVERIFIED" not in out


def _inside(fig) -> list[str]:
    """What of the title, the legends and the visible panels lies outside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bounds = fig.bbox
    artists = [("title", fig._suptitle)] + [("legend", leg) for leg in fig.legends] + [
        (f"panel {ax.get_title()}", ax) for ax in fig.axes if ax.get_visible()]
    out = []
    for what, artist in artists:
        box = (artist.get_tightbbox(renderer) if hasattr(artist, "get_tightbbox")
               else artist.get_window_extent(renderer))
        if box.x0 < bounds.x0 - 0.5 or box.y0 < bounds.y0 - 0.5 or box.x1 > bounds.x1 + 0.5 \
                or box.y1 > bounds.y1 + 0.5:
            out.append(f"{what}: {box} outside {bounds}")
    return out


def _check_figure(analysis, tasks=None) -> None:
    fig = curves.curves_figure(analysis, tasks)
    try:
        assert _inside(fig) == []
        chance = any(analysis.chance(t, f) is not None for t in (tasks or [t.id for t in
                     analysis.tasks]) for f in analysis.fractions(t))
        title = (f"label-scarcity curves: mean over seeds, bars and band = "
                 f"{analysis.interval_description}"
                 + ("; grey box = chance (shuffled labels), 95% range" if chance else ""))
        assert " ".join(fig._suptitle.get_text().split()) == title  # wrapped, nothing lost
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [
            e.display for e in analysis.entries] + (["chance (shuffled labels)"] if chance else [])
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_curves_title_and_legend_fit_the_figure_for_one_task(world):
    analysis = load_analysis(_store(world / "elsewhere"), tasks=["brain_age"], n_boot=100)
    analysis_here = load_analysis(_store(world / "results"), tasks=["brain_age"], n_boot=100)
    for a in (analysis, analysis_here):  # [unverified] makes the longest label
        _check_figure(a, ["brain_age"])


def test_curves_title_and_legend_fit_the_figure_for_many_tasks(tmp_path):
    names = tuple(f"vit_large_patch16_brainmri_pretrained_variant_{i}" for i in range(6)) \
        + ("rand",)
    store = build_store(tmp_path / "r.db", backbones=names)
    _check_figure(load_analysis(store, n_boot=50))  # 4 tasks: 2 rows of 3 panels, 7 labels
    _check_figure(load_analysis(store, tasks=["brain_age"], n_boot=50), ["brain_age"])


def test_the_curves_title_names_the_grey_box_only_where_one_is_drawn(tmp_path, monkeypatch):
    """Segmentation's per-subject scores have no chance row: a figure of such tasks alone
    draws no grey box, so its title and legend must not describe one."""
    analysis = load_analysis(build_store(tmp_path / "r.db", backbones=("base", "rand")),
                             tasks=["brain_age"], n_boot=50)
    assert "grey box" in curves.curves_title(analysis)
    monkeypatch.setattr(analysis, "chance", lambda task, fraction, *args, **kwargs: None)
    assert "grey box" not in curves.curves_title(analysis)
    _check_figure(analysis, ["brain_age"])  # title and legend without it
    fig = curves.curves_figure(analysis, ["brain_age"])
    try:
        assert not [c for ax in fig.axes for c in ax.collections
                    if c.get_gid() in ("chance-range", "chance-mean")]
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_curves_fraction_list_draws_only_those_fractions(world, monkeypatch, capsys):
    drawn = []
    real = curves.curves_figure

    def keep(analysis, tasks=None):
        fig = real(analysis, tasks)
        drawn.append({float(x) for ax in fig.axes for line in ax.get_lines()
                      for x in line.get_xdata()})
        return fig

    monkeypatch.setattr(curves, "curves_figure", keep)
    common = ["--results", str(world / "results"), "--out", str(world / "fig"), *BOOT]
    assert main(["curves", "--fraction", "0.1,1", *common]) == 0
    assert main(["curves", *common]) == 0
    assert drawn == [{0.1, 1.0}, set(FRACTIONS)]
    capsys.readouterr()
    assert main(["curves", "--fraction", "0.1,0.3", *common]) == 2
    assert "no results at fraction 0.3" in capsys.readouterr().err


@pytest.mark.slow
def test_table_fraction_list_writes_one_table_per_fraction(world, capsys):
    """`make table FRACTION=0.1,1`: a table per fraction, each the one `FRACTION=f` alone
    writes; a listed fraction without results stops with exit 2 and writes nothing."""
    common = ["--results", str(world / "results"), *BOOT]
    capsys.readouterr()
    assert main(["table", "--fraction", "0.1,1", "--out", str(world / "both"), *common]) == 0
    out = capsys.readouterr().out
    assert "Label fraction 0.1." in out and "Label fraction 1." in out
    assert sorted(p.name for p in (world / "both").iterdir()) == [
        "table_f0.1.md", "table_f0.1.tex", "table_f1.md", "table_f1.tex"]
    for f in ("0.1", "1"):
        assert main(["table", "--fraction", f, "--out", str(world / f"one{f}"), *common]) == 0
        for ext in ("md", "tex"):
            assert (world / "both" / f"table_f{f}.{ext}").read_text() == \
                (world / f"one{f}" / f"table_f{f}.{ext}").read_text()
    capsys.readouterr()
    assert main(["table", "--fraction", "0.1,0.3", "--out", str(world / "none"), *common]) == 2
    assert "no results at fraction 0.3" in capsys.readouterr().err
    assert not (world / "none").exists()
