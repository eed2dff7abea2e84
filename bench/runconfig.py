"""What a run is asked to do (`RunConfig`) and what it reports back (`RunReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from brainbench.features import ExtractionStats
from brainbench.profiles import Profile
from brainbench.search import DEFAULT_TRIALS
from brainbench.taskspec import TaskSpec

DEFAULT_PROTOCOL = "linear"  # see brainbench.protocols.PROTOCOLS


@dataclass(frozen=True)
class RunConfig:
    model: str
    fractions: tuple[float, ...]
    profile: Profile
    cache_dir: Path
    results_dir: Path
    tasks: tuple[str, ...] | None = None  # None: every task
    seeds: tuple[int, ...] | None = None  # None: the profile's seeds, else each task's
    weights: Path | None = None
    require_weights: bool = False
    data_dir: Path | None = None  # None: the phantom cohorts (or brainbench.toml / env, see datasets.locations)
    datasets: tuple[str, ...] | None = None  # alternate datasets: "task=dataset" or "dataset"
    db_url: str | None = None
    force: bool = False
    progress: bool = True
    protocol: str = DEFAULT_PROTOCOL
    trials: int = DEFAULT_TRIALS  # optuna budget per cell for searched protocols
    precision: str = "auto"  # auto | fp32 | bf16 (brainbench.precision); resolved per device
    workers: int | None = None  # decode processes; None: from the machine, 0: in-process
    preprocess_on: str = "workers"  # z-score + resize: "workers" (numpy) | "device" (torch)
    device: str = "auto"  # where the encoder runs: auto | cpu | cuda[:N] (brainbench.device)
    compile: str = "auto"  # forward pass: auto | eager | compiled (brainbench.runtime)
    executor: str = "local"  # where cells run: local (this process) | ray (brainbench.executors)
    ray_address: str | None = None  # --executor ray: the cluster (None: RAY_ADDRESS or a local one)
    split: str = ""  # a declared split variant (e.g. "site-held-out"); "": the standard split

    def seeds_for(self, task: TaskSpec) -> tuple[int, ...]:
        return self.seeds or self.profile.seeds or task.seeds


@dataclass
class CellOutcome:
    task: str
    fraction: float
    seed: int
    cell_id: str
    computed: bool


@dataclass
class RunReport:
    backbone: str
    weights_status: str
    weights_source: str
    data_source: str
    store_url: str  # as shown to people (a server URL's password hidden)
    precision: str = "fp32"  # what the backbone ran at (backbone.precision, never "auto")
    runtime: str = "eager"  # how its forward pass executed (brainbench.runtime, never "auto")
    device: str = "cpu"  # where it ran, resolved (brainbench.device.describe: "cuda:0 (NVIDIA H200)")
    precision_fallbacks: list[str] = field(default_factory=list)  # "task@fractions" run in fp32
    cells: list[CellOutcome] = field(default_factory=list)
    pending: list[TaskSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extraction: ExtractionStats = field(default_factory=ExtractionStats)
    unavailable: list[str] = field(default_factory=list)  # tasks whose dataset is not under DATA
    other_split: list[str] = field(default_factory=list)  # tasks without the --split variant

    def note(self, text: str) -> None:
        """Add a note once (tasks sharing a cohort report its notes once)."""
        if text not in self.notes:
            self.notes.append(text)
