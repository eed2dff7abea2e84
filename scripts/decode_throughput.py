"""Decoding a .nii.gz volume: nibabel's own reader (Python's zlib) against brainbench's read
(ISA-L inflate, brainbench.preprocess), as a ratio measured in one run.

Volumes are the synthetic int16 brain-like ones of scripts/backbone_throughput.py (``--shape``,
default BraTS-sized 240x240x155). Rounds alternate the two readers; the best of ``--rounds``
per reader is kept. Both readers' voxels are compared bit for bit first.

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

import nibabel as nib
import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone_throughput import load, synthetic_volumes  # noqa: E402

from brainbench import preprocess  # noqa: E402


def nibabel_read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="240,240,155")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    if preprocess._igzip is None:
        sys.exit("isal is not installed: brainbench reads through nibabel, nothing to compare")
    readers = {"nibabel (zlib)": nibabel_read, "brainbench (ISA-L)": preprocess.read_voxels}
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_volumes(Path(tmp), args.volumes, shape)
        for path in paths:
            if not np.array_equal(nibabel_read(path), preprocess.read_voxels(path)):
                sys.exit(f"{path.name}: the two readers disagree")
        best = {name: float("inf") for name in readers}
        for _ in range(args.rounds):
            for name, read in readers.items():
                started = time.perf_counter()
                for path in paths:
                    read(path)
                best[name] = min(best[name], (time.perf_counter() - started) / len(paths))
        size = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    base = best["nibabel (zlib)"]
    print(f"{args.volumes} int16 volumes {shape}, {size:.1f} MB compressed each; voxels "
          f"identical; best of {args.rounds} alternated rounds; cpus {os.cpu_count()}")
    print(tabulate([[name, f"{s * 1e3:.1f}", f"{s / base:.2f}"] for name, s in best.items()],
                   headers=["reader", "ms per volume", "of nibabel's time"]))
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
