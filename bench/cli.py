"""`brainbench`: the same operations as the Makefile (list, run, results, phantoms, oracle)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from brainbench.errors import BenchError
from brainbench.search import DEFAULT_TRIALS
from brainbench.stats import DEFAULT_RESAMPLING, RESAMPLING


#: the comma-list options: name in messages -> (option, what one entry is, an example)
LISTS = {"TASKS": ("--tasks", "task", "brain_age,idh_status"),
         "TASK": ("--task", "task", "brain_age,idh_status"),
         "MODELS": ("--models", "backbone", "braindino,intensity"),
         "DATASET": ("--dataset", "dataset", "oasis1 or neurodegen_cls=oasis1"),
         "SEEDS": ("--seeds", "seed", "0,1,2"),
         "FRACTION": ("--fraction", "fraction", "0.01,0.1")}


def _nothing_listed(text: str, what: str) -> BenchError:
    """An option given explicitly with no entry (`--tasks ","`, `--fraction ""`): an error,
    never the option's default (an option left out keeps its default)."""
    option, entry, example = LISTS[what]
    return BenchError(f"{what}={text!r} ({option}): no {entry} named; expected a comma list "
                      f"such as {example} (or leave {option} out for its default)")


def _items(text: str, what: str | None) -> list[str]:
    """The stripped entries of a comma list. With ``what`` (a key of LISTS) an empty entry
    among others (`0.1,,0.5`, `brain_age,`) is an error naming the option: a typo, not a
    request for fewer entries."""
    items = [item.strip() for item in text.split(",")]
    if what is not None and any(items) and not all(items):
        option, entry, example = LISTS[what]
        position = items.index("") + 1
        raise BenchError(f"{what}={text!r} ({option}): entry {position} of the list is empty; "
                         f"expected a comma list of {entry}s such as {example}")
    return [item for item in items if item]


def _names(text: str | None, what: str | None = None) -> tuple[str, ...] | None:
    """A comma list; None when the option was not given. With ``what`` (a key of LISTS) an
    explicitly given list without a name is an error naming the option."""
    if text is None or (not text and what is None):
        return None
    names = tuple(_items(text, what))
    if not names:
        if what is None:
            return None
        raise _nothing_listed(text, what)
    return names


def _floats(text: str, what: str) -> tuple[float, ...]:
    items = _items(text, what if what in LISTS else None)
    try:
        values = tuple(float(v) for v in items)
    except ValueError:
        raise BenchError(f"{what}={text!r}: expected numbers separated by commas") from None
    if not values and what in LISTS:
        raise _nothing_listed(text, what)
    return values


def _fractions(text: str) -> tuple[float, ...]:
    """--fraction: label fractions in (0, 1], checked (as `run` checks them) before any store
    is opened."""
    from brainbench.taskspec import check_fraction

    return tuple(check_fraction(v) for v in _floats(text, "FRACTION"))


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    items = _items(text, what if what in LISTS else None)
    try:
        values = tuple(int(v) for v in items)
    except ValueError:
        raise BenchError(f"{what}={text!r}: expected integers separated by commas") from None
    if not values:
        raise _nothing_listed(text, what)
    if what == "SEEDS":
        bad = [v for v in values if not 0 <= v <= MAX_SEED]
        if bad:
            raise BenchError(f"{what}={text!r}: seed {bad[0]} is out of range; expected "
                             f"integers from 0 to {MAX_SEED} (2**32 - 1)")
    return values


