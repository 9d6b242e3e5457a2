"""Peak memory of translating one 512 x 512 x 300 volume with a checkpoint (slices stream through in batches).

Run: python benchmarks/bench_translate_memory.py CHECKPOINT [--batch-size 8]
Prints the peak resident memory of this process (ru_maxrss) before and after the translation, and the time.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from medtranslate.io import Volume
from medtranslate.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint
from medtranslate.translate import translate_volume


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    net, spec = build_inference_net(ckpt, torch.device("cpu")), TranslatorSpec.from_dict(ckpt["spec"])
    shape = tuple(args.shape)
    # an MR-like int16 volume: a bright ellipsoid with texture in a dark background, LPS grid, 0.5 x 0.5 x 1 mm;
    # built slice by slice so making the input does not set the peak
    rng = np.random.default_rng(0)
    mr = np.empty(shape, dtype=np.int16)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    plane = ((yy - (shape[0] - 1) / 2) / (0.4 * shape[0])) ** 2 + ((xx - (shape[1] - 1) / 2) / (0.4 * shape[1])) ** 2
    for k in range(shape[2]):
        inside = plane + ((k - (shape[2] - 1) / 2) / (0.4 * shape[2])) ** 2 < 1
        mr[:, :, k] = np.where(inside, 600, 5) + rng.integers(0, 40, shape[:2])
    volume = Volume(mr, np.diag([-0.5, -0.5, 1.0, 1.0]))
    before = peak_mb()
    t0 = time.perf_counter()
    out = translate_volume(net, volume, spec, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    print(f"volume {shape} ({mr.nbytes / 2**20:.0f} MiB as int16), model {ckpt['kind']}, batch {args.batch_size}")
    print(f"peak memory: {before:.0f} MiB before translating (input made), {peak_mb():.0f} MiB after; {seconds:.1f} s")
    assert out.shape == shape


if __name__ == "__main__":
    main()
