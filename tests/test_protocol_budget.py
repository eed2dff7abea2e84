"""Search budgets: a searched protocol run with two trial budgets gives two labelled results
that are never pooled (tables, analysis, curves, site), budgets are recovered from what old
stores hold, and --force starts a fresh optuna search while a plain rerun resumes."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from brainbench.errors import BenchError
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.curves import write_curves
from brainbench.leaderboard.site import build_site, reproduce_command
from brainbench.leaderboard.tables import comparison_table, protocol_labels, stats_table
from brainbench.metrics import compute_metrics
from brainbench.protocols import protocol_label
from brainbench.search import fit_protocol
from brainbench.store import Cell, ResultStore
from brainbench.taskspec import get_task
from tests.phantom_cohorts import phantoms  # noqa: F401  (fixture)
from tests.test_protocols import fast, signal_data

N_TEST = 30
IDS = [f"sub-{i:03d}" for i in range(N_TEST)]
AGES = np.linspace(20, 80, N_TEST)


def write(store: ResultStore, *, backbone="m", head="paper", trials=10, config="a",
          seed=0, fraction=0.1, error=1.0, hyper=None) -> Cell:
    """A real brain_age cell: predictions off by +-`error` years, MAE computed from them."""
    pred = AGES + error * np.where(np.arange(N_TEST) % 2, 1.0, -1.0)
    hyperparameters = hyper if hyper is not None else (
        {"lr": 1e-3, "study": "s", "trials": trials} if trials else {"alpha": 1.0})
    cell = Cell(backbone=backbone, weights_id="pretrained:abcdef1234567890",
                weights_status="pretrained", weights_sha256="f" * 64, task="brain_age",
                dataset=get_task("brain_age").dataset, data_source="phantom:test",
                profile="tiny", head=head, fraction=fraction, seed=seed, n_train=20,
                n_test=N_TEST, hyperparameters=hyperparameters, selection="optuna TPE",
                code_version="0.1.0+gtest", config_hash=config.ljust(64, "0"),
                split_hash="s" * 64, subset_hash=f"u{seed}".ljust(64, "0"), cache_key="k" * 64)
    store.write_cell(cell, compute_metrics("regression", AGES, pred),
                     list(zip(IDS, AGES.tolist(), pred.tolist())))
    return cell


@pytest.fixture()
def two_budgets(tmp_path):
    """The same backbone / task / fraction / seeds with a 10- and a 30-trial search."""
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for seed in (0, 1):
        write(store, trials=10, config="a", seed=seed, error=2.0 + seed)  # MAE 2, 3
        write(store, trials=30, config="b", seed=seed, error=6.0 + seed)  # MAE 6, 7
    return store


def test_protocol_label_carries_the_budget():
    assert protocol_label("paper", {"trials": 10}) == "paper[10 trials]"
    assert protocol_label("attention", '{"trials": 1, "lr": 0.1}') == "attention[1 trial]"
    assert protocol_label("linear", {"C": 1.0}) == "linear"
    assert protocol_label("knn", "{}") == "knn"
    assert protocol_label("paper", {}) == "paper[? trials]"  # searched, budget unknown


def test_comparison_table_labels_budgets_and_never_pools_them(two_budgets):
    table = comparison_table(two_budgets.frame(), [get_task("brain_age")])
    assert "{paper[10 trials]}" in table and "{paper[30 trials]}" in table
    assert "2.500 ± 0.707 (k=2)" in table and "6.500 ± 0.707 (k=2)" in table
    assert "4.500" not in table  # the pooled mean of both budgets


def test_analysis_entries_stats_table_curves_and_site_separate_budgets(two_budgets, tmp_path):
    analysis = load_analysis(two_budgets, n_boot=50)
    labels = sorted(e.label for e in analysis.entries)
    assert labels == ["m {paper[10 trials]}", "m {paper[30 trials]}"]
    by_label = {e.label: e for e in analysis.entries}
    assert analysis.summary(by_label["m {paper[10 trials]}"], "brain_age", 0.1).mean == 2.5
    assert analysis.summary(by_label["m {paper[30 trials]}"], "brain_age", 0.1).mean == 6.5
    assert analysis.seeds(by_label["m {paper[30 trials]}"], "brain_age", 0.1) == [0, 1]

    text = stats_table(analysis, 0.1, "markdown")
    assert "m {paper[10 trials]}" in text and "m {paper[30 trials]}" in text
    svg = write_curves(analysis, tmp_path / "fig")[1].read_text()
    assert "paper[10 trials]" in svg and "paper[30 trials]" in svg
    page = build_site(analysis, tmp_path / "site").read_text()
    assert "m {paper[10 trials]}" in page and "m {paper[30 trials]}" in page
    record = next(r for k, r in analysis.cells.items() if "30" in k[0].label)
    assert "PROTOCOL=paper TRIALS=30" in reproduce_command(record)

    # a backbone name alone is ambiguous as the reference; the full label is not
    with pytest.raises(BenchError, match="matches 2 results"):
        load_analysis(two_budgets, reference="m", n_boot=20)
    chosen = load_analysis(two_budgets, reference="m {paper[30 trials]}", n_boot=20)
    assert chosen.reference.label == "m {paper[30 trials]}"
    only = load_analysis(two_budgets, protocol="paper[10 trials]", n_boot=20)
    assert [e.label for e in only.entries] == ["m"] and only.entries[0].protocol == \
        "paper[10 trials]"
    with pytest.raises(BenchError, match=r"stored: paper\[10 trials\], paper\[30 trials\]"):
        load_analysis(two_budgets, protocol="attention", n_boot=20)


def test_cli_selects_a_budget(two_budgets, tmp_path, capsys):
    from brainbench.cli import main

    assert main(["table", "--db", two_budgets.url, "--protocol", "paper[30 trials]",
                 "--bootstrap", "20", "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "Probe protocol: paper[30 trials]." in out and "6.500" in out and "2.500" not in out
    assert main(["table", "--db", two_budgets.url, "--reference", "m", "--bootstrap", "20",
                 "--out", str(tmp_path / "rep")]) == 2
    assert "pass one of these labels" in capsys.readouterr().err
    assert main(["results", "--db", two_budgets.url]) == 0
    assert "{paper[30 trials]}" in capsys.readouterr().out


def test_one_budget_keeps_plain_names_and_says_which_protocol(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for backbone, error in (("m", 2.0), ("n", 4.0)):
        write(store, backbone=backbone, trials=10, error=error)
    analysis = load_analysis(store, n_boot=20)
    assert [e.label for e in analysis.entries] == ["m", "n"]
    assert "paper[10 trials]" in stats_table(analysis, 0.1, "markdown")
    assert "paper[10 trials]" in build_site(analysis, tmp_path / "site").read_text()
    table = comparison_table(store.frame(), [get_task("brain_age")])
    assert "{paper[10 trials]}" in table  # a searched protocol always shows its budget


def test_protocols_are_separate_entries_not_pooled(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    write(store, head="linear", trials=None, config="l", error=2.0)
    write(store, head="paper", trials=20, config="p", error=8.0)
    analysis = load_analysis(store, n_boot=20)
    means = {e.label: analysis.summary(e, "brain_age", 0.1).mean for e in analysis.entries}
    assert means == {"m {linear}": 2.0, "m {paper[20 trials]}": 8.0}


def test_budget_is_recovered_from_old_rows(tmp_path):
    """Old stores: fallback rows carry no `trials`; a sibling cell of the same config hash
    does. Rows whose budget is unknowable still never pool across config hashes."""
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    write(store, trials=10, config="a", seed=0, error=2.0)
    write(store, config="a", seed=1, error=3.0, hyper={"lr": 1e-4})  # fallback, old style
    write(store, config="x", seed=0, error=5.0, hyper={"lr": 1e-4}, fraction=0.5)
    write(store, config="y", seed=0, error=7.0, hyper={"lr": 1e-4}, fraction=0.5)
    frame = store.frame()
    labels = dict(zip(zip(frame["config_hash"].str[0], frame["seed"]), protocol_labels(frame)))
    assert labels[("a", 0)] == labels[("a", 1)] == "paper[10 trials]"
    assert labels[("x", 0)] != labels[("y", 0)] and "?" in labels[("x", 0)]
    table = comparison_table(frame, [get_task("brain_age")])
    assert "2.500 ± 0.707 (k=2)" in table and "6.000" not in table
    analysis = load_analysis(store, fractions=[0.1], n_boot=20)
    fallback = next(r for k, r in analysis.cells.items() if k[3] == 1)
    assert "PROTOCOL=paper TRIALS=10" in reproduce_command(fallback)


def test_exported_results_keep_their_budget(two_budgets, tmp_path):
    """Versioned results files carry the row's hyperparameters: budgets survive the trip."""
    from brainbench.results_io import export_results, import_results

    fresh = ResultStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    for path in export_results(two_budgets, tmp_path / "export"):
        import_results(fresh, path)
    assert sorted(set(protocol_labels(fresh.frame()))) == ["paper[10 trials]",
                                                           "paper[30 trials]"]


