"""The Ray executor: feature extraction sharded over Ray actors, probe cells as Ray tasks.

Why Ray: a lab that outgrows one machine already runs a distributed engine; this one needs no
daemon of ours. The plan is the same as the local executor's, and so are the cache and store:

1. Extraction. The driver lists the volumes every work item needs and which of them the
   content-addressed feature cache lacks; the misses are cut into shards and handed, as they
   free up, to a pool of actors, one per GPU (``num_gpus=1``) or else one per CPU (one torch
   thread each). Each actor builds the backbone once and writes cache entries atomically
   (`FeatureCache.save`: a temporary file renamed into place) on the shared filesystem, so
   a shard retried after its worker was killed (actor restart + task retry) recomputes only
   the volumes not yet written. Evaluators that extract their own inputs (segmentation's
   patch tokens) run whole on these actors.
2. Cells. The pool is released, then each probe work item's cells are split into groups and
   every group is a Ray task (retried if its worker dies) that runs the item's own evaluator
   on cached features only: the backbone it receives answers cache keys but refuses to
   encode. Finished cells come back to the driver, which writes them through the store one
   group at a time: a driver killed mid-run loses only unfinished groups, and its rerun finds
   the cached volumes and stored cells.

A probe cell records the digest of the cache keys its batch was evaluated against; the driver
sets it to the digest over the whole item (what the local executor computes for the same
cells), so both executors store identical rows for identical features.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from brainbench.backbone import Backbone
from brainbench.deferred import BackboneIdentity, IdentityOnly
from brainbench.errors import BenchError
from brainbench.evaluators.base import EvaluatedCell, Evaluator
from brainbench.executors.base import BackboneBuilder, Executor, WorkItem
from brainbench.features import ExtractionStats, FeatureCache, extract_features
from brainbench.pipeline import PlannedCell, PreparedTask
from brainbench.preprocess import image_sha256
from brainbench.runconfig import RunConfig, RunReport
from brainbench.splits import digest

log = logging.getLogger("brainbench")

INSTALL_HINT = ("install it with `pip install 'brainbench[cluster]'` (or `pip install "
                "'ray>=2.9'`) into the environment that runs brainbench, and the same on every "
                "node of the cluster")
CELLS_ENV = "BRAINBENCH_RAY_CELLS_PER_TASK"  # cells per Ray task (default: spread over CPUs)
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # a local instance stays small: it moves only refs
SHARDS_PER_WORKER = 4  # shards per actor, so a slow or restarted worker delays little
MAX_SHARD = 64  # volumes per shard at most (what a restarted worker may redo)
RESTARTS = 3  # times an actor is restarted / a task retried after its process died


def import_ray() -> Any:
    """The ray module, or a BenchError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BenchError(f"--executor ray needs Ray, which is not importable here ({exc}); "
                         f"{INSTALL_HINT}. The default --executor local needs no Ray.") from None
    return ray


def identity_digest(backbone: Backbone) -> str:
    return digest(backbone.cache_identity())


class CachedFeaturesOnly(IdentityOnly):
    """A backbone's identity without its network: enough for cache keys and cell identity.

    Cell tasks get this instead of the model, so they start fast and can never encode: a miss
    there means the cache is not shared with the driver's extraction (a configuration error).
    """

    def __init__(self, backbone: Backbone, cache_dir: Path) -> None:
        super().__init__(BackboneIdentity.of(backbone))
        self._cache_dir = cache_dir

    def _refuse(self, what: str) -> BenchError:
        return BenchError(
            f"a Ray cell task found no feature-cache entry for a volume of backbone {self.name} "
            f"({what}) after extraction wrote it: every node must see the same cache folder "
            f"{self._cache_dir} (--cache on a shared filesystem)")

    def embed(self, batch):
        raise self._refuse(f"batch of {len(batch)}")

    def encode_file(self, path: Path):
        raise self._refuse(str(path))


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


