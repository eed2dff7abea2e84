"""Decoding and normalising a .nii.gz volume: numpy/nibabel's own way against brainbench's, stage
by stage, as ratios measured in one run.

Stages (each pair's outputs are compared bit for bit first):
- read: nibabel's reader (Python's zlib) vs `read_voxels` (ISA-L inflate);
- C-order copy: `np.ascontiguousarray` vs `preprocess.c_order` (two planes at a time);
- percentiles: `np.percentile` vs `brainbench.percentiles` (selection) on the brain voxels;
- robust z-score: its definition (np.percentile, clip the whole volume, `zscore`) vs
  `preprocess.robust_zscore` (nonzero voxels only, the two faster stages above);
- slice-major copy of a resized 224x224x128 grid (the paper profile): torch's
  ``permute(...).contiguous()`` vs `preprocess._slices_first` (a few hundred rows at a time).

Volumes are the synthetic int16 brain-like ones of scripts/backbone_throughput.py (``--shape``,
default BraTS-sized 240x240x155). Rounds alternate the two sides; the best of ``--rounds``
per side is kept.

    .venv/bin/python scripts/decode_throughput.py
    .venv/bin/python scripts/decode_throughput.py --shape 256,256,256 --rounds 12
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Resize
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone_throughput import load, synthetic_volumes  # noqa: E402

from brainbench import preprocess  # noqa: E402
from brainbench.percentiles import percentiles  # noqa: E402


def nibabel_read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def robust_zscore_by_definition(volume: np.ndarray) -> np.ndarray:
    """The robust z-score as DESIGN.md defines it: clip the whole volume's nonzero voxels to
    their np.percentile 1st-99th range, then z-score the nonzero voxels."""
    mask = volume != 0
    low, high = np.percentile(volume[mask], [1.0, 99.0])
    return preprocess.zscore(np.where(mask, np.clip(volume, low, high), 0.0).astype(np.float32))


def _same(a, b) -> bool:
    a, b = (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def best_seconds(pair: dict[str, Callable[[object], np.ndarray]], inputs: list, rounds: int
                 ) -> dict[str, float]:
    """Best per-input seconds of each side over alternated rounds, after a bit-for-bit check."""
    for item in inputs:
        reference, ours = (run(item) for run in pair.values())
        if not _same(reference, ours):
            sys.exit(f"{' vs '.join(pair)}: outputs differ")
    best = {name: float("inf") for name in pair}
    for _ in range(rounds):
        for name, run in pair.items():
            started = time.perf_counter()
            for item in inputs:
                run(item)
            best[name] = min(best[name], (time.perf_counter() - started) / len(inputs))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="240,240,155")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    torch.set_num_threads(1)  # as in a DataLoader decode worker (torch's copies are threaded)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_volumes(Path(tmp), args.volumes, shape)
        size = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        volumes = [preprocess.load_volume(path) for path in paths]  # Fortran-ordered, as read
        brains = [np.ascontiguousarray(v)[np.ascontiguousarray(v) != 0] for v in volumes]
        grids = [Resize((224, 224, 128), mode="trilinear")(
            torch.from_numpy(preprocess.robust_zscore(v))[None]).as_subclass(torch.Tensor)[0]
            for v in volumes]  # the paper profile's resized grid, before the slice-major copy
        stages = [
            ("read", paths, {"nibabel (zlib)": nibabel_read,
                             "brainbench (ISA-L)": preprocess.read_voxels}),
            ("C-order copy", volumes, {"np.ascontiguousarray": np.ascontiguousarray,
                                       "c_order": preprocess.c_order}),
            ("1st/99th percentile", brains,
             {"np.percentile": lambda v: np.percentile(v, [1.0, 99.0]),
              "brainbench.percentiles": lambda v: percentiles(v, (1.0, 99.0))}),
            ("robust z-score", volumes, {"by definition": robust_zscore_by_definition,
                                         "robust_zscore": preprocess.robust_zscore}),
            ("slices of a 224x224x128 grid", grids,
             {"permute().contiguous()": lambda g: g.permute(2, 0, 1)[:, None].contiguous(),
              "_slices_first": preprocess._slices_first}),
        ]
        if preprocess._igzip is None:
            print("isal is not installed: brainbench reads through nibabel; read stage left out")
            stages = stages[1:]
        for stage, inputs, pair in stages:
            best = best_seconds(pair, inputs, args.rounds)
            reference, ours = best.values()
            rows.append([stage, *pair, f"{reference * 1e3:.1f}", f"{ours * 1e3:.1f}",
                         f"{ours / reference:.2f}"])
    print(f"{args.volumes} int16 volumes {shape}, {size:.1f} MB compressed each; outputs "
          f"identical bit for bit; best of {args.rounds} alternated rounds; one process, one "
          f"torch thread (as a decode worker); cpus {os.cpu_count()}")
    print(tabulate(rows, headers=["stage", "reference", "brainbench", "reference ms",
                                  "brainbench ms", "ratio"]))
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
