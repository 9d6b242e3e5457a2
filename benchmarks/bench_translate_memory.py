"""Peak memory of translating one 512 x 512 x 300 volume with a checkpoint (slices stream through in batches).

Run: python benchmarks/bench_translate_memory.py CHECKPOINT [--batch-size 8] [--shape 512 512 600] [--cli]
Prints the peak resident memory of this process (ru_maxrss) before and after the translation, and the time. With
``--cli`` the volume is written as a NIfTI and translated by ``medtranslate translate`` in a process of its own, as a
user runs it (reading and writing included); its peak is that process's.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from medtranslate.imaging.volume import Volume
from medtranslate.inference.translate import translate_volume
from medtranslate.models.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--cli", action="store_true", help="translate with the command line, reading and writing")
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
    if args.cli:
        _cli(args.checkpoint, volume, args.batch_size)
        return
    before = peak_mb()
    t0 = time.perf_counter()
    out = translate_volume(net, volume, spec, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    print(f"volume {shape} ({mr.nbytes / 2**20:.0f} MiB as int16), model {ckpt['kind']}, batch {args.batch_size}")
    print(f"peak memory: {before:.0f} MiB before translating (input made), {peak_mb():.0f} MiB after; {seconds:.1f} s")
    assert out.shape == shape


def _cli(checkpoint: str, volume: Volume, batch_size: int) -> None:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from medtranslate.io.files import write_nifti

    with tempfile.TemporaryDirectory() as tmp:
        path = write_nifti(Path(tmp) / "in" / "big_mr.nii.gz", volume.array, volume.affine)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "medtranslate", "translate", "--model", checkpoint, "--input", str(path),
             "--output", str(Path(tmp) / "out"), "--batch-size", str(batch_size), "--no-progress"],
            check=True,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        print(f"volume {volume.shape}, the translate command in its own process: peak {child:.0f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