def _trials(text: str) -> int:
    """--trials / TRIALS: an optuna budget of >= 1 trial, refused while parsing (a searched
    protocol used to find a bad budget only after the backbone was built and a task prepared)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"TRIALS={text!r}: expected a whole number of optuna "
                                         "trials >= 1 (the budget per cell of a searched "
                                         "protocol)")
    return value


#: numpy / scikit-learn random states take seeds below 2**32
MAX_SEED = 2**32 - 1


def _precision_options(p: argparse.ArgumentParser, workers: bool = True) -> None:
    p.add_argument("--precision", default="auto",
                   help="auto (bf16 where the hardware runs it fast, else fp32) | fp32 | bf16")
    if workers:
        p.add_argument("--device", default="auto",
                       help="where the encoder runs: auto (the first CUDA GPU where torch sees "
                            "one, else the CPU) | cpu | cuda | cuda:N")
        p.add_argument("--workers", default=None,
                       help="decode processes (default: 0 = a thread in this process for a CPU "
                            "model, one per spare core for a GPU model)")


def _preprocess(text: str) -> str:
    from brainbench.preprocess import check_preprocess_place

    return check_preprocess_place(text)


def _split_option(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--split", default=None,
                   help=f"{verb} a declared split variant instead of the standard split: "
                        "site-held-out (tasks whose datasets record sites; `brainbench list "
                        "tasks` shows each task's variants)")


def _precision(text: str) -> str:
    from brainbench.precision import PRECISIONS

    if text.lower() not in PRECISIONS:
        raise BenchError(f"PRECISION={text!r} (--precision): expected one of "
                         f"{', '.join(PRECISIONS)}")
    return text.lower()


def _table_format(text: str) -> str:
    """`results --format`: a tabulate table format (tabulate itself falls back to `simple`
    for a name it does not know, silently)."""
    from tabulate import tabulate_formats

    if text not in tabulate_formats:
        raise BenchError(f"FORMAT={text!r} (--format): expected a table format: simple, github "
                         f"or latex, or another of tabulate's: {', '.join(tabulate_formats)}")
    return text


def _count(value: int | None, what: str | None, option: str, least: int,
           meaning: str) -> int | None:
    """An integer option that must be at least ``least`` (None: not given, its default);
    ``what``: its make variable, where it has one."""
    if value is not None and value < least:
        shown = f"{what}={value} ({option})" if what else f"{option} {value}"
        raise BenchError(f"{shown}: expected an integer >= {least} ({meaning})")
    return value


def _bootstrap_options(args: argparse.Namespace) -> None:
    """--bootstrap (resamples, >= 1) and --bootstrap-seed (a non-negative integer), checked
    before any store is opened or anything is computed."""
    _count(args.bootstrap, "BOOTSTRAP", "--bootstrap", 1, "the number of bootstrap resamples")
    if getattr(args, "bootstrap_seed", None) is not None:
        _count(args.bootstrap_seed, None, "--bootstrap-seed", 0,
               "the seed of the bootstrap resamples, e.g. 0")


def _runtime(text: str) -> str:
    from brainbench.runtime import check_runtime

    return check_runtime(text)


def _workers(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise BenchError(f"WORKERS={text!r} (--workers): expected an integer >= 0 "
                         "(0 decodes in this process)")
    return value


def _listed_backbone(name: str, weights: str | None):
    """One registered backbone as `list backbones` shows it. A built-in one listed before with
    the same weights comes from its record in the cache folder (brainbench.deferred): building
    all twelve networks took ~20 s on a 2-core CPU, most of it initialising weights that the
    listing never uses."""
    from functools import partial

    from brainbench.backbone import create_backbone
    from brainbench.deferred import can_defer, deferred
    from brainbench.paths import cache_dir

    build = partial(create_backbone, name, weights=weights)
    if not can_defer(name):
        return build()
    resolved = None if weights is None else Path(weights).expanduser().resolve()
    return deferred(build, {"listing": name, "weights": resolved}, cache_dir())


def _check_list_options(args: argparse.Namespace) -> None:
    """--model / --weights say which backbone's checkpoint `list backbones` checks: anywhere
    else, or naming a backbone that is not registered, they would be silently ignored."""
    given = [f"--{o}" for o in ("model", "weights") if getattr(args, o) is not None]
    if given and args.what != "backbones":
        them = "them" if len(given) > 1 else "it"
        raise BenchError(f"{' and '.join(given)}: only `list backbones` uses {them} (which "
                         f"backbone's checkpoint to check); leave {them} out of "
                         f"`list {args.what}`")
    if args.model is not None:
        from brainbench.backbone import BACKBONES, load_plugins

        load_plugins()
        if args.model not in BACKBONES:
            raise BenchError(f"MODEL={args.model!r} (--model): no such backbone; registered: "
                             f"{', '.join(BACKBONES.names())}")
    if args.weights is not None and args.model is None:
        args.model = "braindino"  # the checkpoint a bare --weights has always meant


def cmd_list(args: argparse.Namespace) -> None:
    from tabulate import tabulate

    _check_list_options(args)
    if args.what == "tasks":
        from brainbench.taskspec import all_tasks

        rows = [[t.id, t.kind, " / ".join(t.datasets), "+".join(t.modalities), t.primary_metric,
                 t.stratify_description(), ",".join(f"{f:g}" for f in t.fractions),
                 t.min_per_stratum, len(t.seeds), ", ".join(t.split_names) or "-",
                 ",".join(f"{f:g}" for f in t.precision_rule.fp32_fractions)
                 if t.precision_rule else "-",
                 t.status + (f": {t.pending_reason}" if t.pending_reason else "")]
                for t in all_tasks()]
        print(tabulate(rows, headers=["task", "kind", "dataset", "modalities", "primary",
                                      "split strata", "fractions", "label floor", "seeds",
                                      "split variants", "fp32 under auto", "status"]))
        print("label floor: every training subset holds at least this many people per label "
              "stratum (class, event status or target bin) that the training split has")
        print("fp32 under auto: fractions where PRECISION=auto runs fp32 because bf16 moved the "
              "primary metric by more than 0.25 seed sd in the default sweep (BENCHMARKS.md "
              "'Fidelity')")
        print("split variants: run with --split NAME (SPLIT=NAME); site-held-out trains on "
              "the other sites and tests on one held-out site (README 'Unseen sites')")
    elif args.what == "backbones":
        from brainbench.backbone import BACKBONES, load_plugins

        import brainbench.baselines  # noqa: F401

        load_plugins()  # entry-point backbones of installed packages
        rows = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in BACKBONES.names():
                backbone = _listed_backbone(name, args.weights if name == args.model else None)
                c = backbone.contract
                rows.append([name, c.dims, "x".join(map(str, c.image_size)), c.num_slices or "-",
                             c.intensity, "+".join(c.tokens), c.feature_dim,
                             f"{backbone.parameter_count() / 1e6:.1f}M",
                             backbone.architecture().get("input_spacing", "-"),
                             ("none (random)" if backbone.weights.is_random else "none (control)"
                             if backbone.weights.is_control else "found"),
                             backbone.weights.status, backbone.weights.source])
        print(tabulate(rows, headers=["backbone", "dims", "input", "slices", "intensity",
                                      "tokens", "dim", "params", "spacing", "weights file",
                                      "status", "source"]))
        print("input, slices: each backbone's own contract; a run of a 2d backbone feeds it "
              "the profile's slice size and count instead (default cpu: 112 px, 16 slices; "
              "`brainbench list profiles`)")
    elif args.what == "protocols":
        from brainbench.protocols import PROTOCOLS

        rows = [[p.name, p.head, p.variant, p.aggregation,
                 ", ".join(p.search_space) if p.searched else "inner CV (no optuna)",
                 p.description] for p in map(PROTOCOLS.get, PROTOCOLS.names())]
        print(tabulate(rows, headers=["protocol", "head", "features", "aggregation",
                                      "searched", "description"], maxcolwidths=[None] * 5 + [60]))
    else:
        from brainbench.profiles import PROFILES

        from brainbench.taskspec import DEFAULT_TEST_FRACTION

        rows = [[p.name, p.slice_size or "-", p.num_slices or "-", p.batch_size,
                 f"{p.phantom_subjects}" + "".join(f" ({d} {n})" for d, n in p.phantom_sizes),
                 f"{p.phantom_test_fraction or DEFAULT_TEST_FRACTION:g}",
                 len(p.seeds) if p.seeds else "task's (5)", p.description]
                for p in map(PROFILES.get, PROFILES.names())]
        print(tabulate(rows, headers=["profile", "slice size", "slices", "batch",
                                      "phantom people/dataset", "phantom test share",
                                      "seeds", "description"]))


def _print_table(config, pending=()) -> None:
    from brainbench.leaderboard.tables import comparison_table, detectable_note
    from brainbench.runner import resolve_tasks
    from brainbench.store import ResultStore, default_url

    store = ResultStore(config.db_url or default_url(config.results_dir), create=False)
    tasks = [t for t in resolve_tasks(config.tasks) if t.status == "ready"]
    split = getattr(config, "split", "") or ""
    from brainbench.taskspec import SPLIT_VARIANTS

    if split and split not in SPLIT_VARIANTS:
        raise BenchError(f"SPLIT={split!r} (--split): expected one of {', '.join(SPLIT_VARIANTS)} "
                         "(or nothing: the standard split)")
    frame = store.frame(backbone=list(config.models) if config.models else None,
                        task=[t.id for t in tasks],
                        profile=config.profile.name if config.profile else None)
    frame = frame[frame["split"].str.startswith(f"{split}:") if split else frame["split"] == ""]
    if split:
        held = sorted(set(zip(frame["task"], frame["split"])))
        print(f"split variant {split}; held out: "
              + (", ".join(f"{task} {label.partition(':')[2]}" for task, label in held)
                 or "nothing stored yet"))
    if config.fractions:
        frame = frame[frame["fraction"].isin(config.fractions)]
    if config.data_source:
        frame = frame[frame["data_source"] == config.data_source]
    if frame.empty and not pending:
        from brainbench.leaderboard.analysis import no_results_error, selection

        raise no_results_error(store, selection(
            config.models, config.tasks, config.profile.name if config.profile else None,
            config.data_source, split, config.fractions))
    from brainbench.analyses.contamination import lookup

    pretraining = lookup(set(frame["backbone"])) if not frame.empty else {}
    print(comparison_table(frame, tasks, fmt=config.format, pending=pending,
                           pretraining=pretraining,
                           hide_contaminated=getattr(config, "hide_contaminated", False)))
    note = detectable_note(store, frame, tasks, split)
    if note:
        print(note)


def cmd_run(args: argparse.Namespace) -> None:
    from types import SimpleNamespace

    from brainbench.paths import cache_dir, results_dir
    from brainbench.profiles import PROFILES
    from brainbench.runner import RunConfig, run

    config = RunConfig(
        model=args.model, fractions=_fractions(args.fraction),
        profile=PROFILES.get(args.profile), cache_dir=Path(args.cache or cache_dir()),
        results_dir=Path(args.results or results_dir()), tasks=_names(args.tasks, "TASKS"),
        seeds=_ints(args.seeds, "SEEDS"), weights=Path(args.weights) if args.weights else None,
        require_weights=args.require_weights, data_dir=Path(args.data) if args.data else None,
        datasets=_names(args.dataset, "DATASET"),
        db_url=args.db, force=args.force, progress=not args.no_progress,
        protocol=args.protocol, trials=args.trials, precision=_precision(args.precision),
        workers=_workers(args.workers), preprocess_on=_preprocess(args.preprocess),
        device=args.device, compile=_runtime(args.compile), executor=args.executor,
        ray_address=args.ray_address or None, split=args.split or "")
    started = time.perf_counter()
    report = run(config)
    elapsed = time.perf_counter() - started
    status = report.weights_status.upper()
    fallbacks = (f" (fp32 by the tasks' precision rules: {', '.join(report.precision_fallbacks)})"
                 if report.precision_fallbacks else "")
    print(f"\nbackbone {report.backbone}: weights {status} ({report.weights_source}); "
          f"precision {report.precision}{fallbacks}; runtime {report.runtime}; "
          f"device {report.device}")
    print(f"data: {report.data_source}; results: {report.store_url}")
    computed = sum(c.computed for c in report.cells)
    ext = report.extraction
    print(f"cells: {computed} computed, {len(report.cells) - computed} already stored "
          f"(use --force / FORCE=1 to recompute); volumes: {ext.computed} encoded, "
          f"{ext.cached} from cache; {ext.items_encoded} slices in {ext.forward_calls} forward "
          f"calls; {elapsed:.1f} s")
    for note in report.notes:
        print(f"note: {note}")
    for task in report.unavailable:
        print(f"not run, no data: {task}")
    for task in report.other_split:
        print(f"not run on split {config.split}: {task}")
    print()
    _print_table(SimpleNamespace(db_url=args.db, results_dir=config.results_dir,
                                 tasks=config.tasks, models=(report.backbone,),
                                 profile=config.profile, fractions=config.fractions,
                                 data_source=report.data_source, format="simple",
                                 split=config.split),
                 pending=report.pending)


def cmd_results(args: argparse.Namespace) -> None:
    from types import SimpleNamespace

    from brainbench.paths import results_dir
    from brainbench.profiles import PROFILES

    _print_table(SimpleNamespace(
        db_url=args.db, results_dir=Path(args.results or results_dir()),
        tasks=_names(args.tasks, "TASKS"), models=_names(args.models, "MODELS"),
        profile=PROFILES.get(args.profile) if args.profile else None,
        fractions=_fractions(args.fraction) if args.fraction is not None else None,
        data_source=None, format=_table_format(args.format),
        hide_contaminated=args.hide_contaminated,
        split=args.split or ""))


def _analysis(args: argparse.Namespace, fractions=None):
    """The statistics of the selected stored results (see brainbench.leaderboard.analysis)."""
    from brainbench.leaderboard.analysis import load_analysis
    from brainbench.paths import results_dir
    from brainbench.store import ResultStore, default_url

    from brainbench.analyses.contamination import lookup

    _bootstrap_options(args)
    models, tasks = _names(args.models, "MODELS"), _names(args.tasks, "TASKS")
    store = ResultStore(args.db or default_url(Path(args.results or results_dir())),
                        create=False)
    analysis = load_analysis(store, models=models, tasks=tasks,
                             fractions=fractions, profile=args.profile,
                             data_source=args.data_source, reference=args.reference,
                             n_boot=args.bootstrap, seed=args.bootstrap_seed,
                             protocol=args.protocol, resampling=args.resample)
    from brainbench.leaderboard.robustness import load_unseen_sites

    analysis.unseen_sites = load_unseen_sites(
        store, models, tasks=tasks, fractions=fractions,
        profile=args.profile, data_source=args.data_source, n_boot=args.bootstrap,
        seed=args.bootstrap_seed, protocol=args.protocol, resampling=args.resample)
    submissions = getattr(args, "submissions", None)
    analysis.pretraining = lookup({e.backbone for e in analysis.entries},
                                  Path(submissions) if submissions else None)
    if getattr(args, "hide_contaminated", False) and analysis.hide_contaminated() \
            and not analysis.cells:
        raise BenchError("every selected cell is contaminated (its evaluation dataset is in "
                         "the backbone's declared pretraining data); nothing left to show "
                         "with --hide-contaminated")
    return analysis


# Where each statistics command writes unless --out says: (environment variable or None,
# folder under the results folder). Generated files never land in the source tree.
OUTPUTS = {"table": (None, "reports"), "curves": (None, "figures"),
           "leaderboard": ("BRAINBENCH_SITE", "site"), "export": (None, "export")}


def _out_dir(args: argparse.Namespace) -> Path:
    """--out, else the command's environment variable, else its folder in --results /
    BRAINBENCH_RESULTS (the folder the store lives in)."""
    from brainbench.paths import results_dir

    env, folder = OUTPUTS[args.command]
    chosen = args.out or (os.environ.get(env) if env else None)
    return Path(chosen) if chosen else Path(args.results or results_dir()) / folder


def _stats_fractions(args: argparse.Namespace):
    """--fraction of table / curves, a comma list: (the fractions, the analysis of them), or
    (None, None) without it. A listed fraction without results is an error, never dropped."""
    if args.fraction is None:
        return None, None
    wanted = list(dict.fromkeys(_fractions(args.fraction)))  # the range before any store
    analysis = _analysis(args, wanted)  # none of them stored: its "no results" error
    missing = [f for f in wanted if f not in analysis.fractions()]
    if missing:
        raise BenchError(f"FRACTION={args.fraction}: no results at fraction "
                         f"{', '.join(f'{f:g}' for f in missing)} for that selection (of those "
                         f"asked for, stored: {', '.join(f'{f:g}' for f in analysis.fractions())})")
    return wanted, analysis


def cmd_table(args: argparse.Namespace) -> None:
    """One table (Markdown + LaTeX file) per fraction of --fraction, each computed as if it
    had been asked for alone; without --fraction the headline fraction."""
    from brainbench.leaderboard.tables import stats_table, write_text_atomic

    out = _out_dir(args)
    fractions, analysis = _stats_fractions(args)
    for fraction in fractions or [None]:
        if fraction is None or len(fractions) > 1:
            analysis = _analysis(args, [fraction] if fraction else None)
        fraction = fraction or analysis.headline_fraction()
        markdown = stats_table(analysis, fraction, "markdown")
        write_text_atomic(out / f"table_f{fraction:g}.md", markdown)
        write_text_atomic(out / f"table_f{fraction:g}.tex",
                          stats_table(analysis, fraction, "latex"))
        print(markdown)
        print(f"written: {out / f'table_f{fraction:g}.md'}, {out / f'table_f{fraction:g}.tex'}")


def cmd_curves(args: argparse.Namespace) -> None:
    from brainbench.leaderboard.curves import write_curves

    fractions, analysis = _stats_fractions(args)
    paths = write_curves(analysis or _analysis(args), _out_dir(args))
    print("written: " + ", ".join(map(str, paths)))


def _headline_fraction(text: str | None) -> float | None:
    """leaderboard --fraction: the one headline fraction (the site shows every stored one)."""
    if text is None:
        return None
    fractions = list(dict.fromkeys(_fractions(text)))
    if len(fractions) > 1:
        raise BenchError(f"FRACTION={text!r} (--fraction): the leaderboard has one headline "
                         "fraction (its first table; the site shows every stored fraction "
                         "after it); pass one value, e.g. --fraction "
                         f"{fractions[0]:g}")
    return fractions[0]


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from brainbench.leaderboard.site import build_site
    from brainbench.submission.bundle import submission_flags

    fraction = _headline_fraction(args.fraction)
    analysis = _analysis(args)
    if fraction is not None and fraction not in analysis.fractions():
        raise BenchError(f"FRACTION={args.fraction} (--fraction): no results at fraction "
                         f"{fraction:g} for that selection (stored: "
                         f"{', '.join(f'{f:g}' for f in analysis.fractions())})")
    analysis.flags.update(submission_flags(Path(args.submissions) if args.submissions else None))
    from brainbench.leaderboard.site import submitted_files

    analysis.submitted.update(submitted_files(Path(args.submissions) if args.submissions
                                              else None))
    from brainbench.paths import results_dir
    from brainbench.store import ResultStore, default_url

    folder = Path(args.results or results_dir())
    rows = ResultStore(args.db or default_url(folder), create=False).analyses(
        _names(args.models, "MODELS"))
    index = build_site(analysis, _out_dir(args), fraction, analyses=rows, results_dir=folder)
    print(f"written: {index} (open it in a browser; no network needed)")


def cmd_analyze(args: argparse.Namespace) -> None:
    from brainbench.analyses.run import AnalyzeConfig, analyze
    from brainbench.paths import cache_dir, results_dir
    from brainbench.profiles import PROFILES

    _count(args.bootstrap, "BOOTSTRAP", "--bootstrap", 1, "person bootstrap resamples")
    models = _names(args.models, "MODELS") or ((args.model,) if args.model else None)
    if not models:
        raise BenchError("analyze needs --model NAME or --models a,b")
    if args.model and args.models:
        raise BenchError(f"pass --model or --models, not both (got --model {args.model} and "
                         f"--models {args.models})")
    from brainbench.backbone import check_backbone_name

    for name in models:  # all named before the first is built
        check_backbone_name(name)
    report = analyze(AnalyzeConfig(
        models=models, profile=PROFILES.get(args.profile),
        cache_dir=Path(args.cache or cache_dir()), results_dir=Path(args.results or results_dir()),
        data_dir=Path(args.data) if args.data else None, db_url=args.db,
        weights=Path(args.weights) if args.weights else None, progress=not args.no_progress,
        n_boot=args.bootstrap))
    from brainbench.leaderboard.analysis_pages import analysis_table

    print(analysis_table(report.results))
    for note in report.notes:
        print(f"note: {note}")
    print(f"data: {report.data_source}; backbone forward passes: {report.forward_calls}; "
          f"{len(report.results)} row(s) stored in {report.store_url}")
    for figure in report.figures:
        print(f"figure: {figure}")
    print(f"pages: {report.site}")


def cmd_export(args: argparse.Namespace) -> None:
    from brainbench.paths import results_dir
    from brainbench.results_io import export_results
    from brainbench.store import ResultStore, default_url

    models, tasks = _names(args.models, "MODELS"), _names(args.tasks, "TASKS")
    store = ResultStore(args.db or default_url(Path(args.results or results_dir())),
                        create=False)
    for path in export_results(store, _out_dir(args), list(models or []), list(tasks or [])):
        print(f"written: {path}")


def _data_lookup(args: argparse.Namespace):
    """Where `import` / `import-bundle` look for the cohorts (--cache, --data) to recompute
    the split and training subsets of the cells."""
    from brainbench.paths import cache_dir
    from brainbench.results_io import DataLookup

    return DataLookup(Path(args.cache or cache_dir()), Path(args.data) if args.data else None)


def _import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="folder with the real datasets the cells were computed on, to recompute "
                        "their training subsets (default: as `run`: DATA / dataset config)")
    p.add_argument("--cache", default=None,
                   help="cache folder holding the phantom cohorts and voxel hashes (default: as "
                        "`run`: $BRAINBENCH_CACHE or ~/.cache/brainbench)")
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None)


def cmd_import(args: argparse.Namespace) -> None:
    from brainbench.paths import results_dir
    from brainbench.results_io import import_files
    from brainbench.store import default_url

    # every file is verified before the store is opened: a refusal creates nothing
    store, reports = import_files(args.db or default_url(Path(args.results or results_dir())),
                                  [Path(f) for f in args.files], _data_lookup(args))
    for report in reports:
        print(f"imported {report.cells} cell(s) of {report.backbone} on {report.task} from "
              f"{report.path} ({report.replaced} replaced, {report.kept} already computed "
              f"here and kept) into {store.shown}")


def _submit_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("backbone", help="backbone card (.toml), Python backbone file (.py) or a "
                                    "registered / entry-point name")
    p.add_argument("--profile", type=str.strip, default="cpu")
    p.add_argument("--weights", default=None, help="checkpoint replacing the card's weights")
    p.add_argument("--require-weights", action="store_true")


def cmd_validate(args: argparse.Namespace) -> None:
    from brainbench.profiles import PROFILES
    from brainbench.submission.validate import validate

    started = time.perf_counter()
    report = validate(args.backbone, PROFILES.get(args.profile), args.weights,
                      args.require_weights, precision=_precision(args.precision))
    print(report.render())
    print(f"validation took {time.perf_counter() - started:.1f} s")
    if not report.ok:
        raise BenchError(f"{args.backbone} failed {len(report.failures)} check(s): "
                         + "; ".join(f"{c.name}: {c.detail}" for c in report.failures))


def cmd_submit(args: argparse.Namespace) -> None:
    from brainbench.paths import cache_dir, results_dir
    from brainbench.profiles import PROFILES
    from brainbench.submission.bundle import SubmitConfig, submissions_dir, submit

    result = submit(SubmitConfig(
        backbone=Path(args.backbone), profile=PROFILES.get(args.profile),
        fractions=_fractions(args.fraction), cache_dir=Path(args.cache or cache_dir()),
        results_dir=Path(args.results or results_dir()),
        out_root=Path(args.out) if args.out else submissions_dir(),
        tasks=_names(args.tasks, "TASKS"),
        seeds=_ints(args.seeds, "SEEDS"), weights=Path(args.weights) if args.weights else None,
        require_weights=args.require_weights, db_url=args.db, progress=not args.no_progress,
        precision=_precision(args.precision), workers=_workers(args.workers),
        device=args.device, data_dir=Path(args.data) if args.data else None))
    print((result.bundle / "SUMMARY.md").read_text())
    print(f"bundle: {result.bundle} ({result.cells} cell(s); validation "
          f"{result.validation_seconds:.1f} s, run {result.run_seconds:.1f} s)")
    for flag in result.flags:
        print(f"flag: {flag}")


def cmd_import_bundle(args: argparse.Namespace) -> None:
    from brainbench.paths import results_dir
    from brainbench.store import default_url, shown_url
    from brainbench.submission.bundle import import_bundles

    url = args.db or default_url(Path(args.results or results_dir()))
    # every bundle is verified before any is written: all are imported, or none
    imported = import_bundles([Path(b) for b in args.bundles], url,
                              Path(args.out) if args.out else None, lookup=_data_lookup(args))
    for bundle, done in zip(args.bundles, imported):
        print(f"imported {done.cells} cell(s) from {bundle} ({done.replaced} replaced, "
              f"{done.kept} already computed here and kept) into {shown_url(url)}; bundle at "
              f"{done.bundle}")


def cmd_phantoms(args: argparse.Namespace) -> None:
    from brainbench.paths import cache_dir
    from brainbench.phantoms import DATASETS, PHANTOM_VERSION, generate_phantoms
    from brainbench.profiles import PROFILES

    _count(args.n, None, "--n", 1, "people per dataset; leave --n out for the profile's sizes")
    _count(args.workers, None, "--workers", 1, "render processes, 1 renders in this process; "
           "leave --workers out for one per available core, at most 16")
    profile = PROFILES.get(args.profile)
    if args.n is not None:  # one size for every dataset, whatever the profile's
        tag, people = f"v{PHANTOM_VERSION}-seed{profile.phantom_seed}-n{args.n}", args.n
    else:
        tag, people = profile.phantom_tag(), profile.phantom_people(DATASETS)
    root = Path(args.root) if args.root else cache_dir() / "phantoms" / tag
    _usable_folder(root, "phantom folder (--root / BRAINBENCH_CACHE)")
    print(generate_phantoms(root, people, seed=profile.phantom_seed, workers=args.workers))


def cmd_data_check(args: argparse.Namespace) -> None:
    from brainbench.datacheck import check_task
    from brainbench.leakage import HashCache
    from brainbench.paths import cache_dir, results_dir
    from brainbench.profiles import PROFILES
    from brainbench.runner import RunConfig, on_split, prepare_data, resolve_tasks

    tasks, _ = on_split(resolve_tasks(_names(args.task, "TASK"),
                                      _names(args.dataset, "DATASET")),
                        args.split or "", explicit=bool(args.task))
    config = RunConfig(model="", fractions=(), profile=PROFILES.get(args.profile),
                       cache_dir=Path(args.cache or cache_dir()),
                       results_dir=Path(args.results or results_dir()),
                       data_dir=Path(args.data) if args.data else None,
                       progress=not args.no_progress)
    roots, data_source = prepare_data(config, {t.dataset for t in tasks})
    hashes = HashCache(config.cache_dir / "voxel_hashes.json")
    failed, absent = [], []
    for task in tasks:
        if task.dataset not in roots:
            absent.append(f"{task.id} (dataset {task.dataset} not found)")
            continue
        report = check_task(task.for_profile(config.profile, data_source), roots[task.dataset],
                            data_source=data_source,
                            results_dir=config.results_dir, hash_cache=hashes,
                            headers_only=args.headers_only)
        print(report.render() + "\n")
        if not report.ok:
            failed.append(task.id)
    for line in absent:
        print(f"not checked, no data: {line}")
    if absent:
        from brainbench.runner import missing_data_message

        print(missing_data_message(config, sorted({t.dataset for t in tasks
                                                   if t.dataset not in roots})))
    if absent and (args.task or len(absent) == len(tasks)):
        failed += absent
    if failed:
        raise BenchError(f"data check failed: {', '.join(failed)} cannot be used as is "
                         "(see the report above)")


def cmd_oracle(args: argparse.Namespace) -> None:
    from brainbench.phantoms.oracle import format_report, oracle_report

    print(format_report(oracle_report(Path(args.root))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks, backbones or profiles")
    p.add_argument("what", choices=["tasks", "backbones", "profiles", "protocols"])
    p.add_argument("--model", type=str.strip, default=None,
                   help="with list backbones: the backbone --weights belongs to (braindino)")
    p.add_argument("--weights", default=None)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="extract frozen features, fit probes, store and print results")
    p.add_argument("--model", type=str.strip, default="braindino")
    p.add_argument("--fraction", default="0.01", help="label fraction(s) in (0, 1], comma list")
    p.add_argument("--tasks", default=None, help="comma list (default: all)")
    p.add_argument("--seeds", default=None, help="comma list (default: the profile's seeds, "
                   "else each task's 5)")
    p.add_argument("--profile", type=str.strip, default="cpu")
    p.add_argument("--weights", default=None, help="checkpoint file for the backbone")
    p.add_argument("--require-weights", action="store_true",
                   help="fail instead of falling back to random initialisation")
    p.add_argument("--data", default=None, help="folder with real datasets (default: phantoms)")
    p.add_argument("--dataset", default=None,
                   help="alternate dataset(s): 'oasis1' or 'neurodegen_cls=oasis1' (comma list)")
    p.add_argument("--cache", default=None)
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default: sqlite in --results)")
    p.add_argument("--force", action="store_true", help="recompute cells already stored")
    p.add_argument("--protocol", default="linear",
                   help="probe protocol (see `brainbench list protocols`)")
    p.add_argument("--trials", type=_trials, default=DEFAULT_TRIALS,
                   help="optuna trial budget per cell for searched protocols (paper, attention)")
    _precision_options(p)
    p.add_argument("--compile", default="auto",
                   help="how the encoder's forward pass executes: auto (compiled where it "
                        "measured faster, on a CPU with a C++ compiler: bf16 at images >= 112 "
                        "px with AMX, >= 224 px with AVX-512 BF16 alone; fp32 at >= 224 px on "
                        "AVX-512 without a bf16 path) | eager | "
                        "compiled (torch.compile with frozen weights)")
    p.add_argument("--preprocess", default="workers",
                   help="where z-score and resize run: workers (numpy, in the decode workers; "
                        "default) | device (torch on the model's device, e.g. a GPU; the "
                        "workers only decode)")
    p.add_argument("--executor", default="local",
                   help="local (this process, the default) | ray (a Ray cluster; README "
                        "'Running on a cluster')")
    p.add_argument("--ray-address", default=None,
                   help="--executor ray: the cluster's address, e.g. 127.0.0.1:6379 or auto "
                        "(default: $RAY_ADDRESS, else a private local Ray instance)")
    _split_option(p, "evaluate on")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="print a comparison table from the store")
    p.add_argument("--models", default=None)
    p.add_argument("--tasks", default=None)
    p.add_argument("--fraction", default=None)
    p.add_argument("--profile", type=str.strip, default=None)
    p.add_argument("--format", default="simple", help="tabulate format: simple, github, latex")
    p.add_argument("--hide-contaminated", action="store_true",
                   help="drop cells whose evaluation dataset is in the backbone's declared "
                        "pretraining data")
    _split_option(p, "show the cells of")
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None)
    p.set_defaults(func=cmd_results)

    def stats_options(p: argparse.ArgumentParser, command: str) -> None:
        env, folder = OUTPUTS[command]
        p.add_argument("--models", default=None, help="comma list (default: all stored)")
        p.add_argument("--tasks", default=None, help="comma list (default: all stored)")
        p.add_argument("--fraction", default=None,
                       help="label fraction(s), a comma list: table: one table each (default: "
                            "the largest shared one); curves: the fractions drawn (default: "
                            "all stored); leaderboard: the headline fraction (one value; "
                            "default: the largest shared one)")
        p.add_argument("--profile", type=str.strip, default=None)
        p.add_argument("--data-source", default=None, help="e.g. phantom:v1-seed0-n80")
        p.add_argument("--protocol", default=None,
                       help="keep one protocol ('paper') or protocol and budget ('paper[20 "
                            "trials]'); default: all, each (backbone, protocol) its own row")
        p.add_argument("--reference", default=None,
                       help="backbone the others are tested against (default: first pretrained "
                            "of --models); with several protocols, its full row label")
        p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
        p.add_argument("--bootstrap-seed", type=int, default=0)
        p.add_argument("--resample", choices=RESAMPLING, default=DEFAULT_RESAMPLING,
                       help="people+seeds: two-level bootstrap over training subsets and test "
                            "people (default); people: test people only, heads held fixed "
                            "(the first release's intervals)")
        p.add_argument("--out", default=None, help="output folder (default: "
                       + (f"${env}, else " if env else "") + f"{folder}/ in the results folder)")
        p.add_argument("--hide-contaminated", action="store_true",
                       help="drop cells whose evaluation dataset is in the backbone's declared "
                            "pretraining data (default: shown, marked ‡ / CONTAMINATED)")
        p.add_argument("--results", default=None,
                       help="results folder: the store (unless --db) and the default outputs "
                            "(default $BRAINBENCH_RESULTS or ./results)")
        p.add_argument("--db", default=None)

    p = sub.add_parser("table", help="Markdown + LaTeX table with intervals and significance")
    stats_options(p, "table")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("curves", help="label-scarcity curves (PNG + SVG)")
    stats_options(p, "curves")
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("leaderboard", help="the static leaderboard site")
    stats_options(p, "leaderboard")
    p.add_argument("--submissions", default=None,
                   help="submission bundles whose flags the site shows (default "
                        "$BRAINBENCH_SUBMISSIONS or leaderboard/submissions)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("analyze", help="representation analyses: PCA maps, tissue / lesion / "
                                       "site probes, CKA and kNN agreement between backbones")
    p.add_argument("--model", type=str.strip, default=None, help="one backbone")
    p.add_argument("--models", default=None, help="comma list (adds CKA and kNN agreement)")
    p.add_argument("--profile", type=str.strip, default="cpu")
    p.add_argument("--weights", default=None, help="checkpoint file (one backbone only)")
    p.add_argument("--data", default=None, help="folder with real datasets (default: phantoms)")
    p.add_argument("--bootstrap", type=int, default=1000, help="person bootstrap resamples")
    p.add_argument("--cache", default=None)
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default: sqlite in --results)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("export", help="write one versioned JSON results file per (backbone, task)")
    p.add_argument("--models", default=None)
    p.add_argument("--tasks", default=None)
    p.add_argument("--out", default=None, help="folder for the files (default: export/ in "
                   "--results)")
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="validate JSON results files and add them to the store")
    p.add_argument("files", nargs="+")
    _import_options(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("validate", help="check a backbone card / file before any long run")
    _submit_common(p)
    _precision_options(p, workers=False)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", help="validate, run the suite, write a submission bundle")
    _submit_common(p)
    p.add_argument("--fraction", default="0.01", help="label fraction(s), comma list")
    p.add_argument("--tasks", default=None, help="comma list (default: all endpoints)")
    p.add_argument("--seeds", default=None, help="comma list (default: each task's seeds)")
    p.add_argument("--out", default=None, help="bundle root (default $BRAINBENCH_SUBMISSIONS "
                                               "or leaderboard/submissions)")
    p.add_argument("--data", default=None,
                   help="folder holding the real datasets (default: as `run`: DATA / dataset "
                        "config, else the phantom cohorts)")
    p.add_argument("--cache", default=None)
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None)
    _precision_options(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("import-bundle", help="add a submission bundle made elsewhere (results "
                                             "only) to the store and the leaderboard")
    p.add_argument("bundles", nargs="+")
    p.add_argument("--out", default=None, help="where the bundle is copied (default "
                                               "$BRAINBENCH_SUBMISSIONS or leaderboard/submissions)")
    _import_options(p)
    p.set_defaults(func=cmd_import_bundle)

    p = sub.add_parser("phantoms", help="generate the phantom cohorts (done by run when needed)")
    p.add_argument("--profile", type=str.strip, default="cpu")
    p.add_argument("--n", type=int, default=None, help="people per dataset")
    p.add_argument("--root", default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="render processes (default: one per available core, at most 16)")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("data-check", help="validate datasets for tasks before any compute")
    p.add_argument("--task", default=None, help="comma list (default: every task)")
    p.add_argument("--data", default=None, help="folder with real datasets (default: phantoms)")
    p.add_argument("--dataset", default=None,
                   help="alternate dataset(s): 'oasis1' or 'neurodegen_cls=oasis1' (comma list)")
    p.add_argument("--profile", type=str.strip, default="cpu", help="phantom cohort size when no data is given")
    p.add_argument("--headers-only", action="store_true",
                   help="read headers and lengths only (no voxel hashes, no duplicate check)")
    p.add_argument("--cache", default=None)
    p.add_argument("--results", default=None, help="where split manifests are compared")
    _split_option(p, "check")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("oracle", help="learnability check of a phantom cohort folder")
    p.add_argument("root")
    p.set_defaults(func=cmd_oracle)
    return parser


def _usable_folder(path: Path, what: str, writable: bool = True) -> None:
    """A folder a command writes into: absent (created later), or a writable directory
    (``writable=False``: a folder it only reads, which must not be a file)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise BenchError(f"{what} {path}: {existing} is a file, expected a folder; pass "
                         "another folder")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise BenchError(f"{what} {path}: {existing} is read-only; pass a writable folder")


