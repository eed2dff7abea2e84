"""From the results store to summaries: intervals, paired tests, label efficiency, ranks.

`load_analysis` reads the result rows and the per-subject test predictions of the selected
backbones and tasks; `Analysis` answers the questions the tables, curves and site ask, caching
bootstrap replicates so each (backbone, task, fraction) is resampled once.

An *entry* is one backbone with one set of weights under one probe protocol (a random-init run
and a pretrained run of the same architecture are two entries, and the random one is always
labelled as such; ``paper[10 trials]`` and ``paper[30 trials]`` of one backbone are two entries,
labelled ``name {paper[10 trials]}`` whenever the selection holds more than one protocol or
budget). Cells of different entries are never pooled.

McNemar (classification tasks, when there is a reference) is supplementary to the paired
bootstrap: per seed, the exact test on the subjects exactly one of the two gets right.
"""

from __future__ import annotations

import functools
import warnings
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from brainbench import stats
from brainbench.errors import BenchError
from brainbench.kinds import get_kind
from brainbench.leaderboard.tables import protocol_labels, recovered_budgets
from brainbench.metrics import METRIC_RANGE, PRIMARY_METRIC_DIRECTION
from brainbench.results_io import unverified_fields
from brainbench.store import ResultStore
from brainbench.taskspec import TaskSpec, get_task

LEVEL = 0.95
ALPHA = 0.05
RANDOM_SUFFIX = " [random-init]"
CONTROL_SUFFIX = " [control]"
UNVERIFIED_SUFFIX = " [unverified]"
#: label permutations per seed behind a table's chance row
CHANCE_PERMUTATIONS = 200


@dataclass(frozen=True)
class Entry:
    backbone: str
    weights_id: str
    weights_status: str
    label: str
    protocol: str = ""  # protocol label, e.g. "linear" or "paper[20 trials]"
    #: provenance fields an import could not verify, over the entry's cells (empty: every
    #: cell was computed here or fully verified; see brainbench.results_io)
    unverified: tuple[str, ...] = ()
    #: the feature precision, when this backbone's cells of one task and fraction were stored
    #: in both (bf16 and fp32 cells are never pooled: an entry each); "" otherwise
    precision: str = ""

    @property
    def is_random(self) -> bool:
        return self.weights_status == "random-init"

    @property
    def is_control(self) -> bool:
        """A control (hand-crafted features, ground truth): a reference point, not a model."""
        return self.weights_status == "control"

    @property
    def is_reference_point(self) -> bool:
        """Random-init or control: shown on every table, never the default reference."""
        return self.is_random or self.is_control

    @property
    def is_unverified(self) -> bool:
        return bool(self.unverified)

    @property
    def display(self) -> str:
        return (self.label + (RANDOM_SUFFIX if self.is_random else "")
                + (CONTROL_SUFFIX if self.is_control else "")
                + (UNVERIFIED_SUFFIX if self.is_unverified else ""))


@dataclass(frozen=True)
class CellRecord:
    """One stored cell: its primary metric value, provenance and test predictions."""

    entry: Entry
    task: str
    fraction: float
    seed: int
    value: float
    provenance: dict[str, Any]
    sample_ids: tuple[str, ...]
    scorer: stats.Scorer | None  # None: the metric cannot be recomputed from predictions
    persons: tuple[str, ...] = ()  # person of each sample (stores before schema 3: the sample)
    #: what secondary metrics need from the training subset (stored at fit time; None: none)
    reference: dict[str, Any] | None = None


@dataclass(frozen=True)
class Summary:
    mean: float
    sd: float
    n_seeds: int
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    test: stats.PairedTest
    p_holm: float
    verdict: str  # "win", "loss", "ns" (not significant), "ref"


@dataclass(frozen=True)
class Efficiency:
    fractions: tuple[float, ...]
    nauc: float
    nauc_ci: tuple[float, float]
    f95: float
    f95_ci: tuple[float, float]


@dataclass(frozen=True)
class McNemarComparison:
    """An entry vs the reference on one classification task; ``only_a`` = only the entry."""

    summary: stats.McNemarSummary
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class RankSummary:
    mean_rank: float
    ci: tuple[float, float]
    n_tasks: int


@dataclass(frozen=True)
class SubmittedFile:
    """The card or Python file a submission bundle keeps (leaderboard/submissions/<name>/):
    a backbone that is not built in is recomputed from it (`make bench MODEL=<path>`), and
    only for the weights the bundle was run with."""

    path: str
    weights_sha256: str


