"""A training step alone and with another training process beside it, by thread count and OpenMP wait policy.

Two processes of 2 threads each on 2 cores: oneDNN's and libgomp's threads spin at every barrier for a partner that
the other process holds off its core, so each step can cost many times its time alone. Two processes of one thread
each share no barrier. Each measurement is a child process (libgomp reads OMP_WAIT_POLICY when it loads) timing each
shipped pipeline's step (``precision: auto``), median of its steps, alone or as one of two children at once. The two
start timing together and each keeps stepping until both are done, so every timed step has the other beside it (the
medians of the two are averaged). Variants alternate within a round; ratios are against 2 threads alone.
Then whole trainings, which a step leaves out (data loading, crops, the optimiser's small ops: many short parallel
regions): ``medtranslate train mr2ct_pix2pix`` for the demo's epochs' settings, alone and two at once, the sum of
their epochs' seconds (history.csv).
Run: python benchmarks/bench_side_by_side.py [--rounds 2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from timing import median_time, pipeline_model, training_step

from medtranslate.runtime.precision import describe_machine

PIPELINES = {"mr2ct_pix2pix.yaml": 60, "mr2ct_cyclegan.yaml": 8, "ldct_pix2pix.yaml": 16}  # steps timed of each
VARIANTS = {  # name: (threads, OMP_WAIT_POLICY or None for libgomp's default)
    "2 threads": (2, None),
    "2 threads, PASSIVE": (2, "PASSIVE"),
    "1 thread": (1, None),
}


def child() -> None:
    """Per pipeline: build its model, say "ready", wait for "go" on stdin, time its steps and print the median as
    JSON, then step on until "next" (the other child has finished timing too)."""
    cpu = torch.device("cpu")
    for pipeline, steps in PIPELINES.items():
        model, data = pipeline_model(pipeline, [], cpu)
        step = training_step(model, data, cpu)
        for _ in range(2):  # warm-up: allocator, kernels
            step()
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        print(json.dumps(median_time(step, steps)[0]), flush=True)
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
        while not done.is_set():  # keep the other child company until it has timed its steps too
            step()


def run_children(threads: int, policy: str | None, count: int) -> dict[str, float]:
    """``count`` children at once: each pipeline's median step, averaged over the children."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    medians = {}
    for pipeline in PIPELINES:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"a child ({threads} threads, OMP_WAIT_POLICY={policy}) failed")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        medians[pipeline] = sum(float(proc.stdout.readline()) for proc in procs) / count
        for proc in procs:
            proc.stdin.write("next\n")
            proc.stdin.flush()
    for proc in procs:
        proc.stdin.close()
        if proc.wait():
            raise SystemExit(f"a child ({threads} threads, OMP_WAIT_POLICY={policy}) failed (exit {proc.returncode})")
    return medians


def run_trainings(threads: int, count: int, epochs: int) -> float:
    """``count`` pix2pix trainings at once on ``threads`` each: the seconds of their epochs, averaged."""
    sets = {"train.epochs": epochs, "model.l1_warmup_epochs": epochs, "train.val_every": 10 * epochs}
    sets["train.num_threads"] = threads
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(count)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "medtranslate", "train", "mr2ct_pix2pix", "--out", str(run), "--no-progress"]
                + [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")],
                env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for run in runs
        ]
        if any(proc.wait() for proc in procs):
            raise SystemExit(f"a training on {threads} threads failed: run it alone to see its error")
        seconds = []
        for run in runs:
            with open(run / "history.csv", encoding="utf-8") as f:
                seconds.append(sum(float(row["seconds"]) for row in csv.DictReader(f) if row["seconds"]))
    return sum(seconds) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every variant, alone and in pairs")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each whole pix2pix training")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    print(describe_machine(torch.device("cpu")))
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for count in (1, 2):
            for name, (threads, policy) in VARIANTS.items():
                runs.setdefault((name, count), []).append(run_children(threads, policy, count))
    for count, label in ((1, "alone"), (2, "two side by side")):
        for pipeline in PIPELINES:
            base = [r[pipeline] for r in runs[("2 threads", 1)]]
            cells = []
            for name in VARIANTS:
                t = [r[pipeline] for r in runs[(name, count)]]
                ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(t, base, strict=True))
                cells.append(f"{name}: {', '.join(f'{x:.3f}' for x in t)} s ({ratios}x)")
            print(f"{label:17s} {pipeline:20s} " + "   ".join(cells), flush=True)
    trainings = {(t, n): run_trainings(t, n, args.epochs) for t in (2, 1) for n in (1, 2)}
    for (threads, count), seconds in trainings.items():
        label = "alone" if count == 1 else "two side by side"
        ratio = seconds / trainings[(2, 1)]
        what = f"{args.epochs} epochs of mr2ct_pix2pix on {threads} thread{'s' * (threads > 1)}"
        print(f"{label:17s} {what}: {seconds:.1f} s ({ratio:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
