"""bf16 vs fp32 features per backbone: norm-relative error of cls and patch_mean on phantoms.

Fidelity is measured, not assumed (issue 15): each backbone encodes the same phantom volumes
through the product's extraction path (`extract_features`, fresh caches) once in fp32 and once
in bf16, and the error ||bf16 - fp32|| / ||fp32|| is taken per item (slice for 2d, volume for
3d); the median and the maximum over items are printed. Random-init weights unless a weights
variable is set (e.g. BRAINDINO_WEIGHTS); the controls (intensity, oracle) have no network and
record fp32 in both runs, so their error is 0 by construction.

    .venv/bin/python scripts/precision_fidelity.py --profile cpu [--models braindino,clip]

With ``--devices cpu,cuda`` (a GPU machine) it also compares the devices at each precision,
||cuda - cpu|| / ||cpu||. The device is not part of a feature's identity (brainbench.device),
so this measures what a cache shared between a GPU and a CPU can mix. ``--compiled`` adds
the compiled runtime (brainbench.runtime) at each of ``--precisions``: compiled bf16 against
fp32 and against eager bf16, compiled fp32 against eager fp32. ``--precisions fp32
--compiled`` measures only what compiling does to exact features (a CPU without a bf16 path,
where bf16 runs emulated and slowly).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from tabulate import tabulate

from brainbench.backbone import BACKBONES, create_backbone
from brainbench.features import FeatureCache, extract_features
from brainbench.profiles import PROFILES


def phantom_images(root: Path, people: int) -> list[Path]:
    """Every contrast of `people` phantom BraTS subjects (tumours: the widest intensity range)."""
    from brainbench.phantoms import generate_phantoms

    generate_phantoms(root, {"brats2021": people}, seed=0, workers=1, progress=False)
    return sorted(root.rglob("*.nii.gz"))[: 4 * people]


def relative_errors(exact: np.ndarray, fast: np.ndarray) -> np.ndarray:
    """Per item ||fast - exact|| / ||exact||."""
    return np.linalg.norm(fast - exact, axis=1) / np.maximum(np.linalg.norm(exact, axis=1),
                                                             1e-12)


def measure(name: str, profile, images: list[Path], tmp: Path,
            devices: tuple[str, ...] = ("cpu",), compiled: bool = False,
            precisions: tuple[str, ...] = ("fp32", "bf16")) -> list[list]:
    """One row per compared pair: bf16 vs fp32 on each device (when both are measured); with
    `compiled`, compiled vs eager at each precision and compiled bf16 vs fp32; then each other
    device vs the first at each precision."""
    runs = [(device, precision, "eager") for device in devices for precision in precisions]
    if compiled:
        runs += [(device, precision, "compiled") for device in devices for precision in precisions]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = {run: create_backbone(name, image_size=profile.slice_size,
                                      num_slices=profile.num_slices, precision=run[1],
                                      device=run[0], compile=run[2])
                 for run in runs}
    tokens = {run: extract_features(backbone, images,
                                    FeatureCache(tmp / f"{name}-{'-'.join(run)}"),
                                    batch_size=profile.batch_size, progress=False)[0]
              for run, backbone in built.items()}
    both = set(precisions) >= {"fp32", "bf16"}
    pairs = [((d, "fp32", "eager"), (d, "bf16", "eager")) for d in devices if both]
    if compiled:
        pairs += [((d, p, "eager"), (d, p, "compiled")) for d in devices for p in precisions]
        pairs += [((d, "fp32", "eager"), (d, "bf16", "compiled")) for d in devices if both]
    pairs += [((devices[0], p, "eager"), (d, p, "eager")) for d in devices[1:]
              for p in precisions]
    rows = []
    for exact, fast in pairs:
        def shown(run):
            return f"{run[0]} {built[run].precision} {built[run].runtime}"
        row = [name, shown(fast), shown(exact)]
        for token in ("cls", "patch_mean"):
            errors = np.concatenate([relative_errors(tokens[exact][p][token],
                                                     tokens[fast][p][token]) for p in images])
            row += [f"{np.median(errors):.2e}", f"{errors.max():.2e}"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--models", default="all", help="comma list (default: all registered)")
    parser.add_argument("--people", type=int, default=2,
                        help="phantom BraTS subjects (x4 contrasts)")
    parser.add_argument("--devices", default="cpu",
                        help="comma list, the reference first (e.g. cpu,cuda)")
    parser.add_argument("--compiled", action="store_true",
                        help="also the compiled runtime (COMPILE=compiled, brainbench.runtime) "
                             "at each precision, vs eager")
    parser.add_argument("--slices", type=int, default=None,
                        help="axial slices per volume (default: the profile's); fewer keep a "
                             "224 px comparison short")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma list of fp32, bf16 (default both)")
    args = parser.parse_args()
    devices = tuple(d for d in args.devices.split(",") if d)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    if args.slices is not None and args.slices < 1:
        parser.error(f"--slices: expected a whole number >= 1, got {args.slices}")
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        parser.error(f"--precisions: expected a comma list of fp32, bf16, got {args.precisions!r}")

    import brainbench.baselines  # noqa: F401  (registers the built-in backbones)

    profile = PROFILES.get(args.profile)
    if args.slices is not None:
        profile = replace(profile, num_slices=args.slices)
    names = BACKBONES.names() if args.models == "all" else args.models.split(",")
    load = (lambda: f"{os.getloadavg()[0]:.2f}") if hasattr(os, "getloadavg") else (lambda: "?")
    with tempfile.TemporaryDirectory() as tmp:
        images = phantom_images(Path(tmp) / "phantoms", args.people)
        print(f"profile {profile.name} ({profile.slice_size} px, {profile.num_slices} slices); "
              f"{len(images)} phantom volumes; load average {load()}")
        rows = [row for name in names
                for row in measure(name, profile, images, Path(tmp), devices, args.compiled,
                                   precisions)]
    print(tabulate(rows, headers=["backbone", "run", "against", "cls median", "cls max",
                                  "patch_mean median", "patch_mean max"]))
    print(f"errors: ||run - against|| / ||against|| per slice (2d) or volume (3d); load "
          f"average {load()}")


if __name__ == "__main__":
    main()