@dataclass
class Analysis:
    entries: list[Entry]
    tasks: list[TaskSpec]
    cells: dict[tuple[Entry, str, float, int], CellRecord]
    reference: Entry | None
    n_boot: int = 1000
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    resampling: str = stats.DEFAULT_RESAMPLING  # see brainbench.stats.RESAMPLING
    flags: dict[str, list[str]] = field(default_factory=dict)  # backbone -> submission flags
    #: backbone -> the file its submission bundle keeps (brainbench.leaderboard.site)
    submitted: dict[str, SubmittedFile] = field(default_factory=dict)
    #: backbone -> its declared pretraining data (brainbench.analyses.contamination.lookup)
    pretraining: dict[str, Any] = field(default_factory=dict)
    #: the same selection on the site-held-out split (brainbench.leaderboard.robustness)
    unseen_sites: "Analysis | None" = None
    _reps: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ contamination

    def is_contaminated(self, entry: Entry, task: str) -> bool:
        """Whether the entry's pretrained weights declare the task's evaluation dataset (never
        for random-init or control entries: they saw nothing)."""
        from brainbench.analyses.contamination import contaminated

        if entry.is_reference_point:
            return False
        datasets = {str(c.provenance.get("dataset")) for k, c in self.cells.items()
                    if k[0] == entry and k[1] == task}
        return any(contaminated(self.pretraining, entry.backbone, d) for d in datasets)

    def hide_contaminated(self) -> int:
        """Drop every contaminated cell (--hide-contaminated); returns how many were dropped."""
        from brainbench.analyses.contamination import HIDDEN_NOTE

        drop = [k for k in self.cells if self.is_contaminated(k[0], k[1])]
        for key in drop:
            del self.cells[key]
        self._reps.clear()
        if drop:
            self._note(HIDDEN_NOTE.format(n=len(drop)))
        return len(drop)

    def contamination_notes(self) -> list[str]:
        """The footnotes contamination needs: the mark's meaning, undeclared pretraining."""
        from brainbench.analyses.contamination import CONTAMINATED_NOTE, unknown_note

        notes = []
        if any(self.is_contaminated(e, t.id) for e in self.entries for t in self.tasks):
            notes.append(CONTAMINATED_NOTE)
        unknown = unknown_note(self.pretraining, [e.backbone for e in self.entries
                                                  if not e.is_reference_point])
        return notes + ([unknown] if unknown else [])

    # ------------------------------------------------------------------ lookups

    def metric(self, task: str) -> str:
        return get_task(task).primary_metric

    def direction(self, task: str) -> str:
        return PRIMARY_METRIC_DIRECTION.get(self.metric(task), "higher")

    @property
    def protocols(self) -> list[str]:
        """The protocol labels of the selected results (one per entry, deduplicated)."""
        return sorted({e.protocol for e in self.entries if e.protocol})

    def fractions(self, task: str | None = None, entry: Entry | None = None) -> list[float]:
        return sorted({k[2] for k in self.cells if (task is None or k[1] == task)
                       and (entry is None or k[0] == entry)})

    def seeds(self, entry: Entry, task: str, fraction: float) -> list[int]:
        return sorted(k[3] for k in self.cells if k[:3] == (entry, task, fraction))

    def records(self, entry: Entry, task: str, fraction: float) -> list[CellRecord]:
        return [self.cells[(entry, task, fraction, s)] for s in self.seeds(entry, task, fraction)]

    def has(self, entry: Entry, task: str, fraction: float) -> bool:
        return bool(self.seeds(entry, task, fraction))

    # ------------------------------------------------------------------ bootstrap

    def _resample(self, task: str, record: CellRecord) -> stats.PersonResample:
        key = f"{task}|{'|'.join(record.sample_ids)}"
        return _cached_resample(record.persons or record.sample_ids, self.n_boot, self.seed, key)

    def people(self, entry: Entry, task: str, fraction: float) -> int:
        """Test people of a cell (each resampled with all of their samples)."""
        recs = self.records(entry, task, fraction)
        return len(set(recs[0].persons or recs[0].sample_ids)) if recs else 0

    def replicates(self, entry: Entry, task: str, fraction: float) -> np.ndarray:
        """(n_boot,) seed-mean metric on each subject resample (computed once, then cached)."""
        key = (entry, task, fraction)
        if key not in self._reps:
            self._reps[key] = self._compute_replicates(entry, task, fraction)
        return self._reps[key]

    def _compute_replicates(self, entry: Entry, task: str, fraction: float) -> np.ndarray:
        recs = self.records(entry, task, fraction)
        if not recs:
            raise BenchError(f"no cells for {entry.display} on {task} at fraction {fraction:g}")
        if any(r.scorer is None for r in recs):
            return np.full(self.n_boot, np.nan)
        resample = self._resample(task, recs[0])
        per_seed = np.stack([resample.score(r.scorer) for r in recs])
        draws = None
        if self.resampling == "people+seeds" and len(recs) > 1:
            # the same seed draw for every backbone at this (task, fraction, seeds): paired
            draws = stats.seed_draws(len(recs), self.n_boot, self.seed,
                                     f"{task}|{fraction!r}|{len(recs)}")
        return stats.two_level(per_seed, draws,
                               METRIC_RANGE.get(self.metric(task), (-np.inf, np.inf)))

    @property
    def interval_description(self) -> str:
        """How the intervals and paired tests resample, for every table and page."""
        how = ("two-level bootstrap over training subsets (seeds) and test people"
               if self.resampling == "people+seeds"
               else "bootstrap over test people, each seed's fitted head held fixed")
        return f"95% {how}, {self.n_boot} resamples, seed {self.seed}"

    def detectable_differences(self, fraction: float) -> dict[str, tuple[float, int]]:
        """task -> (minimum detectable difference, test people) for the tasks with intervals
        (NaN: not estimable, the reference's replicates do not vary)."""
        out = {}
        entry = self.reference or (self.entries[0] if self.entries else None)
        for task in self.tasks:
            if entry is None or not self.has(entry, task.id, fraction) \
                    or not np.isfinite(self.replicates(entry, task.id, fraction)).any():
                continue
            out[task.id] = (self.detectable_difference(task.id, fraction),
                            self.people(entry, task.id, fraction))
        return out

    def detectable_difference(self, task: str, fraction: float) -> float:
        """Minimum detectable difference (alpha 0.05, power 0.8) of the table's paired test on
        this task: from the reference's own replicates as the spread of a difference between
        two independent backbones of its quality (sqrt 2 x its standard error)."""
        entry = self.reference or (self.entries[0] if self.entries else None)
        if entry is None or not self.has(entry, task, fraction):
            return float("nan")
        reps = self.replicates(entry, task, fraction)
        if not np.isfinite(reps).any():
            return float("nan")
        mdd = stats.minimum_detectable_difference(np.sqrt(2.0) * (reps - np.nanmean(reps)))
        low, high = METRIC_RANGE.get(self.metric(task), (-np.inf, np.inf))
        return float("inf") if mdd >= high - low else mdd  # inf: nothing is detectable; NaN:
        # not estimable (replicates that do not vary)

    def summary(self, entry: Entry, task: str, fraction: float) -> Summary | None:
        recs = self.records(entry, task, fraction)
        if not recs:
            return None
        values = np.array([r.value for r in recs], dtype=float)
        sd = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
        low, high = stats.percentile_interval(self.replicates(entry, task, fraction), LEVEL)
        return Summary(float(np.mean(values)), sd, int(values.size), low, high)

    def precisions(self, fraction: float | None = None) -> dict[str, list[str]]:
        """Entry display name -> the feature precisions of its cells at ``fraction`` (None:
        at every fraction)."""
        return {name: sorted(set().union(*by_task.values()))
                for name, by_task in self.task_precisions(fraction).items()}

    def task_precisions(self, fraction: float | None = None) -> dict[str, dict[str, set[str]]]:
        """Entry display name -> task -> the feature precisions of its cells there (at
        ``fraction``; None: every fraction): a table's columns may differ in precision (the
        tasks' precision rules under PRECISION=auto)."""
        out: dict[str, dict[str, set[str]]] = {}
        for (entry, task, f, _), record in self.cells.items():
            if fraction is None or f == fraction:
                out.setdefault(entry.display, {}).setdefault(task, set()).add(
                    record.provenance.get("precision", "fp32"))
        return out

    def chance(self, task: str, fraction: float, n_perm: int = CHANCE_PERMUTATIONS
               ) -> Summary | None:
        """The chance row: the reference's (else the first entry's with this task) test
        predictions scored against test labels permuted across samples: the mean over
        permutations of the seed-mean, with the 2.5-97.5% range of the permutations. None
        where the metric cannot be recomputed from predictions (segmentation's per-subject
        scores)."""
        candidates = [e for e in [self.reference, *self.entries] if e is not None]
        recs = next((self.records(e, task, fraction) for e in candidates
                     if self.has(e, task, fraction)), [])
        if not recs or any(r.scorer is None or r.scorer.kind == "mean" for r in recs):
            return None
        key = ("chance", task, fraction)
        if key not in self._reps:
            self._reps[key] = stats.shuffled_labels([r.scorer for r in recs], n_perm,
                                                    self.seed, f"chance|{task}|{fraction!r}")
        draws = self._reps[key]
        low, high = stats.percentile_interval(draws, LEVEL)
        return Summary(float(np.nanmean(draws)), float(np.nanstd(draws)), len(recs), low, high)

    def secondary(self, entry: Entry, task: str, fraction: float, metric: str
                  ) -> Summary | None:
        """A secondary metric recomputed from the stored cells with the training reference
        they stored at fit time (Uno's C, log-rank p), with the same two-level interval as
        the primary metric. None when a cell lacks the reference (stored before it was)."""
        recs = self.records(entry, task, fraction)
        if not recs or any(r.scorer is None or not r.reference for r in recs):
            return None
        key = (entry, task, fraction, metric)
        if key not in self._reps:
            scorers = [replace(r.scorer, metric=metric, reference=r.reference) for r in recs]
            resample = self._resample(task, recs[0])
            per_seed = np.stack([resample.score(s) for s in scorers])
            draws = (stats.seed_draws(len(recs), self.n_boot, self.seed,
                                      f"{task}|{fraction!r}|{len(recs)}")
                     if self.resampling == "people+seeds" and len(recs) > 1 else None)
            points = np.array([s.point() for s in scorers])
            self._reps[key] = (points, stats.two_level(per_seed, draws,
                                                       METRIC_RANGE.get(metric, (0.0, 1.0))))
        points, reps = self._reps[key]
        low, high = stats.percentile_interval(reps, LEVEL)
        finite = points[np.isfinite(points)]
        sd = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
        return Summary(float(np.mean(finite)) if finite.size else float("nan"), sd,
                       int(finite.size), low, high)

    # ------------------------------------------------------------------ comparisons

    def comparisons(self, fraction: float, tasks: Sequence[str] | None = None
                    ) -> dict[tuple[Entry, str], Comparison]:
        """Each entry vs the reference per task, Holm-adjusted across the tasks of the table."""
        if self.reference is None:
            return {}
        tasks = list(tasks or [t.id for t in self.tasks])
        out: dict[tuple[Entry, str], Comparison] = {}
        for entry in self.entries:
            raw: dict[str, stats.PairedTest] = {}
            for task in tasks:
                if not (self.has(entry, task, fraction) and self.has(self.reference, task,
                                                                      fraction)):
                    continue
                if entry == self.reference:
                    continue
                if any(r.scorer is None for r in self.records(entry, task, fraction)):
                    continue  # no predictions to resample: no test
                ids_a = self.records(entry, task, fraction)[0].sample_ids
                ids_r = self.records(self.reference, task, fraction)[0].sample_ids
                if ids_a != ids_r:
                    note = (f"{task}: {entry.display} and {self.reference.display} were scored "
                            "on different test subjects; no paired comparison")
                    if note not in self.notes:
                        self.notes.append(note)
                    continue
                a, r = self.summary(entry, task, fraction), self.summary(self.reference, task,
                                                                         fraction)
                raw[task] = stats.paired_bootstrap(a.mean, r.mean,
                                                   self.replicates(entry, task, fraction),
                                                   self.replicates(self.reference, task,
                                                                   fraction), LEVEL)
            adjusted = stats.holm([t.p_value for t in raw.values()])
            for (task, test), p in zip(raw.items(), adjusted):
                verdict = "ns"
                if np.isfinite(p) and p < ALPHA and test.difference != 0:
                    better = (test.difference > 0) == (self.direction(task) == "higher")
                    verdict = "win" if better else "loss"
                out[(entry, task)] = Comparison(test, float(p), verdict)
            if entry == self.reference:
                for task in tasks:
                    if self.has(entry, task, fraction):
                        out[(entry, task)] = Comparison(
                            stats.PairedTest(0.0, 0.0, 0.0, float("nan"), 0), float("nan"), "ref")
        return out

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def mcnemar(self, fraction: float, tasks: Sequence[str] | None = None
                ) -> dict[tuple[Entry, str], McNemarComparison]:
        """Exact McNemar of each entry vs the reference per classification task, seed by seed.

        Seed s of both is compared (the label subset depends only on the IDs and the seed);
        seeds only one of them has are left out. Different test subjects or labels for one
        seed refuse the comparison with a note, like the paired bootstrap.
        """
        if self.reference is None:
            return {}
        out: dict[tuple[Entry, str], McNemarComparison] = {}
        for task in tasks or [t.id for t in self.tasks]:
            if get_task(task).kind != "classification":
                continue
            ref_recs = {r.seed: r for r in self.records(self.reference, task, fraction)}
            for entry in self.entries:
                if entry == self.reference:
                    continue
                recs = {r.seed: r for r in self.records(entry, task, fraction)}
                seeds = sorted(set(recs) & set(ref_recs))
                if not seeds or any(recs[s].scorer is None or ref_recs[s].scorer is None
                                    for s in seeds):
                    continue
                try:
                    results = [mcnemar_records(recs[s], ref_recs[s]) for s in seeds]
                except BenchError as exc:
                    self._note(f"{task} (fraction {fraction:g}): no McNemar test of "
                               f"{entry.display} vs {self.reference.display}: {exc}")
                    continue
                out[(entry, task)] = McNemarComparison(
                    stats.mcnemar_over_seeds(results, ALPHA), tuple(seeds))
        return out

    # ------------------------------------------------------------------ label efficiency

    def efficiency(self, entry: Entry, task: str) -> Efficiency | None:
        fractions = self.fractions(task, entry)
        if len(fractions) < 2:
            return None
        point = np.array([self.summary(entry, task, f).mean for f in fractions])
        reps = np.stack([self.replicates(entry, task, f) for f in fractions], axis=1)
        direction = self.direction(task)
        nauc = float(stats.normalised_log_auc(fractions, point))
        f95 = float(stats.fraction_to_reach(fractions, point, direction)[0])
        return Efficiency(tuple(fractions), nauc,
                          stats.percentile_interval(stats.normalised_log_auc(fractions, reps)),
                          f95, _discrete_interval(stats.fraction_to_reach(fractions, reps,
                                                                          direction)))

    # ------------------------------------------------------------------ overall ranking

    def mean_ranks(self, fraction: float) -> dict[Entry, RankSummary]:
        """Mean rank over the tasks where every entry has results at ``fraction``."""
        tasks = [t.id for t in self.tasks
                 if all(self.has(e, t.id, fraction) for e in self.entries)]
        if not tasks or len(self.entries) < 1:
            return {}
        point_ranks, rep_ranks = [], []
        for task in tasks:
            point = np.array([self.summary(e, task, fraction).mean for e in self.entries])
            reps = np.stack([self.replicates(e, task, fraction) for e in self.entries], axis=1)
            reps = np.where(np.isfinite(reps), reps, point[None, :])  # undefined resample
            point_ranks.append(stats.ranks(point, self.direction(task)))
            rep_ranks.append(stats.ranks(reps, self.direction(task)))
        mean_point = np.mean(point_ranks, axis=0)
        mean_reps = np.mean(rep_ranks, axis=0)
        return {e: RankSummary(float(mean_point[i]), stats.percentile_interval(mean_reps[:, i]),
                               len(tasks)) for i, e in enumerate(self.entries)}

    def headline_fraction(self) -> float:
        """The largest fraction every entry has on at least one task (the table default)."""
        common = None
        for entry in self.entries:
            have = set(self.fractions(entry=entry))
            common = have if common is None else common & have
        if not common:
            raise BenchError("the selected backbones share no label fraction; pass --fraction")
        return max(common)


