"""The ``medtranslate`` command line: parses arguments, calls library functions, maps errors to exit codes.

Exit status: 0 success; 1 some cases of a batch failed; 2 bad input or nothing could be done (one line on stderr,
no traceback); 130 interrupted. Heavy modules are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from medtranslate.core.errors import MedTranslateError
from medtranslate.core.tasks import TASKS

logger = logging.getLogger("medtranslate")


def cmd_info(args: argparse.Namespace) -> int:
    from medtranslate.io.describe import describe_paths, format_table

    rows = describe_paths(args.paths)
    print(format_table(rows))
    failed = sum(1 for r in rows if r["status"] != "ok")
    if failed == len(rows):
        return 2
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from medtranslate.io.files import convert_to_nifti

    out = convert_to_nifti(args.input, args.output, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medtranslate.inference.export import export_bundle

    out = export_bundle(args.model, args.out, overwrite=args.overwrite)
    print(f"wrote the MONAI bundle {out}; run it with:")
    print(
        f"  python -m monai.bundle run --config_file {out / 'configs' / 'inference.json'} --bundle_root {out} "
        "--dataset_dir INPUT --output_dir OUTPUT"
    )
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from medtranslate.data.phantom import write_sample_data

    if args.ldct_from_invesalius:
        from medtranslate.simulation.lowdose import write_invesalius_pairs

        written = write_invesalius_pairs(Path(args.out) / "ldct_invesalius", dose=0.25, overwrite=args.overwrite)
        print(f"wrote {len(written)} files to {Path(args.out) / 'ldct_invesalius'}")
        return 0
    deg, mm = args.misalign or (0.0, 0.0)
    written = write_sample_data(
        args.out,
        n_subjects=args.subjects,
        seed=args.seed,
        overwrite=args.overwrite,
        misalign_deg=deg,
        misalign_mm=mm,
        cohorts=args.cohorts,
    )
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medtranslate.core.errors import InputError
    from medtranslate.evaluation.evaluate import evaluate_folder, evaluate_without_pairs, format_summary
    from medtranslate.runtime import distributed

    if (args.ref is None) == (args.cohort is None):
        raise InputError("give --ref (references of the same subjects) or --cohort (a CT cohort, no pairs), not both")
    if args.dose and (args.ref is None or distributed.world()[1] > 1):
        raise InputError("--dose plans on each reference CT: it needs --ref, in one process (run `dose` under torchrun "
                         "as separate shards instead)")  # fmt: skip
    settings = _dose_settings(args.dose) if args.dose else None
    if settings is not None:  # before the image metrics are computed: a typo or a missing extra stops at once
        from medtranslate.evaluation.dose import require_engine

        settings.check()
        require_engine()
    if args.cohort is not None:
        if args.input is None:
            raise InputError("--cohort judges each output against its input's body outline: give --input too")
        keys = ("mask", "hu_to_rsp", "hu_to_red", "resample_to_ref")
        unused = [f"--{k.replace('_', '-')}" for k in keys if getattr(args, k)]
        if unused:
            raise InputError(f"{', '.join(unused)} needs --ref: pairs to compare")
        result = evaluate_without_pairs(
            args.pred, args.input, args.cohort, args.out, task=args.task, progress=not args.no_progress
        )
    else:
        result = evaluate_folder(
            args.pred,
            args.ref,
            args.out,
            mask=args.mask,
            input=args.input,
            edition=args.edition,
            task=args.task,
            window=args.window,
            resample_to_ref=args.resample_to_ref,
            progress=not args.no_progress,
            hu_to_rsp=args.hu_to_rsp,
            hu_to_red=args.hu_to_red,
        )
    if distributed.world()[0] == 0:  # under torchrun rank 0 speaks for all: every rank has every case's row
        print(format_summary(result))
        print(f"report: {result.out / 'report.html'}")
    if settings is not None:
        from medtranslate.evaluation.dose import dose_folder

        rows, summary = dose_folder(args.pred, args.ref, result.out / "dose", settings, progress=not args.no_progress)
        _print_dose(summary, settings, result.out / "dose")
        return max(1 if result.failed else 0, _report_batch(rows, str(result.out / "dose")))
    return 1 if result.failed else 0  # every case failed is 1 too: each is recorded in the tables written (2: none)


def cmd_train(args: argparse.Namespace) -> int:
    from medtranslate.core.config import load_config
    from medtranslate.pipeline import find_pipeline
    from medtranslate.runtime import distributed
    from medtranslate.training.train import Trainer

    cfg = load_config(find_pipeline(args.config), args.set)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    val = trainer.fit()
    if distributed.world()[0] != 0:  # under torchrun rank 0 validates and reports
        return 0
    summary = ", ".join(f"{k} {v:.4g}" for k, v in val.items())
    print(f"trained {cfg.model.kind} into {args.out}" + (f"; validation: {summary}" if summary else ""))
    # a cohort run without a paired validation case picks best.pt by val_w1, not by an MAE
    print(f"checkpoints: {Path(args.out) / 'checkpoints' / 'best.pt'} (lowest {trainer.selected_by}), last.pt")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from medtranslate.inference.translate import translate_folder

    rows = translate_folder(
        args.model,
        args.input,
        args.output,
        overwrite=args.overwrite,
        device=args.device,
        batch_size=args.batch_size,
        fmt=args.format,
        tta=args.tta,
        uncertainty=args.uncertainty,
        samples=args.samples,
        ensemble=args.ensemble,
        shard=args.shard,
        progress=not args.no_progress,
        precision=args.precision,
    )
    return _report_batch(rows, args.output)


def _report_batch(rows: list, out: str) -> int:
    from medtranslate.runtime.batch import summary_line

    for row in rows:
        if row["status"] in ("failed", "refused"):
            print(f"{row['status'].upper()} {row['case']}: {row['error']}")
    line, status = summary_line(rows, Path(out))
    print(line)
    return status


def _dose_settings(modalities: str, **options: Any):
    from medtranslate.evaluation.dose import DoseSettings

    return DoseSettings(modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()), **options)


def _angles(text: str, flag: str) -> tuple[float, ...]:
    from medtranslate.core.errors import ConfigError

    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise ConfigError(f"{flag}: expected gantry angles in degrees separated by commas, got {text!r}") from None


def _print_dose(summary: dict, settings: Any, out: Path) -> None:
    means = {k: v["mean"] for k, v in summary["metrics"].items()}
    for modality in settings.modalities:
        if f"{modality}_target_d95_diff" in means:
            rates = ", ".join(f"{p}/{p} mm {means[f'{modality}_gamma_{p}pct_{p}mm']:.1f} %" for p in (2, 3))
            d95 = means[f"{modality}_target_d95_diff"]
            print(f"{modality}: gamma pass rate {rates}; target D95 sCT - CT {d95:+.2f} Gy (means over the cases)")
    print(f"dose report: {out / 'report.html'}")


def cmd_dose(args: argparse.Namespace) -> int:
    from medtranslate.evaluation.dose import dose_folder
    from medtranslate.evaluation.wepl import read_calibration

    hlut = None
    if args.hlut:
        hu, value = read_calibration(args.hlut, "RED", flag="--hlut")
        hlut = tuple((float(h), float(v)) for h, v in zip(hu, value, strict=True))
    settings = _dose_settings(
        args.modality,
        fractions=args.fractions,
        prescription_gy=args.prescription,
        grid_mm=args.grid_mm,
        target_radius_mm=args.target_radius,
        hlut=hlut,
        local_gamma=args.local_gamma,
        target_name=args.target_name,
        **{
            f"{m}_angles": _angles(getattr(args, f"{m}_angles"), f"--{m}-angles")
            for m in ("photon", "proton")
            if getattr(args, f"{m}_angles") is not None
        },
    )
    rows, summary = dose_folder(
        args.pred,
        args.ref,
        args.out,
        settings,
        target=args.target,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        shard=args.shard,
        structures=args.structures,
    )
    _print_dose(summary, settings, Path(args.out))
    return _report_batch(rows, args.out)


def cmd_simulate_lowdose(args: argparse.Namespace) -> int:
    from medtranslate.simulation.lowdose import simulate_lowdose_folder

    rows = simulate_lowdose_folder(
        args.input,
        args.output,
        args.dose,
        seed=args.seed,
        photons=args.photons,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        geometry=args.geometry,
        device=args.device,
        shard=args.shard,
    )
    return _report_batch(rows, args.output)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from medtranslate.preprocessing.preprocess import PreprocessOptions, preprocess_folder

    options = PreprocessOptions(
        reference_role=args.reference_role,
        register=args.register,
        n4=args.n4,
        n4_shrink=args.n4_shrink,
        n4_iterations=tuple(args.n4_iterations),
        orient=args.orient,
        spacing=tuple(args.spacing) if args.spacing else None,
        to_reference=args.to_reference,
        mask=args.mask,
        crop_margin_mm=args.crop_to_body,
        slabs=args.slabs,
        seed=args.seed,
        max_rotation_deg=args.max_rotation,
    )
    rows = preprocess_folder(
        args.input, args.output, options, shard=args.shard, overwrite=args.overwrite, progress=not args.no_progress
    )
    return _report_batch(rows, args.output)


def cmd_run(args: argparse.Namespace) -> int:
    from medtranslate.pipeline import find_pipeline, run_pipeline

    pipeline = find_pipeline(args.pipeline)
    summary = run_pipeline(pipeline, args.out, args.set, progress=not args.no_progress, overwrite=args.overwrite)
    print(_summary_table([(Path(args.pipeline).stem, summary)]))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 1 if summary["n_failed"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medtranslate.demo import run_demo

    results, failed = run_demo(args.out, quick=args.quick, overwrite=args.overwrite)
    if results:
        print(_summary_table(results))
    for name, _ in results:
        print(f"report: {Path(args.out) / name / 'report.html'}")
    for name, code in failed:
        print(f"{name}: FAILED (exit {code}): its error is in the log lines marked [{name}]")
    return 2 if failed else 1 if any(s["n_failed"] for _, s in results) else 0


def _summary_table(results: list) -> str:
    """Each pipeline's mean metrics beside its baseline's; a metric on which the model is worse is marked, and an
    under-trained model or a model worse than its baseline gets a WARNING line under its table."""
    from medtranslate.evaluation.report import warnings_of, worse_than_baseline

    lines = []
    for name, summary in results:
        base = summary.get("baseline") or {}
        worse = worse_than_baseline(summary)
        w = max([len("metric"), *map(len, summary["metrics"])]) + 2
        lines.append(f"{name}: {summary['n_done']}/{summary['n_cases']} test cases ({summary['task']})")
        if summary.get("trained_on"):  # another CPU, precision or thread count rounds otherwise
            lines.append(f"  trained in {summary['trained_on']}")
        lines.append(
            f"  {'metric':<{w}}{summary.get('model', 'model'):>14}{(base.get('kind') or '-') + ' (baseline)':>26}"
        )
        for metric, stats in summary["metrics"].items():
            b = base.get("metrics", {}).get(metric, {}).get("mean")
            mark = "  worse than the baseline" if metric in worse else ""
            lines.append(f"  {metric:<{w}}{stats['mean']:>14.4g}{(f'{b:.4g}' if b is not None else '-'):>26}{mark}")
        lines += [f"  WARNING: {line}" for line in warnings_of(summary)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtranslate",
        description="Translate 3D medical volumes slice by slice with 2D GANs (MR -> CT, low-dose -> normal-dose CT), "
        "in HU and in the input's own space.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_info,
        _add_convert,
        _add_sample_data,
        _add_train,
        _add_translate,
        _add_simulate_lowdose,
        _add_preprocess,
        _add_run,
        _add_demo,
        _add_evaluate,
        _add_dose,
        _add_export,
    ):
        add(sub)
    return parser


def _add_info(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe scans: format, shape, spacing, orientation, intensities, CT or MR",
        description="Describe every case in the given files or folders (NIfTI, NRRD, MetaImage, DICOM series).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.set_defaults(func=cmd_info)


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert any readable scan (file or DICOM folder) to NIfTI, geometry preserved",
        description="Convert one scan to NIfTI with qform and sform set; voxel values and world coordinates are kept.",
    )
    p.add_argument("input", help="image file or DICOM series folder")
    p.add_argument("output", help="output .nii.gz (or .nii) file")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=cmd_convert)


def _add_sample_data(sub: Any) -> None:
    p = sub.add_parser(
        "sample-data",
        help="regenerate the procedural MR/CT head phantoms of sample_data/ (deterministic)",
        description="Write the paired MR/CT head phantoms, their body masks and split.json, and disjoint cohorts "
        "(subjects with an MR only or a CT only) with split_cohorts.json.",
    )
    p.add_argument("--out", default="sample_data", help="output folder (default: sample_data)")
    p.add_argument("--subjects", type=int, default=8, help="number of subjects (default: 8)")
    p.add_argument("--seed", type=int, default=2026, help="random seed (default: 2026, the committed data)")
    p.add_argument(
        "--misalign",
        type=float,
        nargs=2,
        metavar=("DEG", "MM"),
        help="move each MR by a random rigid transform of up to DEG degrees and MM mm per axis (for preprocess)",
    )
    p.add_argument(
        "--cohorts",
        type=int,
        default=5,
        help="subjects in each of two disjoint cohorts for unpaired training: MR-only / CT-only (and normal-dose-only "
        "/ low-dose-only), with split_cohorts.json (default: 5, the committed data; 0 for none)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument(
        "--ldct-from-invesalius",
        action="store_true",
        help="instead, build low-dose pairs (25 %% dose) from the real head CT of Debian's invesalius-examples "
        "package into OUT/ldct_invesalius",
    )
    p.set_defaults(func=cmd_sample_data)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train pix2pix, CycleGAN or the intensity-mapping baseline from a YAML experiment file",
        description="Train on slices of 3D volumes; validate whole volumes in HU each epoch; keep checkpoints/last.pt "
        "and best.pt.",
    )
    p.add_argument(
        "config", help="YAML file with sections data, model, train, or a shipped pipeline's name (e.g. mr2ct_pix2pix)"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_translate(sub: Any) -> None:
    p = sub.add_parser(
        "translate",
        help="translate scans (MR -> synthetic CT, low-dose -> denoised CT) with a trained checkpoint",
        description="Translate every case of a file or folder slice by slice; outputs are int16 HU NIfTI on each "
        "input's own grid. "
        "Re-running skips finished cases; --shard I/N splits a folder between processes.",
    )
    p.add_argument("--model", required=True, help="checkpoint (checkpoints/best.pt of a training run)")
    p.add_argument("--input", required=True, help="image file or folder (NIfTI, NRRD, MHA, DICOM series)")
    p.add_argument("--output", required=True, help="output folder (not the input folder)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    p.add_argument(
        "--batch-size", type=int, default=None, help="slices per forward pass (default 4 on a CPU, 8 on a GPU)"
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default): bf16 where this hardware runs it faster (measured when unsure), else fp32",
    )
    p.add_argument(
        "--format", choices=("nifti", "dicom"), default="nifti", help="dicom: also write a DICOM CT series per case"
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over a left-right flip (test-time augmentation); default: as the model was trained to be used "
        "(its model.tta)",
    )
    p.add_argument(
        "--uncertainty",
        choices=("tta", "mc", "ensemble"),
        help="also write <case>_sct_std.nii.gz, the voxel-wise standard deviation in HU over flipped and shifted "
        "views (tta), Monte Carlo dropout samples (mc) or the models of --ensemble; the output is then their mean",
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="CKPT",
        help="more checkpoints of the same task and data settings as --model: with --uncertainty ensemble one "
        "prediction per model, with tta or mc each model's --samples predictions, all pooled",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=8,
        help="predictions per model for --uncertainty tta or mc (default 8; tta: at most 8)",
    )
    p.add_argument("--shard", metavar="I/N", help="take every N-th case starting at I (0-based)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_translate)


def _add_simulate_lowdose(sub: Any) -> None:
    p = sub.add_parser(
        "simulate-lowdose",
        help="simulate low-dose / normal-dose CT pairs in the projection domain (Poisson + electronic noise, FBP)",
        description="For every CT case write <case>_ld.nii.gz (simulated low dose) and <case>_nd.nii.gz (same "
        "projection and reconstruction without the added noise), int16 HU on the input's grid.",
    )
    p.add_argument("--dose", type=float, required=True, help="fraction of the full dose, in (0, 1], e.g. 0.25")
    p.add_argument("--input", required=True, help="CT file or folder (HU)")
    p.add_argument("--output", required=True, help="output folder (not the input folder)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--photons", type=float, default=1e5, help="incident photons per ray at full dose (default 1e5)")
    p.add_argument(
        "--geometry",
        default="fan",
        help="fan (default: the Mayo/AAPM scanner's fan beam, 1152 views per turn) or parallel (2 x size views)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--shard", metavar="I/N", help="simulate only every N-th case, starting at I (0-based)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate_lowdose)


def _add_dose(sub: Any) -> None:
    p = sub.add_parser(
        "dose",
        help="plan on each reference CT, recompute on its synthetic CT: gamma pass rates and DVH differences",
        description="Per case: a plan optimised on the reference CT (pyRadPlan; photons 7 fields, protons 2), the "
        "same beamlet weights recomputed on the sCT; doses as NIfTI (Gy), gamma pass rates at 2 %%/2 mm and 3 %%/3 mm "
        'and DVH metrics in metrics.csv and summary.json. Needs the dose extra: pip install -e ".[dose]".',
    )
    p.add_argument("--pred", required=True, help="synthetic CT file or folder (translate's output)")
    p.add_argument("--ref", required=True, help="reference CT file or folder, matched to --pred by case id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--modality", default="photon", help="photon (default), proton, or photon,proton")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", help="target masks (<id>/target.nii.gz or <id>_target.nii.gz); default: a sphere")
    where.add_argument(
        "--structures",
        help="per case <id>/ with <name>.nii.gz masks and/or an RTSTRUCT .dcm (or <id>.dcm): the target (named "
        "target or PTV...) and organs at risk",
    )
    p.add_argument("--target-name", help="which structure is the target (default: the one named target or PTV...)")
    p.add_argument("--target-radius", type=float, default=15.0, help="default target's radius in mm (default 15)")
    p.add_argument("--fractions", type=int, default=30, help="fractions (default 30)")
    p.add_argument("--prescription", type=float, default=60.0, help="target dose in Gy over all fractions (60)")
    p.add_argument("--grid-mm", type=float, default=3.0, help="dose grid spacing in mm (default 3)")
    p.add_argument("--hlut", help="HU-to-density CSV (HU,value; calibrations/); default: the engine's own curve")
    p.add_argument("--local-gamma", action="store_true", help="local gamma (default: global)")
    p.add_argument("--photon-angles", help="photon gantry angles in degrees, e.g. 0,72,144,216,288 (default: 7 "
                   "equally spaced from 0)")  # fmt: skip
    p.add_argument("--proton-angles", help="proton gantry angles in degrees (default 90,270)")
    p.add_argument("--shard", metavar="I/N", help="plan only every N-th case, starting at I (0-based)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dose)


def _add_preprocess(sub: Any) -> None:
    p = sub.add_parser(
        "preprocess",
        help="register, bias-correct, reorient, resample, mask, crop and cut a folder of cases (SimpleITK)",
        description="Preprocess every case of a folder in a fixed order: orient, N4, register onto the reference, "
        "resample, mask, crop, slabs. Writes <out>/<case>/<role>.nii.gz (the layout train, run and translate read), "
        "the transforms (.tfm), a record of every step (preprocess.json), QC images and qc.html. Inputs are never "
        "modified; finished cases are skipped; a bad case is recorded and the rest go on.",
    )
    p.add_argument("--input", required=True, help="folder of cases (or one image)")
    p.add_argument("--output", required=True, help="output folder (not the input folder)")
    p.add_argument("--reference-role", default="ct", help="the image others are registered onto (default: ct)")
    p.add_argument("--register", choices=("rigid", "affine", "deformable"), help="register the other images")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction of MR images")
    p.add_argument("--n4-shrink", type=int, default=4, help="N4 fits on a copy shrunk by this factor (default 4)")
    p.add_argument(
        "--n4-iterations", type=int, nargs="+", default=[50, 50, 30, 20], metavar="N", help="per level (50 50 30 20)"
    )
    p.add_argument("--orient", choices=("RAS", "keep"), default="RAS", help="reorient to RAS (default) or keep")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="resample to voxels of this size")
    grid.add_argument("--to-reference", action="store_true", help="resample the other images onto the reference grid")
    p.add_argument("--mask", action="store_true", help="write a body mask (mask.nii.gz) made from the reference")
    p.add_argument("--crop-to-body", type=float, metavar="MARGIN_MM", help="crop to the body plus this margin")
    p.add_argument("--slabs", type=int, default=1, help="cut each case into N axial slabs (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the registration's sampling (default 0)")
    p.add_argument(
        "--max-rotation",
        type=float,
        default=30.0,
        metavar="DEG",
        help="refuse a registration that rotates an image by more than this (default 30 degrees)",
    )
    p.add_argument("--shard", metavar="I/N", help="process only every N-th case, starting at I (0-based)")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_preprocess)


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline: prepare, train, translate, evaluate and report (finished stages are skipped)",
        description="Run every stage of a pipeline file (pipelines/*.yaml) into RUN_DIR; an interrupted run continues "
        "where it stopped.",
    )
    p.add_argument(
        "pipeline",
        help="pipeline YAML (an experiment file with an optional 'pipeline' section), or a shipped pipeline's name "
        "(mr2ct_pix2pix, mr2ct_cyclegan, ldct_pix2pix, ldct_cyclegan, ...)",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard what RUN_DIR holds from an earlier run and run every stage again",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the demo: MR -> CT and low-dose denoising on sample_data/ with baselines, ending in report.html",
        description="Train MR -> CT pix2pix and CycleGAN and a low-dose denoiser on the bundled sample data, "
        "translate the test cases, evaluate them beside their baselines and write the reports (about 6 minutes on 2 "
        "CPU cores with bf16 units, more without them, on fewer cores or on a busy machine, with the same numbers on "
        "the same kind of CPU and precision: each pipeline is a process on one thread, as many at once as there are "
        "cores, its log lines marked with its name; --quick under 1).",
    )
    p.add_argument("--out", default="demo_run", help="output folder (default: demo_run)")
    p.add_argument("--quick", action="store_true", help="a short run (numbers not meant to be good)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier demo in --out and run it again")
    p.set_defaults(func=cmd_demo)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score synthetic or denoised CT against reference CT: metrics.csv, summary.json, report.html",
        description="Score predictions against references (files or folders, cases matched by id) with the SynthRAD "
        "metrics "
        "(MAE, PSNR, SSIM, MS-SSIM) or, for --task ldct, windowed slice SSIM/PSNR and RMSE in HU.",
    )
    p.add_argument("--pred", required=True, help="prediction file or folder (e.g. <case>_sct.nii.gz)")
    p.add_argument("--ref", help="reference CT file or folder (the same subjects as the predictions)")
    p.add_argument(
        "--cohort",
        help="instead of --ref: CTs of other subjects; each prediction is judged without a pair (its HU distribution "
        "against the cohort's, its outline against --input's, its artefact index; docs/unpaired.md)",
    )
    p.add_argument(
        "--mask", help="body mask file or folder (default: computed from the reference CT and saved in OUT/masks)"
    )
    p.add_argument("--input", help="input (MR or low-dose CT) file or folder, shown in the figures")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--edition",
        type=int,
        choices=(2023, 2025),
        default=2023,
        help="SynthRAD edition for PSNR/SSIM clipping (default 2023)",
    )
    p.add_argument("--task", choices=tuple(TASKS), default="mr2ct", help="metric set (default mr2ct)")
    p.add_argument(
        "--hu-to-rsp",
        metavar="CSV",
        help="HU-to-relative-stopping-power calibration (lines 'HU,RSP', HU increasing): adds the proton range "
        "difference (water-equivalent path length along parallel beams at 4 gantry angles) per case",
    )
    p.add_argument(
        "--hu-to-red",
        metavar="CSV",
        help="HU-to-relative-electron-density calibration (same format): adds the radiological path length "
        "difference along the same beams, a proxy for photon dose errors",
    )
    p.add_argument(
        "--window",
        choices=("auto", "head", "abdomen", "chest"),
        default="auto",
        help="window for ldct metrics (default auto: chest where lung is in the field, else head or abdomen by the "
        "body's width; a case where that is unclear fails, asking for the window)",
    )
    p.add_argument(
        "--resample-to-ref",
        action="store_true",
        help="resample predictions on another grid onto the reference instead of failing them",
    )
    p.add_argument(
        "--dose",
        metavar="MODALITIES",
        help="also plan on each reference CT and recompute on its prediction (photon, proton or photon,proton; the "
        "dose command's defaults) into OUT/dose; needs the dose extra",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint as a MONAI bundle (python -m monai.bundle run)",
        description="Write a MONAI bundle (configs/metadata.json, configs/inference.json, models/model.pt, "
        "docs/README.md) that translates a folder as `medtranslate translate` does.",
    )
    p.add_argument("--model", required=True, help="checkpoint (.pt) from train")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "no_progress") and not sys.stderr.isatty():
        args.no_progress = True  # a log file or CI gets the log's lines, not a bar redrawn hundreds of times into it
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # a library's background thread (TensorBoard's event writer) that fails, e.g. on a full disk, says so in one line;
    # the main thread then meets the same condition and ends with its own one-line error
    threading.excepthook = lambda hook: logger.error(
        "background thread %s stopped: %s: %s",
        getattr(hook.thread, "name", "?"),
        hook.exc_type.__name__,
        " ".join(str(hook.exc_value).split())[:200],
    )
    try:
        code = int(args.func(args) or 0)
    except MedTranslateError as exc:
        print(f"medtranslate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (
        OSError
    ) as exc:  # the file system refused something no check could foresee (a disk that fills, a folder made read-only)
        where = f"{exc.filename}: " if exc.filename else "a write failed: "
        print(
            f"medtranslate {args.command}: error: {where}{exc.strerror or exc}; check free space and permissions of "
            "the output folder, then run again",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"medtranslate {args.command}: interrupted", file=sys.stderr)
        return 130
    if "torch.distributed" in sys.modules:  # a command under torchrun joined the ranks' process group: leave it
        from medtranslate.runtime.distributed import teardown

        teardown()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
