"""Encoder throughput as ratios measured in one run: model vs GEMM peak, pipeline vs raw forward.

Machines here are shared and noisy, so absolute figures mean little; every figure is printed
next to the load average and as a ratio to a reference measured by this same process:

1. GEMM peak: GFLOP/s of a 2048x2048 ``torch.mm`` in fp32 and in bf16 on the device,
   measured in the same interleaved rounds as the models (best of ``--rounds``).
2. Model: for each backbone, mode and batch size, items/s (slices for 2d, volumes for 3d) x
   GFLOP per item (``torch.utils.flop_counter.FlopCounterMode``) as a fraction of both peaks.
   Modes: ``fp32``, ``bf16``, ``fp32-compiled`` and ``bf16-compiled`` are the product's paths
   (``backbone.embed``; bf16 = autocast over a copy whose Linear/Conv weights are pre-cast,
   brainbench.precision.bf16_matmul_copy, eager; ``-compiled`` = the same under
   ``COMPILE=compiled``, brainbench.runtime, compile time shown apart); the alternatives
   measured against them: ``bf16-autocast`` (plain ``torch.autocast`` over the fp32 model)
   and ``bf16-cast`` (the model cast wholly to bf16); and two inference runtimes, asked for by
   name only (optional packages, not dependencies): ``fp32-onnxruntime`` (ONNX export, ONNX
   Runtime's CPU provider) and ``fp32-openvino`` / ``bf16-openvino`` (``openvino.convert_model``,
   the throughput hint, the batch split over its parallel requests). Their note gives the
   conversion time and the norm-relative error of every token against eager fp32.
3. ``--pipeline``: decode + preprocess + forward + cache write (at ``--compile``, default the
   product's ``auto``) (``extract_features`` on
   synthetic int16 ``.nii.gz`` volumes of ``--shape``, a fresh cache) as a fraction of the raw
   forward at the same precision and batch, for each ``--workers`` count; plus the decode
   seconds per volume and the decode workers the raw forward would need.

    .venv/bin/python scripts/backbone_throughput.py --profile cpu --models braindino
    .venv/bin/python scripts/backbone_throughput.py --device cuda --profile paper \\
        --models braindino --modes bf16 --batches 64,128 --pipeline --workers 4,8,15
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from brainbench.backbone import BACKBONES, create_backbone
from brainbench.precision import autocast, cpu_flags, resolve_precision
from brainbench.preprocess import check_preprocess_place
from brainbench.profiles import PROFILES
from brainbench.runtime import check_runtime

MODES = ("fp32", "bf16", "fp32-compiled", "bf16-compiled", "bf16-autocast", "bf16-cast",
         "fp32-onnxruntime", "fp32-openvino", "bf16-openvino")
PRODUCT_MODES = MODES[:4]  # brainbench's own paths (precision x runtime)
RUNTIME_MODES = MODES[6:]  # external inference runtimes: optional packages, opt-in
DEFAULT_MODES = MODES[:6]


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step, device: str, seconds: float, min_calls: int = 2) -> float:
    """Seconds per call of `step` after one warm-up call, over at least `seconds`."""
    step()
    sync(device)
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        step()
        calls += 1
    sync(device)
    return (time.perf_counter() - started) / calls


def gemm_gflops(dtype: torch.dtype, device: str, seconds: float, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), device, seconds, min_calls=5) / 1e9


def build(name: str, profile, device: str, precision: str = "fp32", compile: str = "eager"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_backbone(name, image_size=profile.slice_size,
                                   num_slices=profile.num_slices, precision=precision,
                                   compile=compile)
    if device != "cpu" and hasattr(backbone, "to"):
        backbone.to(device)
        backbone.set_precision(resolve_precision(precision, device))
    return backbone


def gflop_per_item(backbone, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        backbone.embed(x)
    return counter.get_total_flops() / x.shape[0] / 1e9


def forward_step(backbone, mode: str, x: torch.Tensor):
    """The callable one mode times, and the seconds spent preparing it (compile)."""
    if mode in PRODUCT_MODES:
        precision, runtime = mode.split("-")[0], ("compiled" if "compiled" in mode else "eager")

        def product():
            backbone.set_precision(precision)  # modes are interleaved: set both on every call
            backbone.set_runtime(runtime)
            return backbone.embed(x)
        started = time.perf_counter()
        if runtime == "compiled":
            product()  # compiles
            if backbone.runtime != "compiled":
                raise ValueError(f"{backbone.name} cannot compile its forward pass")
        return product, time.perf_counter() - started if runtime == "compiled" else 0.0
    model = getattr(backbone, "model", None)
    if model is None:
        raise ValueError(f"{backbone.name} has no torch module to cast or compile")
    if mode == "bf16-autocast":
        def step():
            with torch.inference_mode(), autocast("bf16", x.device.type):
                return backbone.features(model, x)
        return step, 0.0
    if mode == "bf16-cast":
        cast, xb = copy.deepcopy(model).to(torch.bfloat16), x.to(torch.bfloat16)

        def step():
            with torch.inference_mode():
                return backbone.features(cast, xb)
        return step, 0.0
    if mode in RUNTIME_MODES:
        return runtime_step(backbone, model, mode, x)
    raise ValueError(f"unknown mode {mode!r}")


class TokenTuple(torch.nn.Module):
    """`backbone.features` as a module returning its tokens in sorted-name order (exporters
    take tensors, not dicts)."""

    def __init__(self, backbone, model: torch.nn.Module):
        super().__init__()
        self.backbone, self.model = backbone, model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.backbone.features(self.model, x)
        return tuple(tokens[name] for name in sorted(tokens))


def runtime_step(backbone, model, mode: str, x: torch.Tensor):
    """An external inference runtime's call on `x`, its conversion seconds, and a note with
    the worst norm-relative error of a token against eager fp32 ``backbone.embed``."""
    if x.device.type != "cpu":
        raise ValueError("measured on the CPU only")
    wrapper, array = TokenTuple(backbone, model).eval(), x.numpy()
    started = time.perf_counter()
    if mode == "fp32-onnxruntime":
        import onnxruntime

        with tempfile.TemporaryDirectory() as folder:  # the session holds the model in memory
            path = Path(folder) / f"{backbone.name}.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (x,), str(path), dynamo=False, opset_version=17,
                                  input_names=["x"])
            session = onnxruntime.InferenceSession(str(path),
                                                   providers=["CPUExecutionProvider"])

        def step():
            return session.run(None, {"x": array})
    else:
        import openvino

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = openvino.convert_model(wrapper, example_input=x)
        compiled = openvino.Core().compile_model(converted, "CPU", {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "f32" if mode.startswith("fp32") else "bf16"})
        queue = openvino.AsyncInferQueue(compiled, 0)  # 0: the plugin's optimal count
        parts = [part for part in np.array_split(array, len(queue)) if len(part)]
        outputs: list = [None] * len(parts)
        queue.set_callback(lambda request, index: outputs.__setitem__(
            index, [request.get_output_tensor(i).data.copy()
                    for i in range(len(compiled.outputs))]))

        def step():
            for index, part in enumerate(parts):
                queue.start_async({0: part}, index)
            queue.wait_all()
            return [np.concatenate(column) for column in zip(*outputs)]
    prepare = time.perf_counter() - started
    got = step()
    backbone.set_precision("fp32")
    backbone.set_runtime("eager")
    reference = backbone.embed(x)
    errors = [float(np.linalg.norm(value - reference[name].numpy())
                    / np.linalg.norm(reference[name].numpy()))
              for name, value in zip(sorted(reference), got)]
    return step, prepare, f"convert {prepare:.0f} s, error {max(errors):.1e}"


def model_rows(name: str, profile, args) -> list[list]:
    """Modes measured in interleaved rounds together with the GEMM peaks; the best of the
    rounds is kept for each (on a shared machine the best is the least disturbed figure)."""
    backbone = build(name, profile, args.device)
    contract = backbone.contract
    if getattr(backbone, "reads_files", False):
        return [[name, "-", "-", "-", "reads files, no forward pass", "", "", "", ""]]
    batches = args.batches if contract.dims == "2d" else [args.batch_3d]
    modes = args.modes if "bf16" in backbone.precisions else ["fp32"]  # controls: fp32 only
    rows = []
    for batch in batches:
        x = torch.randn(batch, contract.in_channels, *contract.image_size, device=args.device)
        gflop = gflop_per_item(backbone, x)
        steps, notes, best = {}, {}, {}
        for mode in modes:
            try:
                steps[mode], prepare, *note = forward_step(backbone, mode, x)
                notes[mode] = note[0] if note else f"compile {prepare:.0f} s" if prepare else ""
            except Exception as exc:  # a mode a backbone cannot run is reported, not fatal
                notes[mode] = f"failed: {type(exc).__name__}: {str(exc)[:50]}"
        peaks = {"fp32": 0.0, "bf16": 0.0}
        for _ in range(args.rounds):
            for dtype in peaks:
                peaks[dtype] = max(peaks[dtype], gemm_gflops(
                    getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]),
                    args.device, 1.0))
            for mode, step in steps.items():
                best[mode] = max(best.get(mode, 0.0), batch / timed(step, args.device,
                                                                    args.seconds))
        rows.append(["GEMM 2048", "fp32 / bf16", "", "", "", f"{peaks['fp32']:.0f} / "
                     f"{peaks['bf16']:.0f}", "", "", f"bf16/fp32 {peaks['bf16'] / peaks['fp32']:.2f}"])
        for mode in modes:
            if mode not in best:
                rows.append([name, mode, batch, f"{gflop:.2f}", "", "", "", "", notes[mode]])
                continue
            achieved = best[mode] * gflop
            rows.append([name, mode, batch, f"{gflop:.2f}", f"{best[mode]:.2f}",
                         f"{achieved:.0f}", f"{achieved / peaks['fp32']:.2f}",
                         f"{achieved / peaks['bf16']:.2f}", notes[mode]])
        backbone.set_precision("fp32")
        backbone.set_runtime("eager")
    return rows


def synthetic_volumes(root: Path, count: int, shape: tuple[int, ...]) -> list[Path]:
    """int16 brain-like volumes (smooth ellipsoid, noise, zero background) as .nii.gz."""
    import nibabel as nib

    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape],
                        indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        data = np.where(inside, 600 + 200 * grids[0] + 60 * rng.standard_normal(shape), 0)
        path = root / f"vol{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.int16), np.eye(4)), str(path))
        paths.append(path)
    return paths


def pipeline_rows(name: str, profile, args, precision: str) -> list[list]:
    from brainbench.features import FeatureCache, effective_batch, extract_features
    from brainbench.preprocess import load_volume, volume_to_input

    backbone = build(name, profile, args.device, precision, args.compile)
    contract = backbone.contract
    batch = effective_batch(backbone, profile.batch_size if contract.dims == "2d"
                            else args.batch_3d)
    items_per_volume = contract.num_slices or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_volumes(Path(tmp), args.volumes, args.shape)
        volume_to_input(load_volume(paths[0]), contract)  # untimed: imports MONAI (~3 s)
        started = time.perf_counter()
        for path in paths[:3]:
            volume_to_input(load_volume(path), contract, contiguous=False)  # as the workers do
        decode = (time.perf_counter() - started) / min(3, len(paths))
        x = torch.randn(batch, contract.in_channels, *contract.image_size, device=args.device)

        def raw_rate() -> float:
            return batch / timed(lambda: backbone.embed(x), args.device, args.seconds)

        backbone.embed(x)  # a compiled runtime compiles here, outside both timings
        before = raw_rate()
        runs = [(place, workers) for place in args.preprocess for workers in args.workers]
        for run, (place, workers) in enumerate(runs):
            backbone.preprocess_on = place  # where z-score + resize run (--preprocess)
            cache = FeatureCache(Path(tmp) / f"cache-{run}")  # fresh: every volume a miss
            _, stats = extract_features(backbone, paths, cache, batch_size=batch,
                                        progress=False, workers=workers)
            after = raw_rate()  # the raw forward on each side of the pipeline run (drift)
            raw, before = (before + after) / 2, after
            raw_volumes = raw / items_per_volume
            rows.append([name, f"{backbone.precision} {backbone.runtime}", batch, place, workers, f"{raw:.2f}",
                         f"{stats.items_per_second:.2f}", f"{stats.items_per_second / raw:.2f}",
                         f"{decode:.3f}", f"{raw_volumes * decode:.1f}", load()])
        backbone.preprocess_on = "workers"
    return rows


def main() -> None:
    from brainbench.device import tune_host_allocator

    tune_host_allocator()  # as the product's encoding loop does: raw and pipeline alike
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--models", default="braindino",
                        help="comma list, or 'all' for every registered backbone")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma list of {MODES} (default: the first six; the "
                             "runtime modes need onnxruntime / openvino installed)")
    parser.add_argument("--batches", default=None,
                        help="comma list of 2d batch sizes (default: the profile's)")
    parser.add_argument("--batch-3d", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over the modes; the best is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pipeline", action="store_true",
                        help="also measure decode + preprocess + forward + cache write")
    parser.add_argument("--precision", default="auto", help="pipeline precision")
    parser.add_argument("--compile", default="auto",
                        help="pipeline runtime: auto | eager | compiled (brainbench.runtime)")
    parser.add_argument("--workers", default="0,1", help="pipeline decode workers, comma list")
    parser.add_argument("--volumes", type=int, default=16, help="pipeline volumes")
    parser.add_argument("--preprocess", default="workers",
                        help="pipeline: where z-score + resize run, comma list of workers, "
                             "device (brainbench.preprocess.PREPROCESS_PLACES)")
    parser.add_argument("--shape", default="240,240,155", help="pipeline volume shape")
    args = parser.parse_args()

    profile = PROFILES.get(args.profile)
    if args.device == "cuda":  # fp32 means fp32 (as the Ray executor runs it): no TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    import brainbench.baselines  # noqa: F401  (registers the built-in backbones)

    names = BACKBONES.names() if args.models == "all" else args.models.split(",")
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    args.batches = ([int(b) for b in args.batches.split(",")] if args.batches
                    else [profile.batch_size])
    args.workers = [int(w) for w in args.workers.split(",")]
    args.preprocess = [check_preprocess_place(p) for p in args.preprocess.split(",")]
    args.shape = tuple(int(n) for n in args.shape.split(","))
    flags = sorted(cpu_flags() & {"amx_bf16", "avx512_bf16", "avx512_fp16"})
    device_name = (torch.cuda.get_device_name() if args.device == "cuda" else
                   next((line.split(":", 1)[1].strip() for line in
                         Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), "cpu")
                   if Path("/proc/cpuinfo").exists() else "cpu")
    print(f"device {args.device} ({device_name}); bf16 flags {flags or 'none'}; auto -> "
          f"{resolve_precision('auto', args.device)}; torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; profile {profile.name} ({profile.slice_size} px, "
          f"{profile.num_slices} slices); load average {load()}")
    rows = [row for name in names for row in model_rows(name, profile, args)]
    print(tabulate(rows, headers=["backbone", "mode", "batch", "GFLOP/item", "items/s",
                                  "GFLOP/s", "of fp32 GEMM", "of bf16 GEMM", "note"]))
    print(f"best of {args.rounds} interleaved rounds (GEMM peaks measured in the same rounds); "
          f"load average {load()}")
    if args.pipeline:
        precision = resolve_precision(args.precision, args.device)
        check_runtime(args.compile)
        rows = [row for name in names for row in pipeline_rows(name, profile, args, precision)]
        print(f"\npipeline on {args.volumes} synthetic int16 volumes {args.shape} (.nii.gz), "
              "fresh cache:")
        print(tabulate(rows, headers=["backbone", "precision runtime", "batch", "preprocess", "workers",
                                      "raw items/s", "pipeline items/s", "pipeline/raw",
                                      "decode s/vol", "workers needed", "load"]))


if __name__ == "__main__":
    main()
