"""A run prepares every task (images validated, splits checked) before it computes any: a bad
image in the last task stops it with exit 2 and nothing stored, whatever the task order (it
used to store the earlier tasks' cells behind an error saying nothing was computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainbench.cli import main
from brainbench.pipeline import load_samples
from brainbench.store import ResultStore
from brainbench.taskspec import get_task
from tests.helpers import write_nifti
from tests.phantom_cohorts import copy_dataset, phantoms  # noqa: F401  (fixture)


@pytest.mark.parametrize("order", ["brain_age,neurodegen_cls", "neurodegen_cls,brain_age"])
def test_a_bad_image_in_any_task_stops_the_run_before_any_cell_is_stored(
        phantoms, tmp_path, capsys, order):  # noqa: F811
    data = tmp_path / "data"
    for dataset in ("ixi", "adni"):
        copy_dataset(phantoms, dataset, data)
    victim = Path(load_samples(get_task("neurodegen_cls"), data).samples[2].images[0][1])
    victim.unlink()
    write_nifti(victim, np.zeros((24, 28, 20), dtype=np.float32))  # an empty volume

    code = main(["run", "--model", "intensity", "--profile", "tiny", "--seeds", "0",
                 "--fraction", "1", "--tasks", order, "--data", str(data),
                 "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results"),
                 "--no-progress"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2 and "Traceback" not in text
    assert str(victim) in text and "nothing was computed" in text
    db = tmp_path / "results" / "results.db"
    assert not db.exists() or ResultStore(f"sqlite:///{db}").cells() == []
