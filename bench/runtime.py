"""How the frozen encoder's forward pass executes: ``eager`` PyTorch or ``compiled``.

Why: on a CPU whose bf16 matrix products are fast (AMX tiles; AVX-512 BF16 on a 512-bit
datapath) the rest of a ViT block (GELU, the casts between the fp32 residual stream and bf16,
layer scales, RoPE, the attention softmax) takes a large share of the time. ``torch.compile``
with frozen weights (inductor's ``freezing``: weights folded into the graph and prepacked for
oneDNN, elementwise work fused into the matrix products' epilogues) measured 1.2-1.5x faster
with AMX, and 1.1x (Zen 4) to 1.36x (Zen 5) at 224 px with AVX-512 BF16 alone, where at
112 px it gains less than its compile time costs a default run (BENCHMARKS.md "Compiled bf16
on an AMX CPU", "Compiled bf16 without AMX").

A compiled forward computes the same function with fused kernels, so its features differ
from eager ones by float rounding (measured ~1e-7 relative for the timm ViTs, ~1e-2 for
open_clip's CLIP): the runtime is part of the feature cache key and of every cell's identity
when it is not eager.

``auto`` compiles only where it measured faster and pays for its ~15-40 s of compile per
batch shape, on a CPU, for images of at least `COMPILE_MIN_IMAGE` pixels a side: bf16 from
112 px with ``amx_bf16`` and from 224 px with ``avx512_bf16`` alone; fp32 from 224 px on an
AVX-512 CPU with neither flag (where ``PRECISION=auto`` runs fp32: 1.16-1.38x at 224 px, 1.07x
at 112 px on such a Xeon, BENCHMARKS.md "A CPU without a bf16 path"). Everything
else stays eager (GPUs were not measured), and so does ``auto`` on a machine without the C++
compiler inductor needs; an explicit ``COMPILE=compiled`` there is an error naming it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from functools import cache
from typing import Callable, Literal

import torch

from brainbench.errors import BenchError
from brainbench.precision import Capability, detect_capability

Runtime = Literal["eager", "compiled"]
RUNTIMES = ("auto", "eager", "compiled")  # what a user may ask for
#: smallest image side `auto` compiles for on a CPU, by precision, then by CPU flag (the first
#: one present). bf16 with AMX: 112 px (the cpu profile) measured 1.2x and repaid its compiles
#: in a default run; with AVX-512 BF16 alone 112 px gained 1.0-1.12x, less than two compiles
#: cost a default run, and 224 px (the paper profile) 1.1-1.36x. fp32 on an AVX-512 CPU
#: without a bf16 path (where PRECISION=auto runs fp32): 1.07x at 112 px, less than its
#: compiles cost a default run, 1.16-1.38x at 224 px. fp32 on a CPU with a bf16 path, and CPUs
#: without AVX-512, were not measured. Smaller images are smoke tests.
COMPILE_MIN_IMAGE: dict[str, dict[str, int]] = {
    "bf16": {"amx_bf16": 112, "avx512_bf16": 224},
    "fp32": {"avx512f": 224},  # only where the CPU has no bf16 path (Capability.cpu_bf16)
}


def check_runtime(value: object) -> str:
    """A requested runtime, or a BenchError naming the value and the choices."""
    if not isinstance(value, str) or value.lower() not in RUNTIMES:
        raise BenchError(f"COMPILE={value!r} (--compile): expected one of {', '.join(RUNTIMES)}")
    return value.lower()


def resolve_runtime(requested: object, *, device: str | torch.device, precision: str,
                    image_side: int, capability: Capability | None = None,
                    has_compiler: bool | None = None) -> Runtime:
    """``auto`` -> compiled on a CPU at images of at least `compile_min_image` for the
    precision, where a C++ compiler is found; else eager. An explicit "compiled" on a CPU
    without a compiler is a BenchError. `capability` and `has_compiler` (None: look them up)
    are injectable so the rule can be tested without the hardware.
    """
    value = check_runtime(requested)
    on_cpu = torch.device(device).type == "cpu"
    if value == "eager" or not on_cpu:
        has_compiler = False  # eager needs none; off the CPU `auto` stays eager
    elif has_compiler is None:
        has_compiler = cpp_compiler() is not None
    if value == "compiled" and on_cpu and not has_compiler:  # fail at build, not mid-run
        raise BenchError(
            "COMPILE=compiled (--compile) on a CPU needs the C++ compiler torch.compile's "
            f"inductor calls ({' or '.join(_compiler_names())}, set by $CXX); none was found "
            "on PATH: install one (e.g. apt-get install g++) or use COMPILE=eager / auto")
    if value != "auto":
        return value  # type: ignore[return-value]
    if not has_compiler:  # also every device but the CPU
        return "eager"
    smallest = compile_min_image(capability or _machine_capability(), precision)
    return "compiled" if smallest is not None and image_side >= smallest else "eager"


def compile_min_image(capability: Capability, precision: str) -> int | None:
    """The smallest image side `auto` compiles `precision` for on this CPU (None: never)."""
    if precision == "fp32" and capability.cpu_bf16:
        return None  # fp32 beside a bf16 path: not measured
    for flag, side in COMPILE_MIN_IMAGE.get(precision, {}).items():
        if flag in capability.cpu_flags:
            return side
    return None


def _compiler_names() -> list[str]:
    """The compiler inductor's ``cpp.cxx`` setting names: $CXX, else g++ (clang++ on macOS).
    Read from inductor's config only where torch has already imported it: importing it pulls
    in torch._dynamo, ~2 s that a warm run which compiles nothing must not pay."""
    config = sys.modules.get("torch._inductor.config")
    if config is not None:
        return [name for name in config.cpp.cxx if name]
    return [os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")]


@cache
def cpp_compiler() -> str | None:
    """Path of the C++ compiler inductor would call (its ``cpp.cxx``: $CXX or g++), or None.
    Looked up once: `runtime` is asked on every forward call."""
    for name in _compiler_names():
        found = shutil.which(name)
        if found:
            return found
    return None


@cache
def _machine_capability() -> Capability:
    """Read once: `runtime` is asked on every forward call."""
    return detect_capability()


class CompiledForward:
    """One forward function compiled by inductor with frozen weights, at one batch size.

    The first call fixes the batch size B (the pipeline's batches all have B items but the
    last). A smaller batch is padded to B with zeros and the padding's outputs dropped; a
    larger one runs in chunks of B. So one graph serves a whole run, with no recompiles, and
    each item's features depend only on that item (every op of a ViT is per item).
    """

    def __init__(self, fn: Callable[[torch.Tensor], dict[str, torch.Tensor] | list]) -> None:
        # inductor's C++ toolchain lookup warns "No CUDA runtime is found" on every CPU-only
        # machine: noise in a run's output, not a problem
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self._compiled = torch.compile(fn, dynamic=False, options={"freezing": True})
        self.batch: int | None = None

    def __call__(self, x: torch.Tensor):
        """Call under ``torch.inference_mode()`` (frozen weights need it) with a plain tensor
        (a subclass is traced through its ``__torch_function__``: `FrozenBackbone` strips it)."""
        if not x.is_inference():
            # one kind of input tensor for the graph's guards: the padded chunks made here
            # are inference tensors, a caller's batch usually is not (a recompile otherwise)
            x = x.clone()
        if self.batch is None:
            self.batch = x.shape[0]
        size = self.batch
        if x.shape[0] == size:
            return self._compiled(x)
        parts = []
        for start in range(0, x.shape[0], size):
            chunk = x[start:start + size]
            n = chunk.shape[0]
            if n < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])
            parts.append((self._compiled(chunk), n))
        return _concat(parts)


def _concat(parts: list[tuple[object, int]]):
    """Outputs of padded chunks, padding dropped, joined along the batch dimension."""
    first = parts[0][0]
    if isinstance(first, dict):
        return {key: torch.cat([out[key][:n] for out, n in parts]) for key in first}
    return [torch.cat([out[i][:n] for out, n in parts]) for i in range(len(first))]
