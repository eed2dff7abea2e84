"""The site-held-out split variant (issue 18, item 3): one whole site is the test set, chosen
from the cohort by a declared rule, recorded in the manifest and in every cell, and reported
beside the in-distribution score as the drop."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.robustness import load_unseen_sites, site_drops
from brainbench.leaderboard.site import build_site
from brainbench.leaderboard.tables import stats_table
from brainbench.pipeline import manifest_path, prepare_task
from brainbench.profiles import PROFILES
from brainbench.runner import RunConfig, run
from brainbench.splits import make_site_split, read_manifest, record_split
from brainbench.store import Cell, ResultStore, StoredCell, default_url
from brainbench.taskspec import Sample, get_task


def _samples(per_site: dict[str, list[str]]) -> list[Sample]:
    """One sample per person; per_site: site -> the label of each of its people."""
    out = []
    for site, labels in per_site.items():
        for i, label in enumerate(labels):
            out.append(Sample(f"{site}-{i}", f"{site}-{i}", (), label, label, label, site))
    return out


def test_the_site_closest_to_the_test_fraction_is_held_out_whole():
    samples = _samples({"A": ["x"] * 50, "B": ["x"] * 30, "C": ["x"] * 19, "D": ["x"] * 1})
    split = make_site_split("t", "d", samples, "salt", 0.2, "site-held-out",
                            require_all_labels=False)
    assert split.held_out == ("C",)  # 19 people: closest to 0.2 x 100
    assert split.label == "site-held-out:C"
    assert set(split.test_groups) == {s.group for s in samples if s.site == "C"}
    assert not set(split.train_groups) & set(split.test_groups)
    assert len(split.train_groups) + len(split.test_groups) == len(samples)


def test_a_site_missing_a_class_is_not_held_out():
    # C is the closest in size, but holds no "y": the next closest that keeps both labels
    samples = _samples({"A": ["x"] * 30 + ["y"] * 20, "B": ["x"] * 20 + ["y"] * 10,
                        "C": ["x"] * 20})
    split = make_site_split("t", "d", samples, "salt", 0.2, "site-held-out")
    assert split.held_out == ("B",)
    labels = {s.group: s.fraction_stratum for s in samples}
    assert {labels[g] for g in split.test_groups} == {"x", "y"}
    assert {labels[g] for g in split.train_groups} == {"x", "y"}


def test_no_site_that_can_be_held_out_is_an_error_naming_the_sites():
    samples = _samples({"A": ["x"] * 5, "B": ["y"] * 5})
    with pytest.raises(BenchError, match=r"no site can be held out.*site A: x 5, y 0"):
        make_site_split("t", "d", samples, "salt", 0.2, "site-held-out")
    with pytest.raises(BenchError, match="at least two sites"):
        make_site_split("t", "d", _samples({"A": ["x", "y"] * 3}), "salt", 0.2,
                        "site-held-out", require_all_labels=False)


def test_the_variant_manifest_is_verified_by_content(tmp_path):
    samples = _samples({"A": ["x"] * 8, "B": ["x"] * 3, "C": ["x"] * 9})
    split = make_site_split("t", "d", samples, "salt", 0.2, "site-held-out",
                            require_all_labels=False)
    manifest = tmp_path / "t.site-held-out.json"
    record_split(split, manifest)
    stored = read_manifest(manifest)
    assert stored["variant"] == "site-held-out" and stored["held_out"] == ["B"]
    record_split(split, manifest)  # unchanged: verifies
    edited = dict(stored, held_out=["C"])  # a different site claimed, lists and hash kept
    manifest.write_text(json.dumps(edited))
    with pytest.raises(BenchError, match="field 'hash'.*does not verify"):
        read_manifest(manifest)


def test_a_task_declares_its_variants_and_refuses_others():
    assert get_task("brain_age").split_names == ("site-held-out",)
    spec = get_task("brain_age").with_split("site-held-out")
    assert spec.manifest_name == "brain_age.site-held-out.json"
    assert spec.on_dataset("bids").manifest_name == "brain_age@bids.site-held-out.json"
    with pytest.raises(BenchError, match="idh_status declares no split 'site-held-out'"):
        get_task("idh_status").with_split("site-held-out")


def _cell(split: str = "") -> Cell:
    return Cell(backbone="b", weights_id="w", weights_status="pretrained", weights_sha256="0",
                task="brain_age", dataset="ixi", data_source="phantom:x", profile="tiny",
                head="linear", fraction=1.0, seed=0, n_train=3, n_test=2, hyperparameters={},
                selection="", code_version="c", config_hash="h", split_hash="s",
                subset_hash="u", cache_key="k", split=split)


def test_the_split_is_part_of_the_cell_and_the_store(tmp_path):
    standard, held = _cell(), _cell("site-held-out:IOP")
    assert standard.cell_id != held.cell_id
    store = ResultStore(default_url(tmp_path))
    store.write_cells([StoredCell(c, {"mae": 3.0}, [("s1", 1.0, 2.0)]) for c in (standard, held)])
    frame = store.frame()
    assert sorted(frame["split"]) == ["", "site-held-out:IOP"]
    assert list(store.frame(split="")["cell_id"]) == [standard.cell_id]
    assert {c.cell.split for c in store.cells()} == {"", "site-held-out:IOP"}


def test_a_site_held_out_run_tests_on_one_unseen_site_and_reports_the_drop(tmp_path):
    base = dict(model="intensity", fractions=(1.0,), seeds=(0, 1), profile=PROFILES.get("tiny"),
                cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                tasks=("brain_age",), progress=False)
    run(RunConfig(**base))
    report = run(RunConfig(**base, split="site-held-out"))
    assert len(report.cells) == 2 and all(c.computed for c in report.cells)

    spec = get_task("brain_age").with_split("site-held-out")
    manifest = manifest_path(tmp_path / "results", report.data_source, spec)
    stored = read_manifest(manifest)
    [site] = stored["held_out"]
    prepared = prepare_task(spec, tmp_path / "cache" / "phantoms" /
                            report.data_source.split(":", 1)[1], report.data_source)
    site_of = {s.group: s.site for s in prepared.samples}
    assert {site_of[g] for g in stored["test"]} == {site}  # the whole test set: one site
    assert site not in {site_of[g] for g in stored["train"]}  # never seen in training
    assert Counter(site_of.values())[site] == len(stored["test"])  # all of that site

    store = ResultStore(default_url(tmp_path / "results"))
    assert set(store.frame()["split"]) == {"", f"site-held-out:{site}"}
    analysis = load_analysis(store)  # the standard split only: 2 seeds, not 4
    assert len(analysis.cells) == 2
    analysis.unseen_sites = load_unseen_sites(store)
    [drop] = site_drops(analysis, analysis.unseen_sites, 1.0)
    inside = analysis.summary(drop.entry, "brain_age", 1.0).mean
    outside = analysis.unseen_sites.summary(analysis.unseen_sites.entries[0], "brain_age",
                                            1.0).mean
    assert drop.site == site and drop.drop == pytest.approx(outside - inside)  # MAE: up = worse
    low, high = drop.drop_ci
    assert low <= drop.drop <= high
    text = stats_table(analysis, 1.0, "markdown")
    assert "Robustness to unseen sites" in text and f"{site} (" in text
    build_site(analysis, tmp_path / "site")
    page = (tmp_path / "site" / "task-brain_age.html").read_text()
    assert "Robustness to unseen sites" in page and f"<td>{site} (" in page
    assert f"{drop.drop:.3f}<br>" in page


def test_split_variant_errors_name_the_task_and_the_choices(tmp_path):
    base = dict(model="intensity", fractions=(1.0,), seeds=(0,), profile=PROFILES.get("tiny"),
                cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", progress=False)
    with pytest.raises(BenchError, match="idh_status declares no split"):
        run(RunConfig(**base, tasks=("idh_status",), split="site-held-out"))
    with pytest.raises(BenchError, match="expected one of site-held-out"):
        run(RunConfig(**base, tasks=("brain_age",), split="by-scanner"))
    assert not Path(tmp_path / "results").exists() or not any(
        Path(tmp_path / "results").rglob("*.json"))


def test_site_held_out_results_import_verified_and_a_forged_site_is_refused(tmp_path):
    from brainbench.results_io import (DataLookup, export_results, import_results,
                                       unverified_fields)

    base = dict(model="intensity", fractions=(1.0,), seeds=(0,), profile=PROFILES.get("tiny"),
                cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                tasks=("brain_age",), progress=False, split="site-held-out")
    run(RunConfig(**base))
    [path] = export_results(ResultStore(default_url(tmp_path / "results")), tmp_path / "export")
    lookup = DataLookup(cache_dir=tmp_path / "cache")
    target = ResultStore(default_url(tmp_path / "other"))
    import_results(target, path, lookup=lookup)
    [cell] = target.cells()
    assert cell.cell.split.startswith("site-held-out:")
    assert not unverified_fields(cell.cell.hyperparameters)  # split and subset recomputed

    data = json.loads(path.read_text())
    item = data["cells"][0]
    item["cell"]["split"] = "site-held-out:elsewhere"
    item["cell_id"] = Cell(**{**item["cell"], "fraction": float(item["cell"]["fraction"])}).cell_id
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    with pytest.raises(BenchError, match="field 'split' does not verify"):
        import_results(ResultStore(default_url(tmp_path / "third")), forged, lookup=lookup)


def test_an_entry_split_by_precision_keeps_its_unseen_site_drop_at_one_precision(tmp_path):
    """The standard split holding a backbone's cells in both precisions splits it into a bf16
    and an fp32 row; its site-held-out cells (fp32 only) still give the fp32 row its drop, and
    the bf16 row none (never a drop across precisions). The table used to lose the backbone."""
    from dataclasses import replace

    base = dict(model="intensity", fractions=(1.0,), seeds=(0, 1), profile=PROFILES.get("tiny"),
                cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                tasks=("brain_age",), progress=False)
    run(RunConfig(**base))
    run(RunConfig(**base, split="site-held-out"))
    store = ResultStore(default_url(tmp_path / "results"))
    standard = [c for c in store.cells(with_predictions=True) if not c.cell.split]
    store.write_cells([StoredCell(replace(c.cell, precision="bf16"), c.metrics, c.predictions,
                                  persons=c.persons) for c in standard])
    analysis = load_analysis(store)
    assert sorted(e.precision for e in analysis.entries) == ["bf16", "fp32"]
    analysis.unseen_sites = load_unseen_sites(store)
    [drop] = site_drops(analysis, analysis.unseen_sites, 1.0)
    assert drop.entry.precision == "fp32"
    assert "Robustness to unseen sites" in stats_table(analysis, 1.0, "markdown")
