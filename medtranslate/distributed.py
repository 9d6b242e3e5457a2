"""Running under ``torchrun``: which process this is, and the few collective steps batch commands need.

``torchrun --nproc-per-node N -m medtranslate translate ...`` starts N processes with ``RANK`` and ``WORLD_SIZE`` in
their environment (PyTorch's own launcher, which users already run under SLURM or Kubernetes). Each rank takes the
cases of the ``--shard RANK/WORLD_SIZE`` rule; the ranks agree on what must be the same everywhere (rank 0 decides
and tells the others, e.g. the precision), and rank 0 merges the per-rank manifests when all are done. The process
group uses gloo: only small objects travel, so the CPU backend serves GPU runs too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .errors import InputError

__all__ = ["world", "is_distributed", "setup", "barrier", "from_rank0", "shard_of", "shard_manifest", "merge_shards"]


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


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected I/N with whole numbers, e.g. 0/4") from None
    if not 0 <= i < n:
        raise InputError(f"--shard {text!r}: I must be in 0..N-1")
    return i, n


def shard_of(text: str | None) -> tuple[int, int]:
    """This process's share of a folder, (I, N): ``--shard I/N``, or torchrun's (RANK, WORLD_SIZE), or (0, 1)."""
    index, count = parse_shard(text)
    if is_distributed():
        if text is not None:
            raise InputError("--shard under torchrun: torchrun's ranks split the cases themselves; leave out --shard")
        index, count = world()
    return index, count


def shard_manifest(out: Path, index: int, count: int) -> Path:
    return out / ("manifest.csv" if count == 1 else f"manifest.shard{index}of{count}.csv")


def merge_shards(out: Path, index: int, count: int) -> None:
    """Under torchrun, once every rank is done, rank 0 merges the ranks' manifests into ``manifest.csv``."""
    if not is_distributed():
        return
    from .batch import merge_manifests

    barrier()
    if index == 0:
        merge_manifests([shard_manifest(out, i, count) for i in range(count)], out / "manifest.csv")
