"""Do training steps give the same weights on 1 and on 2 threads, and what would it cost to make them?

A run on another number of threads rounds some sums otherwise, and training amplifies that (docs/results.md, "The demo
in bf16 on one thread"). For each shipped pipeline's networks, batch and crop (as bench_upsample builds them) in fp32
and, where ``precision: auto`` picks it, bf16: a few training steps from the same weights and draws on 1 thread and on
2, and how many parameter tensors come out bit-identical (and whether 2 threads twice agree). In fp32 again with
oneDNN off (PyTorch's own convolutions, whose weight gradients do not split their sums by thread), with the step time
against oneDNN's, the two alternating on the machine's threads. Last, in a process bound to one core (as a 1-core
machine or container is), the step time on 2 threads against 1, alternating: what training on more threads than
cores costs (the demo fixes its thread count). The machine's CPU is named first.
Run: python benchmarks/bench_threads.py [--steps 3] [--repeats 8] [--one-core-repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import warnings
from collections.abc import Callable

import torch
from timing import alternating_medians, pipeline_model, training_step

from medtranslate.runtime.precision import choose_precision, describe_machine

PIPELINES = ("mr2ct_pix2pix.yaml", "mr2ct_cyclegan.yaml", "ldct_pix2pix.yaml")
CPU = torch.device("cpu")


def weights_after(model, data: dict[str, torch.Tensor], steps: int, threads: int, onednn: bool) -> list[torch.Tensor]:
    """Every parameter after ``steps`` training steps on ``threads`` threads, from the model's weights as they are
    (put back afterwards) and the same random draws (dropout, the model's generator)."""
    start, before = copy.deepcopy(model.state_dict()), torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model.rng.manual_seed(0)
    try:
        with torch.backends.mkldnn.flags(enabled=onednn):
            for _ in range(steps):
                model.train_step(data)
        return [p.detach().clone() for net in model.nets.values() for p in net.parameters()]
    finally:
        torch.set_num_threads(before)
        model.load_state_dict(start)


def thread_check(model, data: dict[str, torch.Tensor], steps: int, onednn: bool) -> str:
    one, two, again = (weights_after(model, data, steps, t, onednn) for t in (1, 2, 2))
    repeated = all(torch.equal(a, b) for a, b in zip(two, again, strict=True))
    same = sum(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    apart = torch.cat([(a - b).flatten() for a, b in zip(one, two, strict=True)]).norm()
    return (
        f"{same}/{len(one)} identical, {float(apart / torch.cat([a.flatten() for a in one]).norm()):.0e} apart "
        f"(2 threads twice: {'identical' if repeated else 'DIFFERENT'})"
    )


def without_onednn(step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with torch.backends.mkldnn.flags(enabled=False):
            step()

    return run


def on_threads(threads: int, step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        torch.set_num_threads(threads)
        step()

    return run


def one_core(repeats: int) -> None:
    """This process is bound to one core: each pipeline's step (precision auto) on 2 threads against 1."""
    for pipeline in PIPELINES:
        model, data = pipeline_model(pipeline, [], CPU)
        step = training_step(model, data, CPU)
        t = alternating_medians({"1": on_threads(1, step), "2": on_threads(2, step)}, repeats, warmup=1)
        print(f"{pipeline:20s} one core: step {t['1']:.3f} s on 1 thread, {t['2']:.3f} s on 2 ({t['2'] / t['1']:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3, help="training steps compared on 1 and 2 threads")
    parser.add_argument("--repeats", type=int, default=8, help="timed steps of each of oneDNN on and off")
    parser.add_argument("--one-core-repeats", type=int, default=3, help="timed steps of 1 and 2 threads on one core")
    parser.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)  # the child bound to one core
    args = parser.parse_args()
    if args.one_core:
        one_core(args.one_core_repeats)
        return
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # torch's, on toggling oneDNN
    print(describe_machine(CPU))
    precisions = ["fp32"] + (["bf16"] if choose_precision("auto", CPU).precision == "bf16" else [])
    for pipeline in PIPELINES:
        for precision in precisions:
            model, data = pipeline_model(pipeline, [f"train.precision={precision}"], CPU)
            cells = [f"oneDNN: {thread_check(model, data, args.steps, onednn=True)}"]
            if precision == "fp32":
                cells.append(f"oneDNN off: {thread_check(model, data, args.steps, onednn=False)}")
                step = training_step(model, data, CPU)
                t = alternating_medians({"on": step, "off": without_onednn(step)}, args.repeats)
                cells.append(f"step {t['on']:.3f} s on, {t['off']:.3f} s off ({t['off'] / t['on']:.2f}x)")
            print(f"{pipeline:20s} {precision}  " + "   ".join(cells), flush=True)
    # the child binds itself to one core before it imports torch, whose thread pool then starts there
    bind = (
        f"import os, runpy, sys; os.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}}); "
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"sys.argv = [{__file__!r}, '--one-core', '--one-core-repeats', '{args.one_core_repeats}']; "
        f"runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", bind], check=True)


if __name__ == "__main__":
    main()
