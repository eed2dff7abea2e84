"""Options as a user types them: a list with an empty entry is a typo named by its option,
not a shorter list; a bad --trials is refused while parsing, before anything is built or
written; stray spaces around a name are not part of it; and the Makefile passes every option
it documents, paths with spaces as one argument."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from brainbench.cli import main
from brainbench.store import ResultStore
from tests.phantom_cohorts import phantoms  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
MAKE_VARIABLES = {"PROFILE", "HIDE_CONTAMINATED", "FRACTION", "MODEL", "DATA", "WEIGHTS",
                  "BACKBONE", "MODELS", "TASKS", "SPLIT"}


def _refused(capsys, argv, *needles) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2 and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.mark.parametrize("option, value, needle", [
    ("--fraction", "0.1,,0.5", "FRACTION='0.1,,0.5' (--fraction): entry 2 of the list is empty"),
    ("--fraction", "1,", "FRACTION='1,' (--fraction): entry 2 of the list is empty"),
    ("--seeds", "0,,1", "SEEDS='0,,1' (--seeds): entry 2 of the list is empty"),
    ("--tasks", ",brain_age", "TASKS=',brain_age' (--tasks): entry 1 of the list is empty"),
])
def test_a_list_with_an_empty_entry_is_refused_naming_the_option(tmp_path, capsys, option,
                                                                 value, needle):
    _refused(capsys, ["run", "--model", "intensity", "--profile", "tiny", option, value,
                      "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c")], needle)
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_a_models_list_with_an_empty_entry_is_refused(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    ResultStore(f"sqlite:///{tmp_path / 'r' / 'results.db'}")
    _refused(capsys, ["results", "--results", str(tmp_path / "r"), "--models", "a,,b"],
             "MODELS='a,,b' (--models): entry 2 of the list is empty")


@pytest.mark.parametrize("trials", ["0", "-3", "x"])
def test_a_bad_trial_budget_is_refused_before_anything_is_built(tmp_path, capsys, trials):
    with pytest.raises(SystemExit) as info:  # argparse's own exit, status 2
        main(["run", "--model", "braindino", "--profile", "tiny", "--protocol", "paper",
              "--trials", trials, "--results", str(tmp_path / "r"),
              "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert f"argument --trials: TRIALS={trials!r}: expected a whole number" in err
    assert "RANDOM INITIALISATION" not in err  # the backbone was never built
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_spaces_around_a_model_or_profile_name_are_not_part_of_it(phantoms, tmp_path,  # noqa: F811
                                                                   capsys):
    assert main(["run", "--model", " intensity", "--profile", "tiny ", "--tasks", "brain_age",
                 "--fraction", "1", "--seeds", "0", "--data", str(phantoms), "--no-progress",
                 "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c")]) == 0
    (cell,) = ResultStore(f"sqlite:///{tmp_path / 'r' / 'results.db'}").cells()
    assert (cell.cell.backbone, cell.cell.profile) == ("intensity", "tiny")


def _make_n(*args: str) -> list[list[str]]:
    """The brainbench command lines `make -n` would run, split as the shell splits them."""
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}  # the defaults
    out = subprocess.run(["make", "-s", "-n", *args], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=env).stdout
    lines = out.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if "bin/brainbench " in line]


def test_make_results_passes_profile_and_hide_contaminated():
    (argv,) = _make_n("results", "HIDE_CONTAMINATED=1", "PROFILE=tiny")
    assert argv[1:3] == ["results", "--format"]
    assert "--hide-contaminated" in argv and argv[argv.index("--profile") + 1] == "tiny"
    (plain,) = _make_n("results")
    assert "--hide-contaminated" not in plain and "--profile" not in plain


def test_make_passes_paths_with_spaces_as_one_argument(tmp_path):
    card = tmp_path / "my dir" / "my card.toml"
    weights = tmp_path / "wé ights" / "w 1.pth"
    (validate,) = _make_n("validate", f"BACKBONE={card}", f"WEIGHTS={weights}")
    assert validate[1:3] == ["validate", str(card)]
    assert validate[validate.index("--weights") + 1] == str(weights)
    (bench,) = _make_n("bench", f"MODEL={card}", f"DATA={tmp_path / 'da ta'}")
    assert bench[bench.index("--model") + 1] == str(card)
    assert bench[bench.index("--data") + 1] == str(tmp_path / "da ta")


@pytest.mark.parametrize("argv, needle", [
    (["list", "tasks", "--weights", "w.pth"], "--weights: only `list backbones` uses it"),
    (["list", "profiles", "--model", "dinov2"], "--model: only `list backbones` uses it"),
    (["list", "backbones", "--model", "nope"], "MODEL='nope' (--model): no such backbone"),
])
def test_list_refuses_options_it_would_ignore(capsys, argv, needle):
    _refused(capsys, argv, needle)


def test_analyze_names_an_unknown_backbone_before_building_any(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    text = _refused(capsys, ["analyze", "--models", "braindino,nope", "--profile", "tiny",
                             "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c")],
                    "unknown backbone 'nope'; valid names:")
    assert "RANDOM INITIALISATION" not in text  # braindino was never built
