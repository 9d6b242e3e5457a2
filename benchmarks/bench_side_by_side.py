"""How OpenMP's wait policy changes a training step, idle and with another training process beside it.

PyTorch's CPU build runs its parallel regions on libgomp, whose threads spin for a while at the end of each region
before they sleep. When two processes each run as many threads as there are cores (two demos side by side), a spinning
thread holds a core the other process's threads wait for. OMP_WAIT_POLICY=PASSIVE makes them sleep at once. libgomp
reads the policy when it loads, so each measurement is a child process started with it: each shipped pipeline's step
(``precision: auto``), median of its steps, alone and as one of two identical children at once (the two children's
medians averaged); the policies alternate, the default first in each round.
Run: python benchmarks/bench_wait_policy.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from timing import median_time, pipeline_model, training_step

from medtranslate.runtime.precision import describe_machine

PIPELINES = {"mr2ct_pix2pix.yaml": 60, "mr2ct_cyclegan.yaml": 8, "ldct_pix2pix.yaml": 16}  # steps timed of each
POLICIES = ("default", "PASSIVE")


def child() -> None:
    """Time each pipeline's step in this process (started with the policy under test) and print them as JSON."""
    cpu, times = torch.device("cpu"), {}
    for pipeline, steps in PIPELINES.items():
        model, data = pipeline_model(pipeline, [], cpu)
        step = training_step(model, data, cpu)
        for _ in range(2):  # warm-up: allocator, kernels
            step()
        times[pipeline] = median_time(step, steps)[0]
    print(json.dumps(times))


def run_children(policy: str, count: int) -> dict[str, float]:
    """``count`` children at once with ``policy``: each pipeline's median step, averaged over the children."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    procs = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"], env=env, stdout=subprocess.PIPE)
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a child with OMP_WAIT_POLICY={policy} failed (exit {proc.returncode})")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return {p: sum(r[p] for r in results) / count for p in PIPELINES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every policy, alone and in pairs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    print(describe_machine(torch.device("cpu")))
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for count in (1, 2):
            for policy in POLICIES:
                runs.setdefault((policy, count), []).append(run_children(policy, count))
    for count, label in ((1, "alone"), (2, "two side by side")):
        for pipeline in PIPELINES:
            base = [r[pipeline] for r in runs[("default", count)]]
            cells = []
            for policy in POLICIES:
                t = [r[pipeline] for r in runs[(policy, count)]]
                ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(t, base, strict=True))
                cells.append(f"{policy} {', '.join(f'{x:.3f}' for x in t)} s ({ratios}x)")
            print(f"{label:17s} {pipeline:20s} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
