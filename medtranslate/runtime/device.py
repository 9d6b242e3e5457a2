"""Which device computations run on: ``auto`` takes CUDA when present, else the CPU."""

from __future__ import annotations

import os

import torch

from medtranslate.core.checks import require_choice
from medtranslate.core.errors import InputError

__all__ = ["resolve_device", "usable_cores"]


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present, else CPU; cuda without a CUDA device is an error that says what to use."""
    require_choice("device", name, ("auto", "cpu", "cuda"), error=InputError)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "device cuda: no CUDA device is available here; use --device cpu or auto (train.device for training)"
        )
    return torch.device(name)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or ``taskset``'s limit), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
