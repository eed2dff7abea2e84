"""`make submit`: validate, run the suite, and write a self-describing submission bundle.

leaderboard/submissions/<name>/ holds: the card or Python file, ``submission.json`` (what ran:
weights status and sha256, tasks asked for and run, fractions, seeds, profile, data source,
split hashes per task, validation figures, environment and hardware, flags), ``results/``
(one versioned results file per task, `brainbench.results_io` format, with provenance and
test predictions; no image data) and ``SUMMARY.md`` (against the reference backbones in the
store). The bundle is staged and renamed into place: it is complete or absent.

A submission that fails validation raises before the runner starts: nothing reaches the store.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from brainbench.errors import BenchError
from brainbench.profiles import Profile
from brainbench.splits import write_json_atomic
from brainbench.submission.source import submission_kind
from brainbench.weights import sha256_file

BUNDLE_FORMAT = "brainbench-submission"
BUNDLE_SCHEMA = 1
MANIFEST = "submission.json"


def submissions_dir() -> Path:
    """Where bundles live (BRAINBENCH_SUBMISSIONS, default leaderboard/submissions)."""
    return Path(os.environ.get("BRAINBENCH_SUBMISSIONS", "leaderboard/submissions"))


@dataclass(frozen=True)
class SubmitConfig:
    backbone: Path
    profile: Profile
    fractions: tuple[float, ...]
    cache_dir: Path
    results_dir: Path
    out_root: Path
    tasks: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    weights: Path | None = None
    require_weights: bool = False
    db_url: str | None = None
    progress: bool = True
    precision: str = "auto"  # brainbench.precision; validated and run at the same one
    workers: int | None = None  # decode processes (None: from the machine)
    device: str = "auto"  # where the run's encoder runs (brainbench.device); validation runs on the CPU


@dataclass(frozen=True)
class SubmitResult:
    bundle: Path
    name: str
    flags: tuple[str, ...]
    cells: int
    validation_seconds: float
    run_seconds: float


def flags_for(weights_status: str, tasks_run: Sequence[str], tasks_all: Sequence[str]
              ) -> list[str]:
    """The labels a bundle must carry wherever its results are shown."""
    flags = []
    if weights_status == "random-init":
        flags.append("RANDOM-INIT")
    missing = [t for t in tasks_all if t not in tasks_run]
    if missing:
        flags.append(f"PARTIAL: {len(tasks_run)} of {len(tasks_all)} endpoints "
                     f"(not run: {', '.join(missing)})")
    return flags


def submit(config: SubmitConfig) -> SubmitResult:
    from brainbench.runner import RunConfig, run
    from brainbench.submission.validate import validate
    from brainbench.taskspec import all_tasks

    kind = submission_kind(config.backbone)
    started = time.perf_counter()
    report = validate(config.backbone, config.profile, config.weights, config.require_weights,
                      precision=config.precision)
    validation_seconds = time.perf_counter() - started
    print(report.render(), flush=True)
    if not report.ok:
        raise BenchError(f"{config.backbone} failed validation ({len(report.failures)} "
                         "check(s), listed above); nothing was run or stored. Fix it and run "
                         "`make validate BACKBONE=...` again")
    started = time.perf_counter()
    run_report = run(RunConfig(
        model=str(config.backbone), fractions=config.fractions, profile=config.profile,
        cache_dir=config.cache_dir, results_dir=config.results_dir, tasks=config.tasks,
        seeds=config.seeds, weights=config.weights, require_weights=config.require_weights,
        db_url=config.db_url, progress=config.progress, precision=config.precision,
        workers=config.workers, device=config.device))
    run_seconds = time.perf_counter() - started
    name = run_report.backbone
    ran = sorted({c.task for c in run_report.cells})
    everything = [t.id for t in all_tasks()]
    flags = flags_for(run_report.weights_status, ran, everything)
    bundle = write_bundle(config, kind, report, run_report, ran, everything, flags,
                          validation_seconds, run_seconds)
    return SubmitResult(bundle, name, tuple(flags), len(run_report.cells), validation_seconds,
                        run_seconds)


def write_bundle(config: SubmitConfig, kind: str, validation, run_report, ran: list[str],
                 everything: list[str], flags: list[str], validation_seconds: float,
                 run_seconds: float) -> Path:
    from brainbench.provenance import code_version
    from brainbench.results_io import export_payload, results_filename
    from brainbench.store import ResultStore, default_url
    from brainbench.submission.environment import environment

    name = run_report.backbone
    store = ResultStore(config.db_url or default_url(config.results_dir))
    out = Path(config.out_root) / name
    staging = out.with_name(f".{name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "results").mkdir(parents=True)
    ids = {c.cell_id for c in run_report.cells}
    split_hashes: dict[str, str] = {}
    files = []
    for task in ran:
        payload = export_payload(store, name, task)
        payload["cells"] = [c for c in payload["cells"] if c["cell_id"] in ids]
        split_hashes[task] = sorted({c["cell"]["split_hash"] for c in payload["cells"]})[0]
        path = staging / "results" / results_filename(name, task)
        write_json_atomic(path, payload)
        files.append(f"results/{path.name}")
    source = Path(config.backbone).expanduser().resolve()
    if kind != "name":  # a card or Python file travels with its results
        shutil.copy2(source, staging / source.name)
    weights = validation.weights or {}
    manifest = {
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA, "name": name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(), "flags": flags,
        "backbone": {"kind": kind, "file": source.name if kind != "name" else None,
                     "file_sha256": sha256_file(source) if kind != "name" else None,
                     "contract": validation.contract, "architecture": validation.architecture,
                     "parameters": validation.parameters},
        "weights": {"status": weights.get("status"), "sha256": weights.get("sha256"),
                    "file": Path(str(weights.get("source", ""))).name
                    if weights.get("status") == "pretrained" else None},
        "run": {"profile": config.profile.name, "fractions": list(config.fractions),
                "seeds": list(config.seeds) if config.seeds else "each task's defaults",
                "tasks_requested": list(config.tasks) if config.tasks else "all",
                "tasks_run": ran, "tasks_all": everything,
                "tasks_pending": [t.id for t in run_report.pending],
                "tasks_unavailable": list(run_report.unavailable),
                "data_source": run_report.data_source, "split_hashes": split_hashes,
                "cells": len(run_report.cells), "notes": list(run_report.notes),
                "seconds": round(run_seconds, 1)},
        "validation": {"ok": validation.ok, "seconds": round(validation_seconds, 1),
                       "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                                  for c in validation.checks],
                       "measures": validation.measures, "notes": validation.notes},
        "environment": environment(), "results": files,
    }
    write_json_atomic(staging / MANIFEST, manifest)
    (staging / "SUMMARY.md").write_text(summary_markdown(manifest, store), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    return out


def summary_markdown(manifest: dict[str, Any], store) -> str:
    """The submission's primary metric per task beside the other backbones in the store (same
    profile, data source and fractions, standard split), as a Markdown table: the columns and
    means of `brainbench results` (weights, protocol and precision never pooled)."""
    from tabulate import tabulate

    from brainbench.leaderboard.tables import cell_text, summarise
    from brainbench.taskspec import get_task

    name, run = manifest["name"], manifest["run"]
    frame = store.frame(task=run["tasks_run"] or None, profile=run["profile"],
                        data_source=run["data_source"])
    frame = frame[(frame["split"] == "") & frame["fraction"].isin(run["fractions"])]
    mine = manifest["weights"]["sha256"]
    frame = frame[(frame["backbone"] != name) | (frame["weights_sha256"] == mine)]
    tasks = [get_task(t) for t in sorted(set(frame["task"]))]
    summary = summarise(frame, tasks)
    if not summary.empty:
        primary = {t.id: t.primary_metric for t in tasks}
        summary = summary[[m == primary[t] for t, m in zip(summary["task"], summary["metric"])]]
    columns = sorted(set(summary["column"]) if not summary.empty else (),
                     key=lambda c: (c.split(" ")[0] != name, c))
    rows = []
    for (task, fraction), part in (summary.groupby(["task", "fraction"]) if columns else ()):
        cells = {r.column: cell_text(r.mean, r.sd, r.seeds, r.fallback_seeds)
                 for r in part.itertuples()}
        rows.append([task, get_task(task).primary_metric, f"{fraction:g}"]
                    + [cells.get(c, "–") for c in columns])
    table = tabulate(rows, headers=["task", "primary metric", "fraction"] + columns,
                     tablefmt="github", disable_numparse=True) if rows else "(no results)"
    refs = [c for c in columns if c.split(" ")[0] != name]
    lines = [f"# Submission `{name}`", "",
             f"Backbone {manifest['backbone']['kind']} `{manifest['backbone']['file'] or name}`; "
             "weights "
             f"{manifest['weights']['status']} (sha256 `{manifest['weights']['sha256']}`).",
             f"Profile `{run['profile']}`, data `{run['data_source']}`, fractions "
             f"{', '.join(f'{f:g}' for f in run['fractions'])}, seeds {run['seeds']}; "
             f"code `{manifest['code_version']}`.", ""]
    lines += [f"**{flag}**" for flag in manifest["flags"]] + ([""] if manifest["flags"] else [])
    lines += ["Mean ± sd of the primary metric over seeds (k seeds) on the test split; reference "
              "backbones are those already in the store for the same profile and data"
              + (f": {', '.join(refs)}." if refs else " (none found: run `make bench MODEL=...` "
                 "for a reference first)."), "", table, ""]
    v = manifest["validation"]["measures"]
    if "seconds_per_item" in v:
        lines += [f"Validation: passed; {1000 * v['seconds_per_item']:.1f} ms per "
                  f"{'slice' if manifest['backbone']['contract']['dims'] == '2d' else 'volume'}"
                  f", parameters {v['parameter_mb']:.1f} MB. Run time "
                  f"{run['seconds']:.0f} s.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- import


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{bundle} is not a submission bundle: {MANIFEST} is missing") from None
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BenchError(f"{path}: field 'format' must be {BUNDLE_FORMAT!r}")
    if manifest.get("schema_version") != BUNDLE_SCHEMA:
        raise BenchError(f"{path}: schema_version {manifest.get('schema_version')!r} is not "
                         f"supported (this brainbench reads {BUNDLE_SCHEMA})")
    for key in ("name", "flags", "weights", "run", "results"):
        if key not in manifest:
            raise BenchError(f"{path}: missing field {key!r}")
    return manifest


def _check_consistency(bundle: Path, manifest: dict[str, Any]) -> list[Path]:
    """Every results file belongs to this bundle's backbone and weights; the flags match."""
    from brainbench.results_io import read_results_file

    files = [Path(bundle) / f for f in manifest["results"]]
    tasks, statuses = [], set()
    for path in files:
        payload = read_results_file(path)
        if payload.get("backbone") != manifest["name"]:
            raise BenchError(f"{path}: results of backbone {payload.get('backbone')!r} in the "
                             f"bundle of {manifest['name']!r}")
        for item in payload.get("cells", []):
            cell = item.get("cell", {}) if isinstance(item, dict) else {}
            if cell.get("weights_sha256") != manifest["weights"]["sha256"]:
                raise BenchError(f"{path}: a cell has weights sha256 "
                                 f"{str(cell.get('weights_sha256'))[:16]}… but the bundle "
                                 f"declares {str(manifest['weights']['sha256'])[:16]}…")
            statuses.add(cell.get("weights_status"))
        tasks.append(payload.get("task"))
    expected = flags_for(next(iter(statuses)) if len(statuses) == 1 else "mixed", sorted(tasks),
                         manifest["run"]["tasks_all"])
    if sorted(manifest["flags"]) != sorted(expected):
        raise BenchError(f"{Path(bundle) / MANIFEST}: flags {manifest['flags']} do not match "
                         f"its results ({expected}); the bundle was edited")
    return files


