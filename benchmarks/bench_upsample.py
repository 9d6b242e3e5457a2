"""Time a training step of each shipped pipeline with each upsampling of its generator: resize (the default), narrow
(a 1x1 convolution to half the width before the resize) and transpose (the papers'), in one run.

Each pipeline's own networks, batch and crop size (`pipelines/*.yaml`), at `precision: auto` with channels-last as
`train` runs them; pix2pix in its L1 warm-up where the pipeline has one (the discriminator untouched, as in the
demo's stages). The variants alternate step by step after warm-up steps, and the median is printed with its ratio to
resize's. The machine's CPU (and its bf16 capability) or GPU is named first.
Run: python benchmarks/bench_upsample.py [--steps 8] [--device auto]
"""

from __future__ import annotations

import argparse

import torch
from timing import alternating_medians, pipeline_model, training_step

from medtranslate.runtime.device import resolve_device
from medtranslate.runtime.precision import choose_precision, describe_machine

PIPELINES = ("mr2ct_pix2pix.yaml", "mr2ct_cyclegan.yaml", "ldct_pix2pix.yaml")
MODES = ("resize", "narrow", "transpose")


def make_step(pipeline: str, mode: str, device: torch.device):
    """A function running one training step of ``pipeline`` with ``model.upsample: mode`` on fixed random slices."""
    model, data = pipeline_model(pipeline, [f"model.upsample={mode}"], device)
    return training_step(model, data, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(describe_machine(device), "| precision auto:", choose_precision("auto", device).precision)
    for pipeline in PIPELINES:
        times = alternating_medians({mode: make_step(pipeline, mode, device) for mode in MODES}, args.steps)
        cells = [f"{m} {t:.3f} s ({t / times['resize']:.2f}x)" for m, t in times.items()]
        print(f"{pipeline:20s} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
