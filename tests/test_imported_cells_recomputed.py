"""An imported cell is someone's word, not a computation: a run of the same setting here
computes it and replaces the import, instead of finding it "already stored" (which let a
consistent forgery pass through `run` and `submit` into a new bundle)."""

from __future__ import annotations

import json

import pytest

from brainbench.cli import main
from brainbench.results_io import VERIFICATION_KEY
from brainbench.store import ResultStore
from tests.test_import_forgery import _rescore, computed  # noqa: F401 (a fixture)

RUN = ["run", "--model", "intensity", "--profile", "tiny", "--tasks", "brain_age",
       "--fraction", "0.5", "--seeds", "0,1", "--no-progress"]


def _metrics(store: ResultStore) -> dict[str, dict]:
    return {c.cell_id: c.metrics for c in store.cells()}


def test_a_run_recomputes_imported_cells_and_replaces_them(computed, tmp_path, capsys):  # noqa: F811
    cache, exported = computed
    honest = {item["cell_id"]: item["metrics"]
              for item in json.loads(exported.read_text())["cells"]}
    data = json.loads(exported.read_text())
    for item in data["cells"]:  # predictions flattered, metrics recomputed: it verifies
        for p in item["predictions"]:
            p["prediction"] = round(p["target"] + 0.5, 3)
        _rescore(item)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    results = tmp_path / "results"
    assert main(["import", str(forged), "--results", str(results), "--cache", str(cache)]) == 0
    store = ResultStore(f"sqlite:///{results / 'results.db'}")
    assert all(VERIFICATION_KEY in c.cell.hyperparameters for c in store.cells())
    assert all(m["mae"] == pytest.approx(0.5, abs=1e-3) for m in _metrics(store).values())
    capsys.readouterr()

    assert main(RUN + ["--cache", str(cache), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 imported cell(s)" in out and "recomputed here" in out
    cells = store.cells()
    assert len(cells) == 2 and not any(VERIFICATION_KEY in c.cell.hyperparameters for c in cells)
    for cell_id, metrics in _metrics(store).items():  # this machine's numbers, not the import's
        assert metrics["mae"] == honest[cell_id]["mae"] > 1

    assert main(RUN + ["--cache", str(cache), "--results", str(results)]) == 0
    out = capsys.readouterr().out  # computed here now: a second run finds them stored
    assert "imported cell(s)" not in out and "2 already stored" in out
