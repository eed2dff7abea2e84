"""A versioned JSON results file per (backbone, task): results travel without the data.

One file holds every stored cell of one backbone on one task (all weights, fractions, seeds,
profiles): the cell's identity and provenance, its metric values with their original
timestamp, and the per-subject test predictions the statistics are computed from. A pull
request can carry such a file; `import_results` verifies it completely before writing
anything, and then writes all cells in one transaction: a bad file changes nothing
(`import_files`, behind `brainbench import` and `import-bundle`, verifies every file before
it opens the store, so a refused import does not even create a results.db).

What is verified, never trusted: format, schema version, every field's type; each cell id
recomputed from its fields; every metric finite or null; predictions present (a cell without
them is refused), one per test subject (``n_test``); every metric the test predictions
determine recomputed (classification and regression: the kind's whole `test_metrics`;
survival: Harrell's C; segmentation: the mean of the per-subject scores); the weights id
recomputed from ``weights_status`` and ``weights_sha256``, and a "pretrained" claim refused
for a sha256 recorded as random-init (in the store or in the file) or a random-by-definition
backbone; ``split_hash`` against the split manifest of the importing results folder when it
holds one. When the cohort a cell was computed on is present on the importing machine (a
`DataLookup`: the phantom cohort its ``data_source`` names in the cache folder, or real data
whose DATA / dataset-config label equals its ``data_source``), the task is prepared as
`brainbench run` prepares it (voxel hashes, duplicate merge, split, verified against the
manifest by content) and the training subset recomputed: ``split_hash``, ``subset_hash`` and
``n_train`` must equal the recomputed values, ``n_test`` the number of recomputed test samples,
the predictions' sample ids exactly those test samples and (probe tasks) each target that
sample's label; the cohort is prepared once per (task, dataset, data source) per file.
What cannot be checked (metrics needing the training subset, ``n_train``, ``subset_hash`` and
the test samples (``test_samples``) without the cohort, a split with neither manifest nor
cohort) is recorded per cell under the reserved hyperparameters key ``import_verification``,
with what was looked for and where, and the leaderboard marks such rows UNVERIFIED.

No import can check the prediction values themselves, or fields only a re-run confirms
(precision, head, config_hash, code_version). So an import never replaces a stored outcome: a
cell already in the store must arrive with the same metrics, predictions and hashes
(`write_verified`), and a cell computed in the store is kept rather than overwritten.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields, replace
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


@dataclass(frozen=True)
class ImportReport:
    path: Path
    backbone: str
    task: str
    cells: int
    replaced: int  # cells an earlier import stored, written again (the same outcome)
    kept: int = 0  # cells computed in the store with the same outcome, left as they are


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
#: built-in controls (no learned weights; their "weights" sha256 is of the feature definition)
CONTROLS = frozenset({"intensity", "oracle"})


def random_by_definition() -> frozenset[str]:
    """Built-in backbones that are random-init by definition: registered as trained on no
    data (``pretraining_datasets=()``: ``random``, ``random2d``, ``random3d``), controls aside."""
    import brainbench.baselines  # noqa: F401  (registers the built-in backbones)
    from brainbench.backbone import PRETRAINING_DATASETS

    return frozenset(n for n, data in PRETRAINING_DATASETS.items() if not data) - CONTROLS
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class DataLookup:
    """Where an import looks for the cohorts its cells were computed on, as `brainbench run`
    finds them: phantom cohorts under ``cache_dir/phantoms/``, real data through DATA
    (``data_dir``), ``BRAINBENCH_DATA_<NAME>`` and the dataset config. Voxel hashes are
    read from (and added to) the same cache's ``voxel_hashes.json``."""

    cache_dir: Path
    data_dir: Path | None = None


@dataclass
class ImportContext:
    """What a file's claims are checked against besides the file itself."""

    results_dir: Path | None  # where split manifests live (None: not checkable)
    random_shas: set[str]  # weights sha256 the store (or this file) records as random-init
    lookup: DataLookup | None = None  # where the cohorts are looked for (None: nowhere)
    #: (task, dataset, data_source) -> the prepared task, or why its cohort is not present:
    #: a file's cells share one preparation
    cohorts: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    locations: Any = None  # brainbench.datasets.locations.DataLocations, read on first use
    hash_cache: Any = None  # brainbench.leakage.HashCache of lookup.cache_dir, on first use


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
    if status != "random-init" and cell.backbone in random_by_definition():
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


