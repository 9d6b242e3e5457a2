"""Timing helpers of the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder is on the path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from medtranslate.models.base import build_model
from medtranslate.pipeline import load_pipeline, shipped_pipelines
from medtranslate.runtime.precision import choose_precision


def run_times(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls of ``fn``, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = run_times(fn, repeats)
    return statistics.median(times), out


def best_time(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls: other load on a shared machine only ever adds time."""
    times, out = run_times(fn, repeats)
    return min(times), out


def training_step(model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> Callable[[], None]:
    """One ``model.train_step`` on ``batch``, finished on the device when it returns (not only queued)."""

    def step() -> None:
        model.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def pipeline_model(pipeline: str, overrides: list[str], device: torch.device) -> tuple[Any, dict[str, torch.Tensor]]:
    """A shipped pipeline's model (its networks, optimisers, batch and crop size, ``precision: auto`` resolved as
    ``train`` resolves it) with ``overrides``, freshly initialised, and a fixed random batch for it; pix2pix in its
    first epoch, which is the L1 warm-up where the pipeline has one (the discriminator untouched)."""
    cfg, _ = load_pipeline(shipped_pipelines()[pipeline], [*overrides, "data.root=."])
    precision = choose_precision(cfg.train.precision, device).precision
    cfg = replace(cfg, train=replace(cfg.train, precision=precision))
    channels, size, batch = 2 * cfg.data.context + 1, cfg.data.patch_size, cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg, channels, device, gen)
    model.begin_epoch(0)
    data = {
        "source": torch.rand((batch, channels, size, size), generator=gen) * 2 - 1,
        "target": torch.rand((batch, 1, size, size), generator=gen) * 2 - 1,
        "mask": torch.ones((batch, 1, size, size)),
    }
    return model, data


def alternating_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """The median seconds of each of ``fns``, called in turn ``repeats`` times after ``warmup`` calls each (allocator,
    kernels): a change in the machine's speed during the run reaches every one alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += run_times(fn, 1)[0]
    return {name: statistics.median(t) for name, t in times.items()}