# --------------------------------------------------------------------------- --force


def test_force_starts_a_fresh_search_and_plain_rerun_resumes(tmp_path, monkeypatch):
    import brainbench.search as search

    fits = []
    real = search.make_head
    monkeypatch.setattr(search, "make_head", lambda *a, **k: fits.append(1) or real(*a, **k))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    X, y = signal_data(60, seed=2)

    def run(trials, fresh=False):
        fits.clear()
        fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=trials,
                     storage_url=url, study_name="brainbench-cell", fresh=fresh)
        study = optuna.load_study(study_name="brainbench-cell", storage=url)
        return len(fits) - 1, [t.datetime_start for t in study.trials]  # minus the refit

    calls, first = run(2)
    assert calls == 2 and len(first) == 2
    calls, resumed = run(3)  # an interrupted run (2 of 3 done) resumes: one more trial
    assert calls == 1 and resumed[:2] == first and len(resumed) == 3
    calls, same = run(3)  # nothing missing: no trial runs
    assert calls == 0 and same == resumed
    calls, forced = run(3, fresh=True)  # --force: the old study is gone, 3 new trials ran
    assert calls == 3 and len(forced) == 3 and min(forced) > max(resumed)


def test_force_without_a_stored_study_and_fallback_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ResultStore(url)
    X, y = signal_data(40, seed=1)
    fitted = fit_protocol(fast("paper"), "classification", X, y, seed=0, trials=1,
                          storage_url=url, study_name="never-seen", fresh=True)
    assert fitted.info.hyperparameters["trials"] == 1
    tiny = fit_protocol(fast("paper"), "classification", X[:6], np.array(
        ["pos", "neg"] * 3), seed=0, trials=7)
    assert tiny.info.selection.startswith("fallback") and tiny.info.hyperparameters["trials"] == 7


