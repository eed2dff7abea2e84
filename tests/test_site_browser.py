"""The leaderboard site in a real headless browser (Debian's chromium): it renders, sorting
works (the page's own JS, driven by a URL hash and by header clicks), a screenshot is taken.

Skips with a message where chromium is not installed (.ci/run installs it with apt-get)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.site import build_site
from tests.test_stats import build_store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run "
                             "does this): the headless-browser test of the leaderboard site "
                             "is skipped")


def chromium(url: str, profile: Path, *extra: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--virtual-time-budget=3000", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class OverallTable(HTMLParser):
    """Row labels (first cell) and the data-sorted attribute of table#overall."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = self.in_body = False
        self.sorted = None
        self.rows: list[str] = []
        self._cell = 0
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "overall":
            self.inside, self.sorted = True, attrs.get("data-sorted")
        elif self.inside and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self._cell = 0
        elif self.in_body and tag == "td":
            self._cell += 1
            if self._cell == 1:
                self._text = []

    def handle_endtag(self, tag):
        if tag == "table" and self.inside:
            self.inside = self.in_body = False
        elif tag == "tbody":  # the footer (the chance row) is not a ranked entry
            self.in_body = False
        elif tag == "td" and self._text is not None:
            self.rows.append("".join(self._text).replace("RANDOM-INIT", "").strip())
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def parse(dom: str) -> OverallTable:
    table = OverallTable()
    table.feed(dom)
    return table


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, object]:
    work = tmp_path_factory.mktemp("browser")
    store = build_store(work / "r.db", backbones=("base", "strong", "rand", "<script>"),
                        tasks=("brain_age", "idh_status"))
    analysis = load_analysis(store, models=["base", "strong", "rand", "<script>"], n_boot=100)
    return build_site(analysis, work / "site"), analysis


def test_table_renders_and_sorts_in_chromium(site, tmp_path):
    index, analysis = site
    url = index.resolve().as_uri()
    plain = parse(chromium(url, tmp_path / "p0", "--dump-dom"))
    assert plain.sorted is None
    assert plain.rows == [e.label for e in analysis.entries]  # rendered, in the given order
    assert "<script>" in plain.rows  # the name is text, not an element
    dom = chromium(url, tmp_path / "p4", "--dump-dom")
    assert dom.index("chance (shuffled labels)") > dom.index("</tbody>")  # a footer, never sorted

    ranks = analysis.mean_ranks(1.0)
    by_rank = [e.label for e in sorted(analysis.entries, key=lambda e: ranks[e].mean_rank)]
    ranked = parse(chromium(url + "#sort=rank", tmp_path / "p1", "--dump-dom"))
    assert ranked.sorted == "rank:asc" and ranked.rows == by_rank

    # two clicks on the brain_age header: best first (lower MAE), then reversed
    maes = {e.label: analysis.summary(e, "brain_age", 1.0).mean for e in analysis.entries}
    clicked = parse(chromium(url + "#click=task-brain_age", tmp_path / "p2", "--dump-dom"))
    assert clicked.sorted == "task-brain_age:asc"
    assert clicked.rows == sorted(maes, key=maes.get)
    twice = parse(chromium(url + "#click=task-brain_age,task-brain_age", tmp_path / "p3",
                           "--dump-dom"))
    assert twice.sorted == "task-brain_age:desc"
    assert twice.rows == sorted(maes, key=maes.get, reverse=True)


def test_screenshot(site, tmp_path):
    index, _ = site
    shot = tmp_path / "leaderboard.png"
    chromium(index.resolve().as_uri() + "#sort=rank", tmp_path / "p", "--window-size=1280,900",
             f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    task_page = index.parent / "task-brain_age.html"
    dom = chromium(task_page.resolve().as_uri(), tmp_path / "q", "--dump-dom")
    assert re.search(r"<h1>brain_age</h1>", dom) and "Provenance of every cell" in dom
