"""Quality per CPU-second: validation error against training time for variants of a pipeline, in one run.

Each variant is the pipeline file with some ``--set`` overrides; each trains with ``medtranslate train`` in a process
of its own, one after another on this machine, and its ``history.csv`` gives, per epoch, the validation metric and
the epoch's wall time; the process's CPU time (user + system, all threads) is measured around it. The first variant
is the baseline: the table gives each variant's CPU time as a ratio to it, and the CPU-seconds each took to first
reach the baseline's final error. Writes ``OUT/convergence.csv`` and ``OUT/convergence.png`` (error against
cumulative CPU-seconds, per variant, at the validated epochs). The CPU is named first; run on an idle machine.

Run: python benchmarks/bench_convergence.py PIPELINE --out runs/conv --variant base: --variant lr1e3:train.lr=0.001
      [--set KEY=VALUE ...]  (the --set overrides apply to every variant, e.g. train.epochs=15)
     python benchmarks/bench_convergence.py --replot runs/conv  (the figure again, from the files of a finished run)
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import time
from pathlib import Path

from medtranslate.runtime.device import resolve_device
from medtranslate.runtime.precision import describe_machine


def cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_variant(pipeline: str, out: Path, sets: list[str]) -> tuple[list[dict[str, str]], float, float]:
    """Train one variant; returns its history rows, its CPU-seconds and its wall seconds."""
    args = [sys.executable, "-m", "medtranslate", "train", pipeline, "--out", str(out), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    before, t0 = cpu_seconds_of_children(), time.perf_counter()
    subprocess.run(args, check=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds_of_children() - before
    with (out / "history.csv").open(newline="") as fh:
        return list(csv.DictReader(fh)), cpu, wall


def curve(rows: list[dict[str, str]], cpu: float, wall: float, metric: str) -> tuple[list[float], list[float]]:
    """Cumulative CPU-seconds at each epoch's end and the metric there (NaN: an epoch not validated)."""
    # the epochs' share of the process's CPU time, in proportion to their wall time (start-up and caching aside)
    scale = cpu / wall
    cumulative, total = [], 0.0
    for r in rows:
        total += float(r["seconds"]) * scale
        cumulative.append(total)
    return cumulative, [float(r[metric]) if r.get(metric) else float("nan") for r in rows]


def plot(curves: list[tuple[str, list[float], list[float]]], metric: str, path: Path) -> None:
    """Each (name, cumulative CPU-seconds, metric) curve through its validated epochs, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, cumulative, errors in curves:
        validated = [(c, e) for c, e in zip(cumulative, errors, strict=True) if e == e]  # a line through them all
        ax.plot(*zip(*validated, strict=True), marker="o", ms=3, label=name)
    ax.set_xlabel("training CPU-seconds (all threads)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def replot(out: Path, metric: str) -> None:
    """Draw OUT/convergence.png again from OUT/convergence.csv and each variant's history.csv."""
    curves = []
    with (out / "convergence.csv").open(newline="") as fh:
        for v in csv.DictReader(fh):
            with (out / v["variant"] / "history.csv").open(newline="") as hf:
                rows = list(csv.DictReader(hf))
            curves.append((v["variant"], *curve(rows, float(v["cpu_s"]), float(v["wall_s"]), metric)))
    plot(curves, metric, out / "convergence.png")
    print(f"wrote {out / 'convergence.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?")
    parser.add_argument("--out")
    parser.add_argument("--variant", action="append", help="NAME:KEY=VALUE,KEY=VALUE (first: baseline)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant")
    parser.add_argument("--metric", default="val_mae", help="history column to follow (lower is better)")
    parser.add_argument("--replot", metavar="OUT", help="only draw the figure of a finished run in OUT again")
    args = parser.parse_args()
    if args.replot:
        return replot(Path(args.replot), args.metric)
    if not (args.pipeline and args.out and args.variant):
        parser.error("a pipeline, --out and at least one --variant are needed (or --replot OUT)")
    print(f"{describe_machine(resolve_device('auto'))}; {args.pipeline}; common: {' '.join(args.set) or '-'}")
    out = Path(args.out)
    results = []
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        sets = args.set + [s for s in rest.split(",") if s]
        try:
            rows, cpu, wall = run_variant(args.pipeline, out / name, sets)
        except subprocess.CalledProcessError:
            print(f"variant {name} failed (its error is above); the others go on")
            continue
        cumulative, errors = curve(rows, cpu, wall, args.metric)
        results.append((name, sets, cumulative, errors, cpu, wall))

    if not results:
        raise SystemExit("no variant trained")
    base_final = results[0][3][-1]
    base_cpu = results[0][4]
    # best: the epoch best.pt keeps (the lowest validation error), which is what translate then uses
    lines = ["variant,overrides,epochs,cpu_s,wall_s,cpu_ratio,final,best,cpu_s_to_baseline_final"]
    print(
        f"{'variant':<12}{'epochs':>7}{'CPU s':>9}{'wall s':>9}{'CPU x':>7}{args.metric:>12}{'best':>9}"
        f"{'CPU s to base':>15}"
    )
    for name, sets, cumulative, errors, cpu, wall in results:
        reach = next((c for c, e in zip(cumulative, errors, strict=True) if e <= base_final), None)
        reach_s = f"{reach:.0f}" if reach is not None else "-"
        ratio = cpu / base_cpu
        best = min((e for e in errors if e == e), default=float("nan"))  # NaN: an epoch not validated
        print(
            f"{name:<12}{len(errors):>7}{cpu:>9.0f}{wall:>9.0f}{ratio:>7.2f}{errors[-1]:>12.2f}{best:>9.2f}{reach_s:>15}"
        )
        row = [name, " ".join(sets), len(errors), f"{cpu:.1f}", f"{wall:.1f}", f"{ratio:.3f}", f"{errors[-1]:.3f}"]
        row.append(f"{best:.3f}")
        row.append(reach_s)
        lines.append(",".join(map(str, row)))
    (out / "convergence.csv").write_text("\n".join(lines) + "\n")
    curves = [(name, cumulative, errors) for name, _, cumulative, errors, _, _ in results]
    plot(curves, args.metric, out / "convergence.png")
    print(f"wrote {out / 'convergence.csv'} and {out / 'convergence.png'}")


if __name__ == "__main__":
    main()
