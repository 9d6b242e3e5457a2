"""The benchmark scripts stay runnable against the package as it is: each one's imports resolve and it has a main.
(A refactor once moved a class that benchmarks/bench_translate.py imported, and nothing noticed until it was run.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


def test_the_benchmarks_are_found():
    assert "bench_translate.py" in SCRIPTS and "bench_convergence.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_imports_and_has_a_main(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their shared helper (timing.py) as run there
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(script).stem}", BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports and definitions, not main (each script guards it)
    assert callable(getattr(module, "main", None)), f"{script}: no main()"
