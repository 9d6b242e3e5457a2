"""Peak memory of training on 5 and on 40 cases: with the on-disk slice cache it should not grow with the cohort.

Generates 41 sample subjects (``medtranslate sample-data``'s generator, MR/CT only) in a temporary folder, then
trains ``pipelines/mr2ct_pix2pix.yaml`` on the first 5 and on the first 40 (one validation case, subject 41 in both)
for one epoch of ``--steps`` steps, each run in its own process, and reports the peak resident memory of that
process (ru_maxrss, so every page it ever held counts). Twice: with the pipeline's network (what a user runs), and with
a tiny one (ngf 4), where the data is most of the memory and any growth with the cohort would show. The cache's size
on disk is what training held in memory before the cache (every prepared case, source, target and mask).
Run: python benchmarks/bench_train_memory.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from medtranslate.data.phantom import write_sample_data
from medtranslate.runtime.precision import describe_machine

REPO = Path(__file__).resolve().parents[1]
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_mib(cmd: list[str]) -> float:
    """Peak resident memory (MiB) of ``cmd`` run as the only child of a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024.0


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    args = parser.parse_args()
    print(describe_machine(torch.device("cpu")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-memory-"))
    t0 = time.perf_counter()
    write_sample_data(tmp / "data", n_subjects=41, ldct=False)
    print(f"41 sample subjects written in {time.perf_counter() - t0:.0f} s to {tmp / 'data'}")
    base = yaml.safe_load((REPO / "pipelines" / "mr2ct_pix2pix.yaml").read_text())
    ids = [f"sub-{n:02d}" for n in range(1, 42)]
    results = {}
    for model in ("pipeline", "tiny"):
        for n in (5, 40):
            name = f"{model}-{n}"
            split = tmp / f"split-{n}.json"
            split.write_text(json.dumps({"train": ids[:n], "val": [ids[40]], "test": []}))
            cfg = json.loads(json.dumps(base))
            cfg["data"].update(root=str(tmp / "data" / "mr2ct"), split=str(split))
            cfg["train"].update(epochs=1, steps_per_epoch=args.steps, max_minutes=None)
            if model == "tiny":
                cfg["model"].update(ngf=4, ndf=4)
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            run = tmp / name
            t0 = time.perf_counter()
            peak = peak_mib([sys.executable, "-m", "medtranslate", "train", str(path), "--out", str(run)])
            results[name] = peak
            print(
                f"{model:>8} network, {n:2d} training cases: peak {peak:7.0f} MiB, {time.perf_counter() - t0:5.0f} s; "
                f"slice cache {folder_mib(run / 'cache'):6.0f} MiB on disk (held in memory before the cache)"
            )
    for model in ("pipeline", "tiny"):
        print(f"{model} network: peak RSS 40 cases / 5 cases = {results[f'{model}-40'] / results[f'{model}-5']:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