def _check_profile(cell: Cell, where: str) -> None:
    """The profile must be one this brainbench defines, and a phantom cell's cohort the one
    that profile generates (people per dataset, seed; any phantom version): a cell of the
    small ``tiny`` cohort relabelled ``cpu`` is refused."""
    from brainbench.profiles import PROFILES

    try:
        profile = PROFILES.get(cell.profile)
    except BenchError as exc:
        raise BenchError(f"{where}: field 'profile': {exc}") from None
    match = _PHANTOM_SOURCE.fullmatch(cell.data_source)
    if match is None:
        return
    claimed = match.group(1).split("-", 1)[1]
    expected = profile.phantom_tag().split("-", 1)[1]
    if claimed != expected:
        raise BenchError(f"{where}: field 'profile' does not verify: profile {cell.profile!r} "
                         f"generates the phantom cohort ...-{expected}, but the cell's "
                         f"data_source is {cell.data_source!r}")


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
    from brainbench.precision import RESOLVED

    if values.get("precision", "fp32") not in RESOLVED:
        raise BenchError(f"{where}.cell: field precision is {values['precision']!r}; expected "
                         f"one of {', '.join(RESOLVED)}")
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
    _check_profile(cell, f"{where}.cell")
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
    verification.update(_check_split(cell, preds, where, context))
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


def _check_split(cell: Cell, preds: list, where: str, context: ImportContext
                 ) -> dict[str, str | None]:
    """split_hash against the split manifest of the importing results folder, when present;
    then the split, its test samples (n_test, the predictions' sample ids and targets) and the
    training subset (n_train, subset_hash) recomputed from the cohort, when it is present
    (`_check_subset`)."""
    from brainbench.pipeline import manifest_path
    from brainbench.splits import read_manifest

    spec = _split_spec(cell, where)
    out: dict[str, str | None] = {}
    manifest = (manifest_path(context.results_dir, cell.data_source, spec)
                if context.results_dir is not None else None)
    if manifest is None:
        out["split_hash"] = "no results folder to look for the split manifest in"
    elif not manifest.exists():
        out["split_hash"] = ("no split manifest in the importing results folder "
                             f"(splits/{manifest.parent.name}/{manifest.name})")
    else:
        stored = read_manifest(manifest)
        if stored["hash"] != cell.split_hash:
            raise BenchError(f"{where}.cell: field 'split_hash' does not verify: "
                             f"{cell.split_hash[:12]}... but the split manifest {manifest} "
                             f"holds {stored['hash'][:12]}...; the results are of another split")
        n_train_groups = len(stored["train"])
        if cell.n_train < 1 or (cell.fraction == 1.0 and cell.n_train < n_train_groups):
            raise BenchError(f"{where}.cell: field 'n_train' does not verify: {cell.n_train} "
                             f"training samples at fraction {cell.fraction:g}, but the split "
                             f"manifest {manifest} has {n_train_groups} training people")
        out["split_hash"] = None
    subset = _check_subset(cell, spec, preds, where, context,
                           manifest if manifest is not None and manifest.exists() else None)
    if subset is None:  # recomputed: all verified
        out.update(split_hash=None, n_train=None, subset_hash=None, test_samples=None)
    else:
        out.update(n_train=subset, subset_hash=subset,
                   test_samples=subset.replace("training subset", "test split", 1))
    return out


def _split_spec(cell: Cell, where: str) -> Any:
    """The task spec whose split the cell was scored on, as `brainbench run` builds it: the
    cell's dataset, its profile's phantom test share and its split variant."""
    from brainbench.profiles import PROFILES
    from brainbench.taskspec import get_task

    spec = get_task(cell.task)
    try:
        if cell.dataset != spec.dataset:
            spec = spec.on_dataset(cell.dataset)
    except BenchError as exc:
        raise BenchError(f"{where}.cell: field 'dataset' {cell.dataset!r} does not verify: "
                         f"{exc}") from None
    if cell.profile in PROFILES.names():
        spec = spec.for_profile(PROFILES.get(cell.profile), cell.data_source)
    if cell.split:
        variant = cell.split.partition(":")[0]
        try:
            spec = spec.with_split(variant)
        except BenchError as exc:
            raise BenchError(f"{where}.cell: field 'split' {cell.split!r} does not verify: "
                             f"{exc}") from None
    return spec