#: commands that write into the results folder (store, split manifests)
WRITES_RESULTS = ("cmd_run", "cmd_import", "cmd_submit", "cmd_import_bundle",
                  "cmd_analyze")
#: commands that only read the store (and write their outputs, --out)
READS_RESULTS = ("cmd_results", "cmd_table", "cmd_curves", "cmd_leaderboard", "cmd_export")
#: commands that write submission bundles (--out, default $BRAINBENCH_SUBMISSIONS)
WRITES_BUNDLES = ("cmd_submit", "cmd_import_bundle")


def _check_folders(args: argparse.Namespace) -> None:
    """Before any work: the cache and results folders a command will write must be usable,
    the folders it reads must be folders, and a store it only reads must exist (opening a
    missing SQLite store would create an empty results.db)."""
    from brainbench.paths import cache_dir, results_dir

    command = getattr(args.func, "__name__", "")
    if getattr(args, "data", None):  # as `run` checks DATA, for every command reading it
        data = Path(args.data).expanduser()
        if not data.is_dir():
            raise BenchError(f"DATA={data} is not a folder (--data): expected the folder "
                             "holding the real datasets (README 'Real data')")
    if getattr(args, "cache", "absent") != "absent":
        _usable_folder(Path(args.cache or cache_dir()), "cache folder (--cache / BRAINBENCH_CACHE)")
    results = "results folder (--results / BRAINBENCH_RESULTS)"
    if getattr(args, "results", "absent") != "absent" and not getattr(args, "db", None):
        folder = Path(args.results or results_dir())
        if command in WRITES_RESULTS:
            _usable_folder(folder, results)
        elif command in READS_RESULTS:
            _usable_folder(folder, results, writable=False)
            if not (folder / "results.db").exists():
                raise BenchError(f"{results} {folder}: no results store there (results.db is "
                                 "missing); run `make bench` first, or pass the folder holding "
                                 "results.db (--results DIR) or --db URL")
    if command in READS_RESULTS and args.command in OUTPUTS:
        env, _ = OUTPUTS[args.command]
        _usable_folder(_out_dir(args), "output folder (--out" + (f" / {env})" if env else ")"))
    if command in WRITES_BUNDLES:
        from brainbench.submission.bundle import submissions_dir

        _usable_folder(Path(args.out) if args.out else submissions_dir(),
                       "bundle folder (--out / BRAINBENCH_SUBMISSIONS)")


