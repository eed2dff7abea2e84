"""Cohort-size scaling of every stage of a run (issue #15 item 6): phantom generation, cohort
loading, voxel hashing + validation, split, cell planning, feature extraction, probes, store
writes, table and site, each timed on its own at several phantom cohort sizes, with the
log-log growth exponent of each stage between consecutive sizes (1.0 = linear).

    .venv/bin/python scripts/cohort_scaling.py --sizes 80,320,1280 --out /work/scaling/run

Why stage by stage: `brainbench run` reports one wall time; a stage that grows faster than
linearly hides in it until cohorts get large. Each stage is the project's own function, called
as `brainbench.runner.run` wires it (prepare_data, load_samples, validate_images, prepare_task,
evaluator.plan, sample_inputs, evaluator.evaluate, store_cells, load_analysis + stats_table,
build_site), so the figures are the product's. Every size gets a fresh folder (phantoms,
caches, store, site) under --out. The default backbone `intensity` is cheap, so the data
path's growth shows without a ViT's forward pass dominating. Each stage is timed in wall
seconds and in CPU seconds (this process's threads plus finished child processes: the phantom
workers): on a shared machine wall time follows the load, CPU time much less, so the growth
exponents are given for both. Prints the load average at the start and end.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path

from brainbench.evaluators import make_evaluator
from brainbench.evaluators.probe import sample_inputs
from brainbench.features import FeatureCache
from brainbench.kinds import get_kind
from brainbench.leakage import HashCache
from brainbench.leaderboard.analysis import load_analysis
from brainbench.leaderboard.site import build_site
from brainbench.leaderboard.tables import stats_table
from brainbench.pipeline import load_samples, manifest_path, prepare_task
from brainbench.profiles import PROFILES
from brainbench.protocols import get_protocol
from brainbench.runconfig import RunConfig, RunReport
from brainbench.runner import build_backbone, prepare_data, store_cells
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import get_task
from brainbench.validation import validate_images

STAGES = ("phantoms", "backbone build", "cohort load", "hashing + validation", "split",
          "plan cells", "extraction (cold)", "feature read (warm)", "probes", "store writes",
          "table", "site")
MARKER = ".cohort_scaling"  # only folders this script made are ever removed


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fresh_folder(path: Path) -> Path:
    """An empty folder for one size; refuses to delete a folder this script did not make."""
    if path.exists():
        if not (path / MARKER).exists():
            raise SystemExit(f"{path} exists and was not made by this script; choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by scripts/cohort_scaling.py; safe to delete\n")
    return path


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have exited."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Timer:
    """Wall and CPU seconds per stage, printed as each stage ends (a long stage is visible
    as it runs)."""

    def __init__(self, label: str) -> None:
        self.label, self.seconds, self.cpu = label, {}, {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        tick, cpu = time.perf_counter(), cpu_seconds()
        value = fn(*args, **kwargs)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - tick
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu_seconds() - cpu
        print(f"  [{self.label}] {stage:<22} {self.seconds[stage]:8.2f} s wall "
              f"{self.cpu[stage]:8.2f} s CPU; load {load_average()}", flush=True)
        return value


def one_size(n: int, task_ids: list[str], args: argparse.Namespace
             ) -> tuple[dict, dict, dict]:
    """Every stage at `n` people per phantom dataset, in a fresh folder;
    (wall seconds, CPU seconds, counts)."""
    folder = fresh_folder(Path(args.out) / f"n{n}")
    profile = replace(PROFILES.get(args.profile), phantom_subjects=n)
    tasks = [get_task(t) for t in task_ids]
    fractions = tuple(args.fractions) if args.fractions else tasks[0].fractions
    config = RunConfig(model=args.model, fractions=fractions, profile=profile,
                       cache_dir=folder / "cache", results_dir=folder / "results",
                       tasks=tuple(task_ids), seeds=tuple(args.seeds) if args.seeds else None,
                       progress=args.progress, precision=args.precision, workers=args.workers)
    timer = Timer(f"n={n}")
    counts: dict[str, int] = {}
    roots, data_source = timer("phantoms", prepare_data, config, {t.dataset for t in tasks})
    backbone = timer("backbone build", build_backbone, config)
    store = ResultStore(default_url(config.results_dir))  # schema creation: not a stage
    report = RunReport(backbone=backbone.name, weights_status=backbone.weights.status,
                       weights_source=backbone.weights.source, data_source=data_source,
                       store_url=store.shown, precision=backbone.precision)
    protocol = get_protocol(config.protocol)
    cells_done = []
    for task in tasks:  # as runner.plan_task + LocalExecutor + store_cells, stage by stage
        task = task.for_profile(config.profile, data_source)
        root = roots[task.dataset]
        evaluator = make_evaluator(get_kind(task.kind).evaluator)
        loaded = timer("cohort load", load_samples, task, root)
        hash_cache = HashCache(config.cache_dir / "voxel_hashes.json")
        hashes = timer("hashing + validation", validate_images, loaded, hash_cache)
        prepared = timer("split", prepare_task, task, root, data_source, loaded=loaded,
                         hashes=hashes, manifest=manifest_path(config.results_dir, data_source,
                                                               task))
        planned = timer("plan cells", evaluator.plan, prepared, backbone, config)
        needed = prepared.members(set(prepared.split.test_groups).union(
            *[set(c.groups) for c in planned]))
        cache = FeatureCache(config.cache_dir / "features")
        timer("extraction (cold)", sample_inputs, backbone, needed, cache, config, task.id,
              protocol)
        timer("feature read (warm)", sample_inputs, backbone, needed, cache, config, task.id,
              protocol)  # the part of "probes" that re-reads the cache, shown apart
        done = timer("probes", lambda: list(evaluator.evaluate(prepared, planned, backbone,
                                                               config, store.url, report)))
        timer("store writes", store_cells, done, store, report)
        cells_done += done
        counts["samples"] = counts.get("samples", 0) + len(prepared.samples)
        counts["images"] = counts.get("images", 0) + len(hashes)
        counts["test"] = counts.get("test", 0) + len(prepared.test)
        counts["extracted"] = counts.get("extracted", 0) + len(needed)
    counts["cells"] = len(cells_done)

    def table() -> str:
        analysis = load_analysis(store)
        return analysis, stats_table(analysis, analysis.headline_fraction(), "markdown")

    analysis, _markdown = timer("table", table)
    timer("site", build_site, analysis, config.results_dir / "site")
    return timer.seconds, timer.cpu, counts


def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    """Slope of log time against log size between two sizes (1.0: linear growth)."""
    if t1 <= 0 or t2 <= 0:
        return float("nan")
    return math.log(t2 / t1) / math.log(n2 / n1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="80,320,1280", help="people per phantom dataset")
    parser.add_argument("--task", default="brain_age")
    parser.add_argument("--tasks", default="", help="comma list; overrides --task")
    parser.add_argument("--model", default="intensity")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")],
                        default=None, help="default: the task's (0.01..1)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="default: the task's 5")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show the product's bars")
    parser.add_argument("--out", default="/work/scaling/run")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    task_ids = [t for t in (args.tasks or args.task).split(",") if t]
    started = time.perf_counter()
    print(f"cohort scaling: tasks {task_ids}, model {args.model}, profile {args.profile}, "
          f"sizes {sizes}; load average at start {load_average()}", flush=True)
    results = {}
    for n in sizes:
        results[n] = one_size(n, task_ids, args)
        print(f"  [n={n}] counts {results[n][2]}; load average {load_average()}", flush=True)
    pairs = list(zip(sizes, sizes[1:]))
    for which, label in ((0, "wall"), (1, "CPU")):
        print(f"\n{label} seconds per stage; exp = growth exponent (log-log slope, 1 = linear)")
        print("| stage | " + " | ".join(f"n={n}" for n in sizes) + " | "
              + " | ".join(f"exp {a}->{b}" for a, b in pairs) + " |")
        print("|" + "---|" * (1 + len(sizes) + len(pairs)))
        for stage in STAGES + ("total",):
            times = [results[n][which] for n in sizes]
            row = [sum(t.values()) if stage == "total" else t.get(stage, 0.0) for t in times]
            exps = [exponent(row[i], row[i + 1], a, b) for i, (a, b) in enumerate(pairs)]
            print(f"| {stage} | " + " | ".join(f"{t:.2f}" for t in row) + " | "
                  + " | ".join(f"{x:.2f}" for x in exps) + " |")
    print("\ncounts: " + "; ".join(
        f"n={n}: " + ", ".join(f"{k} {v}" for k, v in results[n][2].items()) for n in sizes))
    print(f"\nwall {time.perf_counter() - started:.0f} s; load average at end {load_average()}")


if __name__ == "__main__":
    main()