def mcnemar_records(a: CellRecord, b: CellRecord) -> stats.McNemarResult:
    """McNemar of two stored classification cells on the same test subjects; a BenchError
    names what differs when they were not scored on the same subjects with the same labels."""
    if a.sample_ids != b.sample_ids:
        only = sorted(set(a.sample_ids) ^ set(b.sample_ids))
        raise BenchError(f"seed {a.seed}: the cells were scored on different test subjects "
                         f"({len(a.sample_ids)} vs {len(b.sample_ids)}; "
                         f"{len(only)} in only one, e.g. {only[:3]})")
    if not np.array_equal(a.scorer.y, b.scorer.y):
        raise BenchError(f"seed {a.seed}: the same test subjects carry different stored labels")
    return stats.mcnemar_exact(a.scorer.y, a.scorer.hard(), b.scorer.hard())


@functools.lru_cache(maxsize=256)
def _cached_resample(persons: tuple[str, ...], n_boot: int, seed: int,
                     key: str) -> stats.PersonResample:
    return stats.person_bootstrap(persons, n_boot, seed, key)


def _discrete_interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5], method="inverted_cdf")
    return float(low), float(high)


# --------------------------------------------------------------------------- loading


#: one selection option as `no_results_error` names it: (the option as typed, its column,
#: which of the column's values it keeps)
Choice = tuple[str, str, Callable[[pd.Series], pd.Series]]