class Encoder:
    """A Ray actor: one backbone, built once per worker process, encoding shards into the
    cache (and running evaluators that extract their own inputs)."""

    def __init__(self, source: Backbone | BackboneBuilder, identity: str, gpu: bool) -> None:
        _single_thread()
        backbone = source if isinstance(source, Backbone) else source()
        if identity_digest(backbone) != identity:
            raise BenchError(
                f"the Ray worker on {os.uname().nodename} built backbone {backbone.name} with "
                f"another identity than the driver's (cache identity {identity_digest(backbone)[:12]} "
                f"vs {identity[:12]}): every node must see the same backbone card or file, "
                "weights file and brainbench version")
        if gpu:
            from brainbench.device import place

            place(backbone, "cuda")  # Ray gives the actor its GPU as cuda:0
        self.backbone = backbone

    def pid(self) -> int:
        return os.getpid()

    def extract(self, paths: Sequence[str], cache_root: str, batch_size: int,
                workers: int | None) -> tuple[ExtractionStats, int]:
        _, stats = extract_features(self.backbone, [Path(p) for p in paths],
                                    FeatureCache(Path(cache_root)), batch_size=batch_size,
                                    progress=False, desc="ray shard", workers=workers)
        stats.keys = []  # the driver knows the keys; only counts travel back
        return stats, os.getpid()

    def evaluate(self, evaluator: Evaluator, prepared: PreparedTask, cells: Sequence[PlannedCell],
                 config: RunConfig, store_url: str) -> tuple[list[EvaluatedCell], list[str],
                                                             ExtractionStats]:
        report = _worker_report(self.backbone, store_url)
        config = replace(config, progress=False)
        done = list(evaluator.evaluate(prepared, cells, self.backbone, config, store_url, report))
        return done, report.notes, report.extraction


def evaluate_group(evaluator: Evaluator, prepared: PreparedTask, cells: Sequence[PlannedCell],
                   backbone: CachedFeaturesOnly, config: RunConfig, store_url: str
                   ) -> tuple[list[EvaluatedCell], list[str]]:
    """A Ray task: one group of a probe item's cells, on cached features only."""
    _single_thread()
    report = _worker_report(backbone, store_url)
    done = list(evaluator.evaluate(prepared, cells, backbone, config, store_url, report))
    return done, report.notes


def _worker_report(backbone: Backbone, store_url: str) -> RunReport:
    return RunReport(backbone=backbone.name, weights_status=backbone.weights.status,
                     weights_source=backbone.weights.source, data_source="", store_url=store_url)


@dataclass
class _Item:
    """A work item as the driver schedules it."""

    item: WorkItem
    keys: list[str] | None = None  # probe items: the cache key of each distinct image path
    cells_digest: str = ""


def _probe_paths(item: WorkItem) -> list[Path]:
    """The images a probe item reads: its test split and every cell's training groups (what
    the probe evaluator extracts for the same cells)."""
    prepared = item.prepared
    needed = prepared.members(set(prepared.split.test_groups).union(
        *[set(c.groups) for c in item.cells]))
    return list(dict.fromkeys(Path(p) for s in needed for _, p in s.images))