def _environment_error(exc: BaseException) -> str | None:
    """The message for an environment failure that escaped its own handler (None: not one)."""
    import json

    from brainbench.store import DATABASE_ERRORS

    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        name = exc.filename if not exc.filename2 else f"{exc.filename} -> {exc.filename2}"
        return (f"cannot use {name}: {exc.strerror or exc} (check that the folder exists, is "
                "a folder and is writable)")
    if isinstance(exc, DATABASE_ERRORS):
        return (f"the results store is not a usable database ({getattr(exc, 'orig', exc)}); "
                "use another results folder (--results DIR or --db URL)")
    if isinstance(exc, json.JSONDecodeError):
        return f"a JSON file is malformed ({exc}); delete or restore it"
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's time limit, `kill`): unwound like Ctrl-C, so what is being
    written is abandoned whole (every cache entry and store write is atomic) and the run says
    so, instead of vanishing with status 143 and no word."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _on_sigterm(handler):
    """Install a SIGTERM handler, returning the previous one (None off the main thread, where
    Python cannot set one)."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    import json

    from brainbench.store import DATABASE_ERRORS, close_stores, open_store_engines

    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    opened_before = open_store_engines()
    previous = _on_sigterm(_raise_terminated)
    try:
        _check_folders(args)
        args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `brainbench results | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, *DATABASE_ERRORS, json.JSONDecodeError) as exc:
        message = _environment_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return BenchError.exit_code
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; caches and results "
              "hold only complete entries", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    finally:
        if previous is not None:
            _on_sigterm(previous)
        close_stores(keep=opened_before)  # this command's connections end with it
    return 0


if __name__ == "__main__":
    sys.exit(main())
