"""A versioned JSON results file per (backbone, task): results travel without the data.

One file holds every stored cell of one backbone on one task (all weights, fractions, seeds,
profiles): the cell's identity and provenance, its metric values with their original
timestamp, and the per-subject test predictions the statistics are computed from. A pull
request can carry such a file; `import_results` verifies it completely before writing
anything, and then writes all cells in one transaction: a bad file changes nothing.

What is verified, never trusted: format, schema version, every field's type; each cell id
recomputed from its fields; every metric finite or null; predictions present (a cell without
them is refused), one per test subject (``n_test``); every metric the test predictions
determine recomputed (classification and regression: the kind's whole `test_metrics`;
survival: Harrell's C; segmentation: the mean of the per-subject scores); the weights id
recomputed from ``weights_status`` and ``weights_sha256``, and a "pretrained" claim refused
for a sha256 recorded as random-init (in the store or in the file) or a random-by-definition
backbone; ``split_hash`` against the split manifest of the importing results folder when it
holds one. What cannot be checked from the file (metrics needing the training subset,
``n_train`` / ``subset_hash``, a split without a manifest) is recorded per cell under the
reserved hyperparameters key ``import_verification`` and the leaderboard marks such rows
UNVERIFIED.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from brainbench.errors import BenchError
from brainbench.splits import write_json_atomic
from brainbench.store import Cell, ResultStore, StoredCell

FORMAT = "brainbench-results"
SCHEMA_VERSION = 1
_CELL_TYPES: dict[str, tuple[type, ...]] = {
    f.name: ({"str": (str,), "int": (int,), "float": (int, float),
              "dict[str, Any]": (dict,)}[str(f.type)]) for f in fields(Cell)}
_CELL_DEFAULTS = {f.name for f in fields(Cell) if f.default is not MISSING}
#: the precisions a cell's features can have been computed in (brainbench.precision)
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ImportReport:
    path: Path
    backbone: str
    task: str
    cells: int
    replaced: int


def _clean(value: Any) -> Any:
    """JSON has no NaN: undefined metric values travel as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_payload(store: ResultStore, backbone: str, task: str) -> dict[str, Any]:
    stored = store.cells(backbone=backbone, task=task, with_predictions=True)
    if not stored:
        raise BenchError(f"no results for backbone {backbone!r} on task {task!r} in {store.url}")
    cells = [{"cell_id": item.cell_id, "created_at": item.created_at,
              "cell": {f.name: getattr(item.cell, f.name) for f in fields(Cell)},
              "metrics": {m: _clean(v) for m, v in item.metrics.items()},
              "predictions": [{"sample_id": sample_id, "target": target,
                               "prediction": prediction,
                               **({"person": (item.persons or {})[sample_id]}
                                  if sample_id in (item.persons or {}) else {})}
                              for sample_id, target, prediction in item.predictions]}
             for item in stored]
    from brainbench.provenance import code_version

    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "backbone": backbone,
            "task": task, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exported_by": code_version(), "cells": cells}


def results_filename(backbone: str, task: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in backbone)
    return f"{safe}__{task}.json"


def export_results(store: ResultStore, out_dir: Path, backbones: list[str] | None = None,
                   tasks: list[str] | None = None) -> list[Path]:
    """One file per stored (backbone, task) in the selection; returns the paths written."""
    frame = store.frame(backbone=backbones or None, task=tasks or None)
    if frame.empty:
        raise BenchError(f"no results in {store.url} for backbones {backbones or 'all'} and "
                         f"tasks {tasks or 'all'}")
    paths = []
    for backbone, task in sorted(set(zip(frame["backbone"], frame["task"]))):
        path = Path(out_dir) / results_filename(backbone, task)
        write_json_atomic(path, export_payload(store, backbone, task))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- import


