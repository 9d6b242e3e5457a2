"""Training under torchrun: 2 gloo processes on the CPU take the steps one process takes on the whole batch, and a
2-process run killed mid-epoch resumes on 1 process to the same result. Real torchrun, real checkpoints."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import pairwise

import pytest
import torch
from torch import nn

from medtranslate.core.config import load_config
from medtranslate.core.errors import ConfigError
from medtranslate.models.base import build_discriminator, build_generator, build_model
from medtranslate.models.checkpoint import load_checkpoint

from .conftest import cli, torch_threads, torchrun_cli, write_config

# one thread per rank (torchrun's default, said explicitly), as the single-process runs of this process have
ENV = dict(os.environ, OMP_NUM_THREADS="1")
# no batch statistics and no dropout: then each rank's share of the batch is computed exactly as in one process (with
# batch norm each rank normalises by its own share unless SyncBatchNorm, CUDA only, is on; dropout masks are per rank)
EQUIVALENT = {"train.batch_size": 4, "model.norm": "instance", "model.dropout": 0.0}


def _cancelled_biases(net: nn.Module, prefix: str) -> set[str]:
    """Biases of convolutions that an instance norm follows: it subtracts them again, so they change no output, their
    gradient is rounding noise, and Adam (which divides by the gradient's own size) turns that noise into full-size
    steps in either direction. Such a bias is free to differ between runs; nothing else is."""
    leaves = [(name, m) for name, m in net.named_modules() if not list(m.children())]  # in the order they run
    return {
        f"{prefix}.{name}.bias"
        for (name, m), (_, after) in pairwise(leaves)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(after, nn.InstanceNorm2d)
    }


def _assert_same_run(cfg, a: dict, b: dict, threads: dict) -> None:
    """Same loss trajectory, validation MAE and weights (cancelled biases aside) as ``a`` (one process, one thread), to
    the rounding of another order of summation: each rank sums its share of the batch and DDP averages the shares,
    where one process sums the batch at once. How far that rounding goes depends on the CPU's kernels, so the run
    ``threads`` (one process, two threads, which split the batch as two ranks do) measures it in the same test: ``b``
    may differ from ``a`` by twice as much as ``threads`` does, and at least by the bounds measured on a Xeon with AMX
    (first-epoch losses 2e-6 relative, 1e-5 allowed; later 1e-3; validation MAE 1e-2; weights 2e-3), where a wrong split
    or scaling of the gradients shows at 1e-2 or more in the first epoch's losses. Measured on a 2-core AMD EPYC with
    AVX2 only: two processes differ from one by what two threads do (first-epoch loss_d 1.2e-4 relative, validation
    MAE 7.6e-3, weights 1.7e-3 for both), so the fixed bounds alone would fail there."""
    assert (
        [r["epoch"] for r in a["history"]]
        == [r["epoch"] for r in b["history"]]
        == [r["epoch"] for r in threads["history"]]
    )
    for ra, rb, rt in zip(a["history"], b["history"], threads["history"], strict=True):
        first = ra["epoch"] == 1
        for key in ("loss_d", "loss_g", "loss_g_l1", "val_mae"):
            fixed = 1e-2 if key == "val_mae" else 1e-5 if first else 1e-3
            tol = max(fixed * abs(ra[key]), 2 * abs(rt[key] - ra[key]))
            assert abs(rb[key] - ra[key]) <= tol, (ra["epoch"], key, ra[key], rb[key], rt[key])
    free = _cancelled_biases(build_generator(cfg, 1), "G") | _cancelled_biases(build_discriminator(cfg, 2), "D")
    assert free  # the rule names real layers (a U-Net with instance norm has biased convolutions before its norms)
    nets_a, nets_b, nets_t = a["model"]["nets"], b["model"]["nets"], threads["model"]["nets"]
    checked = 0
    for net in nets_a:
        for key, wa in nets_a[net].items():
            if f"{net}.{key}" not in free and wa.is_floating_point():
                diff = float((wa - nets_b[net][key]).abs().max())
                tol = max(2e-3, 2 * float((wa - nets_t[net][key]).abs().max()))
                assert diff <= tol, f"{net}.{key} differs by {diff} (two threads: tolerance {tol})"
                checked += 1
    assert checked > 2 * len(free)


def _history_rows(path) -> int:
    try:
        with open(path, newline="") as f:
            return len(list(csv.DictReader(f)))
    except OSError:
        return 0


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_on_the_whole_batch_and_a_killed_run_resumes_on_one(tmp_path, tiny_data):
    root = tmp_path / "cases"  # four training cases (twice the two of tiny_data): epochs long enough to be cut
    shutil.copytree(tiny_data, root)
    for n in (0, 1):
        shutil.copytree(root / f"s{n}", root / f"t{n}")
    (root / "split.json").write_text(json.dumps({"train": ["s0", "s1", "t0", "t1"], "val": ["s2"], "test": ["s3"]}))
    extra = {"train.epochs": 2, "train.steps_per_epoch": None, "model.ngf": 16, "data.patch_size": 48}
    config = write_config(tmp_path / "c.yaml", root, **EQUIVALENT, **extra)
    cfg = load_config(config)
    with torch_threads(1):  # the single-process runs in this process, on one thread as each rank is
        one = cli("train", str(config), "--out", str(tmp_path / "one"), "--no-progress")
        assert one.returncode == 0, one.stderr[-2000:]
        # the rounding yardstick: the same run on two threads (set in the config: a pytest-xdist worker's environment
        # holds every thread pool at one)
        two_threads = write_config(tmp_path / "t.yaml", root, **EQUIVALENT, **extra, **{"train.num_threads": 2})
        threads = cli("train", str(two_threads), "--out", str(tmp_path / "threads"), "--no-progress")
        assert threads.returncode == 0 and ", 2 threads" in threads.stderr, threads.stderr[-2000:]
    two = torchrun_cli("train", str(config), "--out", str(tmp_path / "two"), "--no-progress", env=ENV)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b, t = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("one", "two", "threads"))
    assert (a["processes"], b["processes"], a["step"], b["step"]) == (1, 2, 30, 30)
    _assert_same_run(cfg, a, b, t)
    # rank 0 alone writes the run folder: one history row per epoch, one TensorBoard file
    assert _history_rows(tmp_path / "two" / "history.csv") == 2
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1

    # a 2-process run stopped in its second (last) epoch as a scheduler pre-empts a job: SIGTERM to the whole group
    # (torchrun passes it on to the ranks too, so each gets it twice)
    killed = tmp_path / "killed"
    stopped = _stop_in_the_second_epoch(config, killed)
    # every rank finished the same step, and rank 0 saved last.pt there: in the middle of the second epoch
    assert stopped["epoch"] == 1 and 0 < stopped["batch_in_epoch"] < 15 and stopped["processes"] == 2
    with torch_threads(1):
        resumed = cli("train", str(config), "--out", str(killed), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    c = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert (c["step"], c["processes"]) == (30, 1)
    _assert_same_run(cfg, a, c, t)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parent = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                parent[int(entry.name)] = int(fh.read().rsplit(")", 1)[1].split()[1])  # after the name: state, ppid
        except OSError:
            continue  # ended while we looked
    return parent


def _descendants(root: int) -> list[int]:
    parent, found = _parents(), [root]
    for pid in found:  # grows as it goes: children, then theirs
        found += [p for p, ppid in parent.items() if ppid == pid]
    return found[1:]


def _data_loader_workers(root: int) -> dict[int, tuple[int, int, bool]]:
    """pid -> (rank, the rank's pid, whether it ignores SIGTERM) of every data-loader worker under the torchrun process
    ``root``: the processes whose parent is a rank (a child of ``root`` with RANK in its environment)."""
    parent, ranks = _parents(), {}
    for pid in (p for p, ppid in parent.items() if ppid == root):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"RANK" in env:
            ranks[pid] = int(env[b"RANK"])
    workers = {}
    for pid in (p for p, ppid in parent.items() if ppid in ranks):
        try:
            with open(f"/proc/{pid}/status") as fh:
                ignored = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn:"))
        except (OSError, StopIteration):
            continue
        workers[pid] = (ranks[parent[pid]], parent[pid], bool(ignored & (1 << (signal.SIGTERM - 1))))
    return workers


def _stop_in_the_second_epoch(config, out):
    """Start a 2-process run and stop it with SIGTERM inside its second epoch; returns the last.pt it saved.

    The stop must come after the first epoch's end, where a request is honoured at once (the epoch boundary), and
    before the second epoch's last step. The event that says a rank is past the boundary: it has a data-loader worker
    of the second epoch. ``train.workers: 1`` makes one per rank and epoch, started for the epoch's first batch, after
    the boundary; a rank's first-epoch worker is shut down before validation, so before rank 0 writes that epoch's
    last.pt: a worker not seen before last.pt appeared is a second-epoch one. The moment a rank's is seen, the rank is
    frozen (SIGSTOP acts at once, in the kernel) and its worker left to run: the other rank cannot get more than a step
    ahead (every step all-reduces), so it is held too, at the latest at its first step, once it has its own worker. The
    signal waits until both workers are ready, which is when they ignore SIGTERM (their worker_init_fn has run: a
    worker still starting would die of the signal, and its rank with it). Then torchrun and the ranks get SIGTERM and go
    on: each rank meets the request after its current step. The run is started at a lower priority
    than this process, so a busy machine delays the run rather than the watching.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "medtranslate", "train", str(config), "--out", str(out), "--no-progress", "--set", "train.workers=1"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: os.nice(10),
    )
    last = out / "checkpoints" / "last.pt"
    first_epoch: set[int] = set()
    held: dict[int, tuple[int, int]] = {}  # rank -> (its second-epoch worker, the rank's pid); the rank is stopped
    ready = False
    while not ready and proc.poll() is None:
        after_first = last.is_file()  # looked at before the workers, so a worker it lists was seen after last.pt
        workers = _data_loader_workers(proc.pid)
        if not after_first:
            first_epoch |= set(workers)
        for pid, (rank, rank_pid, _) in workers.items():
            if after_first and pid not in first_epoch and rank not in held:
                os.kill(rank_pid, signal.SIGSTOP)
                held[rank] = (pid, rank_pid)
        if any(pid not in workers for pid, _ in held.values()):
            break  # a held rank's worker is gone: the run can no longer be stopped where this test needs it
        ready = len(held) == 2 and all(workers[pid][2] for pid, _ in held.values())
        time.sleep(0.002)
    ranks = [rank_pid for _, rank_pid in held.values()]
    if not ready:  # no run left behind: held ranks stay stopped, and a rank without torchrun waits for its peer
        for pid in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):  # ended already
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
    assert ready, "the run ended, or a held rank's worker did, before both second-epoch workers were seen ready"
    os.killpg(proc.pid, signal.SIGSTOP)
    os.killpg(proc.pid, signal.SIGTERM)
    # the ranks too, as a scheduler signals every process of the job: torchrun starts each rank in a session of its
    # own, so the group's signals reach only torchrun (which passes SIGTERM on, but not SIGCONT)
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGCONT)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    return load_checkpoint(last)


