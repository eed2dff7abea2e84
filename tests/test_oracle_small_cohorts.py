"""`brainbench oracle` on a cohort too small to cross-validate says so per task, instead of a
traceback (one person per dataset) or rows of nan with numpy's warnings (three)."""

from __future__ import annotations

import warnings

import pytest

from brainbench.cli import main
from brainbench.phantoms import DATASETS, generate_phantoms


@pytest.mark.parametrize("people", [1, 3])
def test_the_oracle_report_of_a_tiny_cohort_says_too_few_people(tmp_path, capsys, people):
    root = generate_phantoms(tmp_path / "ph", {d: people for d in DATASETS}, seed=0, workers=1,
                             progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["oracle", str(root)]) == 0
    assert not [w for w in caught if "empty slice" in str(w.message)]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "nan" not in captured.out and "too few people" in captured.out
    rows = [line for line in captured.out.splitlines()[2:] if line.strip()]
    assert len(rows) == 7  # every task still has its row