def _shards(paths: Sequence[str], workers: int) -> list[list[str]]:
    n = min(len(paths), max(workers * SHARDS_PER_WORKER, -(-len(paths) // MAX_SHARD)))
    return [list(part) for part in np.array_split(np.array(paths, dtype=object), n)] if n else []


def _groups(cells: Sequence[PlannedCell], cpus: int) -> list[list[PlannedCell]]:
    text = os.environ.get(CELLS_ENV, "").strip()
    if text:
        try:
            size = int(text)
        except ValueError:
            size = 0
        if size < 1:
            raise BenchError(f"{CELLS_ENV}={text!r}: expected a whole number of cells per Ray "
                             "task, at least 1")
    else:
        size = -(-len(cells) // max(1, cpus))
    return [list(cells[i:i + size]) for i in range(0, len(cells), size)]


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        self.ray = ray = import_ray()
        self._owns = False
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            options = dict(log_to_driver=False, logging_level=logging.WARNING)
            try:
                if self.address:
                    ray.init(address=self.address, **options)
                else:  # a private instance, never someone else's cluster on this machine
                    ray.init(address="local", num_cpus=num_cpus or _cores(),
                             object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                             include_dashboard=False, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = (f"--ray-address {self.address!r}" if self.address
                         else "a local Ray instance")
                raise BenchError(
                    f"{where}: Ray could not start or connect ({type(exc).__name__}: {exc}); "
                    "start a head with `ray start --head` and pass the address it prints "
                    "(e.g. --ray-address 127.0.0.1:6379, or auto for the head on this "
                    "machine)") from None
            self._owns = True
        self._actors: list[Any] = []

    # ------------------------------------------------------------------ resources

    def resources(self) -> tuple[int, int]:
        """(CPUs, GPUs) of the cluster."""
        total = self.ray.cluster_resources()
        return max(1, int(total.get("CPU", 1))), int(total.get("GPU", 0))

    def close(self) -> None:
        self._release()
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns = False

    def _release(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []

    def _get(self, ref: Any) -> Any:
        """ray.get, with a task's BenchError re-raised as itself (the CLI prints it, exit 2)
        and a worker that died past its restarts named."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BenchError):
                raise BenchError(str(cause)) from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            if getattr(exc, "_actor_init_failed", False):  # Encoder.__init__ raised
                said = [line.split("BenchError:", 1)[1].strip() for line in str(exc).splitlines()
                        if "BenchError:" in line]
                raise BenchError("a Ray worker could not build the backbone: " + (
                    said[-1] if said else str(exc).strip().splitlines()[-1])) from None
            raise BenchError(f"a Ray worker died {RESTARTS + 1} times running the same work "
                             f"({type(exc).__name__}); nothing unfinished was stored: rerun to "
                             "resume (cached volumes and stored cells are kept)") from None

    def encode(self, paths: Sequence[Path], backbone: Backbone, config: RunConfig,
               build: BackboneBuilder | None = None) -> ExtractionStats:
        """Encode the volumes of `paths` the cache lacks on the actor pool (phase 1 alone;
        scripts/ray_scaling.py times it). Returns the counts, cache hits included."""
        started = time.perf_counter()
        cache = FeatureCache(config.cache_dir / "features")
        keys = {Path(p): cache.key(backbone, image_sha256(Path(p))) for p in paths}
        misses = {k: str(p) for p, k in keys.items() if cache.load(k, backbone.contract) is None}
        report = _worker_report(backbone, "")
        list(self._extract_and_evaluate_whole(sorted(misses.values()), [], backbone, config, "",
                                              report, build))
        stats = report.extraction
        stats.volumes, stats.cached = len(keys), len(keys) - len(misses)
        stats.wall_seconds = time.perf_counter() - started
        return stats

    # ------------------------------------------------------------------ the run

    def evaluate(self, items: Iterable[WorkItem], backbone: Backbone, config: RunConfig,
                 store_url: str, report: RunReport,
                 build: BackboneBuilder | None = None) -> Iterator[EvaluatedCell]:
        items = [_Item(item) for item in items if item.cells]
        if not items:
            return
        from brainbench.evaluators.probe import ProbeEvaluator

        started = time.perf_counter()
        cache = FeatureCache(config.cache_dir / "features")
        misses: dict[str, str] = {}  # key -> one path (byte-identical files encode once)
        for entry in items:
            if not isinstance(entry.item.evaluator, ProbeEvaluator):
                continue
            keys: dict[Path, str] = {}
            for path in _probe_paths(entry.item):
                if not path.is_file():
                    raise BenchError(f"image file not found: {path}")
                keys[path] = cache.key(backbone, image_sha256(path))
            entry.keys = sorted(keys.values())
            entry.cells_digest = digest(entry.keys)
            cached = 0
            for path, key in keys.items():
                if key in misses or cache.load(key, backbone.contract) is not None:
                    cached += 1  # what the local executor would find cached for this item
                else:
                    misses[key] = str(path)
            report.extraction.merge(ExtractionStats(volumes=len(keys), cached=cached,
                                                    keys=entry.keys))
        whole = [e for e in items if e.keys is None]
        yield from self._extract_and_evaluate_whole(sorted(misses.values()), whole, backbone,
                                                    config, store_url, report, build)
        report.extraction.wall_seconds += time.perf_counter() - started
        yield from self._cell_groups([e for e in items if e.keys is not None], backbone, config,
                                     store_url, report)

    def _extract_and_evaluate_whole(self, misses: list[str], whole: list[_Item],
                                    backbone: Backbone, config: RunConfig, store_url: str,
                                    report: RunReport, build: BackboneBuilder | None
                                    ) -> Iterator[EvaluatedCell]:
        """Phase 1 on an actor pool: encode the misses; run evaluators that extract their own
        inputs. The pool is released afterwards so cell tasks get every CPU."""
        if not misses and not whole:
            return
        ray = self.ray
        cpus, gpus = self.resources()
        workers = gpus or cpus
        shards = _shards(misses, workers)
        workers = max(1, min(workers, len(shards) + len(whole)))
        actor_class = ray.remote(Encoder).options(
            num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=RESTARTS,
            max_task_retries=RESTARTS)
        source = ray.put(backbone) if build is None else build
        identity = identity_digest(backbone)
        self._actors = [actor_class.remote(source, identity, bool(gpus)) for _ in range(workers)]
        cache_root = str(config.cache_dir / "features")
        if not gpus and config.workers is None:  # a CPU worker decodes on its own core
            config = replace(config, workers=0)
        queue: list[tuple[str, Any]] = [("shard", shard) for shard in shards]
        queue += [("whole", entry) for entry in whole]
        pending: dict[Any, tuple[int, str]] = {}

        def submit(actor_index: int) -> None:
            what, work = queue.pop(0)
            actor = self._actors[actor_index]
            if what == "shard":
                ref = actor.extract.remote(work, cache_root, config.profile.batch_size,
                                           config.workers)
            else:
                ref = actor.evaluate.remote(work.item.evaluator, work.item.prepared,
                                            list(work.item.cells), config, store_url)
            pending[ref] = (actor_index, what)

        try:
            for index in range(min(workers, len(queue))):
                submit(index)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                actor_index, what = pending.pop(ref)
                result = self._get(ref)
                if what == "shard":
                    stats, _pid = result
                    report.extraction.merge(replace(stats, volumes=0, cached=0, wall_seconds=0.0))
                else:
                    done, notes, stats = result
                    report.extraction.merge(stats)
                    for note in notes:
                        report.note(note)
                    yield from done
                if queue:
                    submit(actor_index)
        finally:
            self._release()

    def _cell_groups(self, items: list[_Item], backbone: Backbone, config: RunConfig,
                     store_url: str, report: RunReport) -> Iterator[EvaluatedCell]:
        """Phase 2: every probe item's cells in groups, each group a Ray task."""
        if not items:
            return
        ray = self.ray
        cpus, _ = self.resources()
        task = ray.remote(evaluate_group).options(num_cpus=1, max_retries=RESTARTS)
        proxy = ray.put(CachedFeaturesOnly(backbone, config.cache_dir))
        config_ref = ray.put(replace(config, workers=0, progress=False))  # cache hits only
        pending: dict[Any, _Item] = {}
        for entry in items:
            prepared = ray.put(entry.item.prepared)
            evaluator = ray.put(entry.item.evaluator)
            for group in _groups(entry.item.cells, cpus):
                pending[task.remote(evaluator, prepared, group, proxy, config_ref,
                                    store_url)] = entry
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                entry = pending.pop(ref)
                done, notes = self._get(ref)
                for note in notes:
                    report.note(note)
                for cell in done:
                    yield replace(cell, cell=replace(cell.cell, cache_key=entry.cells_digest))
        finally:
            for ref in pending:  # the driver stops early (an error): nothing left running
                ray.cancel(ref, force=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
