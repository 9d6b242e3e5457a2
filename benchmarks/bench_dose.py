"""Dose agreement of several models' synthetic CTs with the reference CT, and the time a plan takes, in one run.

For each test case and modality one plan is optimised on the reference CT (``medtranslate.evaluation.dose``) and
recomputed on every model's sCT of that case, so the models are judged on the same plan. Prints, per model: the mean
gamma pass rates (2 %/2 mm, 3 %/3 mm) and target D95 difference per modality beside the model's MAE (from its
``evaluate`` metrics.csv), the ranking by each, and the seconds of each plan and recomputation with the CPU named.
With ``--timing-head`` it also times one plan on a phantom head of 256 x 256 x 100 voxels (0.9 x 0.9 x 2.5 mm).

Run: python benchmarks/bench_dose.py --ref sample_data/mr2ct --cases sub-07 sub-08 \\
       --model pix2pix=RUN/translated,RUN/eval/metrics.csv --model baseline=... [--modality photon,proton]
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import numpy as np

from medtranslate.evaluation.dose import DoseSettings, make_plan, recompute
from medtranslate.evaluation.evaluate import PRED_ROLES
from medtranslate.io.cases import select_cases
from medtranslate.io.files import read_case
from medtranslate.runtime.device import resolve_device
from medtranslate.runtime.precision import describe_machine


def mean_mae(metrics_csv: Path, cases: list[str]) -> float:
    with metrics_csv.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["case"] in cases and r.get("mae")]
    return float(np.mean([float(r["mae"]) for r in rows])) if rows else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="reference CTs (folder)")
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--model", action="append", default=[], help="NAME=SCT_FOLDER[,EVAL_METRICS_CSV]")
    parser.add_argument("--modality", default="photon,proton")
    parser.add_argument("--grid-mm", type=float, default=3.0)
    parser.add_argument("--timing-head", action="store_true", help="also time a plan on a 256 x 256 x 100 head")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the engine's deprecation and GPU-fallback warnings
    print(describe_machine(resolve_device("cpu")))
    modalities = tuple(args.modality.split(","))
    settings = DoseSettings(modalities=modalities, grid_mm=args.grid_mm)
    refs = select_cases(args.ref, ("ct", None), "reference CT")
    models = {}
    for spec in args.model:
        name, _, rest = spec.partition("=")
        folder, _, metrics = rest.partition(",")
        models[name] = (select_cases(folder, PRED_ROLES, name), Path(metrics) if metrics else None)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for cid in args.cases:
        ct = read_case(refs[cid])
        for modality in modalities:
            t0 = time.perf_counter()
            plan = make_plan(ct, settings, modality)
            print(f"{cid} {modality}: plan {time.perf_counter() - t0:.1f} s on {plan.dose_ct.shape} voxels")
            for name, (preds, _) in models.items():
                t0 = time.perf_counter()
                m = recompute(plan, read_case(preds[cid])).metrics
                print(f"  {name}: recomputed in {time.perf_counter() - t0:.1f} s")
                results.setdefault((name, modality), []).append(m)
    print()
    header = "model".ljust(14) + "MAE".rjust(8)
    for modality in modalities:
        header += f"{modality[:6] + ' 2/2':>14}{'3/3':>8}{'D95 diff':>10}"
    print(header)
    ranking: dict[str, list[tuple[float, str]]] = {"MAE": []}
    for name, (_, metrics) in models.items():
        mae = mean_mae(metrics, args.cases) if metrics else float("nan")
        ranking["MAE"].append((mae, name))
        line = f"{name:<14}{mae:>8.1f}"
        for modality in modalities:
            rows = results[(name, modality)]
            g2, g3 = (float(np.mean([r[k] for r in rows])) for k in ("gamma_2pct_2mm", "gamma_3pct_3mm"))
            d95 = float(np.mean([r["target_d95_diff"] for r in rows]))
            ranking.setdefault(f"{modality} gamma 2/2", []).append((-g2, name))
            line += f"{g2:>14.2f}{g3:>8.2f}{d95:>+10.2f}"
        print(line)
    for what, values in ranking.items():
        print(f"ranking by {what}: {' > '.join(n for _, n in sorted(values))}")
    if args.timing_head:
        from medtranslate.data.phantom import make_subject

        head = make_subject(3, shape=(256, 256, 100), spacing=(0.9, 0.9, 2.5), axcodes="RAS").ct
        for modality in modalities:
            t0 = time.perf_counter()
            plan = make_plan(head, settings, modality)
            planned = time.perf_counter() - t0
            t0 = time.perf_counter()
            recompute(plan, head)
            print(
                f"256 x 256 x 100 head, {modality}: plan {planned:.1f} s, recomputation and gamma "
                f"{time.perf_counter() - t0:.1f} s ({args.grid_mm:g} mm grid, {plan.dose_ct.shape} voxels)"
            )


if __name__ == "__main__":
    main()
