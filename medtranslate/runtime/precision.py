"""Which numeric precision to compute in: ``auto`` decides by what the hardware has, the same way on every run.

bf16 autocast halves the memory traffic of convolutions and, on hardware with bf16 units, runs them faster: with AMX,
training steps 2.1-2.2x and translation 1.8x; with AVX512-BF16 but no AMX (an AMD EPYC), training steps 1.4-1.85x
(benchmarks/bench_train.py). Without bf16 instructions PyTorch emulates it, 2.5x *slower*: there ``auto`` takes
float32. The choice depends on the CPU's flags alone, not on a timing, so it is stable for a machine. CUDA: bf16
where the GPU supports it, else fp16 (with gradient scaling in training).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

__all__ = [
    "PRECISIONS",
    "AMP_DTYPES",
    "PrecisionChoice",
    "cpu_info",
    "describe_machine",
    "choose_precision",
    "NO_NETWORK",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype of each precision (fp32: none)


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.precision)


# what a model without a network (a baseline) computes in: there is nothing to speed up
NO_NETWORK = PrecisionChoice("fp32", "no network to speed up")


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
    threads = torch.get_num_threads()
    return f"CPU {name} ({', '.join(units) or 'no AVX-512, no bf16 units'}), {threads} thread{'s' * (threads != 1)}"


def choose_precision(requested: str, device: torch.device, flags: set[str] | None = None) -> PrecisionChoice:
    """The precision to use for ``requested`` (one of PRECISIONS) on ``device``.

    ``auto`` decides by capability alone, never by a timing: the same machine always makes the same choice, so two
    identical runs compute alike (a measured choice flipped between runs on a CPU where the two were close, and the
    outputs differed by up to 1 HU). ``flags``: the CPU's instruction-set flags (default: this machine's).
    """
    if requested != "auto":
        return PrecisionChoice(requested, "as requested")
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
    # faster than fp32 for whole training steps on such a CPU (docs/benchmarks.md)
    return PrecisionChoice("bf16", "auto: the CPU has AVX512-BF16 instructions")
