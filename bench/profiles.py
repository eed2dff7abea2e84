"""Run profiles: how big the inputs and phantom cohorts are, sized for the machine at hand."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from brainbench.registry import Registry


@dataclass(frozen=True)
class Profile:
    """slice_size / num_slices override 2d backbones' defaults (None keeps the backbone's own)."""

    name: str
    description: str
    slice_size: int | None
    num_slices: int | None
    batch_size: int
    phantom_subjects: int  # people per phantom dataset
    phantom_seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: Registry[Profile] = Registry("profile")

for _profile in (
    Profile("cpu", "default; sized for a 2-core CPU: 16 axial slices at 112x112 per volume",
            slice_size=112, num_slices=16, batch_size=16, phantom_subjects=80),
    Profile("paper", "the BrainDINO reference protocol: 128 slices at 224x224 (needs a GPU)",
            slice_size=224, num_slices=128, batch_size=64, phantom_subjects=200),
    Profile("powered", "statistical power by design: 400 phantom people per dataset (about 80 "
            "test people per task), 8 axial slices at 64x64 so that a random-init ViT encodes "
            "them on a CPU", slice_size=64, num_slices=8, batch_size=32, phantom_subjects=400),
    Profile("tiny", "smoke tests: 4 slices at 32x32, tiny cohorts; numbers mean nothing",
            slice_size=32, num_slices=4, batch_size=16, phantom_subjects=24),
):
    PROFILES.register(_profile.name, _profile)
