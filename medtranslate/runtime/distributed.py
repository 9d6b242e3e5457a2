"""Running under ``torchrun``: which process this is, and the few collective steps batch commands need.

``torchrun --nproc-per-node N -m medtranslate translate ...`` starts N processes with ``RANK`` and ``WORLD_SIZE`` in
their environment (PyTorch's own launcher, which users already run under SLURM or Kubernetes). Each rank takes the
cases of the ``--shard RANK/WORLD_SIZE`` rule; the ranks agree on what must be the same everywhere (rank 0 decides
and tells the others, e.g. the precision), and rank 0 merges the per-rank manifests when all are done. Training
averages gradients over the ranks with PyTorch's DistributedDataParallel: gradients of CUDA tensors go through NCCL,
of CPU tensors through gloo (the process group is "cpu:gloo,cuda:nccl" when CUDA is used, plain gloo otherwise); the
small agreements (precision, plan, losses, a stop request) are CPU tensors and objects and go through gloo.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medtranslate.core.errors import InputError

__all__ = [
    "world",
    "is_distributed",
    "setup",
    "barrier",
    "teardown",
    "from_rank0",
    "mean_and_any",
    "all_gather",
    "shard_of",
    "shard_manifest",
    "merge_shards",
]

# Ranks wait for each other while rank 0 validates and saves checkpoints, which can take long on a big validation set;
# a crashed rank is noticed by torchrun (it stops the others), not by this timeout.
TIMEOUT = timedelta(hours=4)


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not started by it."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def is_distributed() -> bool:
    return world()[1] > 1


def setup(cuda: bool = False) -> None:
    """Join the process group of torchrun's processes (once; nothing to do for a single process).

    ``cuda``: the ranks exchange CUDA tensors too (training on GPUs), so NCCL carries those.
    """
    if is_distributed() and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)


def teardown() -> None:
    """Leave the process group at the end of a command that finished (PyTorch's documentation asks for
    ``destroy_process_group`` once communication is over). A rank that exits without it can abort (SIGABRT) while the
    interpreter shuts down, when gloo's threads free their last work objects (the cause as pytorch/pytorch#179291
    describes it): seen once in this project's CI, rank 1 of a 2-process ``train``. Not on an error path, where a
    collective may still be pending: there torchrun stops the ranks."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def mean_and_any(values: dict[str, float], flag: bool) -> tuple[dict[str, float], bool]:
    """The mean of each value over the ranks, and whether any rank raised ``flag`` (one small all-reduce)."""
    if not is_distributed():
        return values, flag
    setup()
    t = torch.tensor([*values.values(), float(flag)], dtype=torch.float64)
    dist.all_reduce(t)
    n = world()[1]
    return dict(zip(values, (t[:-1] / n).tolist(), strict=True)), bool(t[-1] > 0)


def all_gather(value: Any) -> list[Any]:
    """Every rank's value (picklable), in rank order, on every rank; ``[value]`` for a single process."""
    if not is_distributed():
        return [value]
    setup()
    box: list[Any] = [None] * world()[1]
    dist.all_gather_object(box, value)
    return box


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
    from medtranslate.runtime.batch import merge_manifests

    barrier()
    if index == 0:
        merge_manifests([shard_manifest(out, i, count) for i in range(count)], out / "manifest.csv")
