"""Ray executor figures for BENCHMARKS.md: feature-extraction speedup with 1 vs 2 Ray workers
(one torch thread each) and Ray's overhead per task, measured in one run so the ratios hold
on a noisy shared machine (the load average is printed with them).

    .venv/bin/python scripts/ray_scaling.py --model braindino --profile cpu --volumes 16

Each worker count gets a private local Ray instance with that many CPUs and a fresh feature
cache; the same volumes (phantom T1 images, generated once under --root) are encoded by the
executor's phase 1 (`RayExecutor.encode`: actors built once, shards, atomic cache writes).
Actor start-up (building the backbone in a fresh worker) is timed on its own so it can be
told apart from encoding. A local single-thread extraction of the same volumes is the
reference for what one worker should cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from brainbench.executors.ray_executor import Encoder, RayExecutor, identity_digest, import_ray
from brainbench.features import FeatureCache, extract_features
from brainbench.phantoms import generate_phantoms
from brainbench.profiles import PROFILES
from brainbench.runner import RunConfig, build_backbone


def volumes(root: Path, n: int, generate: bool) -> list[Path]:
    """n T1 volumes: of an IXI phantom cohort generated under root, or found under --root."""
    if generate:
        generate_phantoms(root, {"ixi": n}, datasets=["ixi"], progress=False)
    found = sorted(root.rglob("*T1.nii.gz"))
    if len(found) < n:
        raise SystemExit(f"only {len(found)} T1 volumes under {root}; expected {n}")
    return found[:n]


def noop() -> int:
    return 0


def task_overhead(ray, n: int) -> dict[str, float]:
    """Seconds per no-op task: n submitted at once (throughput) and one at a time (latency)."""
    task = ray.remote(noop).options(num_cpus=1)
    ray.get([task.remote() for _ in range(8)])  # workers started and warm
    tick = time.perf_counter()
    ray.get([task.remote() for _ in range(n)])
    batch = (time.perf_counter() - tick) / n
    latencies = []
    for _ in range(min(n, 100)):
        tick = time.perf_counter()
        ray.get(task.remote())
        latencies.append(time.perf_counter() - tick)
    return {"batch_s": batch, "roundtrip_s": statistics.median(latencies)}


def actor_startup(ray, config: RunConfig, backbone, workers: int) -> float:
    """Seconds until `workers` fresh actors have each built the backbone."""
    actor = ray.remote(Encoder).options(num_cpus=1)
    tick = time.perf_counter()
    pool = [actor.remote(partial(build_backbone, config), identity_digest(backbone), False)
            for _ in range(workers)]
    ray.get([a.pid.remote() for a in pool])
    elapsed = time.perf_counter() - tick
    for a in pool:
        ray.kill(a)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="braindino")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--tasks", type=int, default=200, help="no-op tasks for the overhead")
    parser.add_argument("--root", default=None, help="a folder holding *T1.nii.gz volumes, used as they are "
                        "(default: an IXI phantom cohort generated in a temp dir)")
    args = parser.parse_args()
    ray = import_ray()
    scratch = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    root = Path(args.root) if args.root else scratch / "phantoms"
    paths = volumes(root, args.volumes, generate=not args.root)
    profile = PROFILES.get(args.profile)
    config = RunConfig(model=args.model, fractions=(1.0,), profile=profile,
                       cache_dir=scratch / "cache", results_dir=scratch / "results",
                       progress=False, precision="fp32", workers=0)
    backbone = build_backbone(config)
    print(f"{args.model} ({profile.name}: {profile.num_slices} slices at {profile.slice_size} px), "
          f"{len(paths)} volumes; load average {os.getloadavg()}")

    torch.set_num_threads(1)  # the reference: this process, one thread, no Ray
    tick = time.perf_counter()
    _, ref = extract_features(backbone, paths, FeatureCache(scratch / "local"), workers=0,
                              batch_size=profile.batch_size, progress=False)
    local = time.perf_counter() - tick
    print(f"local, 1 thread: {local:.1f} s ({local / len(paths):.2f} s/volume, forward "
          f"{ref.forward_seconds:.1f} s)")

    results = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        ray.init(address="local", num_cpus=workers, object_store_memory=100 * 1024**2,
                 include_dashboard=False, log_to_driver=False)
        try:
            executor = RayExecutor()
            overhead = task_overhead(ray, args.tasks)
            startup = actor_startup(ray, config, backbone, workers)
            shutil.rmtree(config.cache_dir, ignore_errors=True)
            stats = executor.encode(paths, backbone, config, build=partial(build_backbone, config))
            assert stats.computed == len(paths), stats
            results[workers] = (stats.wall_seconds, startup)
            print(f"ray, {workers} worker(s): {stats.wall_seconds:.1f} s wall for "
                  f"{stats.computed} volumes (actor start-up alone {startup:.1f} s; forward "
                  f"{stats.forward_seconds:.1f} s summed over workers); no-op task "
                  f"{overhead['batch_s'] * 1e3:.2f} ms each in a batch of {args.tasks}, "
                  f"{overhead['roundtrip_s'] * 1e3:.2f} ms round trip; load average "
                  f"{os.getloadavg()}")
        finally:
            ray.shutdown()
    if 1 in results and 2 in results:
        (w1, s1), (w2, s2) = results[1], results[2]
        print(f"speedup 2 vs 1 workers: {w1 / w2:.2f}x wall, {(w1 - s1) / (w2 - s2):.2f}x "
              f"without actor start-up")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
