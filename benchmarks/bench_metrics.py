"""Time all SynthRAD metrics of medtranslate against scikit-image's SSIM alone, on one 256 x 256 x 100 pair.

Both are measured in this run, on this machine; the ratio is the claim, the seconds are context.
Run: python benchmarks/bench_metrics.py [--repeats N] (best of N alternating runs of each: scikit-image's time
varies 3x from run to run on a shared host, from allocating its float64 maps; ours by 20 %)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from skimage.metrics import structural_similarity
from timing import median_time

from medtranslate.data.phantom import make_subject
from medtranslate.evaluation.metrics import synthrad_metrics
from medtranslate.runtime.precision import describe_machine


def skimage_ssim_2023(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """The SynthRAD 2023 SSIM recipe done with scikit-image (the baseline)."""
    x = np.where(mask, np.clip(ref, -1024, 3000), -1024) + 1024.0
    y = np.where(mask, np.clip(pred, -1024, 3000), -1024) + 1024.0
    _, smap = structural_similarity(x, y, data_range=4024, win_size=7, use_sample_covariance=True, full=True)
    c = (slice(3, -3),) * 3
    return float(smap[c][mask[c]].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    subject = make_subject(5, shape=(256, 256, 100), spacing=(0.9, 0.9, 1.7))
    ref = subject.ct.array
    rng = np.random.default_rng(0)
    pred = (ref + rng.normal(0, 50, ref.shape) + 20).astype(np.float32)
    mask = subject.mask
    print(describe_machine(torch.device("cpu")))
    print(f"volume {ref.shape}, mask {mask.mean():.1%} of voxels, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    synthrad_metrics(
        pred[96:160, 96:160, 30:70], ref[96:160, 96:160, 30:70], mask[96:160, 96:160, 30:70]
    )  # JIT compile (cached on disk)
    print(f"first call (numba compile or cache load): {time.perf_counter() - t0:.2f} s")

    # alternate the two, so that a change in the machine's speed during the run (shared hosts) hits both alike
    base_times, our_times = [], []
    for _ in range(args.repeats):
        t, base = median_time(lambda: skimage_ssim_2023(pred, ref, mask), 1)
        base_times.append(t)
        t, ours = median_time(lambda: synthrad_metrics(pred, ref, mask), 1)
        our_times.append(t)
    t_base, t_ours = min(base_times), min(our_times)
    print(f"scikit-image SSIM alone:            {t_base:.3f} s  (ssim {base:.6f})")
    print(
        f"medtranslate MAE+PSNR+SSIM+MS-SSIM: {t_ours:.3f} s  (ssim {ours['ssim']:.6f}, ms_ssim {ours['ms_ssim']:.6f})"
    )
    median = statistics.median(base_times) / statistics.median(our_times)
    print(
        f"speed-up: {t_base / t_ours:.1f}x (best of {args.repeats} alternating runs each; medians: {median:.1f}x; "
        f"scikit-image took {min(base_times):.2f}-{max(base_times):.2f} s, medtranslate "
        f"{min(our_times):.3f}-{max(our_times):.3f} s)"
    )


if __name__ == "__main__":
    main()