def test_a_command_that_finishes_leaves_the_process_group(tmp_path, tiny_data):
    # without it a rank can abort at exit (SIGABRT from gloo's threads; runtime/distributed.py, teardown): a real gloo
    # group of one process, as a rank's command has it joined, must be gone when the command returns
    import torch.distributed as dist

    from medtranslate.cli import main

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        assert main(["info", str(tiny_data / "s0" / "mr.nii.gz")]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_what_cannot_be_split_over_processes_is_refused(tmp_path, tiny_data, torchrun_rank0):
    odd = write_config(tmp_path / "odd.yaml", tiny_data, **{"train.batch_size": 3})
    run = cli("train", str(odd), "--out", str(tmp_path / "odd"), "--no-progress")
    assert run.returncode == 2
    assert "train.batch_size 3 does not split over 2 processes" in run.stderr and "multiple of 2" in run.stderr
    pipeline = cli("run", str(odd), "--out", str(tmp_path / "pipeline"), "--no-progress")
    assert pipeline.returncode == 2 and "run their stages one by one: train, translate, evaluate" in pipeline.stderr
    assert not (tmp_path / "pipeline").exists()
    torchrun_rank0.delenv("WORLD_SIZE")
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data))
    model = build_model(cfg, 1, torch.device("cpu"), torch.Generator())
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA"):
        model.distribute(sync_batchnorm=True)
