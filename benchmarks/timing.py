"""Timing helpers of the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder is on the path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


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
