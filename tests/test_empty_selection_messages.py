"""A selection that holds no results names the option that emptied it and what the store
holds for that option (it said "no results ... for that selection" whatever was asked)."""

from __future__ import annotations

import pytest

from brainbench.cli import main
from tests.test_stats import build_store


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sel") / "results"
    build_store(folder / "results.db", backbones=("base", "strong"), tasks=("brain_age",))
    return folder


@pytest.mark.parametrize("command", ["results", "table", "curves"])
@pytest.mark.parametrize("option, needle", [
    (["--fraction", "0.5"], "for FRACTION=0.5 (--fraction); stored fractions there: 0.1, 0.3, 1"),
    (["--profile", "cpu"], "for PROFILE=cpu (--profile); stored profile there: tiny"),
    (["--tasks", "idh_status"], "for TASKS=idh_status (--tasks); stored task there: brain_age"),
])
def test_an_empty_selection_names_its_option_and_what_is_stored(results, tmp_path, capsys,
                                                                 command, option, needle):
    out = [] if command == "results" else ["--out", str(tmp_path / "out")]
    assert main([command, "--results", str(results), *out, *option]) == 2
    text = capsys.readouterr().err
    assert needle in text and "Traceback" not in text, text


def test_the_first_option_that_empties_it_is_the_one_named(results, capsys):
    assert main(["results", "--results", str(results), "--tasks", "brain_age",
                 "--profile", "cpu", "--fraction", "0.5"]) == 2
    text = capsys.readouterr().err
    assert "for PROFILE=cpu (--profile)" in text and "FRACTION" not in text, text
