"""Running under ``torchrun``: which process this is, and the few collective steps batch commands need.

``torchrun --nproc-per-node N -m medtranslate translate ...`` starts N processes with ``RANK`` and ``WORLD_SIZE`` in
their environment (PyTorch's own launcher, which users already run under SLURM or Kubernetes). Each rank takes the
cases of the ``--shard RANK/WORLD_SIZE`` rule; the ranks agree on what must be the same everywhere (rank 0 decides
and tells the others, e.g. the precision), and rank 0 merges the per-rank manifests when all are done. The process
group uses gloo: only small objects travel, so the CPU backend serves GPU runs too.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist

__all__ = ["world", "is_distributed", "setup", "barrier", "from_rank0"]


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not started by it."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def is_distributed() -> bool:
    return world()[1] > 1


def setup() -> None:
    """Join the process group of torchrun's processes (once; nothing to do for a single process)."""
    if is_distributed() and not dist.is_initialized():
        dist.init_process_group("gloo")


def barrier() -> None:
    if is_distributed():
        setup()
        dist.barrier()


def from_rank0(value: Any) -> Any:
    """Rank 0's value on every rank (a picklable object); the value itself for a single process."""
    if not is_distributed():
        return value
    setup()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
