"""A versioned JSON results file per (backbone, task): results travel without the data.

One file holds every stored cell of one backbone on one task (all weights, fractions, seeds,
profiles): the cell's identity and provenance, its metric values with their original
timestamp, and the per-subject test predictions the statistics are computed from. A pull
request can carry such a file; `import_results` validates it completely (format, schema
version, every field's type, each cell id recomputed from its fields, the primary metric
recomputed from the predictions) before writing anything, and then writes all cells in one
transaction: a bad file changes nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainbench.errors import BenchError
from brainbench.splits import write_json_atomic
from brainbench.store import Cell, ResultStore, StoredCell

FORMAT = "brainbench-results"
SCHEMA_VERSION = 1
_CELL_TYPES: dict[str, tuple[type, ...]] = {
    f.name: ({"str": (str,), "int": (int,), "float": (int, float),
              "dict[str, Any]": (dict,)}[str(f.type)]) for f in fields(Cell)}


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
                               "prediction": prediction}
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


def _validate_cell(item: Any, backbone: str, task: str, where: str) -> tuple[Cell, str, dict,
                                                                             list]:
    data = _need(item, "cell", (dict,), where)
    values = {name: _need(data, name, types, f"{where}.cell")
              for name, types in _CELL_TYPES.items()}
    for name, types in _CELL_TYPES.items():
        if float in types:  # 1 and 1.0 hash differently: a fraction is always a float
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
            raise BenchError(f"{where}: metric {name!r} must be a number or null, got {value!r}")
    preds = _need(item, "predictions", (list,), where)
    for j, p in enumerate(preds):
        _need(p, "sample_id", (str,), f"{where}.predictions[{j}]")
        for key in ("target", "prediction"):
            if not isinstance(p, dict) or key not in p:
                raise BenchError(f"{where}.predictions[{j}]: missing field {key!r}")
    if len(preds) != cell.n_test and preds:
        raise BenchError(f"{where}: {len(preds)} predictions but n_test={cell.n_test}")
    _check_primary(cell, metrics, preds, where)
    return cell, created_at, metrics, preds


def _check_primary(cell: Cell, metrics: dict, preds: list, where: str) -> None:
    """Recompute the primary metric from the predictions: numbers and predictions must agree."""
    from brainbench.kinds import get_kind
    from brainbench.taskspec import get_task

    spec = get_task(cell.task)
    value = metrics.get(spec.primary_metric)
    kind = get_kind(spec.kind)
    if value is None or not preds or spec.primary_metric not in kind.bootstrap_metrics:
        return
    rows = sorted(preds, key=lambda p: p["sample_id"])
    try:
        scorer = kind.scorer(spec.primary_metric, [p["target"] for p in rows],
                             [p["prediction"] for p in rows],
                             getattr(spec.target, "classes", ()))
        recomputed = scorer.point()
    except (TypeError, ValueError, KeyError) as exc:
        raise BenchError(f"{where}: predictions cannot be scored: {exc}") from None
    if not math.isclose(recomputed, value, rel_tol=1e-6, abs_tol=1e-9):
        raise BenchError(f"{where}: {spec.primary_metric}={value:.6g} but the predictions give "
                         f"{recomputed:.6g}")


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


def import_results(store: ResultStore, path: Path) -> ImportReport:
    """Validate the whole file, then write every cell in one transaction (replacing any
    stored cell with the same identity)."""
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
    validated = [_validate_cell(item, backbone, task, f"{where}: cells[{i}]")
                 for i, item in enumerate(items)]
    ids = [c.cell_id for c, *_ in validated]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{where}: the same cell appears twice")
    replaced = sum(store.has_cell(i) for i in ids)
    store.write_cells([StoredCell(cell, metrics,
                                  [(p["sample_id"], p["target"], p["prediction"]) for p in preds],
                                  created_at)
                       for cell, created_at, metrics, preds in validated])
    return ImportReport(Path(path), backbone, task, len(validated), replaced)
