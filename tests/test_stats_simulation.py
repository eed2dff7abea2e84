"""The statistics hold their promises when seeds vary (issue 16): the two-level bootstrap's
95% intervals cover the expected score and the paired test rarely flags two equally good
backbones; the people-only bootstrap (heads held fixed) does not. A CI-sized run of
scripts/stats_simulation.py (full figures in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from brainbench import stats

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stats_simulation.py"


def _simulate():
    spec = importlib.util.spec_from_file_location("stats_simulation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.simulate


def test_two_level_bootstrap_covers_and_controls_false_positives():
    simulate = _simulate()
    coverage, false_positives = simulate(250, tau=0.15)
    assert 0.92 <= coverage <= 0.98
    assert false_positives <= 0.07


def test_people_only_bootstrap_is_overconfident_when_seeds_vary():
    coverage, false_positives = _simulate()(250, tau=0.15, resampling="people")
    assert coverage < 0.90 and false_positives > 0.07


def test_person_bootstrap_draws_whole_people():
    persons = ["a", "a", "a", "b", "c", "c"]
    draw = stats.person_bootstrap(persons, 50, 0, "k")
    for row in draw.rows:
        counts = {p: sum(persons[i] == p for i in row) for p in "abc"}
        assert counts["a"] % 3 == 0 and counts["c"] % 2 == 0  # a person comes with all samples
        assert len(set(row.tolist()) & {0, 1, 2}) in (0, 3)
    assert draw.n_people == 3
    # one sample per person: exactly the sample-level draw of the first release
    single = stats.person_bootstrap(["x", "y", "z"], 20, 0, "k")
    np.testing.assert_array_equal(single.rows, stats.bootstrap_indices(3, 20, 0, "k"))


def test_two_level_resamples_seeds_on_the_same_draw_for_paired_backbones():
    per_seed = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])  # 2 seeds, 3 replicates
    draws = np.array([[0, 0], [1, 1], [0, 1]])
    out = stats.two_level(per_seed, draws)
    spread = np.sqrt(2)  # seed deviations widened by sqrt(k / (k - 1))
    np.testing.assert_allclose(out, [2 - spread, 2 + spread, 2.0])
    np.testing.assert_allclose(stats.two_level(per_seed, None), [2.0, 2.0, 2.0])
