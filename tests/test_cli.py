"""Bad input gets a clear message and a non-zero exit before any compute or write."""

import subprocess
import sys
from pathlib import Path

import pytest

from brainbench.cli import main


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BRAINBENCH_RESULTS", str(tmp_path / "results"))
    yield tmp_path
    # nothing may be written by a rejected run
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "unknown backbone 'nope'; valid names: braindino"),
    (["--fraction", "0"], "FRACTION=0.0 is outside (0, 1]"),
    (["--fraction", "1.5"], "FRACTION=1.5 is outside (0, 1]"),
    (["--fraction", "abc"], "expected numbers"),
    (["--tasks", "brain_age,bogus"], "unknown task 'bogus'; valid names: brain_age"),
    (["--seeds", "x"], "expected integers"),
    (["--profile", "huge"], "unknown profile 'huge'; valid names: cpu"),
])
def test_bad_arguments(args, message, capsys):
    assert main(["run", "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_or_unreadable_weights_name_the_file(tmp_path, capsys):
    assert main(["run", "--no-progress", "--weights", str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["run", "--no-progress", "--weights", str(garbage)]) == 2
    assert "garbage.pt" in capsys.readouterr().err


def test_required_weights_missing(capsys, monkeypatch):
    monkeypatch.delenv("BRAINDINO_WEIGHTS", raising=False)
    assert main(["run", "--no-progress", "--require-weights"]) == 2
    assert "BRAINDINO_WEIGHTS" in capsys.readouterr().err


def test_list_tasks_shows_all_nine_ready():
    out = subprocess.run([sys.executable, "-m", "brainbench.cli", "list", "tasks"],
                         capture_output=True, text=True, check=True).stdout
    for task in ("tumor_seg", "neurodegen_cls", "neurodev_cls", "brain_age", "stroke_time",
                 "idh_status", "sequence_cls", "survival_1yr", "survival_cox"):
        assert task in out
    assert "ready" in out.splitlines()[[i for i, l in enumerate(out.splitlines())
                                        if l.startswith("tumor_seg")][0]]
