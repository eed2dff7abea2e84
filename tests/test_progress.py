"""Progress in a log file: a batch job's stderr is not a terminal, and tqdm alone hides its bars
there. A bar here writes whole lines into a log (after LOG_DELAY_S, at most every
LOG_INTERVAL_S, at the end) and redraws in place on a terminal."""

from __future__ import annotations

import io
import time

import brainbench.progress as progress
from brainbench.features import FeatureCache, extract_features
from brainbench.progress import progress_bar
from tests.helpers import TinyBackbone, random_brain, write_nifti


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_from_start_to_end():
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="features", unit="vol", log_delay=0.0, stream=log):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("features:") and "0/50" in lines[0]
    assert "50/50" in lines[-1]
    assert len(lines) == 2  # a quick stage: the start and the end, nothing in between


def test_a_log_gets_a_line_per_interval_while_a_stage_runs(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "LOG_DELAY_S", 0.0)
    log = io.StringIO()
    with progress_bar(total=5, desc="voxel hashes", unit="file", stream=log) as bar:
        for _ in range(5):
            bar.update(1)
    counts = [line.split("|")[-1].split()[0] if "|" in line else line for line in
              log.getvalue().splitlines()]
    assert [c for c in counts if c.endswith("/5")][:6] == [f"{i}/5" for i in range(6)]


def test_a_stage_shorter_than_the_log_delay_leaves_a_log_clean():
    log = io.StringIO()
    for _ in progress_bar(range(1000), desc="file hashes", unit="file", stream=log):
        pass
    assert log.getvalue() == ""


def test_a_stage_longer_than_the_log_delay_shows_in_a_log(monkeypatch):
    monkeypatch.setattr(progress, "LOG_DELAY_S", 0.05)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    log = io.StringIO()
    with progress_bar(total=3, desc="voxel hashes", unit="file", stream=log) as bar:
        for _ in range(3):
            time.sleep(0.05)
            bar.update(1)
    assert "voxel hashes" in log.getvalue() and "3/3" in log.getvalue().splitlines()[-1]


def test_a_terminal_redraws_in_place_and_disabled_bars_write_nothing():
    tty = Terminal()
    for _ in progress_bar(range(3), desc="probes", unit="cell", stream=tty):
        pass
    assert "\r" in tty.getvalue() and "probes" in tty.getvalue()
    quiet = io.StringIO()
    for _ in progress_bar(range(3), desc="probes", unit="cell", enabled=False, stream=quiet):
        pass
    for _ in progress_bar([], desc="probes", unit="cell", stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_extraction_reports_its_volumes_into_a_captured_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_DELAY_S", 0.0)  # as if it ran longer than the delay
    paths = []
    for i in range(3):
        path = tmp_path / f"v{i}.nii.gz"
        write_nifti(path, random_brain(seed=i))
        paths.append(path)
    extract_features(TinyBackbone(slices=4), paths, FeatureCache(tmp_path / "cache"),
                     batch_size=4, workers=0, desc="features")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("features:") and "3/3" in line for line in err.splitlines())
