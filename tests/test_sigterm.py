"""SIGTERM (a batch scheduler's time limit) ends a run as Ctrl-C does: a line saying so,
status 143, and caches holding only complete entries; a rerun reuses them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.phantom_cohorts import phantoms  # noqa: F401  (fixture)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_extraction_ends_the_run_cleanly(phantoms, tmp_path):  # noqa: F811
    cache, results = tmp_path / "cache", tmp_path / "results"
    argv = [sys.executable, "-m", "brainbench.cli", "run", "--model", "braindino",
            "--profile", "tiny", "--fraction", "1", "--seeds", "0", "--data", str(phantoms),
            "--cache", str(cache), "--results", str(results), "--no-progress",
            "--precision", "fp32", "--compile", "eager"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    features = cache / "features"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # until the first entry
        if features.is_dir() and any(features.rglob("*.npz")):
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, (out, err)
    assert "terminated (SIGTERM); caches and results hold only complete entries" in err
    assert "Traceback" not in err
    assert not [p for p in features.rglob("*") if p.name.endswith(".tmp.npz")]
