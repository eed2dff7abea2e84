"""Splits and label fractions: pure, grouped, stratified, nested, recorded and verified."""

import json
from pathlib import Path

import pytest

from brainbench.errors import BenchError
from brainbench.splits import fraction_subset, make_split, record_split
from brainbench.taskspec import Sample
from tests.phantom_cohorts import phantoms  # noqa: F401  (fixture)


def cohort(n_people=100, visits_every=5, classes=("A", "B", "C"), sites=("s1", "s2")):
    samples = []
    for i in range(n_people):
        label = classes[i % len(classes)]
        site = sites[(i // 3) % len(sites)]
        n_visits = 2 if i % visits_every == 0 else 1
        for v in range(n_visits):
            samples.append(Sample(id=f"p{i:03d}_v{v}", group=f"p{i:03d}", images=(),
                                  target=label, split_stratum=f"{label}|{site}",
                                  fraction_stratum=label))
    return samples


def test_split_is_pure_function_of_ids_and_salt():
    samples = cohort()
    a = make_split("t", "d", samples, "salt", 0.2)
    b = make_split("t", "d", list(reversed(samples)), "salt", 0.2)
    c = make_split("t", "d", samples, "other-salt", 0.2)
    assert a.hash == b.hash and a.test_groups == b.test_groups
    assert a.hash != c.hash


def test_split_groups_people_and_hits_the_test_fraction():
    samples = cohort()
    split = make_split("t", "d", samples, "salt", 0.2)
    assert not set(split.train_groups) & set(split.test_groups)
    assert len(split.test_groups) == 20  # 20% of 100 people, not of 120 scans
    # every visit of a person lands on the same side
    test = set(split.test_groups)
    sides = {}
    for s in samples:
        sides.setdefault(s.group, set()).add(s.group in test)
    assert all(len(v) == 1 for v in sides.values())


def test_split_is_stratified():
    samples = cohort()
    split = make_split("t", "d", samples, "salt", 0.2)
    test = set(split.test_groups)
    by_class = {}
    for s in samples:
        if s.id.endswith("_v0"):
            by_class.setdefault(s.target, []).append(s.group in test)
    for flags in by_class.values():
        assert abs(sum(flags) / len(flags) - 0.2) < 0.05


def test_adding_a_person_moves_nobody_else_across_the_split():
    samples = cohort(99)
    grown = cohort(100)
    a = make_split("t", "d", samples, "salt", 0.2)
    b = make_split("t", "d", grown, "salt", 0.2)
    moved = set(a.test_groups) ^ (set(b.test_groups) - {"p099"})
    assert len(moved) <= 2  # only quota rounding at the margin can move someone


def test_fractions_are_nested_stratified_and_keep_every_class():
    samples = cohort()
    split = make_split("t", "d", samples, "salt", 0.2)
    fractions = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    for seed in range(5):
        subsets = [set(fraction_subset(split, samples, f, seed)) for f in fractions]
        for small, big in zip(subsets, subsets[1:]):
            assert small <= big
        assert subsets[-1] == set(split.train_groups)
        labels = {s.target for s in samples if s.group in subsets[0]}
        assert labels == {"A", "B", "C"}  # at least one per class even at 1%
        assert not subsets[-1] & set(split.test_groups)
    a = fraction_subset(split, samples, 0.1, 0)
    assert a == fraction_subset(split, samples, 0.1, 0)
    assert a != fraction_subset(split, samples, 0.1, 1)


def test_too_small_cohort_is_a_clear_error():
    samples = cohort(4, classes=("A", "B", "C", "D"))
    with pytest.raises(BenchError, match="too small"):
        make_split("t", "d", samples, "salt", 0.2)


def test_manifest_written_then_verified(tmp_path: Path):
    samples = cohort()
    split = make_split("t", "d", samples, "salt", 0.2)
    manifest = tmp_path / "splits" / "t.json"
    record_split(split, manifest)
    stored = json.loads(manifest.read_text())
    assert stored["hash"] == split.hash and len(stored["test"]) == 20
    record_split(split, manifest)  # unchanged cohort: fine
    changed = make_split("t", "d", cohort(120), "salt", 0.2)
    with pytest.raises(BenchError, match="differs from its manifest"):
        record_split(changed, manifest)
    assert json.loads(manifest.read_text())["hash"] == split.hash


def test_small_cohort_with_many_sites_still_tests_every_label():
    samples = cohort(12, classes=("ASD", "TC"), sites=("a", "b", "c", "d"))
    for salt in ("x", "y", "z", "w"):
        split = make_split("t", "d", samples, salt, 0.2)
        test = set(split.test_groups)
        assert {s.target for s in samples if s.group in test} == {"ASD", "TC"}
        assert {s.target for s in samples if s.group not in test} == {"ASD", "TC"}


def test_a_class_too_rare_to_split_is_named_with_its_counts_per_side():
    samples = cohort(n_people=30, classes=("A", "B"))
    samples.append(Sample(id="rare_v0", group="rare", images=(), target="C",
                          split_stratum="C|s1", fraction_stratum="C"))
    with pytest.raises(BenchError) as err:
        make_split("t", "d", samples, "salt", 0.2)
    message = str(err.value)
    assert "people per label stratum" in message
    # the lone C person is on one side only; both sides are listed with every stratum
    assert ("train: A 12, B 12, C 1; test: A 3, B 3, C 0" in message
            or "train: A 12, B 12, C 0; test: A 3, B 3, C 1" in message), message


def test_label_floor_holds_at_the_smallest_fraction():
    samples = cohort(n_people=200, classes=("A", "B"))
    split = make_split("t", "d", samples, "salt", 0.2)
    one = fraction_subset(split, samples, 0.01, seed=0)
    floored = fraction_subset(split, samples, 0.01, seed=0, min_per_stratum=5)
    labels = {s.group: s.fraction_stratum for s in samples}
    assert sorted(labels[g] for g in one) == ["A", "B"]  # 1% of 80 per class -> 1 each
    assert sorted(labels[g] for g in floored) == ["A"] * 5 + ["B"] * 5
    assert set(one) <= set(floored)  # the floor extends, never reshuffles, the subset


def test_a_profile_sizes_the_phantom_test_split_but_never_a_real_one(phantoms):  # noqa: F811
    from dataclasses import replace

    from brainbench.pipeline import prepare_task
    from brainbench.profiles import PROFILES
    from brainbench.taskspec import get_task

    task, powered = get_task("brain_age"), PROFILES.get("powered")
    assert powered.phantom_test_fraction == 0.5
    on_phantoms = task.for_profile(powered, "phantom:v1.1-seed0-n400")
    assert on_phantoms.test_fraction == 0.5
    assert task.for_profile(powered, "real:/data/IXI") is task  # real splits stay fixed
    assert task.for_profile(PROFILES.get("cpu"), "phantom:x") is task
    assert on_phantoms.manifest_name == "brain_age.test0.5.json" != task.manifest_name

    halved = prepare_task(replace(task, test_fraction=0.5), phantoms, "phantom:t").split
    standard = prepare_task(task, phantoms, "phantom:t").split
    people = len(halved.train_groups) + len(halved.test_groups)
    assert abs(len(halved.test_groups) - people / 2) <= 2  # per-stratum rounding
    assert len(standard.test_groups) < len(halved.test_groups)
    assert halved.hash != standard.hash


def test_the_powered_profile_runs_20_seeds_without_changing_cell_identities(tmp_path):
    """More seeds narrow the seed part of the two-level bootstrap at 1%; the count is the
    profile's, an explicit --seeds wins, and no cell's configuration hash depends on it."""
    from dataclasses import replace

    from brainbench.profiles import PROFILES
    from brainbench.runconfig import RunConfig
    from brainbench.taskspec import get_task

    powered, cpu = PROFILES.get("powered"), PROFILES.get("cpu")
    task = get_task("idh_status")
    config = RunConfig(model="random", fractions=(0.01,), profile=powered,
                       cache_dir=tmp_path, results_dir=tmp_path)
    assert config.seeds_for(task) == tuple(range(20))
    assert replace(config, seeds=(3, 4)).seeds_for(task) == (3, 4)
    assert replace(config, profile=cpu).seeds_for(task) == task.seeds == (0, 1, 2, 3, 4)
    assert "seeds" not in powered.as_dict()
    assert replace(powered, seeds=None).as_dict() == powered.as_dict()


def test_a_profile_can_size_one_phantom_dataset_larger(tmp_path):
    """Power by design per task: the powered profile gives idh_status's UCSF-PDGM and
    stroke_time's ATLAS more people.
    The size is in the cohort's folder and data_source (so in every cell's identity), the
    cohort holds it, and imports still find the folder from a cell's data_source."""
    from dataclasses import replace

    from brainbench.phantoms import PHANTOM_VERSION
    from brainbench.profiles import PROFILES
    from brainbench.results_io import _PHANTOM_SOURCE
    from brainbench.runconfig import RunConfig
    from brainbench.runner import prepare_data

    powered = PROFILES.get("powered")
    assert powered.phantom_people(["ixi", "atlas2", "ucsf_pdgm"]) == {
        "ixi": 400, "atlas2": 2000, "ucsf_pdgm": 1000}
    assert powered.phantom_tag() == f"v{PHANTOM_VERSION}-seed0-n400-atlas2_n2000-ucsf_pdgm_n1000"
    assert PROFILES.get("cpu").phantom_tag() == f"v{PHANTOM_VERSION}-seed0-n80"  # unchanged
    assert replace(powered, phantom_sizes=()).as_dict() == powered.as_dict()

    tiny = replace(PROFILES.get("tiny"), phantom_subjects=12, phantom_sizes=(("ixi", 20),))
    config = RunConfig(model="random", fractions=(0.5,), profile=tiny, cache_dir=tmp_path,
                       results_dir=tmp_path, progress=False)
    roots, source = prepare_data(config, {"ixi", "atlas2"})
    assert source == f"phantom:v{PHANTOM_VERSION}-seed0-n12-ixi_n20"
    assert roots["ixi"].name == source.removeprefix("phantom:")
    sizes = json.loads((roots["ixi"] / "_phantom.json").read_text())["sizes"]
    assert sizes == {"atlas2": 12, "ixi": 20}
    assert _PHANTOM_SOURCE.fullmatch(source).group(1) == roots["ixi"].name


def test_rewording_a_profile_orphans_no_stored_cell():
    """A profile's description is display text: rewording it leaves every cell's
    configuration hash as it was; what changes the inputs (slice size) changes the hash."""
    from dataclasses import replace

    from brainbench.backbone import create_backbone
    from brainbench.evaluators.probe import config_hash_for
    from brainbench.profiles import HASHED_DESCRIPTIONS, PROFILES, Profile
    from brainbench.protocols import get_protocol
    from brainbench.taskspec import get_task

    task, backbone, linear = get_task("brain_age"), create_backbone("intensity"), get_protocol("linear")
    for name in ("cpu", "paper", "powered", "tiny"):
        profile = PROFILES.get(name)
        assert profile.as_dict()["description"] == HASHED_DESCRIPTIONS[name]
        reworded = replace(profile, description="reworded for the README")
        assert config_hash_for(task, backbone, reworded, linear, 10) == \
            config_hash_for(task, backbone, profile, linear, 10)
        assert config_hash_for(task, backbone, replace(profile, slice_size=48), linear, 10) != \
            config_hash_for(task, backbone, profile, linear, 10)
    mine = Profile("mine", "my profile", slice_size=64, num_slices=8, batch_size=8,
                   phantom_subjects=40)
    assert "description" not in mine.as_dict()
    assert replace(mine, description="other words").as_dict() == mine.as_dict()
