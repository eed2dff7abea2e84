"""The runner: resolve tasks and data, build the backbone, then for each task prepare it once
(brainbench.pipeline), plan its cells, and let the task kind's evaluator compute the cells the
store lacks.

Only the test split is ever scored, and nothing about it feeds a choice: heads select their
settings on the label-fraction subset alone.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

from brainbench.backbone import Backbone, create_backbone
from brainbench.deferred import can_defer, deferred
from brainbench.device import describe, resolve_device
from brainbench.errors import BenchError
from brainbench.evaluators import EvaluatedCell, Evaluator, make_evaluator
from brainbench.executors import Executor, LocalExecutor, WorkItem, make_executor
from brainbench.kinds import get_kind
from brainbench.leakage import HashCache
from brainbench.pipeline import manifest_path, prepare_task
from brainbench.precision import cell_precision
from brainbench.protocols import Protocol, check_tokens, get_protocol
from brainbench.runconfig import CellOutcome, RunConfig, RunReport
from brainbench.results_io import VERIFICATION_KEY
from brainbench.store import ResultStore, default_url
from brainbench.taskspec import TaskSpec, all_tasks, check_fraction, get_task

log = logging.getLogger("brainbench")

__all__ = ["CellOutcome", "RunConfig", "RunReport", "build_backbone", "manifest_path",
           "on_split", "plan_task", "precision_passes", "prepare_data", "resolve_tasks", "run",
           "run_task", "store_cells"]


def resolve_tasks(names: Sequence[str] | None,
                  datasets: Sequence[str] | None = None) -> list[TaskSpec]:
    """The tasks to run, each on its default dataset or the alternate chosen in ``datasets``.

    ``datasets`` entries are ``task=dataset`` or a bare ``dataset``, which applies to every task
    that accepts it; without ``names``, a bare or explicit entry also selects those tasks.
    """
    tasks = [get_task(name) for name in names] if names else all_tasks()
    if not datasets:
        return tasks
    chosen: dict[str, str] = {}
    for entry in datasets:
        task_id, _, name = entry.rpartition("=")
        if task_id:
            get_task(task_id).on_dataset(name)  # validates both names
            chosen[task_id] = name
            continue
        matching = [t.id for t in tasks if name in t.datasets]
        if not matching:
            raise BenchError(f"DATASET={name}: no selected task runs on it; tasks and their datasets: "
                             + "; ".join(f"{t.id}: {', '.join(t.datasets)}" for t in tasks))
        chosen.update({t: name for t in matching})
    picked = [t for t in tasks if names or t.id in chosen]
    picked += [get_task(t) for t in chosen if t not in {p.id for p in picked}]
    return [t.on_dataset(chosen[t.id]) if t.id in chosen else t for t in picked]


def on_split(tasks: Sequence[TaskSpec], split: str, explicit: bool
             ) -> tuple[list[TaskSpec], list[str]]:
    """The tasks evaluated on split variant ``split`` ("" = the standard split: all of them),
    and the tasks left out because they declare no such split. A task named explicitly that
    lacks the variant is an error."""
    if not split:
        return list(tasks), []
    from brainbench.taskspec import SPLIT_VARIANTS

    if split not in SPLIT_VARIANTS:
        raise BenchError(f"SPLIT={split!r} (--split): expected one of "
                         f"{', '.join(SPLIT_VARIANTS)} (or nothing: the standard split)")
    lacking = [t for t in tasks if split not in t.split_names]
    if lacking and explicit:
        lacking[0].with_split(split)  # raises, naming the task and what it declares
    chosen = [t.with_split(split) for t in tasks if split in t.split_names]
    if not chosen:
        raise BenchError(f"no selected task declares the split {split!r}; tasks that do: "
                         + (", ".join(t.id for t in all_tasks() if split in t.split_names)
                            or "none"))
    return chosen, [f"{t.id} (declares no {split} split)" for t in lacking]


def prepare_data(config: RunConfig, datasets: set[str]) -> tuple[dict[str, Path], str]:
    """Where each needed dataset is read from, and a label for the data (goes into every row).

    Real data: DATA / brainbench.toml / BRAINBENCH_DATA_<NAME> (brainbench.datasets.locations).
    Otherwise phantom cohorts are generated on first use, only for the datasets the tasks need.
    """
    from brainbench.datasets.locations import data_locations

    locations = data_locations(config.data_dir)
    if locations.real:
        return ({d: locations.path_for(d) for d in datasets if locations.present(d)},
                locations.source_label(d for d in datasets if locations.present(d)))
    from brainbench.phantoms import generate_phantoms

    profile = config.profile
    tag = profile.phantom_tag()
    root = generate_phantoms(config.cache_dir / "phantoms" / tag,
                             profile.phantom_people(sorted(datasets)), seed=profile.phantom_seed,
                             progress=config.progress, datasets=sorted(datasets))
    return {d: root for d in datasets}, f"phantom:{tag}"


def missing_data_message(config: RunConfig, missing: Sequence[str]) -> str:
    """Which datasets were not found, where the search looked and what it looked for."""
    from brainbench.datasets import ADAPTERS
    from brainbench.datasets.locations import data_locations

    return ("dataset(s) not found under DATA or in the dataset config: " + "; ".join(
        f"{d} (expected folder {ADAPTERS.get(d).folder}/)" for d in missing)
        + "; see README 'Real data' for the expected trees\n"
        + data_locations(config.data_dir).not_found(missing))


def build_backbone(config: RunConfig, defer: bool = False) -> Backbone:
    """The run's backbone. The driver and every Ray worker build it with this one function
    (same card or file, weights, profile overrides and protocol tokens), so they agree.

    defer: the driver's call. A built-in backbone built before with the same options comes
    from its record (brainbench.deferred) and builds its network only on a feature-cache miss,
    so a run whose cells are all stored builds none.
    """
    if defer and can_defer(config.model):
        weights = None if config.weights is None else Path(config.weights).expanduser().resolve()
        options = {"model": config.model, "weights": weights,
                   "require_weights": config.require_weights,
                   "image_size": config.profile.slice_size,
                   "num_slices": config.profile.num_slices, "precision": config.precision,
                   "preprocess_on": config.preprocess_on, "protocol": config.protocol,
                   "device": config.device, "compile": config.compile}
        return deferred(partial(build_backbone, config), options, config.cache_dir)
    backbone = create_backbone(
        config.model, weights=config.weights, require_weights=config.require_weights,
        image_size=config.profile.slice_size, num_slices=config.profile.num_slices,
        precision=config.precision, preprocess_on=config.preprocess_on, device=config.device,
        compile=config.compile)
    return _with_protocol_tokens(backbone, get_protocol(config.protocol))


def _for_cluster(config: RunConfig) -> RunConfig:
    """Absolute paths: workers of a distributed executor need not share the driver's cwd."""
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(path).expanduser().resolve()

    model = config.model
    if Path(model).suffix in (".py", ".toml") and Path(model).is_file():
        model = str(absolute(Path(model)))
    # the driver's backbone stays on its CPU: each Ray GPU actor places its own copy. COMPILE=auto
    # runs eager there: the driver's CPU would decide for actors whose hardware may differ
    return replace(config, model=model, cache_dir=absolute(config.cache_dir),
                   results_dir=absolute(config.results_dir), data_dir=absolute(config.data_dir),
                   weights=absolute(config.weights), device="cpu",
                   compile="eager" if config.compile == "auto" else config.compile)


