"""The probe evaluator: heads on cached feature vectors (classification, regression, survival).

Per cell, the protocol's head is fitted on the label-fraction subset only (any selection is an
inner split of that subset), then predicts the test split, which is scored and never chosen on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from brainbench.aggregate import sample_vector
from brainbench.backbone import Backbone
from brainbench.evaluators import EVALUATORS
from brainbench.evaluators.base import EvaluatedCell, Evaluator
from brainbench.features import ExtractionStats, FeatureCache, extract_features
from brainbench.kinds import TaskKind, get_kind
from brainbench.pipeline import PlannedCell, PreparedTask, plan_cells
from brainbench.profiles import Profile
from brainbench.progress import progress_bar
from brainbench.protocols import Protocol, get_protocol, protocol_input
from brainbench.runconfig import DEFAULT_PROTOCOL, RunConfig, RunReport
from brainbench.search import fit_protocol
from brainbench.splits import digest
from brainbench.taskspec import Sample, TaskSpec

HEAD = DEFAULT_PROTOCOL  # a cell's `head` column holds the protocol name
AGGREGATION = {"token": "cls", "slices": "mean", "modalities": "mean"}  # of protocol `linear`


def _protocol_identity(protocol: Protocol, trials: int) -> dict[str, Any]:
    return {**protocol.as_dict(), "trials": trials if protocol.searched else None}


def _config_hash(task: TaskSpec, backbone: Backbone, profile: Profile,
                 protocol: dict[str, Any] | None = None) -> str:
    """The configuration part of a probe cell's identity. The default protocol keeps the
    first release's hash (no protocol entry), so its stored results stay valid."""
    return digest({
        "task": {"id": task.id, "modalities": task.modalities, "target": repr(task.target),
                 "select": dict(task.select), "test_fraction": task.test_fraction,
                 "min_per_stratum": task.min_per_stratum},
        "backbone": backbone.cache_identity(), "profile": profile.as_dict(), "head": HEAD,
        "aggregation": AGGREGATION,
        **({"protocol": protocol} if protocol is not None else {}),
    })


def config_hash_for(task: TaskSpec, backbone: Backbone, profile: Profile, protocol: Protocol,
                    trials: int) -> str:
    return _config_hash(task, backbone, profile, None if protocol.name == HEAD
                        else _protocol_identity(protocol, trials))


def _json_rows(prediction: np.ndarray) -> list[Any]:
    return [p.tolist() if isinstance(p, np.ndarray) else float(p) for p in prediction]


def evaluate_cell(task: TaskSpec, protocol: Protocol, train: Sequence[Sample],
                  test: Sequence[Sample], inputs: dict[str, np.ndarray], *, seed: int,
                  trials: int, storage_url: str | None = None, study_name: str | None = None,
                  fresh: bool = False):
    """Fit on `train` (selection sees nothing else), then predict and score `test`.

    Returns (ProbeFit, test prediction, metrics). Test labels are read only after the head
    is fitted, and only to score it.
    """
    kind = get_kind(task.kind)
    x_train = np.stack([inputs[s.id] for s in train])
    y_train = kind.target_array([s.target for s in train])
    fitted = fit_protocol(protocol, task.kind, x_train, y_train, seed=seed,
                          target_transform=getattr(task.target, "transform", None),
                          trials=trials, storage_url=storage_url, study_name=study_name,
                          fresh=fresh, groups=[s.group for s in train])
    x_test = np.stack([inputs[s.id] for s in test])
    prediction = fitted.head.predict(x_test)
    y_test = kind.target_array([s.target for s in test])
    metrics, reference = score(kind, fitted.head, y_test, prediction, x_train, y_train)
    info = fitted.info
    if reference is not None:  # secondary metrics recomputable from the stored cell
        info = replace(info, hyperparameters={**info.hyperparameters,
                                              REFERENCE_KEY: reference})
    return info, prediction, metrics


