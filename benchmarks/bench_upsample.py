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
from dataclasses import replace

import torch
from timing import alternating_medians, training_step

from medtranslate.models.base import build_model
from medtranslate.pipeline import load_pipeline, shipped_pipelines
from medtranslate.runtime.device import resolve_device
from medtranslate.runtime.precision import choose_precision, describe_machine

PIPELINES = ("mr2ct_pix2pix.yaml", "mr2ct_cyclegan.yaml", "ldct_pix2pix.yaml")
MODES = ("resize", "narrow", "transpose")


def make_step(pipeline: str, mode: str, device: torch.device):
    """A function running one training step of ``pipeline`` with ``model.upsample: mode`` on fixed random slices."""
    cfg, _ = load_pipeline(shipped_pipelines()[pipeline], [f"model.upsample={mode}", "data.root=."])
    precision = choose_precision(cfg.train.precision, device).precision  # as train resolves auto
    cfg = replace(cfg, train=replace(cfg.train, precision=precision))
    channels, size, batch = 2 * cfg.data.context + 1, cfg.data.patch_size, cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg, channels, device, gen)
    if hasattr(model, "begin_epoch"):
        model.begin_epoch(0)  # the first epoch: pix2pix's L1 warm-up where the pipeline has one
    shape = (batch, channels, size, size)
    data = {
        "source": torch.rand(shape, generator=gen) * 2 - 1,
        "target": torch.rand((batch, 1, size, size), generator=gen) * 2 - 1,
        "mask": torch.ones((batch, 1, size, size)),
    }
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