def run(config: RunConfig) -> RunReport:
    for fraction in config.fractions:
        check_fraction(fraction)
    tasks = resolve_tasks(config.tasks, config.datasets)
    tasks, without_split = on_split(tasks, config.split, explicit=bool(config.tasks))
    get_protocol(config.protocol)  # a bad name fails before anything starts
    if config.executor != "local":
        if config.device != "auto":
            raise BenchError(f"DEVICE={config.device!r} (--device) applies to the local executor: "
                             f"with --executor {config.executor} each Ray actor takes one GPU "
                             "where the cluster has GPUs, else one CPU; leave DEVICE unset")
        config = _for_cluster(config)
        shown_device = "each Ray worker's (one GPU per actor where the cluster has GPUs)"
    else:
        config = replace(config, device=resolve_device(config.device))  # a bad one fails here
        shown_device = describe(config.device)
    with make_executor(config.executor, config.ray_address) as executor:
        backbone = build_backbone(config, defer=True)
        store = ResultStore(config.db_url or default_url(config.results_dir))
        ready = {t.dataset for t in tasks if t.status == "ready"}
        roots, data_source = prepare_data(config, ready)
        missing = sorted(ready - set(roots))
        if missing and (config.tasks or config.datasets or len(missing) == len(ready)):
            raise BenchError(missing_data_message(config, missing))
        report = RunReport(backbone=backbone.name, weights_status=backbone.weights.status,
                           weights_source=backbone.weights.source, data_source=data_source,
                           store_url=store.shown,  # printed: no password
                           precision=backbone.precision, runtime=backbone.runtime,
                           device=shown_device)
        report.other_split += without_split
        if (config.precision == "bf16" and backbone.precision != "bf16"
                and backbone.weights.status != "control"):  # controls always run fp32
            report.note(f"backbone {backbone.name} runs fp32 only (its precisions: "
                        f"{', '.join(backbone.precisions)}), so PRECISION=bf16 ran fp32; a "
                        "backbone declares bf16 support with precisions = (\"fp32\", \"bf16\")")
        runnable = []
        for task in tasks:
            if task.status == "pending":
                report.pending.append(task)
            elif task.dataset not in roots:  # real data holding only some datasets
                report.unavailable.append(f"{task.id} (dataset {task.dataset} not found)")
            else:
                runnable.append(task)
        for precision, fractions in precision_passes(runnable, config, backbone.precision,
                                                     report):
            pass_config = replace(config, precision=precision)  # resolved: workers build it
            pass_backbone = (backbone if precision == backbone.precision
                             else build_backbone(pass_config, defer=True))

            # every task of the pass is prepared (images validated, splits checked) before
            # any is computed: a bad image in the last task stops the run with nothing stored
            items = [item for task in runnable if fractions.get(task.id)
                     for item in [plan_task(task, pass_backbone, roots[task.dataset],
                                            data_source, store,
                                            replace(pass_config, fractions=fractions[task.id]),
                                            report)]
                     if item is not None]
            store_cells(executor.evaluate(items, pass_backbone, pass_config, store.url, report,
                                          build=partial(build_backbone, pass_config)),
                        store, report)
    return report


