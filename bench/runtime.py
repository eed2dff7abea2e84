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
batch shape: bf16 on a CPU, for images of at least `COMPILE_MIN_IMAGE` pixels a side for the
CPU's bf16 flag (112 with ``amx_bf16``, 224 with ``avx512_bf16`` alone). Everything else
stays eager (GPUs were not measured).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Callable, Literal

import torch

from brainbench.errors import BenchError
from brainbench.precision import Capability, detect_capability

Runtime = Literal["eager", "compiled"]
RUNTIMES = ("auto", "eager", "compiled")  # what a user may ask for
#: smallest image side `auto` compiles for, by the CPU's bf16 flag (the first one present):
#: with AMX 112 px (the cpu profile) measured 1.2x and repaid its compiles in a default run;
#: with AVX-512 BF16 alone 112 px gained 1.0-1.12x, less than two compiles cost a default run,
#: and 224 px (the paper profile) 1.1-1.36x. Smaller images are smoke tests.
COMPILE_MIN_IMAGE = {"amx_bf16": 112, "avx512_bf16": 224}


def check_runtime(value: object) -> str:
    """A requested runtime, or a BenchError naming the value and the choices."""
    if not isinstance(value, str) or value.lower() not in RUNTIMES:
        raise BenchError(f"COMPILE={value!r} (--compile): expected one of {', '.join(RUNTIMES)}")
    return value.lower()


def resolve_runtime(requested: object, *, device: str | torch.device, precision: str,
                    image_side: int, capability: Capability | None = None) -> Runtime:
    """``auto`` -> compiled for bf16 on a CPU at images of at least `compile_min_image`,
    else eager. `capability` is injectable so the rule can be tested without the hardware.
    """
    value = check_runtime(requested)
    if value != "auto":
        return value  # type: ignore[return-value]
    if torch.device(device).type != "cpu" or precision != "bf16":
        return "eager"
    smallest = compile_min_image(capability or _machine_capability())
    return "compiled" if smallest is not None and image_side >= smallest else "eager"


def compile_min_image(capability: Capability) -> int | None:
    """The smallest image side `auto` compiles for on this CPU (None: never)."""
    for flag, side in COMPILE_MIN_IMAGE.items():
        if flag in capability.cpu_flags:
            return side
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
