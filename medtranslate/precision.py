"""Which numeric precision to compute in: ``auto`` decides by what the hardware has, and measures where unsure.

bf16 autocast halves the memory traffic of convolutions and, on hardware with bf16 units, doubles their speed: on a
CPU with AMX it made this project's training steps 2.1-2.2x and translation 1.8x faster (issue 14's measurements);
on a CPU without bf16 instructions PyTorch emulates it and it ran 2.5x *slower*. On a CPU with AVX512-BF16 but no
AMX (an AMD EPYC) bf16 with channels-last made full training steps 1.4-1.85x faster (benchmarks/bench_train.py), but
such CPUs differ, so there the choice is checked: a few forward and backward passes of the actual network in each
precision, on a copy, before training or translating starts, and bf16 is kept unless it measures clearly slower
(a margin, so that the noise of a short probe does not make two runs choose differently). CUDA: bf16 where the GPU
supports it, else fp16 (with gradient scaling in training).
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "AMP_DTYPES",
    "PrecisionChoice",
    "cpu_info",
    "describe_machine",
    "choose_precision",
    "probe_network",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype of each precision (fp32: none)
MAX_LOSS = 1.1  # on AVX512-BF16 without AMX, bf16 is kept unless measured more than this much slower than fp32


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.precision)


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (from /proc/cpuinfo on Linux; flags empty elsewhere)."""
    name, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if flags and not name.startswith("unknown"):
                    break
    except OSError:
        pass
    return name, flags


def describe_machine(device: torch.device) -> str:
    """One line naming the device and what matters for precision (bf16 / AMX units, GPU name)."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return f"GPU {torch.cuda.get_device_name(device)} (bf16 {'supported' if bf16 else 'not supported'})"
    name, flags = cpu_info()
    units = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"CPU {name} ({', '.join(units) or 'no AVX-512, no bf16 units'}), {torch.get_num_threads()} threads"


def choose_precision(
    requested: str,
    device: torch.device,
    probe: Callable[[str], float] | None = None,
    flags: set[str] | None = None,
) -> PrecisionChoice:
    """The precision to use for ``requested`` (one of PRECISIONS) on ``device``.

    ``probe(precision)`` returns seconds per pass in that precision; it is called (fp32 then bf16) only on a CPU with
    AVX512-BF16 and no AMX, where capability alone does not tell. ``flags``: the CPU's instruction-set flags (default:
    this machine's).
    """
    if requested != "auto":
        return PrecisionChoice(requested, "set in the config")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: the GPU supports bf16")
        return PrecisionChoice("fp16", "auto: the GPU has no bf16; fp16 with gradient scaling")
    if flags is None:
        flags = cpu_info()[1]
    if "amx_bf16" in flags:
        return PrecisionChoice("bf16", "auto: the CPU has AMX bf16 units")
    if "avx512_bf16" not in flags:
        return PrecisionChoice("fp32", "auto: the CPU has no bf16 instructions (bf16 would be emulated, slower)")
    if probe is None:
        return PrecisionChoice("bf16", "auto: the CPU has AVX512-BF16 (not measured)")
    t32, t16 = probe("fp32"), probe("bf16")
    measured = f"measured {t32 * 1e3:.0f} ms in fp32, {t16 * 1e3:.0f} ms in bf16"
    if t16 > MAX_LOSS * t32:
        return PrecisionChoice("fp32", f"auto: AVX512-BF16 without AMX, but {measured}")
    return PrecisionChoice("bf16", f"auto: AVX512-BF16 without AMX, {measured}")


def probe_network(
    net: nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    backward: bool,
    repeats: int = 3,
    channels_last: bool = False,
) -> Callable[[str], float]:
    """A probe for :func:`choose_precision`: the fastest of ``repeats`` passes (seconds) of a copy of ``net`` on random
    input of ``shape`` (forward and backward when ``backward``; in channels-last memory format when
    ``channels_last``, as training uses it), after one warm-up pass. The network itself, its
    statistics and every random generator are left untouched."""

    def run(precision: str) -> float:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        probe = copy.deepcopy(net).to(device, memory_format=fmt)
        probe.train(backward)
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(shape, generator=gen) * 2 - 1).to(device).contiguous(memory_format=fmt)
        dtype = AMP_DTYPES.get(precision)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                if backward:
                    probe(x).float().mean().backward()
                else:
                    with torch.inference_mode():
                        probe(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        return min(times)  # other load on the machine only ever adds time

    return run