def precision_passes(tasks: Sequence[TaskSpec], config: RunConfig, machine: str,
                     report: RunReport) -> list[tuple[str, dict[str, tuple[float, ...]]]]:
    """The run's cells grouped by the precision they run at: the device's first, then fp32
    for the (task, fraction) pairs a task's precision rule keeps out of bf16 under ``auto``
    (brainbench.precision.cell_precision). Each group is one pass with its own backbone."""
    passes: dict[str, dict[str, tuple[float, ...]]] = {machine: {}}
    for task in tasks:
        rule = task.precision_rule
        for fraction in config.fractions:
            precision = cell_precision(config.precision, machine, rule, fraction)
            passes.setdefault(precision, {})
            passes[precision][task.id] = passes[precision].get(task.id, ()) + (fraction,)
        if rule is None:
            continue
        shown = ", ".join(f"{f:g}" for f in config.fractions if rule.covers(f))
        fallback = [f for f in config.fractions
                    if cell_precision(config.precision, machine, rule, f) != machine]
        if fallback:
            report.precision_fallbacks.append(f"{task.id}@{','.join(f'{f:g}' for f in fallback)}")
            report.note(f"{task.id} at fraction {shown}: fp32 under PRECISION=auto "
                        f"({rule.measured}; BENCHMARKS.md 'Fidelity')")
        elif shown and machine == "bf16":
            report.note(f"{task.id} at fraction {shown}: bf16 as asked, where PRECISION=auto "
                        f"runs fp32 ({rule.measured})")
    return [(p, f) for p, f in passes.items() if f]


