"""The demo of ``pipelines/demo.yaml``: its pipelines run at once, each a ``medtranslate run`` process on one thread.

Two processes on one thread each, side by side on 2 cores, train as fast as either alone; one process on 2 threads
beside another such process trains 5-11x slower than alone, since oneDNN's and OpenMP's threads spin at every barrier
for a partner the other process holds off its core (docs/benchmarks.md, "Demos side by side"). And a model's numbers
depend on its thread count (oneDNN splits its sums by thread), so one thread per stage gives the README's table on any
machine of the same CPU kind and precision, with any number of cores and however busy it is; only the time differs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medtranslate.core.config import read_yaml
from medtranslate.core.errors import ConfigError
from medtranslate.pipeline import REPO, shipped_pipelines
from medtranslate.runtime.device import usable_cores

__all__ = ["run_demo", "demo_stages", "demo_workers", "minutes_left", "Stage"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One pipeline of the demo: its run folder's name, its ``medtranslate run`` command, its reference minutes."""

    name: str
    command: list[str]
    minutes: float


def demo_stages(out: Path, quick: bool, overwrite: bool) -> tuple[list[Stage], int]:
    """The demo's stages as demo.yaml lists them, and the threads each trains on (its ``train.num_threads``)."""
    shipped = shipped_pipelines()
    spec_path = shipped.get("demo.yaml")
    if spec_path is None or not (REPO / "sample_data").is_dir():
        raise ConfigError(
            f"{REPO / 'sample_data'}: the demo's sample data is not here; run the demo from a clone of the "
            "medtranslate repository"
        )
    spec = read_yaml(spec_path, "demo definition")
    common = dict(spec.get("set", {}))
    stages = []
    for entry in spec["pipelines"]:
        sets = {**common, **entry.get("set", {}), **(spec.get("quick", {}).get("set", {}) if quick else {})}
        sets["data.root"] = str(REPO / "sample_data" / entry["data"])
        if entry.get("split"):
            sets["data.split"] = str(REPO / "sample_data" / entry["split"])
        name = Path(entry["file"]).stem
        command = [sys.executable, "-m", "medtranslate", "run", str(shipped[entry["file"]]), "--out", str(out / name)]
        command += [arg for k, v in sets.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
        command += ["--no-progress", *(["--overwrite"] if overwrite else [])]
        stages.append(Stage(name, command, float(entry["quick_minutes" if quick else "minutes"])))
    return stages, int(common.get("train.num_threads", 1))


def run_demo(
    out: str | Path, quick: bool = False, overwrite: bool = False
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, int]]]:
    """Run the demo's pipelines into ``out/<pipeline>``, as many at once as this process may use cores for their
    threads; each stage's log lines are passed on marked ``[<pipeline>]``.

    Returns:
        The finished stages' evaluation summaries (name, summary) in demo.yaml's order, and the stages that failed
        (name, exit status), which did not stop the others.
    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; the running stages were told to stop (each training saves its
            ``last.pt`` first) and have ended.
    """
    out = Path(out)
    stages, threads = demo_stages(out, quick, overwrite)
    workers = demo_workers(len(stages), threads)
    logger.info(
        "demo: %d pipelines, %d at a time, each on %d thread%s (demo.yaml: the README's table on any machine of the "
        "same CPU kind and precision, whatever OMP_NUM_THREADS says); %s",
        len(stages),
        workers,
        threads,
        "s" * (threads != 1),
        minutes_left([s.minutes for s in stages], {}, {}, workers),
    )
    codes = _run_stages(stages, workers, {**os.environ, "OMP_NUM_THREADS": str(threads)})
    results, failed = [], []
    for stage in stages:
        summary_path = out / stage.name / "eval" / "summary.json"
        if codes[stage.name] in (0, 1) and summary_path.exists():  # 1: a test case failed, the rest were scored
            results.append((stage.name, json.loads(summary_path.read_text(encoding="utf-8"))))
        else:
            failed.append((stage.name, codes[stage.name]))
    return results, failed


