"""Run profiles: how big the inputs and phantom cohorts are, sized for the machine at hand."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from brainbench.registry import Registry


@dataclass(frozen=True)
class Profile:
    """slice_size / num_slices override 2d backbones' defaults (None keeps the backbone's own).

    phantom_test_fraction: the share of people each task's fixed split puts in the test set on
    this profile's phantom cohorts (None: the task's own, 0.2). Power comes from test people,
    so the powered profile tests on half of each cohort; real data always keeps the task's
    split. Part of each cell's configuration hash and of its split manifest's name.
    seeds: the training-subset seeds a run uses on this profile (None: each task's five).
    More seeds narrow the seed part of the two-level bootstrap, which dominates the minimum
    detectable difference at 1%, at the cost of probes only (features are per volume). Not part
    of any cell's identity: each cell records its own seed.
    phantom_sizes: (dataset, people) where a phantom dataset differs from phantom_subjects.
    Power by design: the task whose metric varies most between test people gets more of them.
    Named in the cohort's folder and so in every cell's data_source (hence not in as_dict).
    """

    name: str
    description: str
    slice_size: int | None
    num_slices: int | None
    batch_size: int
    phantom_subjects: int  # people per phantom dataset
    phantom_seed: int = 0
    phantom_test_fraction: float | None = None
    seeds: tuple[int, ...] | None = None
    phantom_sizes: tuple[tuple[str, int], ...] = ()

    def phantom_people(self, datasets) -> dict[str, int]:
        """People per phantom dataset, for the datasets named."""
        sizes = dict(self.phantom_sizes)
        return {d: sizes.get(d, self.phantom_subjects) for d in datasets}

    def phantom_tag(self) -> str:
        """The phantom cohort's folder name and data_source label (phantom:<tag>)."""
        from brainbench.phantoms import PHANTOM_VERSION

        larger = "".join(f"-{d}_n{n}" for d, n in sorted(self.phantom_sizes))
        return f"v{PHANTOM_VERSION}-seed{self.phantom_seed}-n{self.phantom_subjects}{larger}"

    def as_dict(self) -> dict:
        """The profile as it enters cells' configuration hashes; a profile without a phantom
        test share hashes as before that field existed, so stored cells keep their identity.

        The description is display text: rewording it must not orphan stored cells. The first
        releases hashed it, so the built-in profiles hash the text their stored cells were
        computed with (`HASHED_DESCRIPTIONS`); any other profile hashes none."""
        fields = asdict(self)
        del fields["seeds"]  # a cell's seed is its own field; the count changes no cell
        del fields["phantom_sizes"]  # in the data_source
        if fields["phantom_test_fraction"] is None:
            del fields["phantom_test_fraction"]
        if self.name in HASHED_DESCRIPTIONS:
            fields["description"] = HASHED_DESCRIPTIONS[self.name]
        else:
            del fields["description"]
        return fields


#: The descriptions the built-in profiles' stored cells were hashed with (frozen: edit a
#: profile's ``description`` freely, never these).
HASHED_DESCRIPTIONS = {
    "cpu": "default; sized for a 2-core CPU: 16 axial slices at 112x112 per volume",
    "paper": "the BrainDINO reference protocol: 128 slices at 224x224 (needs a GPU)",
    "powered": "statistical power by design: 400 phantom people per dataset (1,000 for "
               "idh_status's UCSF-PDGM and 2,000 for stroke_time's ATLAS, whose metrics vary "
               "most between test people), half of them test people, 20 training-subset "
               "seeds, 8 axial slices at 64x64 so that a random-init ViT encodes them on a CPU",
    "tiny": "smoke tests: 4 slices at 32x32, tiny cohorts; numbers mean nothing",
}


PROFILES: Registry[Profile] = Registry("profile")

for _profile in (
    Profile("cpu", "default; sized for a 2-core CPU: 16 axial slices at 112x112 per volume",
            slice_size=112, num_slices=16, batch_size=16, phantom_subjects=80),
    Profile("paper", "the BrainDINO reference protocol: 128 slices at 224x224 (for a GPU, "
            "which DEVICE=auto uses; on a 2-core CPU the nine endpoints at 1% take ~2 h with AMX, "
            "3-4 h with AVX-512 BF16 (Zen 5), ~6 h on a Zen 4, ~8 h (estimated) in fp32 on an "
            "AVX-512 Xeon without bf16)",
            slice_size=224, num_slices=128, batch_size=64, phantom_subjects=200),
    Profile("powered", "statistical power by design: 400 phantom people per dataset (1,000 for "
            "idh_status's UCSF-PDGM and 2,000 for stroke_time's ATLAS, whose metrics vary most "
            "between test people), half of them test people, 20 training-subset seeds, 8 "
            "axial slices at 64x64 so that a random-init ViT encodes them on a CPU",
            slice_size=64,
            num_slices=8, batch_size=32, phantom_subjects=400, phantom_test_fraction=0.5,
            seeds=tuple(range(20)),
            phantom_sizes=(("atlas2", 2000), ("ucsf_pdgm", 1000))),
    Profile("tiny", "smoke tests: 4 slices at 32x32, tiny cohorts; numbers mean nothing",
            slice_size=32, num_slices=4, batch_size=16, phantom_subjects=24),
):
    PROFILES.register(_profile.name, _profile)
