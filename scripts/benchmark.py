"""Performance figures for BENCHMARKS.md (never asserted in tests).

1. Cold `brainbench run` (fresh cache and results: phantom generation + extraction + probes)
   and the warm rerun, each as a subprocess, wall-clock.
2. Extraction throughput of the pipeline (load + preprocess + batched forward, prefetching)
   against the raw forward throughput of the same backbone at the same batch size, in one
   process, so the two figures share the machine's state.

Usage: python scripts/benchmark.py --model braindino --profile cpu [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def timed_run(args: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "brainbench.cli", "run", "--no-progress", *args],
                          env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def raw_forward(backbone, batch_size: int, repeats: int) -> float:
    c = backbone.contract
    batch = torch.randn(batch_size, c.in_channels, *c.image_size)
    backbone.embed(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        backbone.embed(batch)
    return repeats * batch_size / (time.perf_counter() - started)


def pipeline_vs_raw(model: str, profile_name: str, volumes: int, root: Path) -> dict:
    from brainbench.backbone import create_backbone
    from brainbench.features import FeatureCache, extract_features
    from brainbench.profiles import PROFILES

    profile = PROFILES.get(profile_name)
    backbone = create_backbone(model, image_size=profile.slice_size, num_slices=profile.num_slices)
    paths = sorted(root.rglob("*T1w.nii.gz"))[:volumes] or sorted(root.rglob("*.nii.gz"))[:volumes]
    raw_before = raw_forward(backbone, profile.batch_size, repeats=8)
    with tempfile.TemporaryDirectory() as tmp:
        _, stats = extract_features(backbone, paths, FeatureCache(Path(tmp)),
                                    batch_size=profile.batch_size, progress=False)
    raw_after = raw_forward(backbone, profile.batch_size, repeats=8)
    raw = (raw_before + raw_after) / 2
    return {"volumes": len(paths), "slices": stats.items_encoded,
            "pipeline": stats.items_per_second, "raw": raw,
            "ratio": stats.items_per_second / raw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="braindino")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--fraction", default="0.01")
    parser.add_argument("--volumes", type=int, default=40)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BRAINBENCH_CACHE=f"{tmp}/cache", BRAINBENCH_RESULTS=f"{tmp}/results")
        run_args = ["--model", args.model, "--profile", args.profile, "--fraction", args.fraction]
        if not args.skip_cold:
            cold, out = timed_run(run_args, env)
            warm, out_warm = timed_run(run_args, env)
            print(f"cold run: {cold:.1f} s; warm rerun: {warm:.1f} s")
            print([line for line in out.splitlines() if line.startswith("cells:")][0])
            print([line for line in out_warm.splitlines() if line.startswith("cells:")][0])
        phantoms = Path(f"{tmp}/cache/phantoms")
        if not phantoms.exists():
            from brainbench.phantoms import generate_phantoms

            generate_phantoms(phantoms / "bench", 12, datasets=("atlas2",), progress=False)
        figures = pipeline_vs_raw(args.model, args.profile, args.volumes, phantoms)
        print(f"extraction ({figures['volumes']} volumes, {figures['slices']} slices): pipeline "
              f"{figures['pipeline']:.2f} slices/s, raw forward {figures['raw']:.2f} slices/s, "
              f"ratio {figures['ratio']:.2f}")


if __name__ == "__main__":
    main()