def test_runner_force_searches_again_and_plain_rerun_skips(phantoms, tmp_path,  # noqa: F811
                                                          monkeypatch):
    """The runner on a phantom BIDS cohort (features replaced by fixed vectors, so nothing is
    extracted): a plain rerun leaves the cell and its study alone, FORCE=1 searches anew."""
    import zlib

    from brainbench import runner
    from brainbench.backbone import BACKBONES, register_backbone
    from brainbench.evaluators import probe as probe_evaluator
    from brainbench.features import ExtractionStats
    from brainbench.profiles import PROFILES
    from brainbench.runner import RunConfig, run
    from tests.helpers import TinyBackbone
    from tests.phantom_cohorts import copy_dataset

    if "tiny-budget-test" not in BACKBONES:
        register_backbone("tiny-budget-test")(lambda **_: TinyBackbone())
    monkeypatch.setattr(probe_evaluator, "sample_inputs", lambda backbone, samples, *a, **k: (
        {s.id: np.random.default_rng(zlib.crc32(s.id.encode())).standard_normal(8)
         .astype(np.float32) for s in samples}, ExtractionStats()))
    copy_dataset(phantoms, "bids", tmp_path / "data")
    config = RunConfig(model="tiny-budget-test", fractions=(1.0,), seeds=(0,),
                       profile=PROFILES.get("tiny"), cache_dir=tmp_path / "cache",
                       results_dir=tmp_path / "results", data_dir=tmp_path / "data",
                       datasets=("bids",), progress=False, protocol="paper", trials=2)
    url = ResultStore(runner.default_url(config.results_dir)).url

    def trials_of(report):
        [cell] = report.cells
        study = optuna.load_study(study_name=f"brainbench-{cell.cell_id}", storage=url)
        return cell.computed, [t.datetime_start for t in study.trials]

    computed, first = trials_of(run(config))
    assert computed and len(first) == 2
    row = ResultStore(url).frame(metric="mae").iloc[0]
    assert protocol_label(row["head"], row["hyperparameters"]) == "paper[2 trials]"
    computed, again = trials_of(run(config))  # stored: skipped, the study untouched
    assert not computed and again == first
    computed, forced = trials_of(run(RunConfig(**{**config.__dict__, "force": True})))
    assert computed and len(forced) == 2 and min(forced) > max(first)
