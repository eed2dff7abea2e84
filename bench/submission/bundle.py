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
import logging
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

log = logging.getLogger("brainbench")

BUNDLE_FORMAT = "brainbench-submission"
BUNDLE_SCHEMA = 1
MANIFEST = "submission.json"
#: how a bundle names its backbone (`submission_kind`): registered name, card, Python file
KINDS = ("name", "card", "pyfile")


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
    data_dir: Path | None = None  # real datasets (None: as `run`: DATA / config, else phantoms)


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
    # before the run, so a refused name stores nothing
    refuse_other_backbone(Path(config.out_root) / report.name, report.name,
                          (report.weights or {}).get("sha256"),
                          _file_sha256(kind, config.backbone), str(config.backbone))
    started = time.perf_counter()
    run_report = run(RunConfig(
        model=str(config.backbone), fractions=config.fractions, profile=config.profile,
        cache_dir=config.cache_dir, results_dir=config.results_dir, tasks=config.tasks,
        seeds=config.seeds, weights=config.weights, require_weights=config.require_weights,
        db_url=config.db_url, progress=config.progress, precision=config.precision,
        workers=config.workers, device=config.device, data_dir=config.data_dir))
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
    file_sha256 = _file_sha256(kind, source)
    manifest = {
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA, "name": name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(), "flags": flags,
        "backbone": {"kind": kind, "file": source.name if kind != "name" else None,
                     "file_sha256": file_sha256,
                     "contract": validation.contract, "architecture": validation.architecture,
                     "parameters": validation.parameters},
        "weights": {"status": weights.get("status"), "sha256": weights.get("sha256"),
                    "file": Path(str(weights.get("source", ""))).name
                    if weights.get("status") == "pretrained" else None,
                    "from_option": config.weights is not None},  # WEIGHTS= replaced the card's
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
    try:  # checked again: another submit may have taken the name during the run
        refuse_other_backbone(out, name, weights.get("sha256"), file_sha256, str(source))
    except BenchError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    return out


def _file_sha256(kind: str, backbone: str | Path) -> str | None:
    """The sha256 of the card or Python file a bundle carries (None for a registered name)."""
    return None if kind == "name" else sha256_file(Path(backbone).expanduser().resolve())


def refuse_other_backbone(target: Path, name: str, weights_sha256: Any,
                          file_sha256: str | None, incoming: str) -> None:
    """A bundle folder is replaced only by a bundle of the same backbone (weights sha256 and
    card / file sha256): a re-import or a re-submission. Another backbone that took the same
    name would delete the old bundle while the store keeps the old rows, which would then
    carry the new bundle's badges. A folder that is no readable bundle is not deleted either."""
    if not target.exists():
        return
    try:
        old = read_manifest(target)
    except BenchError as exc:
        raise BenchError(f"{target} exists but is not a readable bundle ({exc}); {incoming} "
                         f"would replace it. Remove {target} deliberately if it is not "
                         "needed") from None
    before = (old["weights"]["sha256"], (old.get("backbone") or {}).get("file_sha256"))
    if before == (weights_sha256, file_sha256):
        return

    def short(sha: Any) -> str:
        return f"{sha[:16]}…" if isinstance(sha, str) else "none"

    raise BenchError(f"{target} holds the bundle of another backbone named {name!r} (weights "
                     f"sha256 {short(before[0])}, backbone file sha256 {short(before[1])}); "
                     f"{incoming} has weights sha256 {short(weights_sha256)}, backbone file "
                     f"sha256 {short(file_sha256)}. Give the new backbone a name of its own "
                     f"(its card's or class's `name`), or remove {target} deliberately")


def summary_markdown(manifest: dict[str, Any], store) -> str:
    """The submission's primary metric per task beside the other backbones in the store (same
    profile, data source and fractions, standard split), as a Markdown table: the columns and
    means of `brainbench results` (weights, protocol and precision never pooled)."""
    from tabulate import tabulate

    from brainbench.leaderboard.tables import cell_text, summarise, summary_notes
    from brainbench.taskspec import get_task

    name, run = manifest["name"], manifest["run"]  # a hand-made manifest may lack fields
    mine = manifest["weights"]["sha256"]
    own = store.frame(backbone=name, weights_sha256=mine)
    tasks_run = run.get("tasks_run") or sorted(set(own["task"]))
    frame = store.frame(task=tasks_run or None, profile=run.get("profile"),
                        data_source=run.get("data_source"))
    fractions = run.get("fractions") or sorted(set(own["fraction"]))
    frame = frame[(frame["split"] == "") & frame["fraction"].isin(fractions)]
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
    backbone = manifest.get("backbone", {})
    lines = [f"# Submission `{name}`", "",
             f"Backbone {backbone.get('kind', 'name')} `{backbone.get('file') or name}`; "
             "weights "
             f"{manifest['weights'].get('status')} (sha256 `{mine}`).",
             f"Profile `{run.get('profile')}`, data `{run.get('data_source')}`, fractions "
             f"{', '.join(f'{f:g}' for f in fractions)}, seeds {run.get('seeds')}; "
             f"code `{manifest.get('code_version')}`.", ""]
    lines += [f"**{flag}**" for flag in manifest["flags"]] + ([""] if manifest["flags"] else [])
    lines += ["Mean ± sd of the primary metric over seeds (k seeds) on the test split; reference "
              "backbones are those already in the store for the same profile and data"
              + (f": {', '.join(refs)}." if refs else " (none found: run `make bench MODEL=...` "
                 "for a reference first)."), "", table, ""]
    for note in summary_notes(store, frame, summary, tasks):  # precision, detectable difference
        lines += [note, ""]
    v = (manifest.get("validation") or {}).get("measures") or {}
    if "seconds_per_item" in v and "seconds" in run:
        lines += [f"Validation: passed; {1000 * v['seconds_per_item']:.1f} ms per "
                  f"{'slice' if (backbone.get('contract') or {}).get('dims') == '2d' else 'volume'}"
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
    for key, kind, shown in (("name", str, "a string"), ("flags", list, "an array"),
                             ("weights", dict, "an object"), ("run", dict, "an object"),
                             ("results", list, "an array")):
        if key not in manifest:
            raise BenchError(f"{path}: missing field {key!r}")
        if not isinstance(manifest[key], kind):
            raise BenchError(f"{path}: field {key!r} must be {shown}, got {manifest[key]!r}")
    for parent, key, kind, shown in (("weights", "sha256", str, "a string"),
                                     ("run", "tasks_all", list, "an array")):
        if not isinstance(manifest[parent].get(key), kind):
            raise BenchError(f"{path}: field '{parent}.{key}' must be {shown}, got "
                             f"{manifest[parent].get(key)!r}")
    if not isinstance(manifest.get("backbone", {}), dict):
        raise BenchError(f"{path}: field 'backbone' must be an object, got "
                         f"{manifest['backbone']!r}")
    return manifest


def _check_name(bundle: Path, manifest: dict[str, Any]) -> str:
    """The bundle's name becomes a folder under the submissions root and the name of result
    rows: a plain name (no path), and not a built-in backbone's unless the bundle is a run of
    that registered backbone (``backbone.kind`` "name")."""
    from brainbench.backbone import BACKBONES, load_plugins
    from brainbench.submission.source import NAME_RE

    name, where = manifest["name"], Path(bundle) / MANIFEST
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BenchError(f"{where}: field 'name' is {name!r}; expected 1-64 letters, digits, "
                         "'_', '.' or '-', starting with a letter or digit (it names a folder "
                         "under the submissions folder)")
    kind = manifest.get("backbone", {}).get("kind", "name")
    if kind not in KINDS:
        raise BenchError(f"{where}: field 'backbone.kind' is {kind!r}; expected one of "
                         f"{list(KINDS)}")
    load_plugins()
    if kind != "name" and name in BACKBONES:
        raise BenchError(f"{where}: field 'name' {name!r} is a built-in backbone, but the "
                         f"bundle holds a {kind} ({manifest['backbone'].get('file')}"
                         "): a submitted backbone takes a name of its own")
    if kind == "name" and name not in BACKBONES:  # nothing could reproduce its results
        raise BenchError(f"{where}: field 'backbone.kind' is 'name' but {name!r} is not a "
                         "registered backbone (built-in or entry point); a submitted backbone "
                         "travels with its card or Python file (kind 'card' or 'pyfile')")
    return name


def _check_backbone_file(bundle: Path, manifest: dict[str, Any]) -> None:
    """The card or Python file the bundle carries is the one its run used (sha256)."""
    described = manifest.get("backbone", {})
    file, sha = described.get("file"), described.get("file_sha256")
    kind = described.get("kind", "name")
    where = Path(bundle) / MANIFEST
    if kind == "name":
        if file is not None:
            raise BenchError(f"{where}: field 'backbone.file' is {file!r} but a registered "
                             "backbone (kind 'name') travels without one; expected null")
        return
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", "..") \
            or submission_kind(file) != kind:
        raise BenchError(f"{where}: field 'backbone.file' is {file!r}; expected the name of "
                         f"the {kind} inside the bundle "
                         f"({'.toml' if kind == 'card' else '.py'})")
    path = Path(bundle) / file
    if path.is_symlink():
        raise BenchError(f"{where}: field 'backbone.file' names {file!r}, a link; a bundle "
                         "holds the card or Python file itself")
    if not path.is_file():
        raise BenchError(f"{where}: field 'backbone.file' names {file!r}, which is not in the "
                         f"bundle ({path} is missing)")
    if sha256_file(path) != sha:
        raise BenchError(f"{where}: field 'backbone.file_sha256' does not verify: {path} has "
                         f"sha256 {sha256_file(path)[:16]}..., the manifest says "
                         f"{str(sha)[:16]}...; the bundle was edited")


def _check_consistency(bundle: Path, manifest: dict[str, Any]) -> list[Path]:
    """Every results file belongs to this bundle's backbone and weights, and the manifest's
    account of the run (flags, weights status, tasks run, seeds, fractions, profile, data
    source, split hashes) is what its results hold: a dropped task or seed is refused."""
    from brainbench.results_io import read_results_file
    from brainbench.taskspec import get_task

    where = Path(bundle) / MANIFEST
    _check_name(bundle, manifest)
    _check_backbone_file(bundle, manifest)
    results = manifest["results"]
    if not all(
            isinstance(f, str) and not Path(f).is_absolute() and ".." not in Path(f).parts
            for f in results):
        raise BenchError(f"{where}: field 'results' must list the results files inside the "
                         f"bundle (relative paths), got {results!r}")
    files = [Path(bundle) / f for f in results]
    run = manifest["run"]
    tasks, statuses, cell_count = [], set(), 0
    claims = {"profile": run.get("profile"), "data_source": run.get("data_source")}
    for path in files:
        if path.is_symlink():
            raise BenchError(f"{where}: results file {path} is a link; a bundle holds its "
                             "results files themselves")
        payload = read_results_file(path)
        if payload.get("backbone") != manifest["name"]:
            raise BenchError(f"{path}: results of backbone {payload.get('backbone')!r} in the "
                             f"bundle of {manifest['name']!r}")
        task = payload.get("task")
        cells = [item.get("cell", {}) if isinstance(item, dict) else {}
                 for item in payload.get("cells", [])]
        for cell in cells:
            if cell.get("weights_sha256") != manifest["weights"]["sha256"]:
                raise BenchError(f"{path}: a cell has weights sha256 "
                                 f"{str(cell.get('weights_sha256'))[:16]}… but the bundle "
                                 f"declares {str(manifest['weights']['sha256'])[:16]}…")
            statuses.add(cell.get("weights_status"))
            for key, claimed in claims.items():
                if claimed is not None and cell.get(key) != claimed:
                    raise BenchError(f"{path}: a cell has {key} {cell.get(key)!r} but the "
                                     f"manifest's run.{key} is {claimed!r}; the bundle was "
                                     "edited")
        split_hash = (run.get("split_hashes") or {}).get(task)
        if split_hash is not None and any(c.get("split_hash") != split_hash for c in cells):
            raise BenchError(f"{path}: a cell's split_hash is not the manifest's "
                             f"run.split_hashes[{task!r}] {str(split_hash)[:16]}…")
        _check_seeds_and_fractions(path, task, cells, run, get_task)
        tasks.append(task)
        cell_count += len(cells)
    declared = manifest["weights"].get("status")
    if declared is not None and statuses and statuses != {declared}:
        raise BenchError(f"{where}: field 'weights.status' is {declared!r} but its results "
                         f"say {sorted(map(str, statuses))}; the bundle was edited")
    _check_backbone_records(bundle, manifest, declared if declared is not None else
                            next(iter(statuses)) if len(statuses) == 1 else None)
    if "tasks_run" in run and sorted(run["tasks_run"]) != sorted(tasks):
        raise BenchError(f"{where}: run.tasks_run {run['tasks_run']} but the bundle holds "
                         f"results for {sorted(tasks)}; a results file was added or removed")
    expected = flags_for(next(iter(statuses)) if len(statuses) == 1 else "mixed", sorted(tasks),
                         run["tasks_all"])
    if sorted(manifest["flags"]) != sorted(expected):
        raise BenchError(f"{where}: flags {manifest['flags']} do not match "
                         f"its results ({expected}); the bundle was edited")
    if "cells" in run and run["cells"] != cell_count:
        raise BenchError(f"{where}: run.cells is {run['cells']!r} but its results hold "
                         f"{cell_count} cell(s); the bundle was edited")
    _check_validation(where, manifest.get("validation"))
    unlisted = sorted(str(p.relative_to(bundle)) for p in (Path(bundle) / "results").glob("*")
                      if p not in files) if (Path(bundle) / "results").is_dir() else []
    if unlisted:
        raise BenchError(f"{where}: results/ holds file(s) the manifest does not list: "
                         f"{unlisted[:5]}; every results file of a bundle is verified")
    return files


def _check_backbone_records(bundle: Path, manifest: dict[str, Any], status: Any) -> None:
    """What the bundle itself records about its backbone must agree with the weights status
    its results claim, so relabelling a random-init run "pretrained" takes more than editing
    the status: the manifest's weights file (null when none was loaded), the validation
    record's weights check, and a card's ``weights`` field. The card or Python file is read,
    never run (a card through `read_card`, which also checks its name and pretraining
    declaration; a Python file's ``PRETRAINING_DATASETS`` as the leaderboard reads it)."""
    from brainbench.submission.card import read_card
    from brainbench.submission.pyfile import read_pretraining

    where, weights = Path(bundle) / MANIFEST, manifest["weights"]
    kind, file = manifest.get("backbone", {}).get("kind", "name"), \
        manifest.get("backbone", {}).get("file")
    card = None
    try:
        if kind == "card":
            card = read_card(Path(bundle) / file)
        elif kind == "pyfile":
            read_pretraining(Path(bundle) / file)
    except BenchError as exc:
        raise BenchError(f"{where}: the bundle's {kind} {file} does not read: {exc}") from None
    if card is not None and card.name != manifest["name"]:
        raise BenchError(f"{card.path}: field 'name' is {card.name!r} but the bundle is "
                         f"{manifest['name']!r} ({where}); the bundle was edited")
    if status not in ("pretrained", "random-init"):
        return
    pretrained = status == "pretrained"
    claim = f"its results claim weights_status {status!r}"
    if pretrained != isinstance(weights.get("file"), str) or weights.get("file") == "":
        raise BenchError(f"{where}: field 'weights.file' is {weights.get('file')!r} but "
                         f"{claim}; a pretrained run names the weights file it loaded, a "
                         "random-init run none (null): the bundle was edited")
    checks = (manifest.get("validation") or {}).get("checks") or []
    detail = next((str(c.get("detail")) for c in checks
                   if isinstance(c, dict) and c.get("name") == "weights"), None)
    agrees = detail is not None and (
        detail.startswith("pretrained") and f"sha256 {weights['sha256'][:16]}" in detail
        if pretrained else detail.startswith("RANDOM-INIT"))
    if not agrees:
        raise BenchError(f"{where}: the validation record's weights check says {detail!r} but "
                         f"{claim} (weights sha256 {weights['sha256'][:16]}…); the bundle was "
                         "edited")
    if card is None:
        return
    named = card.weights is not None and card.weights.name == weights["file"]
    if pretrained and not named and weights.get("from_option") is not True:
        raise BenchError(f"{card.path}: the card names no weights file {weights['file']!r} "
                         f"(field 'weights': {card.weights.name if card.weights else None!r}) "
                         f"and WEIGHTS= was not given, so its run was random-init, but {claim} "
                         f"({where}); the bundle was edited")
    if not pretrained and card.weights is not None:
        raise BenchError(f"{card.path}: the card names weights file {card.weights.name!r} "
                         f"(field 'weights'), so its run loaded them, but {claim} ({where}); "
                         "the bundle was edited")


def _check_validation(where: Path, validation: Any) -> None:
    """`make submit` runs the suite only after validation passed: a bundle whose record says
    otherwise (or has none) is not a submission."""
    checks = validation.get("checks") if isinstance(validation, dict) else None
    if not isinstance(checks, list) or not checks or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in checks):
        raise BenchError(f"{where}: field 'validation' must hold the validation report "
                         "`brainbench submit` writes (ok and a non-empty list of checks), got "
                         f"{validation!r}")
    failed = [c["name"] for c in checks if c.get("ok") is not True]
    if validation.get("ok") is not True or failed:
        raise BenchError(f"{where}: the backbone failed validation (ok "
                         f"{validation.get('ok')!r}; failed checks {failed}): a backbone "
                         "that fails `make validate` is not imported")


def _check_seeds_and_fractions(path: Path, task: Any, cells: list[dict], run: dict,
                               get_task) -> None:
    """Each (fraction, split, precision) of the run holds exactly the seeds it ran (the
    manifest's list, else the defaults `RunConfig.seeds_for` takes: the profile's, or the
    task's own): none dropped, none added."""
    from brainbench.profiles import PROFILES

    seeds = run.get("seeds")
    if seeds is None or not cells:
        return
    if isinstance(seeds, list):
        wanted = set(seeds)
    elif run.get("profile") in PROFILES:
        wanted = set(PROFILES.get(run["profile"]).seeds or get_task(task).seeds)
    else:
        return
    fractions = run.get("fractions")
    groups: dict[tuple, list] = {}
    for cell in cells:
        if isinstance(fractions, list) and cell.get("fraction") not in fractions:
            raise BenchError(f"{path}: a cell at fraction {cell.get('fraction')!r}, which the "
                             f"manifest's run.fractions {fractions} does not hold")
        key = (cell.get("fraction"), cell.get("split", ""), cell.get("precision", "fp32"))
        groups.setdefault(key, []).append(cell.get("seed"))
    for (fraction, split, precision), got in sorted(groups.items(), key=str):
        if sorted(got) != sorted(wanted):
            raise BenchError(f"{path}: fraction {fraction} ({precision}"
                             f"{', ' + split if split else ''}) holds seeds {sorted(got)} but "
                             f"the run's seeds are {sorted(wanted)}; a seed was dropped, added "
                             "or duplicated")


@dataclass(frozen=True)
class BundleImport:
    """One imported bundle: its cells, as `brainbench import` counts them (`ImportReport`:
    `replaced` an earlier import stored, `kept` computed in the importing store and left as
    they are), and where the bundle was placed."""

    cells: int
    replaced: int
    kept: int
    bundle: Path


def import_bundle(bundle: Path, store, out_root: Path | None = None,
                  lookup=None) -> BundleImport:
    """Validate a bundle made elsewhere and add it (`import_bundles` with one bundle)."""
    return import_bundles([bundle], store, out_root, lookup)[0]


def import_bundles(bundles: Sequence[Path], store, out_root: Path | None = None,
                   lookup=None) -> list[BundleImport]:
    """Validate bundles made elsewhere (each manifest against its results, then every results
    file as `brainbench import` verifies it, against `store`'s records and split manifests
    and, with `lookup` (a `brainbench.results_io.DataLookup`), the cohorts present here), then
    add all their results to `store` in ONE transaction and copy each bundle (no data) to
    `out_root` so the leaderboard shows its flags: all bundles are imported, or none. A
    bundle never replaces the folder of another backbone of its name (`refuse_other_backbone`).
    `store`: a ResultStore or the URL of one, opened (created) only once every bundle
    verified."""
    from brainbench.results_io import import_files

    out_root = Path(out_root or submissions_dir())
    plans = []
    for bundle in bundles:
        bundle = Path(bundle).resolve()
        manifest = read_manifest(bundle)
        files = _check_consistency(bundle, manifest)
        target = (out_root / manifest["name"]).resolve()
        if target.parent != out_root.resolve():
            raise BenchError(f"{bundle / MANIFEST}: field 'name' {manifest['name']!r} would "
                             f"place the bundle outside {out_root}")
        if any(target == other for _, other, _ in plans):
            raise BenchError(f"{bundle}: a second bundle named {manifest['name']!r} in one "
                             "import")
        refuse_other_backbone(target, manifest["name"], manifest["weights"]["sha256"],
                              manifest.get("backbone", {}).get("file_sha256"),
                              f"the bundle {bundle}")
        plans.append((bundle, target, files))
    written, reports = import_files(store, [f for _, _, files in plans for f in files], lookup)
    by_path = {report.path: report for report in reports}
    out = []
    for bundle, target, files in plans:
        if target != bundle:
            _place(bundle, target, files, written)
        mine = [by_path[f] for f in files]
        out.append(BundleImport(sum(r.cells for r in mine), sum(r.replaced for r in mine),
                                sum(r.kept for r in mine), target))
    return out


def _place(bundle: Path, target: Path, files: list[Path], store) -> None:
    """Copy what was verified (the manifest, its results files, its card or Python file, whose
    sha256 matched) and write SUMMARY.md afresh from the importing store: nothing else a
    bundle holds reaches the leaderboard folder."""
    manifest = read_manifest(bundle)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "results").mkdir(parents=True)
    backbone_file = manifest.get("backbone", {}).get("file")
    for path in [bundle / MANIFEST, *files] + ([bundle / backbone_file] if backbone_file else []):
        copy = staging / path.relative_to(bundle)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    (staging / "SUMMARY.md").write_text(summary_markdown(manifest, store), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)


def submission_flags(root: Path | None = None) -> dict[str, list[str]]:
    """{backbone name: flags} of the bundles under `root`, for the leaderboard."""
    root = Path(root or submissions_dir())
    out: dict[str, list[str]] = {}
    if not root.is_dir():
        return out
    for manifest_path in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            manifest = read_manifest(manifest_path.parent)
        except BenchError as exc:  # its rows stay (the store's), its badges cannot be known
            log.warning("submission bundle %s is unreadable (%s): the leaderboard shows its "
                        "results without its SUBMISSION / PARTIAL flags; restore it or import "
                        "it again", manifest_path.parent, exc)
            continue
        out[manifest["name"]] = ["SUBMISSION"] + list(manifest["flags"])
    return out