#: the hyperparameters entry holding what secondary metrics need from the training subset
REFERENCE_KEY = "metric_reference"


def score(kind: TaskKind, head: Any, y_test: Any, prediction: np.ndarray,
          x_train: np.ndarray, y_train: Any) -> tuple[dict[str, float], dict | None]:
    """The test metrics, and the training reference the kind stores for recomputing them."""
    train_target = (y_train, head.predict(x_train)) if kind.needs_train_predictions() else None
    metrics = kind.test_metrics(y_test, prediction, classes=getattr(head, "classes_", None),
                                train_target=train_target)
    reference = kind.fit_reference(*train_target) if train_target is not None else None
    return metrics, reference


def sample_inputs(backbone: Backbone, samples: Sequence[Sample], cache: FeatureCache,
                  config: RunConfig, desc: str, protocol: Protocol | None = None
                  ) -> tuple[dict[str, np.ndarray], ExtractionStats]:
    """One input per sample from cached per-slice tokens (extracting cache misses): a vector,
    or for attention protocols the per-slice tokens (modalities, slices, d)."""
    paths = [path for s in samples for _, path in s.images]
    tokens, stats = extract_features(backbone, paths, cache, batch_size=config.profile.batch_size,
                                     progress=config.progress, desc=desc,
                                     workers=config.workers)
    if protocol is not None and protocol.name != HEAD:
        return {s.id: protocol_input(protocol, [tokens[Path(p)] for _, p in s.images])
                for s in samples}, stats
    vectors = {s.id: sample_vector([tokens[Path(p)] for _, p in s.images],
                                   token=AGGREGATION["token"], how=AGGREGATION["slices"])
               for s in samples}
    return vectors, stats


class ProbeEvaluator(Evaluator):
    name = "probe"

    def plan(self, prepared: PreparedTask, backbone: Backbone,
             config: RunConfig) -> list[PlannedCell]:
        protocol = get_protocol(config.protocol)
        return plan_cells(prepared, backbone, config.profile, head=protocol.name,
                          config_hash=config_hash_for(prepared.task, backbone, config.profile,
                                                      protocol, config.trials),
                          fractions=config.fractions, seeds=config.seeds_for(prepared.task))

    def evaluate(self, prepared: PreparedTask, cells: Sequence[PlannedCell], backbone: Backbone,
                 config: RunConfig, store_url: str, report: RunReport
                 ) -> Iterator[EvaluatedCell]:
        task, kind, test = prepared.task, prepared.kind, prepared.test
        protocol = get_protocol(config.protocol)
        needed = prepared.members(set(prepared.split.test_groups).union(
            *[set(c.groups) for c in cells]))
        inputs, stats = sample_inputs(backbone, needed, FeatureCache(config.cache_dir / "features"),
                                      config, desc=task.id, protocol=protocol)
        report.extraction.merge(stats)
        cache_digest = digest(stats.keys)
        # 30 cells of a linear sweep take seconds, a searched protocol's minutes: a bar on a
        # terminal once it has run for 2 s
        for planned in progress_bar(cells, desc=f"{task.id} probes", unit="cell", delay=2.0,
                                    enabled=config.progress):
            info, prediction, metrics = evaluate_cell(
                task, protocol, prepared.members(planned.groups), test, inputs,
                seed=planned.cell.seed, trials=config.trials, storage_url=store_url,
                study_name=f"brainbench-{planned.cell.cell_id}",
                fresh=config.force)  # --force searches again instead of resuming the old study
            final = replace(planned.cell, hyperparameters=dict(info.hyperparameters),
                            selection=info.selection, cache_key=cache_digest)
            yield EvaluatedCell(final, metrics, list(zip(
                [s.id for s in test], [kind.stored_target(s.target) for s in test],
                _json_rows(prediction))), prepared.test_persons)


EVALUATORS.register(ProbeEvaluator.name, ProbeEvaluator)
