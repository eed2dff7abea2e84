"""Every phantom task leaves room to rank encoders (issue #16): its label is learnable from the
ground truth that generated the images (cross-validated over every person, against shuffled
labels), so no task is impossible; and hand-crafted intensity statistics (the `intensity`
control, run through the real pipeline at fraction 1) stay clearly short of a perfect score,
so no task is trivial. 60 phantom people per dataset, generated once per machine (pytest's
cache) like tests/phantom_cohorts.py. A change to the phantom generator or a task card that
makes a task trivial or unlearnable fails here.
"""

from __future__ import annotations

import pytest

from brainbench.leaderboard.analysis import load_analysis
from brainbench.phantoms import DATASETS, PHANTOM_VERSION, generate_phantoms
from brainbench.phantoms.oracle import oracle_report
from brainbench.profiles import Profile
from brainbench.runner import RunConfig, run
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import all_tasks

N = 60
ROOM = Profile("room", "tests: 60 phantom people per dataset, 4 slices at 32 px",
               slice_size=32, num_slices=4, batch_size=16, phantom_subjects=N)
PROBE_TASKS = tuple(t.id for t in all_tasks() if t.kind != "segmentation" and t.status == "ready")
SEEDS = (0, 1, 2)
#: how far from a perfect score intensity statistics must stay (AUC and C), and the share of
#: the chance MAE they must keep (regression): closer than this counts as trivial
CEILING_MARGIN = 0.01
TRIVIAL_MAE_SHARE = 0.25


#: learnable: the truth's cross-validated AUC / C above shuffled labels by this much, its MAE
#: below this share of the best constant's
LEARNABLE_MARGIN = 0.12
LEARNABLE_MAE_SHARE = 0.7


@pytest.fixture(scope="module")
def cohort(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    base = (cache.mkdir("brainbench-phantoms") if cache is not None
            else tmp_path_factory.mktemp("phantoms"))
    return generate_phantoms(base / f"v{PHANTOM_VERSION}-seed0-room{N}",
                             {d: N for d in DATASETS}, seed=0, workers=2, progress=False)


@pytest.fixture(scope="module")
def analysis(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("room")
    run(RunConfig(model="intensity", fractions=(1.0,), seeds=SEEDS, profile=ROOM,
                  data_dir=cohort, cache_dir=root / "cache", results_dir=root / "results",
                  tasks=PROBE_TASKS, progress=False))
    return load_analysis(ResultStore(default_url(root / "results")))


def test_every_task_is_learnable_from_its_ground_truth(cohort):
    rows = oracle_report(cohort)
    assert {r.dataset for r in rows} >= {"adni", "abide1", "ixi", "atlas2", "ucsf_pdgm",
                                         "upenn_gbm"}
    for r in rows:
        if r.metric == "MAE":
            assert r.oracle < LEARNABLE_MAE_SHARE * r.chance, r
        else:
            assert r.oracle > r.shuffled + LEARNABLE_MARGIN, r


def _entry(analysis, backbone):
    return next(e for e in analysis.entries if e.backbone == backbone)


@pytest.mark.parametrize("task", PROBE_TASKS)
def test_intensity_statistics_do_not_solve_the_task(analysis, task):
    intensity = analysis.summary(_entry(analysis, "intensity"), task, 1.0)
    assert intensity is not None
    if analysis.direction(task) == "higher":
        assert intensity.mean <= 1.0 - CEILING_MARGIN, (task, intensity)
    else:
        chance = analysis.chance(task, 1.0)
        assert intensity.mean >= TRIVIAL_MAE_SHARE * chance.mean, (task, intensity, chance)