def demo_workers(stages: int, threads: int) -> int:
    """How many of the demo's ``stages`` run at once: as many as the cores this process may use hold their
    ``threads`` (at least one; a thread beyond the cores waits on the others: docs/benchmarks.md)."""
    return max(1, min(stages, usable_cores() // threads))


def _run_stages(stages: list[Stage], workers: int, env: dict[str, str]) -> dict[str, int]:
    """Each stage's exit status; ``workers`` run at a time, in order. A signal stops them all (then re-raised)."""
    expected = [s.minutes for s in stages]
    ended: queue.Queue[tuple[int, int]] = queue.Queue()
    running: dict[int, tuple[subprocess.Popen[str], float]] = {}
    finished: dict[int, float] = {}
    codes: dict[str, int] = {}
    todo = list(range(len(stages)))

    def stop_running(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous_term = signal.signal(signal.SIGTERM, stop_running) if main else None
    try:
        while todo or running:
            while todo and len(running) < workers:
                i = todo.pop(0)
                proc = subprocess.Popen(
                    stages[i].command,
                    env=env,
                    stdout=subprocess.DEVNULL,  # its table: the demo prints all stages' at the end
                    stderr=subprocess.PIPE,
                    text=True,
                    encoding="utf-8",
                    errors="replace",
                )
                running[i] = (proc, time.perf_counter())
                threading.Thread(target=_pass_on, args=(proc, i, stages[i].name, ended), daemon=True).start()
                logger.info("demo %d/%d: %s started (process %d)", i + 1, len(stages), stages[i].name, proc.pid)
            i, code = ended.get()
            proc, start = running.pop(i)
            finished[i] = (time.perf_counter() - start) / 60
            codes[stages[i].name] = code
            now = time.perf_counter()
            left = minutes_left(expected, finished, {j: (now - t) / 60 for j, (_, t) in running.items()}, workers)
            done = "done" if code in (0, 1) else f"FAILED (exit {code}; its error is in its lines above)"
            name = stages[i].name
            logger.info("demo %d/%d: %s %s in %.1f min; %s", i + 1, len(stages), name, done, finished[i], left)
    except KeyboardInterrupt:
        # the terminal's Ctrl-C reached the stages too; a SIGTERM or a kill of this process alone did not
        logger.warning("demo: stopping the running pipelines (each saves its training's last.pt first)")
        for proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)  # honoured as a first Ctrl-C is, however often it comes
        for proc, _ in running.values():
            proc.wait()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous_term)
    return codes


def _pass_on(proc: subprocess.Popen[str], index: int, name: str, ended: queue.Queue[tuple[int, int]]) -> None:
    """Write the stage's log lines to this process's stderr, each marked with its name; then report its exit."""
    stream: IO[str] = proc.stderr  # type: ignore[assignment]
    try:
        for line in stream:
            try:
                sys.stderr.write(f"[{name}] {line}")
                sys.stderr.flush()
            except (OSError, ValueError):  # the console has gone (a closed pipe): read on, or the stage blocks on it
                pass
    finally:  # the demo waits for this: it must come however the lines went
        ended.put((index, proc.wait()))


def minutes_left(expected: list[float], finished: dict[int, float], running: dict[int, float], workers: int) -> str:
    """How long until the demo's last stage ends. Stages run ``workers`` at a time in their order, each taking its
    minutes on the reference CPU (``expected``) times this machine's pace: the finished stages' minutes (``finished``,
    by index) against their expected. A running stage (``running``: the minutes it has run) takes what remains of it.
    A stage that was complete and skipped (under a minute's tenth) says nothing about the pace and is left out."""
    measured = [(finished[i], expected[i]) for i in finished if finished[i] > 0.1]
    pace = sum(t for t, _ in measured) / sum(e for _, e in measured) if measured else 1.0
    free = [max(expected[i] * pace - ran, 0.0) for i, ran in running.items()]
    free += [0.0] * (workers - len(free))
    for i in range(len(expected)):
        if i not in finished and i not in running:
            free.sort()
            free[0] += expected[i] * pace  # the next stage starts on the worker free first
    rest = max(free, default=0.0)
    if not measured:
        return f"about {rest:.0f} min left on the reference CPU (2 cores)"
    return f"about {rest:.1f} min left at this machine's pace ({pace:.2f}x the reference CPU's time)"
