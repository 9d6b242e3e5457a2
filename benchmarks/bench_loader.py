"""Training-batch throughput of the data loader with 0, 1 and 2 worker processes, and that they give the same batches.

The training cases of a pipeline (default ``pipelines/mr2ct_pix2pix.yaml``: the sample data, 2.5D input, rotation and
scaling) are prepared once into a slice cache in a temporary folder, as training does (items read their slices from
disk); then one epoch's worth of batches in a fixed order is drawn through
``torch.utils.data.DataLoader`` (as ``train.workers`` does) and timed, workers measured in this run, on this machine.
Batches are compared with the main process's: every item's random draws come from (seed, epoch, index).
Run: python benchmarks/bench_loader.py [PIPELINE] [--batches 100]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from medtranslate.core.config import load_config
from medtranslate.data.slices import SliceDataset, cached_case, discover_pairs, load_split
from medtranslate.runtime.precision import describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", default="pipelines/mr2ct_pix2pix.yaml")
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    print(describe_machine(torch.device("cpu")))
    cfg = load_config(args.pipeline)
    pairs = discover_pairs(cfg)
    split = load_split(cfg, sorted(pairs))
    cache = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    cases = [cached_case(pairs[cid], cfg, cache) for cid in split["train"]]
    dataset = SliceDataset(cases, cfg, cfg.train.seed)
    bs = cfg.train.batch_size
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    order = (order * (1 + args.batches * bs // len(order)))[: args.batches * bs]
    print(f"{args.pipeline}: {len(cases)} training cases, {len(dataset)} slices, {args.batches} batches of {bs}")
    reference = None
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=bs, sampler=order, num_workers=workers)
        t0 = time.perf_counter()
        batches = list(loader)
        seconds = time.perf_counter() - t0
        same = reference is None or all(
            torch.equal(a[k], b[k]) for a, b in zip(reference, batches, strict=True) for k in ("source", "target")
        )
        reference = reference or batches
        print(
            f"workers {workers}: {seconds:6.2f} s, {args.batches * bs / seconds:7.1f} items/s "
            f"({seconds / args.batches * 1000:6.1f} ms per batch, start-up included); same batches: {same}"
        )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