def import_bundle(bundle: Path, store, out_root: Path | None = None,
                  lookup=None) -> tuple[int, Path]:
    """Validate a bundle made elsewhere (manifest, then every results file as `brainbench
    import` verifies it, against `store`'s records and split manifests and, with `lookup`
    (a `brainbench.results_io.DataLookup`), the cohorts present here), then add all its
    results to `store` in one transaction and copy the bundle (no data) to `out_root` so the
    leaderboard shows its flags. `store`: a ResultStore or the URL of one, opened (created)
    only once the bundle verified. Returns (cells imported, bundle path under out_root)."""
    from brainbench.results_io import import_files

    bundle = Path(bundle).resolve()
    manifest = read_manifest(bundle)
    files = _check_consistency(bundle, manifest)
    _, reports = import_files(store, files, lookup)
    cells = sum(report.cells for report in reports)
    out_root = Path(out_root or submissions_dir())
    target = (out_root / manifest["name"]).resolve()
    if target != bundle:
        staging = target.with_name(f".{target.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bundle, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    return cells, target


def submission_flags(root: Path | None = None) -> dict[str, list[str]]:
    """{backbone name: flags} of the bundles under `root`, for the leaderboard."""
    root = Path(root or submissions_dir())
    out: dict[str, list[str]] = {}
    if not root.is_dir():
        return out
    for manifest_path in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            manifest = read_manifest(manifest_path.parent)
        except BenchError:
            continue
        out[manifest["name"]] = ["SUBMISSION"] + list(manifest["flags"])
    return out
