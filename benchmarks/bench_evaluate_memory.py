"""Peak memory and time of ``evaluate`` as a cohort grows: a small and a large cohort of tiny cases, each scored in a
process of its own, compared in one run.

Each case is a 16 x 16 x 8 CT and a noisy copy of it as the prediction; ``evaluate`` scores, draws and reports every
case as it does for real ones. Memory should not grow with the cohort (cases are read, scored and drawn one at a
time; beyond 50 cases the report links its figures instead of embedding them), and time should grow linearly. The
ratios are the claims; seconds are context.
Run: python benchmarks/bench_evaluate_memory.py [--small 200] [--large 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from medtranslate.io.files import write_nifti
from medtranslate.runtime.precision import describe_machine

SCORE = """
import json, resource, sys, time
from pathlib import Path
from medtranslate.evaluation.evaluate import evaluate_folder
root = Path(sys.argv[1])
t0 = time.perf_counter()
evaluate_folder(root / "pred", root / "ref", root / "out", progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "report_mib": (root / "out" / "report.html").stat().st_size / 2**20}))
"""


def make_cohort(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    ct = np.full((16, 16, 8), -1000, np.int16)
    ct[3:13, 3:13, :] = 40
    ct[6:9, 6:9, 2:6] = 900
    for i in range(n):
        write_nifti(root / "ref" / f"c{i:05d}" / "ct.nii.gz", ct, affine)
        noisy = (ct + rng.integers(-30, 30, ct.shape)).astype(np.int16)
        write_nifti(root / "pred" / f"c{i:05d}_sct.nii.gz", noisy, affine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    args = parser.parse_args()
    print(describe_machine(torch.device("cpu")))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            root = Path(tmp) / str(n)
            make_cohort(root, n)
            run = subprocess.run([sys.executable, "-c", SCORE, str(root)], capture_output=True, text=True, check=True)
            results[n] = json.loads(run.stdout.strip().splitlines()[-1])
            r = results[n]
            print(
                f"{n} cases: peak {r['peak_mib']:.0f} MiB, {r['seconds']:.1f} s ({1e3 * r['seconds'] / n:.0f} ms a "
                f"case), report.html {r['report_mib']:.2f} MiB"
            )
    small, large = results[args.small], results[args.large]
    print(
        f"{args.large} / {args.small} cases: peak memory {large['peak_mib'] / small['peak_mib']:.2f}x, time per case "
        f"{(large['seconds'] / args.large) / (small['seconds'] / args.small):.2f}x"
    )


if __name__ == "__main__":
    main()
