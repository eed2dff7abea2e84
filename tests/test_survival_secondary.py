"""Uno's C and the log-rank p get intervals: each survival cell stores the training reference
they need at fit time, and the table recomputes both from the stored test predictions."""

from __future__ import annotations

import numpy as np
import pytest

from brainbench.cli import main
from brainbench.leaderboard.analysis import load_analysis
from brainbench.profiles import PROFILES
from brainbench.runner import RunConfig, run
from brainbench.store import ResultStore, default_url


@pytest.fixture(scope="module")
def survival_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("surv")
    config = RunConfig(model="intensity", fractions=(1.0,), seeds=(0, 1, 2),
                       profile=PROFILES.get("tiny"), cache_dir=root / "cache",
                       results_dir=root / "results", tasks=("survival_cox",), progress=False)
    run(config)
    return root


def test_stored_reference_reproduces_the_stored_secondary_metrics(survival_store):
    store = ResultStore(default_url(survival_store / "results"))
    analysis = load_analysis(store, tasks=["survival_cox"])
    entry = analysis.entries[0]
    frame = store.frame(task="survival_cox")
    for metric in ("c_uno", "logrank_p"):
        stored = frame[frame.metric == metric].sort_values("seed")["value"].to_numpy(float)
        records = analysis.records(entry, "survival_cox", 1.0)
        assert all(r.reference and len(r.reference["train"]) > 0 for r in records)
        from dataclasses import replace

        recomputed = [replace(r.scorer, metric=metric, reference=r.reference).point()
                      for r in records]
        np.testing.assert_allclose(recomputed, stored, rtol=1e-9, equal_nan=True)
        summary = analysis.secondary(entry, "survival_cox", 1.0, metric)
        assert summary is not None and summary.n_seeds == int(np.isfinite(stored).sum())
        assert summary.ci_low <= summary.mean <= summary.ci_high
        assert summary.ci_high - summary.ci_low > 0  # resampling people and seeds moves it


def test_the_table_prints_the_survival_intervals(survival_store, capsys):
    code = main(["table", "--fraction", "1", "--profile", "tiny", "--tasks", "survival_cox",
                 "--results", str(survival_store / "results"),
                 "--out", str(survival_store / "reports")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Survival secondary metrics (Uno's C, log-rank p)" in out
    line = next(l for l in out.splitlines() if l.startswith("| intensity"))
    assert "[" in line
    rows = [l for l in out.splitlines() if "survival_cox c_uno" in l]
    assert rows, out


def test_the_site_task_page_shows_the_survival_intervals(survival_store):
    from brainbench.leaderboard.site import build_site

    store = ResultStore(default_url(survival_store / "results"))
    analysis = load_analysis(store, tasks=["survival_cox"])
    build_site(analysis, survival_store / "site")
    page = (survival_store / "site" / "task-survival_cox.html").read_text()
    summary = analysis.secondary(analysis.entries[0], "survival_cox", 1.0, "c_uno")
    assert "Survival secondary metrics (Uno&#x27;s C, log-rank p)" in page
    assert f"{summary.mean:.3f}<br><span class=\"ci\">[{summary.ci_low:.3f}, " in page


def _sksurv_per_draw(metric, time, event, risk, reference, idx):
    """The reference: sksurv called on every resample, as the first implementation did."""
    import warnings

    from sksurv.compare import compare_survival
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    train = np.asarray(reference["train"], dtype=float)
    y_train = Surv.from_arrays(event=train[:, 1].astype(bool), time=train[:, 0])
    out = np.full(len(idx), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, rows in enumerate(idx):
            y = Surv.from_arrays(event=event[rows], time=time[rows])
            try:
                if metric == "c_uno":
                    out[i] = concordance_index_ipcw(y_train, y, risk[rows],
                                                    tau=reference["tau"])[0]
                else:
                    high = risk[rows] > reference["risk_cut"]
                    if high.any() and not high.all():
                        _, p, _, covariance = compare_survival(y, high, return_stats=True)
                        # sksurv's p of a zero-variance test is round-off (1.0 or an error)
                        out[i] = p if covariance[0, 0] > 1e-9 else np.nan
            except (ValueError, ZeroDivisionError):
                pass
    return out


@pytest.mark.parametrize("metric", ["c_uno", "logrank_p"])
def test_vectorised_secondary_metrics_equal_sksurv_on_every_draw(metric):
    """Uno's C and the log-rank p of the table's replicates are sksurv's, draw by draw:
    tied times and risks, events beyond tau, small draws with one risk group."""
    from brainbench.stats import Scorer, bootstrap_indices, survival_reference

    rng = np.random.default_rng(7)
    n = 40
    time = np.round(rng.exponential(300, n), -1) + 10  # rounded: tied times
    event = rng.random(n) < 0.6
    risk = np.round(rng.normal(size=n) - time / 500, 1)  # rounded: tied risks
    train_time = np.round(rng.exponential(150, 30), -1) + 10  # shorter follow-up
    reference = survival_reference(train_time, rng.random(30) < 0.6, rng.normal(size=30))
    assert (time >= reference["tau"]).any()  # some test times lie beyond the follow-up
    scorer = Scorer("survival", metric, (time, event), risk, reference)
    defined = 0
    for idx in (bootstrap_indices(n, 150, 0, "parity"),
                rng.integers(0, n, size=(60, 4))):  # tiny draws: many undefined
        slow = _sksurv_per_draw(metric, time, event, risk, reference, idx)
        np.testing.assert_allclose(scorer(idx), slow, rtol=1e-9, atol=1e-12, equal_nan=True)
        defined += int(np.isfinite(slow).sum())
    assert np.isnan(slow).any() and defined > 150
