"""Forward throughput of each registered backbone at a profile: slices/s (2d) or volumes/s (3d).

Encodes random inputs shaped by each backbone's contract (the profile's slice size and batch
size; 3d backbones get their own grid, batched by --batch-3d), after one warm-up batch, until
--seconds have passed. Weights do not change speed, so random-init models are fine.

    .venv/bin/python scripts/backbone_throughput.py --profile cpu [--models dinov2,brainiac]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
from tabulate import tabulate

from brainbench.backbone import BACKBONES, create_backbone
from brainbench.profiles import PROFILES


def measure(name: str, profile, seconds: float, batch_3d: int, device: str, bf16: bool) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_backbone(name, image_size=profile.slice_size,
                                   num_slices=profile.num_slices)
    contract = backbone.contract
    if device != "cpu":
        backbone.model.to(device)
    batch = profile.batch_size if contract.dims == "2d" else batch_3d
    x = torch.randn(batch, contract.in_channels, *contract.image_size)

    def forward() -> None:
        if bf16:
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
                backbone.features(backbone.model, x.to(device))
        else:
            backbone.embed(x)
        if device == "cuda":
            torch.cuda.synchronize()

    forward()  # warm-up
    items, started = 0, time.perf_counter()
    while True:
        forward()
        items += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    unit = "slices/s" if contract.dims == "2d" else "volumes/s"
    per_volume = items / elapsed / (contract.num_slices or 1)
    return [name, contract.dims, "x".join(map(str, contract.image_size)), batch,
            f"{items / elapsed:.2f} {unit}", f"{per_volume:.3f}",
            f"{backbone.parameter_count() / 1e6:.1f}M"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--models", default=None, help="comma list (default: all registered)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-3d", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast bf16 (CUDA)")
    args = parser.parse_args()

    import brainbench.baselines  # noqa: F401

    profile = PROFILES.get(args.profile)
    names = args.models.split(",") if args.models else BACKBONES.names()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"profile {profile.name}: {profile.slice_size} px, {profile.num_slices} slices, "
          f"batch {profile.batch_size}; device {args.device}{' bf16' if args.bf16 else ''}; "
          f"torch threads {torch.get_num_threads()}; load average {load:.2f}")
    rows = [measure(n, profile, args.seconds, args.batch_3d, args.device, args.bf16)
            for n in names]
    print(tabulate(rows, headers=["backbone", "dims", "input", "batch", "throughput",
                                  "volumes/s", "params"]))


if __name__ == "__main__":
    main()