def selection(models=None, tasks=None, profile=None, data_source=None, split: str = "",
              fractions=None) -> list[Choice]:
    """The options a table, curve or site selection was made with, in the order they narrow
    the store's rows (an option left out keeps every row)."""
    chosen: list[Choice] = []
    if models:
        chosen.append((f"MODELS={','.join(models)} (--models)", "backbone",
                       lambda c: c.isin(list(models))))
    if tasks:
        chosen.append((f"TASKS={','.join(tasks)} (--tasks)", "task", lambda c: c.isin(list(tasks))))
    if profile:
        chosen.append((f"PROFILE={profile} (--profile)", "profile", lambda c: c == profile))
    if data_source:
        chosen.append((f"--data-source {data_source}", "data_source",
                       lambda c: c == data_source))
    chosen.append((f"SPLIT={split} (--split)" if split else "the standard split", "split",
                   (lambda c: c.str.startswith(f"{split}:")) if split else (lambda c: c == "")))
    if fractions:
        chosen.append((f"FRACTION={','.join(f'{f:g}' for f in fractions)} (--fraction)",
                       "fraction", lambda c: c.isin(list(fractions))))
    return chosen


def no_results_error(store, chosen: Sequence[Choice]) -> BenchError:
    """Why a selection holds no results: the first option that leaves no row, with the values
    the store holds for it among the rows the options before it kept."""
    frame = store.frame()
    if frame.empty:
        return BenchError(f"no results in {store.shown}: the store is empty; run `make bench` "
                          "first")
    for option, column, keep in chosen:
        narrowed = frame[keep(frame[column])]
        if narrowed.empty:
            values = sorted(set(frame[column]))
            shown = [f"{v:g}" if isinstance(v, float) else str(v) if column != "split"
                     else v.partition(":")[0] or "standard" for v in values]  # split: variant
            return BenchError(f"no results in {store.shown} for {option}; stored {column}"
                              f"{'s' if len(shown) > 1 else ''} there: "
                              f"{', '.join(dict.fromkeys(shown))}")
        frame = narrowed
    return BenchError(f"no results in {store.shown} for that selection; run `make bench` first")