def _with_protocol_tokens(backbone: Backbone, protocol: Protocol) -> Backbone:
    """The backbone, asked for the extra tokens a feature variant needs (e.g. cls_last4)."""
    missing = [t for t in protocol.tokens if t not in backbone.contract.tokens]
    if missing and hasattr(backbone, "with_tokens"):
        backbone = backbone.with_tokens(tuple(missing))
    check_tokens(protocol, backbone.contract.tokens, backbone.name)
    return backbone


def plan_task(task: TaskSpec, backbone: Backbone, root: Path, data_source: str,
              store: ResultStore, config: RunConfig, report: RunReport,
              evaluator: Evaluator | None = None) -> WorkItem | None:
    """Prepare one task and list the cells the store lacks (all with --force); stored cells
    go into the report. None: nothing to compute (or the evaluator cannot use the backbone).

    evaluator: defaults to the one the task's kind names (probe or segmentation).
    """
    task = task.for_profile(config.profile, data_source)
    evaluator = evaluator or make_evaluator(get_kind(task.kind).evaluator)
    reason = evaluator.unsupported_reason(backbone)
    if reason:
        if any(t.id == task.id for t in report.pending):  # planned again in an fp32 pass
            return None
        report.pending.append(replace(task, status="pending", pending_reason=reason))
        return None
    prepared = prepare_task(task, root, data_source,
                            hash_cache=HashCache(config.cache_dir / "voxel_hashes.json"),
                            manifest=manifest_path(config.results_dir, data_source, task))
    for note in prepared.notes:
        report.note(note)
    todo, imported = [], 0
    for planned in evaluator.plan(prepared, backbone, config):
        stored = None if config.force else store.cell_hyperparameters(planned.cell.cell_id)
        if stored is not None and VERIFICATION_KEY not in stored:
            report.cells.append(CellOutcome(task.id, planned.cell.fraction, planned.cell.seed,
                                            planned.cell.cell_id, False))
        else:
            imported += stored is not None
            todo.append(planned)
    if imported:  # an import is someone's word; a run here computes it, and that replaces it
        report.note(f"{task.id}: {imported} imported cell(s) (brainbench import / import-bundle) "
                    "recomputed here; this run's results replace the imported ones")
    return WorkItem(prepared, evaluator, tuple(todo)) if todo else None


def store_cells(cells: Iterable[EvaluatedCell], store: ResultStore, report: RunReport) -> None:
    """Write each finished cell as it arrives (the driver is the only writer of its rows)."""
    for done in cells:
        store.write_cell(done.cell, done.metrics, done.predictions, done.persons)
        report.cells.append(CellOutcome(done.cell.task, done.cell.fraction, done.cell.seed,
                                        done.cell.cell_id, True))


def run_task(task: TaskSpec, backbone: Backbone, root: Path, data_source: str,
             store: ResultStore, config: RunConfig, report: RunReport,
             evaluator: Evaluator | None = None, executor: Executor | None = None) -> None:
    """Prepare one task, then compute and store the cells the store lacks (all with --force).

    evaluator: defaults to the one the task's kind names (probe or segmentation); executor:
    the local one by default.
    """
    item = plan_task(task, backbone, root, data_source, store, config, report, evaluator)
    if item is not None:
        store_cells((executor or LocalExecutor()).evaluate([item], backbone, config, store.url,
                                                           report), store, report)
