"""The GPU script runs only when a GPU is lent (rarely, 15 minutes at a time), so it must not
rot in between: its CPU smoke mode runs both parts, end to end, on every test run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_both_parts_in_its_cpu_smoke_mode(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "SCRATCH": str(tmp_path / "scratch"),
           "PY": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_paper_profile.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "fidelity.txt", "machine.txt", "paper_results.db", "paper_run.txt", "throughput.txt"]
    throughput = (out / "throughput.txt").read_text()
    assert "pipeline/raw" in throughput and "GEMM" in throughput
    assert "cpu bf16 eager  cpu fp32 eager" in (out / "fidelity.txt").read_text()
    run = (out / "paper_run.txt").read_text()
    assert "cells: 5 computed" in run and "device cpu" in run and "paper run:" in run
    with sqlite3.connect(out / "paper_results.db") as db:
        tasks = {t for (t,) in db.execute("select distinct task from results")}
    assert tasks == {"brain_age"}