def _one(frame: pd.DataFrame, column: str, option: str) -> None:
    values = sorted(frame[column].unique())
    if len(values) > 1:
        raise BenchError(f"the selected results mix {len(values)} values of {column} "
                         f"({', '.join(map(str, values))}); choose one with {option}")


ENTRY_KEY = ["backbone", "weights_id", "protocol", "precision_arm"]


def _with_precision_arms(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row with its precision arm: "" (one entry, as before) unless the same backbone,
    weights and protocol hold cells of one task and fraction in both precisions; then each
    precision is an arm (an entry of its own). A cell of such a setting whose task and fraction
    hold one precision only belongs to its own arm, and an fp32 one to the bf16 arm as well:
    that is what PRECISION=auto ran there (a task's precision rule), so one extra fp32 run of
    a few tasks does not empty the main row's rule-fp32 columns. A bf16 cell never stands in
    for fp32."""
    precision = frame["precision"].fillna("fp32").astype(str) if "precision" in frame else \
        pd.Series("fp32", index=frame.index)  # stores before schema 4 were all fp32
    frame = frame.assign(precision=precision)
    setting = ["backbone", "weights_id", "protocol"]
    counts = frame.groupby(setting + ["task", "fraction"])["precision"].nunique()
    arms: dict[tuple, set[str]] = {}
    for key, n in counts.items():
        if n > 1:
            arms.setdefault(key[:3], set())
    for key, p in zip(zip(*(frame[c] for c in setting)), precision):
        if key in arms:
            arms[key].add(p)
    rows, labels = [], []
    for index, key, task, fraction, p in zip(frame.index, zip(*(frame[c] for c in setting)),
                                             frame["task"], frame["fraction"], precision):
        if key not in arms:
            rows.append(index)
            labels.append("")
            continue
        alone = counts[(*key, task, fraction)] == 1
        for arm in sorted(arms[key]):
            if arm == p or (alone and p == "fp32"):
                rows.append(index)
                labels.append(arm)
    return frame.loc[rows].assign(precision_arm=labels).reset_index(drop=True)


def _entries(frame: pd.DataFrame) -> dict[tuple[str, str, str, str], Entry]:
    """One entry per (backbone, weights, protocol label, precision arm); the protocol is in the
    label when the selection holds more than one, the precision when it splits the entry."""
    pairs = frame[["backbone", "weights_id", "weights_status", "protocol", "precision_arm"]
                  ].drop_duplicates()
    unverified: dict[tuple[str, str, str, str], set[str]] = {}
    if "unverified" in frame:
        for key, fields_ in zip(zip(*(frame[c] for c in ENTRY_KEY)), frame["unverified"]):
            unverified.setdefault(key, set()).update(fields_)
    per_name = pairs.groupby("backbone")["weights_id"].nunique()
    several = pairs["protocol"].nunique() > 1
    out = {}
    for row in pairs.itertuples(index=False):
        label = row.backbone
        if per_name[row.backbone] > 1:
            label = f"{row.backbone} ({row.weights_id.split(':')[-1][:8]})"
        if several:
            label = f"{label} {{{row.protocol}}}"
        if row.precision_arm:
            label = f"{label} {row.precision_arm}"
        key = (row.backbone, row.weights_id, row.protocol, row.precision_arm)
        out[key] = Entry(row.backbone, row.weights_id, row.weights_status, label, row.protocol,
                         tuple(sorted(unverified.get(key, ()))), row.precision_arm)
    return out


def load_analysis(store: ResultStore, models: Sequence[str] | None = None,
                  tasks: Sequence[str] | None = None, fractions: Sequence[float] | None = None,
                  profile: str | None = None, data_source: str | None = None,
                  head: str | None = None, reference: str | None = None,
                  n_boot: int = 1000, seed: int = 0, protocol: str | None = None,
                  resampling: str = stats.DEFAULT_RESAMPLING, split: str = "") -> Analysis:
    """Read the selected cells (primary metric + predictions) and set up the statistics.

    reference: a backbone name (or entry label); default the first pretrained entry in the
    order of ``models`` (else by name), else the first entry; none with a single entry.
    protocol: keep one protocol (``paper``) or one protocol and budget (``paper[20 trials]``).
    resampling: ``people+seeds`` (two-level bootstrap, default) or ``people`` (heads fixed).
    split: "" the standard split's cells; a split variant's name (``site-held-out``) its cells.
    """
    if resampling not in stats.RESAMPLING:
        raise BenchError(f"resampling {resampling!r} is not one of {list(stats.RESAMPLING)}")
    task_specs = [get_task(t) for t in tasks] if tasks else None
    frame = store.frame(backbone=list(models) if models else None,
                        task=[t.id for t in task_specs] if task_specs else None,
                        profile=profile, data_source=data_source, head=head)
    frame = frame[frame["split"].str.startswith(f"{split}:") if split else frame["split"] == ""]
    if fractions:
        frame = frame[frame["fraction"].isin(list(fractions))]
    if models:
        missing = sorted(set(models) - set(frame["backbone"]))
        if missing:
            raise BenchError(f"no results for backbone(s) {missing} in {store.url} for that "
                             f"selection; stored backbones: "
                             f"{sorted(set(store.frame()['backbone']))}")
    if frame.empty:
        raise no_results_error(store, selection(
            models, [t.id for t in task_specs] if task_specs else None, profile, data_source,
            split, fractions))
    _one(frame, "profile", "--profile (PROFILE=)")
    _one(frame, "data_source", "--data-source")
    # budgets recovered on every row (old fallback rows from their config hash's siblings)
    frame = frame.assign(trials=recovered_budgets(frame), protocol=protocol_labels(frame))
    if protocol:
        chosen = frame[(frame["head"] == protocol) | (frame["protocol"] == protocol)]
        if chosen.empty:
            raise BenchError(f"no results of protocol {protocol!r} for that selection; stored: "
                             f"{', '.join(sorted(set(frame['protocol'])))}")
        frame = chosen
    spec_of = {t: get_task(t) for t in frame["task"].unique()}
    frame = frame[[m == spec_of[t].primary_metric for t, m in zip(frame["task"], frame["metric"])]]
    frame = frame[frame["value"].notna()]
    frame = _with_precision_arms(frame)
    # a re-run under a new config replaces, for display, the older cell of the same setting
    frame = (frame.sort_values("created_at")
             .drop_duplicates(ENTRY_KEY + ["task", "fraction", "seed"], keep="last"))
    frame = frame.assign(unverified=[unverified_fields(h) for h in frame["hyperparameters"]])
    entries = _entries(frame)
    preds = store.predictions(frame["cell_id"])
    persons = store.persons(frame["cell_id"])
    unknown_persons: set[str] = set()
    cells: dict[tuple[Entry, str, float, int], CellRecord] = {}
    notes: list[str] = []
    for row in frame.to_dict("records"):
        spec = spec_of[row["task"]]
        rows = preds.get(row["cell_id"], [])
        entry = entries[tuple(row[c] for c in ENTRY_KEY)]
        provenance = {k: row[k] for k in ("cell_id", "code_version", "weights_sha256",
                                          "split_hash", "subset_hash", "config_hash",
                                          "created_at", "profile", "data_source", "head",
                                          "protocol", "n_train", "n_test", "selection",
                                          "dataset", "split")}
        provenance["trials"] = None if pd.isna(row["trials"]) else int(row["trials"])
        # stores before schema 4 (NULL) were all fp32
        provenance["precision"] = row.get("precision") or "fp32"
        provenance["unverified"] = dict(row["unverified"])
        key = (entry, row["task"], float(row["fraction"]), int(row["seed"]))
        kind = get_kind(spec.kind)
        if spec.primary_metric not in kind.bootstrap_metrics:
            note = (f"{spec.id}: {spec.primary_metric} cannot be recomputed from stored "
                    "predictions; shown as mean ± sd over seeds, without interval or test")
            if note not in notes:
                notes.append(note)
            cells[key] = CellRecord(entry, row["task"], key[2], key[3], float(row["value"]),
                                    provenance, tuple(sorted(r[0] for r in rows)), None)
            continue
        if not rows:
            raise BenchError(f"cell {row['cell_id'][:12]} ({row['backbone']}, {row['task']}, "
                             f"fraction {row['fraction']:g}, seed {row['seed']}) has no stored "
                             "test predictions; re-run it with FORCE=1")
        rows.sort(key=lambda r: r[0])
        scorer = kind.scorer(spec.primary_metric, [r[1] for r in rows], [r[2] for r in rows],
                             getattr(spec.target, "classes", ()))
        recomputed = scorer.point()
        if not np.isclose(recomputed, row["value"], rtol=1e-6, atol=1e-9):
            raise BenchError(f"cell {row['cell_id'][:12]} ({row['backbone']}, {row['task']}): "
                             f"stored {spec.primary_metric}={row['value']:.6g} but its stored "
                             f"predictions give {recomputed:.6g}; the store is inconsistent")
        known = persons.get(row["cell_id"], {})
        if not known:
            unknown_persons.add(spec.id)
        cells[key] = CellRecord(
            entry, row["task"], float(row["fraction"]), int(row["seed"]), float(row["value"]),
            provenance, tuple(r[0] for r in rows), scorer,
            tuple(known.get(r[0], r[0]) for r in rows), _fit_reference(row["hyperparameters"]))
    if unknown_persons:
        notes.append(f"{', '.join(sorted(unknown_persons))}: some cells were stored without the "
                     "person of each test sample (an earlier release) and are resampled per "
                     "sample, which narrows intervals where a person has several samples")
    ordered = sorted(entries.values(), key=lambda e: (e.is_reference_point, e.label))
    if models:  # keep the user's order
        rank = {m: i for i, m in enumerate(models)}
        ordered.sort(key=lambda e: (rank.get(e.backbone, len(rank)), e.is_reference_point,
                                    e.label))
    task_list = task_specs or sorted(spec_of.values(), key=lambda t: t.id)
    task_list = [t for t in task_list if t.id in set(frame["task"])]
    return Analysis(ordered, task_list, cells, _reference(ordered, reference), n_boot, seed,
                    notes, resampling=resampling)


def _reference(entries: list[Entry], wanted: str | None) -> Entry | None:
    if wanted:
        exact = [e for e in entries if wanted in (e.label, e.display)]
        if exact:
            return exact[0]
        named = [e for e in entries if wanted == e.backbone]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise BenchError(f"reference {wanted!r} matches {len(named)} results ("
                             + "; ".join(e.label for e in named) + "): pass one of these "
                             "labels, e.g. --reference '" + named[0].label + "'")
        raise BenchError(f"reference backbone {wanted!r} is not among the selected results "
                         f"({', '.join(e.label for e in entries)})")
    if len(entries) < 2:
        return None
    pretrained = [e for e in entries if not e.is_reference_point]
    return (pretrained or entries)[0]


def _fit_reference(hyperparameters: Any) -> dict[str, Any] | None:
    """The training reference a cell stored at fit time (brainbench.evaluators.probe)."""
    from brainbench.evaluators.probe import REFERENCE_KEY

    try:
        values = json.loads(hyperparameters) if isinstance(hyperparameters, str) else hyperparameters
    except json.JSONDecodeError:
        return None
    reference = values.get(REFERENCE_KEY) if isinstance(values, dict) else None
    return reference if isinstance(reference, dict) else None