#: the data_source label `brainbench run` gives a phantom cohort (brainbench.runner.prepare_data)
_PHANTOM_SOURCE = re.compile(
    r"phantom:(v(?P<version>[0-9][0-9A-Za-z.]*)-seed\d+-n\d+(?:-[a-z0-9_]+_n\d+)*)")


def _phantom_root(cell: Cell, lookup: DataLookup) -> Path | str:
    """The phantom cohort folder of the cell's data_source in the cache, or why it is absent."""
    from brainbench.datasets import ADAPTERS
    from brainbench.phantoms import PHANTOM_VERSION

    match = _PHANTOM_SOURCE.fullmatch(cell.data_source)
    if match is None:
        return (f"data_source {cell.data_source!r} is not a phantom cohort brainbench generates "
                "(phantom:v<version>-seed<S>-n<N>[-<dataset>_n<N>...]), so there is no cohort to "
                "look for")
    folder = Path(lookup.cache_dir) / "phantoms" / match.group(1)
    if not folder.is_dir():
        other = (f"; this brainbench generates phantom version v{PHANTOM_VERSION}"
                 if match.group("version") != PHANTOM_VERSION else
                 "; `brainbench run` with the cell's profile and this --cache generates it")
        return (f"the training subset needs the cohort's samples: phantom cohort "
                f"{match.group(1)} not found in the cache folder (looked for {folder}){other}")
    dataset_folder = folder / ADAPTERS.get(cell.dataset).folder
    if not dataset_folder.is_dir():
        return (f"the training subset needs the cohort's samples: the phantom cohort {folder} "
                f"holds no {cell.dataset} (looked for {dataset_folder})")
    return folder


def _real_root(cell: Cell, context: ImportContext) -> Path | str:
    """The local folder of the cell's dataset when the local data is the data the cell was
    computed on (its DATA / dataset-config label equals the cell's data_source), or why not."""
    from brainbench.datasets import ADAPTERS
    from brainbench.datasets.locations import data_locations

    lookup = context.lookup
    assert lookup is not None
    if context.locations is None:
        context.locations = data_locations(lookup.data_dir)
    locations = context.locations
    needs = "the training subset needs the cohort's samples: "
    if not locations.real:
        return (f"{needs}no real data configured here (looked for --data / DATA, "
                f"BRAINBENCH_DATA_{cell.dataset.upper()} and the dataset config brainbench.toml)")

    def present(name: str) -> bool:
        try:
            return locations.present(name)
        except BenchError:  # the root holds no dataset at all
            return False

    where = locations.root if locations.root is not None else "the dataset config"
    if not present(cell.dataset):
        return f"{needs}dataset {cell.dataset} not found in the local data ({where})"
    named = [entry.partition("=")[0] for entry in cell.data_source.removeprefix("real:").split(";")]
    labels = {locations.source_label([cell.dataset])}
    together = [n for n in named if n in ADAPTERS and present(n)]
    if together:
        labels.add(locations.source_label(together))
    if cell.data_source not in labels:
        return (f"{needs}data_source {cell.data_source!r} is not the local data (here DATA / "
                f"the dataset config give {sorted(labels)[0]!r})")
    return Path(locations.path_for(cell.dataset))


