"""`brainbench`: the same operations as the Makefile (list, run, results, phantoms, oracle)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from brainbench.errors import BenchError


def _names(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{what}={text!r}: expected numbers separated by commas") from None


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{what}={text!r}: expected integers separated by commas") from None


def cmd_list(args: argparse.Namespace) -> None:
    from tabulate import tabulate

    if args.what == "tasks":
        from brainbench.taskspec import all_tasks

        rows = [[t.id, t.kind, t.dataset, "+".join(t.modalities), t.primary_metric,
                 t.stratify_description(), ",".join(f"{f:g}" for f in t.fractions),
                 len(t.seeds), t.status + (f": {t.pending_reason}" if t.pending_reason else "")]
                for t in all_tasks()]
        print(tabulate(rows, headers=["task", "kind", "dataset", "modalities", "primary",
                                      "split strata", "fractions", "seeds", "status"]))
    elif args.what == "backbones":
        from brainbench.backbone import BACKBONES, create_backbone

        import brainbench.baselines  # noqa: F401

        rows = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in BACKBONES.names():
                backbone = create_backbone(name, weights=args.weights if name == args.model
                                           else None)
                c = backbone.contract
                rows.append([name, c.dims, "x".join(map(str, c.image_size)), c.num_slices or "-",
                             c.intensity, "+".join(c.tokens), c.feature_dim,
                             f"{backbone.parameter_count() / 1e6:.1f}M",
                             backbone.weights.status, backbone.weights.source])
        print(tabulate(rows, headers=["backbone", "dims", "input", "slices", "intensity",
                                      "tokens", "dim", "params", "weights", "source"]))
    else:
        from brainbench.profiles import PROFILES

        rows = [[p.name, p.slice_size or "-", p.num_slices or "-", p.batch_size,
                 p.phantom_subjects, p.description] for p in map(PROFILES.get, PROFILES.names())]
        print(tabulate(rows, headers=["profile", "slice size", "slices", "batch",
                                      "phantom people/dataset", "description"]))


def _print_table(config, pending=()) -> None:
    from brainbench.leaderboard.tables import comparison_table
    from brainbench.runner import resolve_tasks
    from brainbench.store import ResultStore, default_url

    store = ResultStore(config.db_url or default_url(config.results_dir))
    tasks = [t for t in resolve_tasks(config.tasks) if t.status == "ready"]
    frame = store.frame(backbone=list(config.models) if config.models else None,
                        task=[t.id for t in tasks],
                        profile=config.profile.name if config.profile else None)
    if config.fractions:
        frame = frame[frame["fraction"].isin(config.fractions)]
    if config.data_source:
        frame = frame[frame["data_source"] == config.data_source]
    if frame.empty and not pending:
        raise BenchError(f"no results in {store.url} for that selection; run `make bench` first")
    print(comparison_table(frame, tasks, fmt=config.format, pending=pending))


def cmd_run(args: argparse.Namespace) -> None:
    from types import SimpleNamespace

    from brainbench.paths import cache_dir, results_dir
    from brainbench.profiles import PROFILES
    from brainbench.runner import RunConfig, run

    config = RunConfig(
        model=args.model, fractions=_floats(args.fraction, "FRACTION"),
        profile=PROFILES.get(args.profile), cache_dir=Path(args.cache or cache_dir()),
        results_dir=Path(args.results or results_dir()), tasks=_names(args.tasks),
        seeds=_ints(args.seeds, "SEEDS"), weights=Path(args.weights) if args.weights else None,
        require_weights=args.require_weights, data_dir=Path(args.data) if args.data else None,
        db_url=args.db, force=args.force, progress=not args.no_progress)
    started = time.perf_counter()
    report = run(config)
    elapsed = time.perf_counter() - started
    status = report.weights_status.upper()
    print(f"\nbackbone {report.backbone}: weights {status} ({report.weights_source})")
    print(f"data: {report.data_source}; results: {report.store_url}")
    computed = sum(c.computed for c in report.cells)
    ext = report.extraction
    print(f"cells: {computed} computed, {len(report.cells) - computed} already stored "
          f"(use --force / FORCE=1 to recompute); volumes: {ext.computed} encoded, "
          f"{ext.cached} from cache; {ext.items_encoded} slices in {ext.forward_calls} forward "
          f"calls; {elapsed:.1f} s")
    for note in report.notes:
        print(f"note: {note}")
    print()
    _print_table(SimpleNamespace(db_url=args.db, results_dir=config.results_dir,
                                 tasks=config.tasks, models=(config.model,),
                                 profile=config.profile, fractions=config.fractions,
                                 data_source=report.data_source, format="simple"),
                 pending=report.pending)


def cmd_results(args: argparse.Namespace) -> None:
    from types import SimpleNamespace

    from brainbench.paths import results_dir
    from brainbench.profiles import PROFILES

    _print_table(SimpleNamespace(
        db_url=args.db, results_dir=Path(args.results or results_dir()),
        tasks=_names(args.tasks), models=_names(args.models),
        profile=PROFILES.get(args.profile) if args.profile else None,
        fractions=_floats(args.fraction, "FRACTION") if args.fraction else None,
        data_source=None, format=args.format))


def cmd_phantoms(args: argparse.Namespace) -> None:
    from brainbench.paths import cache_dir
    from brainbench.phantoms import PHANTOM_VERSION, generate_phantoms
    from brainbench.profiles import PROFILES

    profile = PROFILES.get(args.profile)
    n = args.n or profile.phantom_subjects
    root = Path(args.root) if args.root else (
        cache_dir() / "phantoms" / f"v{PHANTOM_VERSION}-seed{profile.phantom_seed}-n{n}")
    print(generate_phantoms(root, n, seed=profile.phantom_seed, workers=args.workers))


def cmd_oracle(args: argparse.Namespace) -> None:
    from tabulate import tabulate

    from brainbench.phantoms.oracle import oracle_report

    print(tabulate([list(r.__dict__.values()) if hasattr(r, "__dict__") else list(r)
                    for r in oracle_report(Path(args.root))], headers="keys"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks, backbones or profiles")
    p.add_argument("what", choices=["tasks", "backbones", "profiles"])
    p.add_argument("--model", default="braindino")
    p.add_argument("--weights", default=None)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="extract frozen features, fit probes, store and print results")
    p.add_argument("--model", default="braindino")
    p.add_argument("--fraction", default="0.01", help="label fraction(s) in (0, 1], comma list")
    p.add_argument("--tasks", default=None, help="comma list (default: all)")
    p.add_argument("--seeds", default=None, help="comma list (default: each task's 5 seeds)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--weights", default=None, help="checkpoint file for the backbone")
    p.add_argument("--require-weights", action="store_true",
                   help="fail instead of falling back to random initialisation")
    p.add_argument("--data", default=None, help="folder with real datasets (default: phantoms)")
    p.add_argument("--cache", default=None)
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None, help="SQLAlchemy URL (default: sqlite in --results)")
    p.add_argument("--force", action="store_true", help="recompute cells already stored")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("results", help="print a comparison table from the store")
    p.add_argument("--models", default=None)
    p.add_argument("--tasks", default=None)
    p.add_argument("--fraction", default=None)
    p.add_argument("--profile", default=None)
    p.add_argument("--format", default="simple", help="tabulate format: simple, github, latex")
    p.add_argument("--results", default=None)
    p.add_argument("--db", default=None)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("phantoms", help="generate the phantom cohorts (done by run when needed)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--n", type=int, default=None, help="people per dataset")
    p.add_argument("--root", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("oracle", help="learnability check of a phantom cohort folder")
    p.add_argument("root")
    p.set_defaults(func=cmd_oracle)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; caches and results hold only complete entries", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
