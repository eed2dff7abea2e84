"""Where the encoder's forward pass runs: `DEVICE=auto|cpu|cuda[:N]` (`--device`).

`auto` is the first CUDA GPU where torch sees one, else the CPU. The device is not part of a
feature's identity: the cache key and every result cover what is computed (the backbone, its
weights, the precision, the preprocessing code), not the chip, just as two CPUs with different
vector units share a cache. fp32 on a GPU runs without TF32, so GPU and CPU fp32 features
should differ by float rounding only; bf16 is autocast on both (brainbench.precision).
`scripts/precision_fidelity.py --devices cpu,cuda` measures both (not yet run on a GPU). The
run line names the device used.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Any

from brainbench.errors import BenchError

#: what `--device` accepts (cuda may name a GPU index: cuda:1)
DEVICES = ("auto", "cpu", "cuda")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda:0' where torch sees a GPU, else 'cpu'; a named GPU is checked to exist."""
    import torch

    text = str(requested).strip().lower()
    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = _CUDA.fullmatch(text)
    if match is None:
        raise BenchError(f"DEVICE={requested!r} (--device): expected one of "
                         f"{', '.join(DEVICES)} or cuda:N (a GPU index)")
    if not torch.cuda.is_available():
        raise BenchError(f"DEVICE={requested!r} (--device): torch sees no CUDA device on this "
                         "machine (torch.cuda.is_available() is False); use auto or cpu")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise BenchError(f"DEVICE={requested!r} (--device): this machine has {count} CUDA "
                         f"device(s), indices 0 to {count - 1}")
    return f"cuda:{index}"


def place(backbone: Any, device: str) -> Any:
    """Move a backbone's network to ``device`` (resolved). Backbones without a network (the
    controls) or without a ``to`` method stay where they are; fp32 means fp32 on a GPU too,
    so TF32 is switched off for matmuls and convolutions."""
    if device == "cpu":
        return backbone
    if not callable(getattr(type(backbone), "to", None)):
        weights = getattr(backbone, "weights", None)
        if not (weights is not None and weights.is_control):
            warnings.warn(f"backbone {getattr(backbone, 'name', backbone)!r} has no "
                          f".to(device) method: it runs where its own code puts it, not "
                          f"necessarily on {device}", stacklevel=2)
        return backbone
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backbone.to(device)
    return backbone


def describe(device: str) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H200)' for the run line."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def available_cores(cap: int = 16) -> int:
    """The cores this process may run on (its affinity mask, which a batch scheduler sets),
    at most ``cap``: the default parallelism of phantom generation, voxel hashing and GPU
    decode workers. 2 on the 2-core development machine; all of a GPU node's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cap, cores))


#: glibc's largest allowed mmap threshold (64-bit): allocations below it come from the heap
MMAP_THRESHOLD = 32 * 1024 * 1024
#: freed heap memory kept for reuse instead of being returned (and later faulted in again)
TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def tune_host_allocator() -> bool:
    """Keep the CPU forward pass's activation buffers in glibc's heap for reuse.

    By default glibc serves each large allocation with a fresh mmap and unmaps it on free, so
    every forward call page-faults and zeroes its activations again. At the paper profile
    (batch 64 at 224 px) that was ~25% of the CPU time, in the kernel. A fixed mmap threshold
    (the 32 MB maximum) and a high trim threshold cut that system time 3-4x
    (BENCHMARKS.md "Precision and throughput"). Features do not change: this only decides
    where buffers come from. Applied once per process by the encoding loop
    (brainbench.features.encode_volumes); returns False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and \
        bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