def _prepared_cohort(cell: Cell, spec: Any, where: str, context: ImportContext,
                     manifest: Path | None) -> Any:
    """The task prepared on the cell's cohort as `brainbench run` prepares it (once per
    (task, dataset, data source) per file), or why the cohort is not present."""
    from brainbench.leakage import HashCache
    from brainbench.pipeline import prepare_task

    key = (cell.task, cell.dataset, cell.data_source, spec.test_fraction, cell.split)
    if key in context.cohorts:
        return context.cohorts[key]
    lookup = context.lookup
    if lookup is None:
        found: Path | str = ("the training subset needs the cohort's samples to recompute (no "
                             "local data was looked for)")
    elif cell.data_source.startswith("phantom:"):
        found = _phantom_root(cell, lookup)
    elif cell.data_source.startswith("real:"):
        found = _real_root(cell, context)
    else:
        found = (f"data_source {cell.data_source!r} names neither a phantom cohort nor real "
                 "data, so there is no cohort to look for")
    if isinstance(found, Path):
        if context.hash_cache is None:
            context.hash_cache = HashCache(Path(lookup.cache_dir) / "voxel_hashes.json")
        try:
            found = prepare_task(spec, found, cell.data_source, hash_cache=context.hash_cache,
                                 manifest=manifest)  # an existing manifest is only verified
        except BenchError as exc:
            raise BenchError(f"{where}: the cohort of data_source {cell.data_source!r} is "
                             f"present ({found}) but cannot be prepared to recompute the "
                             f"training subset: {exc}") from None
    context.cohorts[key] = found
    return found


def _check_subset(cell: Cell, spec: Any, preds: list, where: str, context: ImportContext,
                  manifest: Path | None) -> str | None:
    """Recompute the split and the cell's training subset from the cohort, when present, and
    refuse a file whose split_hash, test samples (`_check_test_samples`), subset_hash or
    n_train differ. None: verified; else why the subset could not be recomputed."""
    from brainbench.splits import fraction_subset, subset_hash

    prepared = _prepared_cohort(cell, spec, where, context, manifest)
    if isinstance(prepared, str):
        return prepared
    source = f"the {cell.dataset} cohort in {prepared.loaded.cohort.root}"
    if prepared.split.hash != cell.split_hash:
        raise BenchError(f"{where}.cell: field 'split_hash' does not verify: the file says "
                         f"{cell.split_hash[:12]}... but the split recomputed from {source} is "
                         f"{prepared.split.hash[:12]}...; the results are of another split")
    if prepared.split.label != cell.split:
        raise BenchError(f"{where}.cell: field 'split' does not verify: the file says "
                         f"{cell.split!r} but the split recomputed from {source} is "
                         f"{prepared.split.label or 'the standard split'!r}")
    _check_test_samples(cell, prepared, preds, where, source)
    try:
        groups = fraction_subset(prepared.split, prepared.samples, cell.fraction, cell.seed,
                                 spec.min_per_stratum)
    except BenchError as exc:
        raise BenchError(f"{where}.cell: fields 'fraction' / 'seed' do not verify: {exc}") from None
    recomputed_hash, n_train = subset_hash(groups), len(prepared.members(groups))
    wrong = []
    if recomputed_hash != cell.subset_hash:
        wrong.append(f"field 'subset_hash' does not verify: the file says "
                     f"{cell.subset_hash[:12]}... but the training subset recomputed from "
                     f"{source} (fraction {cell.fraction:g}, seed {cell.seed}) is "
                     f"{recomputed_hash[:12]}...")
    if n_train != cell.n_train:
        wrong.append(f"field 'n_train' does not verify: the file says {cell.n_train} but the "
                     f"training subset recomputed from {source} (fraction {cell.fraction:g}, "
                     f"seed {cell.seed}) has {n_train} samples")
    if wrong:
        raise BenchError(f"{where}.cell: " + "; ".join(wrong))
    return None


