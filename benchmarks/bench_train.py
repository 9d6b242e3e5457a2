"""Time one training step of pix2pix and CycleGAN: float32 eager against bf16 autocast with channels_last.

- pix2pix: U-Net 256 (8 downsamplings), ngf/ndf 64, 256 x 256 patches, batch 4 (the paper's set-up);
- CycleGAN: ResNet with 9 blocks, ngf/ndf 64, 128 x 128 patches, batch 1.

Both variants run in this process on this machine, alternating, after warm-up steps; the median step time is printed
with the ratio. The machine's CPU (and its bf16 / AMX capability) or GPU is named first.
The Adam step alone (default against fused) follows.
Run: python benchmarks/bench_train.py [--steps 5] [--device auto]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import alternating_medians, best_time, training_step

from medtranslate.core.config import RunConfig
from medtranslate.models.base import build_model
from medtranslate.runtime.device import resolve_device
from medtranslate.runtime.precision import describe_machine

SETUPS = {
    "pix2pix": dict(
        model={"kind": "pix2pix", "task": "mr2ct", "ngf": 64, "ndf": 64, "num_downs": 8},
        data={"patch_size": 256},
        batch=4,
        size=256,
    ),
    "cyclegan": dict(
        model={"kind": "cyclegan", "task": "mr2ct", "ngf": 64, "ndf": 64, "n_blocks": 9},
        data={"patch_size": 128},
        batch=1,
        size=128,
    ),
}


def make_step(name: str, precision: str, channels_last: bool, device: torch.device) -> Callable[[], None]:
    """One training step of setup ``name`` on a fixed random batch, finished on the device when it returns."""
    setup = SETUPS[name]
    cfg = RunConfig.from_dict(
        {
            "data": {"root": ".", **setup["data"]},
            "model": setup["model"],
            "train": {"precision": precision, "channels_last": channels_last, "batch_size": setup["batch"]},
        }
    )
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg, 1, device, gen)
    shape = (setup["batch"], 1, setup["size"], setup["size"])
    batch = {"source": torch.rand(shape, generator=gen) * 2 - 1, "target": torch.rand(shape, generator=gen) * 2 - 1}
    return training_step(model, batch, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(describe_machine(device))
    for name in SETUPS:
        steps = {"fp32": make_step(name, "fp32", False, device), "bf16": make_step(name, "bf16", True, device)}
        times = alternating_medians(steps, args.steps)
        base, fast = times["fp32"], times["bf16"]
        print(
            f"{name:9s} float32 eager {base:6.3f} s/step   bf16 + channels_last {fast:6.3f} s/step   {base / fast:.2f}x"
        )
    adam_step(device)


def adam_step(device: torch.device) -> None:
    """The optimiser step alone for pix2pix's parameters: Adam's default (for-each) and its fused kernel."""
    cfg = RunConfig.from_dict({"data": {"root": ".", **SETUPS["pix2pix"]["data"]}, "model": SETUPS["pix2pix"]["model"]})
    model = build_model(cfg, 1, device, torch.Generator().manual_seed(0))
    params = [p for net in model.nets.values() for p in net.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    times = {}
    for name, fused in (("default", None), ("fused", True)):
        opt = torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999), fused=fused)
        opt.step()  # warm-up: state allocation
        times[name] = best_time(opt.step, 10)[0]
    n = sum(p.numel() for p in params) / 1e6
    print(
        f"Adam step, pix2pix's {n:.0f} M parameters: default {times['default']:.4f} s, fused {times['fused']:.4f} s, "
        f"{times['default'] / times['fused']:.2f}x"
    )


if __name__ == "__main__":
    main()
