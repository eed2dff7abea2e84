"""Numeric precision of the frozen encoder: ``fp32`` (exact), ``bf16`` (fast), or ``auto``.

Why: bf16 matrix units (AMX, AVX-512 BF16, CUDA tensor cores) encode 2-6x faster than fp32,
while moving features by about 1e-3 relative (BENCHMARKS.md "Precision"). The precision is
part of the backbone contract: a built backbone exposes ``.precision`` resolved to "fp32" or
"bf16", the feature cache key and cell identity cover it (fp32 keys unchanged), and results
record it. ``auto`` picks bf16 only where the hardware has a bf16 matrix path, measured to be
faster (BENCHMARKS.md), and fp32 elsewhere.

bf16 runs as ``torch.autocast(device, dtype=torch.bfloat16)`` around the backbone's forward
pass: matrix products in bf16, norms/softmax/reductions in fp32, weights kept in fp32 (so one
model serves both precisions), features handed back as float32.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from brainbench.errors import BenchError

if TYPE_CHECKING:
    from brainbench.taskspec import PrecisionRule

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")  # what a user may ask for
RESOLVED = ("fp32", "bf16")  # what a built backbone runs at
#: issue #15's fidelity rule: bf16 is not the default where it moves a primary metric by more
#: than this many fp32 seed-to-seed sds (scripts/precision_sweep.py; TaskSpec.precision_rule)
BF16_SHIFT_LIMIT_SD = 0.25
#: where the fp32 seed sd is 0 (every seed fits the whole training split with a seedless head)
#: the sd gives no scale: such pairs are judged against this share of the fp32 mean
BF16_SHIFT_LIMIT_RELATIVE = 1e-3
#: CPU flags (/proc/cpuinfo) of a bf16 matrix path: AMX tiles or AVX-512 BF16 dot products
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@dataclass(frozen=True)
class Capability:
    """What the hardware offers for bf16: the CPU's flags and whether CUDA runs bf16."""

    cpu_flags: frozenset[str]
    cuda_bf16: bool = False

    @property
    def cpu_bf16(self) -> bool:
        return bool(self.cpu_flags & CPU_BF16_FLAGS)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first ``flags`` line of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.split(":", 1)[0].strip() in ("flags", "Features"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect_capability() -> Capability:
    cuda = False
    if torch.cuda.is_available():
        try:
            cuda = bool(torch.cuda.is_bf16_supported())
        except Exception:  # a broken driver means no fast path, not a failed run
            cuda = False
    return Capability(cpu_flags(), cuda)


def check_precision(value: object) -> str:
    """A requested precision, or a BenchError naming the value and the choices."""
    if not isinstance(value, str) or value.lower() not in PRECISIONS:
        raise BenchError(f"precision must be one of {list(PRECISIONS)}, got {value!r}")
    return value.lower()


def resolve_precision(requested: object, device: str | torch.device = "cpu",
                      capability: Capability | None = None) -> Precision:
    """``auto`` -> bf16 where `device` has a bf16 matrix path, else fp32; fp32/bf16 as asked.

    `capability` is injectable so the rule can be tested without the hardware.
    """
    value = check_precision(requested)
    kind = torch.device(device).type
    if value == "bf16" and kind == "cpu" and not _warned_slow_bf16:
        _warn_slow_cpu_bf16(capability or detect_capability())
    if value != "auto":
        return value  # type: ignore[return-value]
    capability = capability or detect_capability()
    if kind == "cuda":
        return "bf16" if capability.cuda_bf16 else "fp32"
    if kind == "cpu":
        return "bf16" if capability.cpu_bf16 else "fp32"
    return "fp32"


_warned_slow_bf16 = False


def _warn_slow_cpu_bf16(capability: Capability) -> None:
    """Once per process: bf16 asked for on a CPU whose flags show no bf16 matrix path, where
    it measured 5x slower than fp32 (BENCHMARKS.md "A CPU without a bf16 path"). Silent where
    the flags could not be read or name an unmeasured bf16 extension (aarch64's ``bf16``)."""
    global _warned_slow_bf16
    flags = capability.cpu_flags
    if _warned_slow_bf16 or not flags or capability.cpu_bf16 or "bf16" in flags:
        return
    _warned_slow_bf16 = True
    warnings.warn(
        "PRECISION=bf16 on a CPU without a bf16 matrix path (neither "
        f"{' nor '.join(sorted(CPU_BF16_FLAGS))} in /proc/cpuinfo): bf16 products measured "
        "~5x slower than fp32 on such a CPU; PRECISION=auto runs fp32 here",
        stacklevel=3)


def cell_precision(requested: str, machine: Precision, rule: "PrecisionRule | None",
                   fraction: float) -> Precision:
    """What one (task, fraction) cell runs at: the run's precision resolved for the device
    (`machine`), except that ``auto`` keeps the pairs a task's `PrecisionRule` names in fp32."""
    if check_precision(requested) == "auto" and machine == "bf16" and rule is not None \
            and rule.covers(fraction):
        return "fp32"
    return machine


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bf16 autocast, or autocast explicitly off (fp32,
    so an outer autocast never changes fp32 features)."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")



#: modules whose weights autocast casts to bf16 on every call (its lower-precision op list)
MATMUL_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                  torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def bf16_matmul_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` with the weights and biases of its Linear/Conv modules in
    bf16 and everything else (norms, class/register tokens, layer scales, buffers) in fp32.

    Why: under autocast it computes exactly what autocast on the fp32 model computes
    (autocast rounds those same weights to bf16), but without re-casting every weight on
    every forward call, which autocast does for frozen weights (it caches casts only for
    weights that require grad). Numerics stay autocast's: fp32 residual stream, norms and
    softmax; a model cast wholly to bf16 is no faster here and moves CLS features ~1000x
    more (BENCHMARKS.md "Precision").
    """
    import copy

    fast = copy.deepcopy(model).eval().requires_grad_(False)
    for module in fast.modules():
        if isinstance(module, MATMUL_MODULES):
            module.to(torch.bfloat16)
    return fast