def _check_test_samples(cell: Cell, prepared: Any, preds: list, where: str,
                        source: str) -> None:
    """The predictions are of exactly the recomputed split's test samples (n_test of them),
    each with that sample's own target: metrics recomputed from invented subjects or edited
    targets would otherwise verify."""
    test = {s.id: s for s in prepared.test}
    if cell.n_test != len(test):
        raise BenchError(f"{where}.cell: field 'n_test' does not verify: the file says "
                         f"{cell.n_test} but the test split recomputed from {source} has "
                         f"{len(test)} samples")
    ids = {p["sample_id"] for p in preds}
    extra, missing = sorted(ids - set(test)), sorted(set(test) - ids)
    if extra or missing:
        raise BenchError(f"{where}: field 'predictions' does not verify: their sample ids are "
                         f"not the test samples of the split recomputed from {source}: "
                         f"{len(extra)} not in the test split {extra[:3]}, {len(missing)} test "
                         f"sample(s) without a prediction {missing[:3]}")
    persons = prepared.test_persons
    for j, p in enumerate(preds):  # the person is what the statistics resample
        if "person" not in p:  # a file from before persons were kept: the cohort's grouping
            p["person"] = persons[p["sample_id"]]
        elif p["person"] != persons[p["sample_id"]]:
            raise BenchError(f"{where}.predictions[{j}]: field 'person' does not verify: the "
                             f"file says {p['person']!r} for sample {p['sample_id']!r} but the "
                             f"split recomputed from {source} groups it as "
                             f"{persons[p['sample_id']]!r}")
    kind = prepared.kind
    if kind.evaluator != "probe":  # segmentation targets name files on the computing machine
        return
    for j, p in enumerate(preds):  # as the store keeps them (brainbench.store._cell_rows)
        expected = json.loads(json.dumps(kind.stored_target(test[p["sample_id"]].target),
                                         default=str))
        if p["target"] != expected:
            raise BenchError(f"{where}.predictions[{j}]: field 'target' does not verify: the "
                             f"file says {p['target']!r} for sample {p['sample_id']!r} but "
                             f"{source} gives {expected!r}")


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


