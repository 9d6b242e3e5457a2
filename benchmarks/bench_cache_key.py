"""What keying the slice cache on file content costs: hashing a scan (SHA-256) against reading it as a volume.

The slice cache names an entry by the content of its input files, so that a file rewritten with its size and
modification time restored is never served stale. This times, on this machine and in one run, the hash of a
512 x 512 x 300 int16 CT (as ``.nii.gz`` and ``.nii``) against reading the same file into memory with
:func:`medtranslate.io.files.read_volume`, which a cache miss costs anyway. The ratio is the claim; seconds are context.
Run: python benchmarks/bench_cache_key.py [--size 512 --slices 300 --repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medtranslate.io.files import read_volume, write_nifti
from medtranslate.runtime.precision import describe_machine


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe_machine(torch.device("cpu")))
    rng = np.random.default_rng(0)
    ct = np.full((args.size, args.size, args.slices), -1000, np.int16)
    c = args.size // 2
    yy, xx = np.mgrid[: args.size, : args.size]
    body = (yy - c) ** 2 + (xx - c) ** 2 < (0.4 * args.size) ** 2
    ct[body] = (40 + rng.normal(0, 20, (int(body.sum()), args.slices))).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ct.nii.gz", "ct.nii"):
            path = write_nifti(Path(tmp) / name, ct, np.diag([0.8, 0.8, 1.5, 1.0]))

            def digest(path=path):
                with open(path, "rb") as fh:
                    hashlib.file_digest(fh, "sha256")

            t_hash = _best(digest, args.repeats)
            t_read = _best(lambda path=path: np.array(read_volume(path).array), args.repeats)  # .nii maps lazily
            size = path.stat().st_size / 2**20
            print(
                f"{name} ({size:.0f} MiB): sha256 {t_hash:.3f} s, read_volume {t_read:.3f} s: "
                f"the hash costs {t_hash / t_read:.2f}x a read"
            )


if __name__ == "__main__":
    main()