def _need(mapping: Any, key: str, types: tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise BenchError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise BenchError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


#: hyperparameters key where an import records what it verified and what it could not; it is
#: reserved: a value in the file is never trusted (the import replaces it)
VERIFICATION_KEY = "import_verification"
WEIGHT_STATUSES = ("pretrained", "random-init", "control")  # brainbench.backbone.WeightStatus
#: backbones that are random-init by definition (brainbench.baselines.random_init)
ALWAYS_RANDOM = frozenset({"random"})
#: built-in controls (no learned weights; their "weights" sha256 is of the feature definition)
CONTROLS = frozenset({"intensity", "oracle"})
_HEX = frozenset("0123456789abcdef")


@dataclass
class ImportContext:
    """What a file's claims are checked against besides the file itself."""

    results_dir: Path | None  # where split manifests live (None: not checkable)
    random_shas: set[str]  # weights sha256 the store (or this file) records as random-init


def _finite(value: Any, where: str, field_name: str) -> None:
    """Numbers must be finite (Python's json reads Infinity/NaN to floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{where}: field {field_name!r} is {value!r}; expected a finite number "
                         "(undefined values travel as null)")


def _check_weights(cell: Cell, where: str, context: ImportContext) -> dict[str, str | None]:
    status, sha = cell.weights_status, cell.weights_sha256
    if status not in WEIGHT_STATUSES:
        raise BenchError(f"{where}: field 'weights_status' is {status!r}; expected one of "
                         f"{list(WEIGHT_STATUSES)}")
    if len(sha) != 64 or not set(sha) <= _HEX:
        raise BenchError(f"{where}: field 'weights_sha256' {sha[:20]!r} is not a sha256 "
                         "(64 lowercase hex digits)")
    prefix, _, tail = cell.weights_id.partition(":")
    if prefix != status:
        raise BenchError(f"{where}: field 'weights_status' does not verify: the file says "
                         f"{status!r} but weights_id {cell.weights_id!r} (part of the cell id) "
                         f"was recorded as {prefix!r}; the file was edited")
    if status != "random-init" and cell.backbone in ALWAYS_RANDOM:
        raise BenchError(f"{where}: field 'weights_status' does not verify: backbone "
                         f"{cell.backbone!r} is random-init by definition, the file says "
                         f"{status!r}")
    if status != "random-init" and sha in context.random_shas:
        raise BenchError(f"{where}: field 'weights_status' does not verify: the weights sha256 "
                         f"{sha[:16]}... is recorded as random-init (in the store or elsewhere "
                         f"in this file), the file says {status!r}")
    if (cell.backbone in CONTROLS) != (status == "control"):
        raise BenchError(f"{where}: field 'weights_status' does not verify: {status!r} for "
                         f"backbone {cell.backbone!r}; the built-in controls "
                         f"{sorted(CONTROLS)} and only they are 'control'")
    if status == "control":
        from brainbench.backbone import create_backbone

        if create_backbone(cell.backbone).weights.sha256 != sha:
            raise BenchError(f"{where}: field 'weights_sha256' does not verify: the control "
                             f"{cell.backbone!r} of this brainbench has another feature "
                             "definition (sha256 of its definition differs)")
    if tail != sha[:16]:  # brainbench writes f"{status}:{sha256[:16]}"
        return {"weights_sha256": f"weights_id {cell.weights_id!r} does not carry this sha256"}
    return {"weights_sha256": ("a file hash (pretrained weights) cannot be checked without "
                               "the file") if status == "pretrained" else None}


def _numeric_close(value: float | None, recomputed: float) -> bool:
    if recomputed != recomputed:  # undefined recomputed: the file must say null
        return value is None
    return value is not None and math.isclose(recomputed, value, rel_tol=1e-6, abs_tol=1e-9)


def _mismatch(where: str, name: str, value: float | None, recomputed: float) -> BenchError:
    shown = "null" if value is None else f"{value:.6g}"
    return BenchError(f"{where}: field metrics.{name} does not verify: {name}={shown} but the "
                      f"predictions give {recomputed:.6g}")


def _validate_cell(item: Any, backbone: str, task: str, where: str,
                   context: ImportContext | None = None
                   ) -> tuple[Cell, str, dict, list]:
    context = context or ImportContext(None, set())
    data = _need(item, "cell", (dict,), where)
    values = {name: _need(data, name, types, f"{where}.cell")
              for name, types in _CELL_TYPES.items()
              if name in data or name not in _CELL_DEFAULTS}  # files before precision: fp32
    if values.get("precision", "fp32") not in PRECISIONS:
        raise BenchError(f"{where}.cell: field precision is {values['precision']!r}; expected "
                         f"one of {', '.join(PRECISIONS)}")
    for name, types in _CELL_TYPES.items():
        if float in types:  # 1 and 1.0 hash differently: a fraction is always a float
            _finite(values[name], f"{where}.cell", name)
            values[name] = float(values[name])
    unknown = sorted(set(data) - set(_CELL_TYPES))
    if unknown:
        raise BenchError(f"{where}.cell: unknown field(s) {unknown}")
    cell = Cell(**values)
    if cell.backbone != backbone or cell.task != task:
        raise BenchError(f"{where}: cell is ({cell.backbone}, {cell.task}) but the file is for "
                         f"({backbone}, {task})")
    cell_id = _need(item, "cell_id", (str,), where)
    if cell_id != cell.cell_id:
        raise BenchError(f"{where}: cell_id {cell_id[:12]}... does not match the cell's fields "
                         f"(expected {cell.cell_id[:12]}...): the file was edited")
    if not 0.0 < cell.fraction <= 1.0:
        raise BenchError(f"{where}: field 'fraction' is {cell.fraction}; expected a value in "
                         "(0, 1]")
    for name in ("seed", "n_train", "n_test"):
        if getattr(cell, name) < (0 if name == "seed" else 1):
            raise BenchError(f"{where}: field {name!r} is {getattr(cell, name)}; expected "
                             f"{'>= 0' if name == 'seed' else '>= 1'}")
    weights = _check_weights(cell, f"{where}.cell", context)
    created_at = _need(item, "created_at", (str,), where)
    try:
        datetime.fromisoformat(created_at)
    except ValueError:
        raise BenchError(f"{where}: created_at {created_at!r} is not an ISO timestamp") from None
    metrics = _need(item, "metrics", (dict,), where)
    if not metrics:
        raise BenchError(f"{where}: no metrics")
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BenchError(f"{where}: field metrics.{name} must be a finite number or null, "
                             f"got {value!r}")
        _finite(value, where, f"metrics.{name}")
    preds = _need(item, "predictions", (list,), where)
    if not preds:
        raise BenchError(f"{where}: cell {cell.cell_id[:12]} ({cell.backbone}, {cell.task}, "
                         f"fraction {cell.fraction:g}, seed {cell.seed}) has no predictions: "
                         "its metrics cannot be verified, so it is not imported")
    seen: set[str] = set()
    for j, p in enumerate(preds):
        sample_id = _need(p, "sample_id", (str,), f"{where}.predictions[{j}]")
        if sample_id in seen:
            raise BenchError(f"{where}.predictions[{j}]: sample {sample_id!r} appears twice")
        seen.add(sample_id)
        if "person" in p and not isinstance(p["person"], str):
            raise BenchError(f"{where}.predictions[{j}]: field 'person' must be a string "
                             f"(the split group of the sample), got {p['person']!r}")
        for key in ("target", "prediction"):
            if not isinstance(p, dict) or key not in p:
                raise BenchError(f"{where}.predictions[{j}]: missing field {key!r}")
            if _has_infinity(p[key]):
                raise BenchError(f"{where}.predictions[{j}]: field {key!r} holds an infinite "
                                 "number; expected finite numbers")
    if len(preds) != cell.n_test:
        raise BenchError(f"{where}: field 'n_test' does not verify: {len(preds)} predictions "
                         f"but n_test={cell.n_test}")
    verification = _check_metrics(cell, metrics, preds, where)
    verification.update(_check_split(cell, where, context))
    verification.update(weights)
    hyper = {k: v for k, v in cell.hyperparameters.items() if k != VERIFICATION_KEY}
    hyper[VERIFICATION_KEY] = {
        "verified": sorted(k for k, v in verification.items() if v is None),
        "unverified": {k: v for k, v in sorted(verification.items()) if v is not None}}
    return replace(cell, hyperparameters=hyper), created_at, metrics, preds


def _has_infinity(value: Any) -> bool:
    if isinstance(value, float):
        return math.isinf(value)
    if isinstance(value, dict):
        return any(_has_infinity(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_infinity(v) for v in value)
    return False


def _check_metrics(cell: Cell, metrics: dict, preds: list, where: str) -> dict[str, str | None]:
    """Recompute every metric the predictions determine; refuse on any mismatch.

    Returns {"metrics.<name>": None (verified) or why it could not be}. Probe kinds whose test
    metrics need nothing but the test predictions (classification, regression) recompute the
    whole `test_metrics` dict, and the file must hold exactly those metrics; kinds that also
    need the training subset (survival) recompute their bootstrap metrics (Harrell's C), the
    rest is unverified. Per-subject score predictions (segmentation) recompute each metric as
    the mean of the subjects' scores.
    """
    from brainbench.kinds import get_kind
    from brainbench.stats import class_order
    from brainbench.taskspec import get_task

    spec = get_task(cell.task)
    kind = get_kind(spec.kind)
    rows = sorted(preds, key=lambda p: p["sample_id"])
    targets = [p["target"] for p in rows]
    predictions = [p["prediction"] for p in rows]
    declared = tuple(getattr(spec.target, "classes", ()) or ())
    recomputed: dict[str, float] = {}
    out: dict[str, str | None] = {}
    try:
        if kind.evaluator == "probe" and not kind.needs_train_predictions():
            proba = np.asarray(predictions, dtype=float)
            classes = (class_order([str(t) for t in targets], proba.shape[1], declared)
                       if proba.ndim == 2 else ())
            recomputed = kind.test_metrics(kind.target_array(targets), proba, classes=classes)
            extra = sorted(set(metrics) - set(recomputed))
            if extra:
                raise BenchError(f"{where}: field(s) {['metrics.' + m for m in extra]} are not "
                                 f"metrics of a {kind.name} task (it computes "
                                 f"{sorted(recomputed)}); the file was edited")
            missing = sorted(set(recomputed) - set(metrics))
            if missing:
                raise BenchError(f"{where}: metric(s) {missing} missing; a {kind.name} cell "
                                 f"holds {sorted(recomputed)}")
        elif kind.evaluator == "probe":
            for name in kind.bootstrap_metrics:
                if name in metrics:
                    recomputed[name] = kind.scorer(name, targets, predictions, declared).point()
        elif all(isinstance(p, dict) for p in predictions):
            for name in metrics:
                if all(name in p for p in predictions):
                    scores = [p[name] for p in predictions]
                    if not all(s is None or (isinstance(s, (int, float))
                                             and not isinstance(s, bool)) for s in scores):
                        raise BenchError(f"{where}: per-subject field {name!r} holds a "
                                         "non-number")
                    recomputed[name] = float(np.mean([np.nan if s is None else float(s)
                                                      for s in scores]))
                elif isinstance(cell.hyperparameters.get(name), (int, float)):
                    recomputed[name] = float(cell.hyperparameters[name])
    except BenchError as exc:
        if str(exc).startswith(where):
            raise
        raise BenchError(f"{where}: predictions cannot be scored: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"{where}: predictions cannot be scored: {exc}") from None
    for name, value in metrics.items():
        if name in recomputed:
            if not _numeric_close(value, float(recomputed[name])):
                raise _mismatch(where, name, value, float(recomputed[name]))
            out[f"metrics.{name}"] = None
        else:
            out[f"metrics.{name}"] = ("not recomputable from the test predictions (needs the "
                                      "training subset)")
    return out


def _check_split(cell: Cell, where: str, context: ImportContext) -> dict[str, str | None]:
    """split_hash against the split manifest of the importing results folder, when present;
    the training subset (n_train, subset_hash) needs the cohort's samples: unverified."""
    from brainbench.pipeline import manifest_path
    from brainbench.splits import read_manifest
    from brainbench.taskspec import get_task

    subset = "the training subset needs the cohort's samples to recompute"
    out: dict[str, str | None] = {"n_train": subset, "subset_hash": subset}
    if context.results_dir is None:
        out["split_hash"] = "no results folder to look for the split manifest in"
        return out
    spec = get_task(cell.task)
    if cell.dataset != spec.dataset:
        try:
            spec = spec.on_dataset(cell.dataset)
        except BenchError as exc:
            raise BenchError(f"{where}.cell: field 'dataset' {cell.dataset!r} does not verify: "
                             f"{exc}") from None
    manifest = manifest_path(context.results_dir, cell.data_source, spec)
    if not manifest.exists():
        out["split_hash"] = ("no split manifest in the importing results folder "
                             f"(splits/{manifest.parent.name}/{manifest.name})")
        return out
    stored = read_manifest(manifest)
    if stored["hash"] != cell.split_hash:
        raise BenchError(f"{where}.cell: field 'split_hash' does not verify: "
                         f"{cell.split_hash[:12]}... but the split manifest {manifest} holds "
                         f"{stored['hash'][:12]}...; the results are of another split")
    n_train_groups = len(stored["train"])
    if cell.n_train < 1 or (cell.fraction == 1.0 and cell.n_train < n_train_groups):
        raise BenchError(f"{where}.cell: field 'n_train' does not verify: {cell.n_train} "
                         f"training samples at fraction {cell.fraction:g}, but the split "
                         f"manifest {manifest} has {n_train_groups} training people")
    out["split_hash"] = None
    return out


def _check_primary(cell: Cell, metrics: dict, preds: list, where: str) -> None:
    """Recompute the metrics from the predictions (kept for callers of the old name)."""
    _check_metrics(cell, metrics, preds, where)


def read_results_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"results file {path} is not readable JSON: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BenchError(f"{path}: field 'format' must be {FORMAT!r}; this is not a brainbench "
                         "results file")
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BenchError(f"{path}: schema_version {version!r} is not supported (this version of "
                         f"brainbench reads schema_version {SCHEMA_VERSION})")
    return payload


def _results_dir_of(store: ResultStore) -> Path | None:
    url = store.url
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent
    return None


def _known_random_shas(store: ResultStore, backbone: str) -> set[str]:
    frame = store.frame(backbone=backbone, weights_status="random-init")
    return set(frame["weights_sha256"]) if not frame.empty else set()


def import_results(store: ResultStore, path: Path, results_dir: Path | None = None,
                   reference: ResultStore | None = None) -> ImportReport:
    """Validate the whole file, then write every cell in one transaction (replacing any
    stored cell with the same identity).

    Every claim is verified where it can be (see the module docstring); what cannot be is
    recorded per cell under ``hyperparameters["import_verification"]`` and shown as
    unverified on the leaderboard. results_dir: where the split manifests live (default: the
    folder of an SQLite store). reference: the store whose records the claims are checked
    against when `store` is a scratch copy (default: `store`)."""
    payload = read_results_file(path)
    where = str(path)
    backbone = _need(payload, "backbone", (str,), where)
    task = _need(payload, "task", (str,), where)
    from brainbench.taskspec import get_task

    try:
        get_task(task)
    except BenchError as exc:
        raise BenchError(f"{where}: {exc}") from None
    items = _need(payload, "cells", (list,), where)
    if not items:
        raise BenchError(f"{where}: no cells")
    reference = reference if reference is not None else store
    random_shas = _known_random_shas(reference, backbone)
    for item in items:  # a sha this file itself calls random-init cannot be pretrained
        cell = item.get("cell") if isinstance(item, dict) else None
        if isinstance(cell, dict) and cell.get("weights_status") == "random-init":
            random_shas.add(str(cell.get("weights_sha256")))
    context = ImportContext(Path(results_dir) if results_dir is not None
                            else _results_dir_of(reference), random_shas)
    validated = [_validate_cell(item, backbone, task, f"{where}: cells[{i}]", context)
                 for i, item in enumerate(items)]
    ids = [c.cell_id for c, *_ in validated]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{where}: the same cell appears twice")
    replaced = sum(store.has_cell(i) for i in ids)
    store.write_cells([StoredCell(cell, metrics,
                                  [(p["sample_id"], p["target"], p["prediction"]) for p in preds],
                                  created_at,
                                  persons={p["sample_id"]: p["person"] for p in preds
                                           if "person" in p} or None)
                       for cell, created_at, metrics, preds in validated])
    return ImportReport(Path(path), backbone, task, len(validated), replaced)


def unverified_fields(hyperparameters: Any) -> dict[str, str]:
    """{field: why} an imported cell could not verify (empty for cells run here)."""
    if isinstance(hyperparameters, str):
        try:
            hyperparameters = json.loads(hyperparameters)
        except json.JSONDecodeError:
            return {}
    record = hyperparameters.get(VERIFICATION_KEY) if isinstance(hyperparameters, dict) else None
    if not isinstance(record, dict):
        return {}
    unverified = record.get("unverified")
    return dict(unverified) if isinstance(unverified, dict) else {}