def _results_dir_of(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent
    return None


def _known_random_shas(store: ResultStore | None, backbone: str) -> set[str]:
    frame = store.frame(backbone=backbone, weights_status="random-init") if store else None
    return set(frame["weights_sha256"]) if frame is not None and not frame.empty else set()


@dataclass(frozen=True)
class VerifiedFile:
    """A results file that passed every check, ready to be written (`write_verified`)."""

    path: Path
    backbone: str
    task: str
    cells: list[StoredCell]


def verify_results(path: Path, reference: ResultStore | None, results_dir: Path | None = None,
                   lookup: DataLookup | None = None) -> VerifiedFile:
    """Check the whole file (see the module docstring), writing nothing. reference: the store
    whose records the claims are checked against (None: no store exists yet). results_dir:
    where the split manifests live (default: the folder of an SQLite reference)."""
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
    random_shas = _known_random_shas(reference, backbone)
    for item in items:  # a sha this file itself calls random-init cannot be pretrained
        cell = item.get("cell") if isinstance(item, dict) else None
        if isinstance(cell, dict) and cell.get("weights_status") == "random-init":
            random_shas.add(str(cell.get("weights_sha256")))
    if results_dir is None and reference is not None:
        results_dir = _results_dir_of(reference.url)
    context = ImportContext(Path(results_dir) if results_dir is not None else None,
                            random_shas, lookup)
    validated = [_validate_cell(item, backbone, task, f"{where}: cells[{i}]", context)
                 for i, item in enumerate(items)]
    ids = [c.cell_id for c, *_ in validated]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{where}: the same cell appears twice")
    return VerifiedFile(Path(path), backbone, task, [
        StoredCell(cell, metrics, [(p["sample_id"], p["target"], p["prediction"]) for p in preds],
                   created_at, persons={p["sample_id"]: p["person"] for p in preds
                                        if "person" in p} or None)
        for cell, created_at, metrics, preds in validated])


def write_verified(store: ResultStore, files: list[VerifiedFile]) -> list[ImportReport]:
    """Write the cells of every verified file in ONE transaction: all files are imported, or
    none. A cell already stored must have the same outcome (`_check_same_outcome`); one
    computed in this store is then kept as it is, one an earlier import stored is replaced."""
    seen: dict[str, Path] = {}
    for verified in files:
        for item in verified.cells:
            first = seen.setdefault(item.cell.cell_id, verified.path)
            if first != verified.path:
                raise BenchError(f"{verified.path}: cell {item.cell.cell_id[:12]} is also in "
                                 f"{first}; import each cell once")
    stored = {c.cell_id: c for c in store.cells(with_predictions=True,
                                                 cell_id=sorted(seen))} if seen else {}
    for verified in files:
        for item in verified.cells:
            if item.cell.cell_id in stored:
                _check_same_outcome(verified.path, item, stored[item.cell.cell_id], store)
    def computed_here(item: StoredCell) -> bool:  # kept: its own run outranks a copy of it
        return (item.cell.cell_id in stored
                and VERIFICATION_KEY not in stored[item.cell.cell_id].cell.hyperparameters)

    reports = [ImportReport(f.path, f.backbone, f.task, len(f.cells),
                            sum(c.cell.cell_id in stored and not computed_here(c)
                                for c in f.cells),
                            sum(computed_here(c) for c in f.cells)) for f in files]
    store.write_cells([item for f in files for item in f.cells if not computed_here(item)])
    return reports


def _outcome(item: StoredCell) -> tuple:
    """What a cell found: the fields outside its identity, its metrics and its predictions."""
    def plain(value: Any) -> Any:  # undefined numbers travel as null
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return _clean(value)

    cell = item.cell
    return (cell.n_train, cell.n_test, cell.split_hash, cell.subset_hash, cell.cache_key,
            json.dumps(plain(dict(item.metrics)), sort_keys=True),
            json.dumps(plain(list(item.predictions)), sort_keys=True))


def _check_same_outcome(path: Path, incoming: StoredCell, stored: StoredCell,
                        store: ResultStore) -> None:
    """An import re-writes a stored cell only with the same outcome: a cell's id covers its
    configuration, so the same id with other predictions or metrics is a conflict (an edit,
    or a nondeterministic run), never a silent replacement of what the store holds."""
    if _outcome(incoming) == _outcome(stored):
        return
    origin = ("imported" if VERIFICATION_KEY in stored.cell.hyperparameters
              else "computed in this store")
    labels = ("n_train", "n_test", "split_hash", "subset_hash", "cache_key", "metrics",
              "predictions")
    differ = [name for name, a, b in zip(labels, _outcome(incoming), _outcome(stored)) if a != b]
    cell = incoming.cell
    raise BenchError(f"{path}: cell {cell.cell_id[:12]} ({cell.backbone}, {cell.task}, fraction "
                     f"{cell.fraction:g}, seed {cell.seed}) is already in {store.shown} "
                     f"({origin}, {stored.created_at}) with other {', '.join(differ)}: an import "
                     "never replaces a stored outcome; nothing was imported")


def existing_store(url: str) -> ResultStore | None:
    """The store at `url`, or None for an SQLite file that does not exist yet: opening it would
    create it (and its folder), and a refused import must leave the results folder as it was."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    return ResultStore(url)


def import_files(target: ResultStore | str, paths: list[Path],
                 lookup: DataLookup | None = None) -> tuple[ResultStore, list[ImportReport]]:
    """Verify every file against the target store (a URL: the store there, if it exists), then
    open or create it and write them all in one transaction: a refused file changes nothing,
    and a store that did not exist is not created. A file named twice (also through another
    path to it) is imported, and counted, once."""
    unique: dict[Path, Path] = {}
    for path in map(Path, paths):
        unique.setdefault(path.resolve(), path)
    paths = list(unique.values())
    url = target if isinstance(target, str) else target.url
    reference = existing_store(url) if isinstance(target, str) else target
    verified = [verify_results(Path(p), reference, _results_dir_of(url), lookup) for p in paths]
    store = reference if reference is not None else ResultStore(url)
    return store, write_verified(store, verified)


def import_results(store: ResultStore, path: Path, results_dir: Path | None = None,
                   reference: ResultStore | None = None,
                   lookup: DataLookup | None = None) -> ImportReport:
    """Validate the whole file, then write every cell in one transaction (`write_verified`:
    a cell already stored must have the same outcome).

    Every claim is verified where it can be (see the module docstring); what cannot be is
    recorded per cell under ``hyperparameters["import_verification"]`` and shown as
    unverified on the leaderboard. results_dir: where the split manifests live (default: the
    folder of an SQLite store). reference: the store whose records the claims are checked
    against when `store` is a scratch copy (default: `store`). lookup: where the cohorts are
    looked for to recompute the split and training subsets (`brainbench import` passes its
    --cache / --data; None: nowhere, n_train and subset_hash stay unverified)."""
    verified = verify_results(path, reference if reference is not None else store,
                              results_dir, lookup)
    return write_verified(store, [verified])[0]


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
