"""Folder-vs-folder evaluation of synthetic (or denoised) CT against reference CT.

Cases are matched by id as :func:`medtranslate.io.cases.find_cases` names them (``pt01_sct.nii.gz`` matches
``pt01/ct.nii.gz``); two files given explicitly are paired whatever their names. Geometry is checked before anything
is scored. One bad case is recorded with its reason and the rest go on; a case whose metrics are undefined (too few
slices for the SSIM window, NaN) is failed with the reason, never reported as done. Writes ``metrics.csv``,
``summary.json`` and ``report.html`` (see :mod:`medtranslate.evaluation.report`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medtranslate.core.atomic import atomic_write_csv, atomic_write_text
from medtranslate.core.errors import GeometryMismatchError, InputError, MedTranslateError, OutputError
from medtranslate.core.tasks import TASKS, Task, get_task
from medtranslate.evaluation.metrics import EDITIONS, WINDOWS, ldct_metrics, similarity_scores
from medtranslate.evaluation.qa import (
    BIG_ERROR_HU,
    BONE_HU,
    anatomy_window,
    artefact_index,
    dice,
    slice_consistency,
    uncertainty_scores,
)
from medtranslate.evaluation.wepl import ANGLES, MIN_WEPL_MM, read_calibration, wepl_scores
from medtranslate.imaging.transforms import axial_axis, body_mask, check_same_grid
from medtranslate.imaging.volume import Volume, affine_to_sitk, sitk_to_volume
from medtranslate.io.cases import Case, select_cases
from medtranslate.io.files import read_case, read_volume, write_nifti
from medtranslate.runtime import distributed

__all__ = [
    "EvaluationResult",
    "evaluate_folder",
    "evaluate_without_pairs",
    "summarise",
    "format_summary",
]

logger = logging.getLogger(__name__)

# Which roles each argument accepts, in order of preference (None: a file whose name names no role); the reference
# and input roles of each task are in tasks.py.
PRED_ROLES = ("sct", "denoised", None, "ct", "nd")
MASK_ROLES = ("mask", None)


@dataclass
class EvaluationResult:
    """What :func:`evaluate_folder` wrote and found."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "done"]


def _resample_to(volume: Volume, target: Volume) -> Volume:
    """Linear resampling of ``volume`` onto ``target``'s grid (SimpleITK), background -1024 HU."""
    import SimpleITK as sitk

    moving = affine_to_sitk(np.asarray(volume.array, dtype=np.float32), volume.affine)
    reference = affine_to_sitk(np.zeros(target.shape, dtype=np.float32), target.affine)
    out = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return sitk_to_volume(out, Path(volume.source), "memory")


def _score_case(
    cid: str, pred: Volume, ref: Volume, mask: np.ndarray, task: str, edition: int, window: str, inp: Volume | None
) -> dict[str, float]:
    scores = _metrics_of(pred, ref, mask, task, edition, window, inp)
    undefined = [k for k, v in scores.items() if math.isnan(v) or (math.isinf(v) and "psnr" not in k)]
    if undefined:
        raise InputError(
            f"case '{cid}': {', '.join(undefined)} undefined (NaN) for {pred.source}; the volumes or the mask are too "
            "small or degenerate to score"
        )
    return scores


def _metrics_of(
    pred: Volume, ref: Volume, mask: np.ndarray, task: str, edition: int, window: str, inp: Volume | None
) -> dict[str, float]:
    spec = get_task(task)
    axis = axial_axis(ref.affine)
    scores = similarity_scores(pred.array, ref.array, mask, task, axis, edition=edition, window=window)
    if spec.metrics == "ldct":
        if inp is not None:
            for key, value in ldct_metrics(inp.array, ref.array, axial_axis=axis, window=window, mask=mask).items():
                scores[f"input_{key}"] = value
    # beyond similarity: grid artefacts, flicker between slices, anatomy kept (qa.py)
    scores["artefact_index"] = artefact_index(pred.array, axis)
    scores["slice_consistency"] = slice_consistency(pred.array, ref.array, mask, axis)
    scores["bone_dice"] = dice(np.asarray(pred.array) > BONE_HU, np.asarray(ref.array) > BONE_HU)
    body_pred = body_mask(pred.array, "ct", pred.affine)
    scores["body_dice_ref"] = dice(body_pred, body_mask(ref.array, "ct", ref.affine))
    if inp is not None:
        scores["body_dice"] = dice(body_mask(inp.array, spec.source_kind, inp.affine), body_pred)
    return scores


def evaluate_folder(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    out: str | os.PathLike,
    mask: str | os.PathLike | None = None,
    input: str | os.PathLike | None = None,
    edition: int = 2023,
    task: str = "mr2ct",
    window: str = "auto",
    resample_to_ref: bool = False,
    figures: bool = True,
    progress: bool = True,
    extra_summary: dict[str, Any] | None = None,
    hu_to_rsp: str | os.PathLike | None = None,
    hu_to_red: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Score every prediction against its reference and write metrics.csv, summary.json and report.html.

    Args:
        pred, ref, mask, input: files or folders (or {case id: Case}); cases are matched by id.
        out: output folder (created).
        edition: SynthRAD edition for PSNR/SSIM clipping (2023 or 2025); MS-SSIM always follows 2025.
        task: mr2ct (SynthRAD metrics) or ldct (windowed slice SSIM/PSNR and RMSE in HU).
        window: display window for ldct metrics (head, abdomen, chest), or auto: per case from its anatomy (lung in
            the field: chest; else by the body's width, see :func:`~medtranslate.evaluation.qa.anatomy_window`), and
            a case whose anatomy is not clear fails, asking for the window.
        resample_to_ref: resample a prediction on another grid onto the reference's instead of failing the case.
        figures: draw per-case figures and metric plots into the report.
        extra_summary: merged into summary.json (e.g. a baseline's summary, which the report then shows beside).
        hu_to_rsp: a HU-to-relative-stopping-power calibration (CSV); adds the proton range scores of
            :mod:`medtranslate.evaluation.wepl` and a map of the range difference per gantry angle.
        hu_to_red: a HU-to-relative-electron-density calibration (CSV): the same path integral (radiological path
            length, ``rpl_*``), a proxy for photon dose errors.

    Raises:
        InputError: a folder cannot be searched or holds no usable images; an unknown task, edition or window.
    """
    from tqdm import tqdm

    spec = _check_options(task, edition, window)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; choose a folder for --out")
    ev = _Evaluation(
        spec=spec,
        task=task,
        edition=edition,
        window=window,
        resample_to_ref=resample_to_ref,
        table=read_calibration(hu_to_rsp) if hu_to_rsp is not None else None,
        table_red=read_calibration(hu_to_red, "RED") if hu_to_red is not None else None,
        sources={"prediction": pred, "reference": ref, "mask": mask},
        mask_dir=out / "masks",
        **_match_cases(pred, ref, mask, input, spec),
    )
    _make_folder(out)

    rows: list[dict[str, Any]] = []
    case_figures: dict[str, Path] = {}  # drawn as each case is scored: volumes are not kept for the report
    ids = sorted(set(ev.preds) | set(ev.refs))
    rank, ranks = distributed.shard_of(None)  # under torchrun each rank scores every N-th case (the --shard rule)
    for cid in tqdm(ids[rank::ranks], desc="evaluate", unit="case", disable=not progress or rank != 0):
        row, drawn = _evaluate_case(ev, cid)
        rows.append(row)
        if figures and drawn is not None:
            case_figures.update(_case_figures(ev, out / "figures", cid, row, drawn))

    if ranks > 1:  # every rank gets every rank's rows (and figures); rank 0 alone writes the tables and the report
        gathered = distributed.all_gather((rows, case_figures))
        rows = sorted((r for part, _ in gathered for r in part), key=lambda r: r["case"])
        case_figures = {cid: path for _, part in gathered for cid, path in part.items()}
    metric_names = _metric_columns(rows)
    summary = summarise(rows, metric_names)
    summary.update(_summary_fields(ev, rows, hu_to_rsp, hu_to_red), **(extra_summary or {}))
    result = EvaluationResult(rows=rows, summary=summary, out=out)
    if rank == 0:
        from medtranslate.evaluation.report import write_report

        _write_csv(out / "metrics.csv", rows, metric_names)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
        result.figures = write_report(out, rows, summary, metric_names, case_figures)
    distributed.barrier()  # the others return when the report is written
    return result


def _check_options(task: str, edition: int, window: str) -> Task:
    if task not in TASKS:
        raise InputError(f"unknown task '{task}'; expected one of: {', '.join(TASKS)}")
    if edition not in EDITIONS:
        raise InputError(f"unknown SynthRAD edition {edition}; expected one of: {', '.join(map(str, EDITIONS))}")
    if window != "auto" and window not in WINDOWS:
        raise InputError(f"unknown window '{window}'; expected one of: auto, {', '.join(WINDOWS)}")
    return get_task(task)


def _match_cases(pred: Any, ref: Any, mask: Any, input: Any, spec: Task) -> dict[str, dict[str, Case]]:
    """The cases of each source by id; two files named by the user are one case, whatever their names say."""
    preds = select_cases(pred, PRED_ROLES, "prediction")
    refs = select_cases(ref, spec.reference_roles, "reference")
    masks = select_cases(mask, MASK_ROLES, "mask")
    inputs = select_cases(input, spec.input_roles, "input")
    if _is_file(pred) and _is_file(ref) and len(preds) == len(refs) == 1:
        cid = next(iter(preds))
        refs = {cid: next(iter(refs.values()))}
        masks = {cid: next(iter(masks.values()))} if _is_file(mask) and len(masks) == 1 else masks
        inputs = {cid: next(iter(inputs.values()))} if _is_file(input) and len(inputs) == 1 else inputs
    return {"preds": preds, "refs": refs, "masks": masks, "inputs": inputs}


@dataclass(frozen=True)
class _Evaluation:
    """What every case of one :func:`evaluate_folder` call is matched and scored with."""

    preds: dict[str, Case]
    refs: dict[str, Case]
    masks: dict[str, Case]
    inputs: dict[str, Case]
    spec: Task
    task: str
    edition: int
    window: str
    resample_to_ref: bool
    table: Any  # HU -> RSP calibration, or None
    table_red: Any  # HU -> RED calibration, or None
    sources: dict[str, Any]  # what the user gave as predictions, references and masks (for messages)
    mask_dir: Path

    def source(self, what: str) -> Any:
        given = self.sources[what]
        return given if not isinstance(given, dict) else f"the given {what}s"


def _evaluate_case(ev: _Evaluation, cid: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One case's row (status done or failed, with the reason) and, when scored, what its figures are drawn from."""
    row: dict[str, Any] = {
        "case": cid,
        "pred": str(ev.preds[cid].label) if cid in ev.preds else "",
        "ref": str(ev.refs[cid].label) if cid in ev.refs else "",
    }
    drawn = _isolated(row, cid, lambda: _score_case_files(ev, cid, row))
    return row, drawn if row["status"] == "done" else None


def _isolated(row: dict[str, Any], cid: str, score: Callable[[], Any]) -> Any:
    """``score()`` for one case, its outcome in ``row`` (status, error, seconds): a failure is the case's, never the
    batch's. Returns what ``score`` returned, or None when it failed."""
    t0 = time.perf_counter()
    result = None
    try:
        result = score()
        row.update(status="done", error="")
    except MedTranslateError as exc:
        row.update(status="failed", error=str(exc))
        logger.warning("%s", exc)
    except Exception as exc:  # a defect, not bad input: record it and score the other cases
        row.update(
            status="failed",
            error=f"case '{cid}': unexpected {type(exc).__name__} ({str(exc)[:200]}); please report this with the "
            "files",
        )
        logger.warning("%s", row["error"])
        logger.debug("traceback of case %s", cid, exc_info=True)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _score_case_files(ev: _Evaluation, cid: str, row: dict[str, Any]) -> dict[str, Any]:
    """Read one case, score it into ``row``; returns the volumes and maps its figures show."""
    if cid not in ev.preds:
        raise InputError(f"case '{cid}': no prediction in {ev.source('prediction')}")
    if cid not in ev.refs:
        raise InputError(f"case '{cid}': no reference in {ev.source('reference')}")
    p, r = read_case(ev.preds[cid]), read_case(ev.refs[cid])
    try:
        check_same_grid(p, r, names=(f"prediction {ev.preds[cid].label}", f"reference {ev.refs[cid].label}"), case=cid)
    except GeometryMismatchError as exc:
        if not ev.resample_to_ref:
            raise GeometryMismatchError(
                f"{exc}; pass --resample-to-ref to resample the prediction onto the reference"
            ) from None
        p = _resample_to(p, r)
    m = _case_mask(ev, cid, r, row)
    inp = None
    if cid in ev.inputs:
        inp = read_case(ev.inputs[cid])
        check_same_grid(inp, r, names=(f"input {ev.inputs[cid].label}", f"reference {ev.refs[cid].label}"), case=cid)
    case_window = _case_window(ev, cid, r, m)
    if ev.spec.metrics == "ldct":
        row["window"] = case_window
    row.update(_score_case(cid, p, r, m, ev.task, ev.edition, case_window, inp))
    drawn: dict[str, Any] = {"p": p, "r": r, "m": m, "inp": inp, "std": None}
    if ev.table is not None:
        ranges, drawn["wepl_diff"] = wepl_scores(p.array, r.array, m, r.affine, ev.table)
        row.update(ranges)
    if ev.table_red is not None:
        row.update(wepl_scores(p.array, r.array, m, r.affine, ev.table_red, prefix="rpl")[0])
    std = _uncertainty_of(ev.preds[cid], p, cid)
    if std is not None:
        drawn["std"], drawn["error"] = std, p.array.astype(np.float64) - r.array
        row.update(uncertainty_scores(std.array, drawn["error"], m))
        row["uncertainty"] = str(std.source)
    return drawn


def _case_mask(ev: _Evaluation, cid: str, r: Volume, row: dict[str, Any]) -> np.ndarray:
    """The case's mask: the one given (on its reference's grid), else the reference CT's body, saved in masks/."""
    if ev.masks:
        if cid not in ev.masks:
            raise InputError(f"case '{cid}': no mask in {ev.source('mask')}")
        mvol = read_case(ev.masks[cid])
        try:
            check_same_grid(mvol, r, names=(f"mask {ev.masks[cid].label}", f"reference {ev.refs[cid].label}"), case=cid)
        except GeometryMismatchError as exc:
            raise GeometryMismatchError(
                f"{exc}; a mask must be on its reference's grid: resample it (nearest neighbour) or leave --mask out"
            ) from None
        m = np.asarray(mvol.array) > 0
        row["mask"] = str(ev.masks[cid].label)
    else:
        m = body_mask(r.array, "ct", r.affine)
        row["mask"] = str(write_nifti(ev.mask_dir / f"{cid}_mask.nii.gz", m, r.affine, np.uint8, overwrite=True))
    if not m.any():
        raise InputError(f"case '{cid}': the mask is empty; check the mask file or the reference CT")
    return m


def _case_window(ev: _Evaluation, cid: str, r: Volume, m: np.ndarray) -> str:
    """The display window a low-dose case is scored in: the one asked for, or the one its anatomy says."""
    if ev.spec.metrics != "ldct" or ev.window != "auto":
        return ev.window
    case_window, why = anatomy_window(r.array, m, r.affine, axial_axis(r.affine))
    if case_window is None:
        raise InputError(
            f"case '{cid}': cannot tell which window to score it in ({why}); pass --window head, abdomen or chest"
        )
    logger.info("case %s: %s window (%s)", cid, case_window, why)
    return case_window


def _case_figures(
    ev: _Evaluation, folder: Path, cid: str, row: dict[str, Any], drawn: dict[str, Any]
) -> dict[str, Path]:
    from medtranslate.evaluation.report import (
        ERROR_MAX,
        ERROR_MAX_LDCT,
        case_figure,
        display_range,
        uncertainty_figure,
        wepl_figure,
    )

    error_max = ERROR_MAX_LDCT if ev.spec.metrics == "ldct" else ERROR_MAX
    p, r, m, std = drawn["p"], drawn["r"], drawn["m"], drawn["std"]
    figs = {
        cid: case_figure(folder / f"{cid}.png", cid, p, r, m, drawn["inp"], display_range(row.get("window")), error_max)
    }
    if ev.table is not None:
        figs[f"{cid}: proton range"] = wepl_figure(folder / f"{cid}_wepl.png", cid, drawn["wepl_diff"])
    if std is not None:
        figs[f"{cid}: error against uncertainty"] = uncertainty_figure(
            folder / f"{cid}_uncertainty.png", cid, std.array, drawn["error"], m
        )
    return figs


def _summary_fields(ev: _Evaluation, rows: list[dict[str, Any]], hu_to_rsp: Any, hu_to_red: Any) -> dict[str, Any]:
    """What summary.json says beside the metrics: task, edition or windows, the mask's source, the definitions."""
    ldct = ev.spec.metrics == "ldct"
    definitions = _definitions(ev.task, ev.edition, _windows_used(rows) or "head")
    if ev.table is not None:
        definitions.update(_wepl_definitions(Path(hu_to_rsp)))
    if ev.table_red is not None:
        definitions["rpl_*"] = (
            "the same for the radiological path length (relative electron density from "
            f"{Path(hu_to_red).name}), a proxy for photon dose errors"
        )
    return {
        "task": ev.task,
        "edition": ev.edition if ev.spec.metrics == "synthrad" else None,
        "window": _windows_used(rows) if ldct else None,
        "mask_source": "given (--mask)"
        if ev.masks
        else "computed from the reference CT (threshold -500 HU, largest component, closing, hole filling); saved in "
        "masks/",
        "definitions": definitions,
    }


def _uncertainty_of(pred: Case, p: Volume, cid: str) -> Volume | None:
    """The standard deviation map ``translate --uncertainty`` wrote beside a prediction (``<name>_std.nii.gz``)."""
    name = Path(pred.path).name
    if not name.endswith(".nii.gz"):
        return None
    path = Path(pred.path).with_name(name[: -len(".nii.gz")] + "_std.nii.gz")
    if not path.is_file():
        return None
    std = read_volume(path)
    check_same_grid(std, p, names=(f"uncertainty {path}", f"prediction {pred.label}"), case=cid)
    return std


def _is_file(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).is_file()


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    preferred = ["mae", "psnr", "ssim", "ms_ssim", "rmse", "input_mae", "input_psnr", "input_ssim", "input_rmse"]
    preferred += list(QA_DEFINITIONS)
    present = {
        k for r in rows if r["status"] == "done" for k, v in r.items() if isinstance(v, float) and k != "seconds"
    }
    return [k for k in preferred if k in present] + sorted(present - set(preferred))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def summarise(rows: list[dict[str, Any]], metric_names: list[str]) -> dict[str, Any]:
    """Per metric: mean, std, median, min, max over the cases that were scored; counts of cases."""
    done = [r for r in rows if r["status"] == "done"]
    metrics = {}
    for name in metric_names:
        values = np.array(
            [r[name] for r in done if name in r and r[name] is not None and not math.isnan(r[name])], dtype=np.float64
        )
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            continue
        metrics[name] = {
            "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(np.median(finite)),
            "min": float(finite.min()),
            "max": float(finite.max()),
            "n": int(finite.size),
        }
    return {"n_cases": len(rows), "n_done": len(done), "n_failed": len(rows) - len(done), "metrics": metrics}


QA_DEFINITIONS = {
    "artefact_index": "power at the period-2 and period-4 grid frequencies of the axial slices over that of their "
    "neighbouring frequencies (about 1 without a grid artefact)",
    "slice_consistency": "mean |slice-to-slice change of prediction - that of reference| in HU inside the mask (0: no "
    "flicker)",
    "bone_dice": f"Dice of bone (> {BONE_HU:g} HU) in prediction and reference",
    "body_dice": "Dice of the body masks of input and prediction (anatomy kept in place)",
    "body_dice_ref": "Dice of the body masks of prediction and reference (both thresholded at -500 HU)",
    "unc_mean_std": "with translate --uncertainty: mean voxel standard deviation (HU) inside the mask",
    "unc_spearman": "Spearman rank correlation of voxel uncertainty and |error| inside the mask",
    "unc_top5_enrichment": f"share of the errors > {BIG_ERROR_HU:g} HU among the 5 % most uncertain mask voxels, "
    "divided by 5 % (1: chance)",
}


def _wepl_definitions(calibration: Path) -> dict[str, str]:
    beams = f"parallel beams through the body at gantry {', '.join(f'{a:g}' for a in ANGLES)} deg"
    return {
        "wepl_mean_mm": f"mean WEPL(sCT) - WEPL(CT) in mm over {beams} crossing >= {MIN_WEPL_MM:g} mm; RSP from "
        f"{calibration.name}, piecewise linear",
        "wepl_mae_mm": "mean |WEPL(sCT) - WEPL(CT)| in mm over the same rays",
        "wepl_p95_mm": "95th percentile of |WEPL(sCT) - WEPL(CT)| in mm",
        "wepl_mae_pct": "mean |WEPL(sCT) - WEPL(CT)| / WEPL(CT) in %",
        "wepl_p95_pct": "95th percentile of |WEPL(sCT) - WEPL(CT)| / WEPL(CT) in %",
    }


def _windows_used(rows: list[dict[str, Any]]) -> str | None:
    """The ldct window of the scored cases: one name, or "mixed (...)" when the anatomy differed between cases."""
    used = sorted({r["window"] for r in rows if r.get("window")})
    if not used:
        return None
    return used[0] if len(used) == 1 else f"mixed ({', '.join(used)}; see each case's window)"


def _definitions(task: str, edition: int, window: str) -> dict[str, str]:
    return {**_similarity_definitions(task, edition, window), **QA_DEFINITIONS}


def _similarity_definitions(task: str, edition: int, window: str) -> dict[str, str]:
    if get_task(task).metrics == "ldct":
        if window not in WINDOWS:
            return {
                "ssim": "per axial slice, each case in its own window (the window column), scaled to [0, 1], 7x7 "
                "uniform window, mean over slices",
                "psnr": "per axial slice on its case's window scaled to [0, 1], data range 1, mean over slices",
                "rmse": "root mean squared difference in HU inside the mask",
                "mae": "mean absolute difference in HU inside the mask",
            }
        level, width = WINDOWS[window]
        return {
            "ssim": f"per axial slice, {window} window L{level:g}/W{width:g} scaled to [0, 1], 7x7 uniform window, "
            "mean over slices",
            "psnr": f"per axial slice on the {window} window scaled to [0, 1], data range 1, mean over slices",
            "rmse": "root mean squared difference in HU inside the mask",
            "mae": "mean absolute difference in HU inside the mask",
        }
    ed = EDITIONS[edition]
    return {
        "mae": "mean |ref - pred| in HU over mask voxels, no clipping",
        "psnr": f"SynthRAD {edition}: clipped to [{ed.lo:g}, {ed.hi:g}] HU, mask voxels, data range {ed.data_range:g}",
        "ssim": f"SynthRAD 2023 recipe with the {edition} range [{ed.lo:g}, {ed.hi:g}]: outside mask set to "
        f"{ed.lo:g}, 7^3 uniform window, sample covariance, masked mean after a 3-voxel border crop",
        "ms_ssim": "SynthRAD 2025: [-1024, 3071], padded to 97, 5 levels (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), "
        "masked means",
    }


def evaluate_without_pairs(
    pred: str | os.PathLike | dict[str, Case],
    input: str | os.PathLike | dict[str, Case],
    cohort: str | os.PathLike | dict[str, Case],
    out: str | os.PathLike,
    task: str = "mr2ct",
    figures: bool = True,
    progress: bool = True,
    seed: int = 0,
    extra_summary: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Judge translations that have no reference of their own subject against a reference CT cohort (pairfree.py):
    the distance of each output's HU distribution to the cohort's, the overlap of its body outline with its input's,
    its artefact index. Writes metrics.csv, summary.json (``"evaluation": "without pairs"``) and report.html.

    Args:
        pred, input: the translations and the scans they were made from (files or folders), matched by case id.
        cohort: CTs (normal-dose CTs for ldct) of any subjects: the distribution the outputs should have.

    Raises:
        InputError: a folder holds no usable images, the cohort no body, or an unknown task.
    """
    from tqdm import tqdm

    from medtranslate.evaluation.pairfree import PAIR_FREE_DEFINITIONS, pair_free_scores, reference_sample
    from medtranslate.evaluation.report import pair_free_figure, write_report

    if task not in TASKS:
        raise InputError(f"unknown task '{task}'; expected one of: {', '.join(TASKS)}")
    spec = get_task(task)
    out = Path(out)
    preds = select_cases(pred, PRED_ROLES, "prediction")
    inputs = select_cases(input, spec.input_roles, "input")
    refs = select_cases(cohort, spec.reference_roles, "reference cohort")
    _make_folder(out)

    def cohort_values() -> Any:
        for case in refs.values():
            vol = read_case(case)
            yield np.asarray(vol.array, dtype=np.float32)[body_mask(vol.array, "ct", vol.affine)]

    try:
        reference = reference_sample(cohort_values(), len(refs), seed)
    except ValueError:
        raise InputError(f"{cohort}: no body (nothing above -500 HU) in the reference cohort's CTs") from None
    rows: list[dict[str, Any]] = []
    case_figures: dict[str, Path] = {}

    def score(cid: str, row: dict[str, Any]) -> Path | None:
        if cid not in inputs:
            raise InputError(f"case '{cid}': no input in {input}; the outline is judged against the input's")
        row["input"] = str(inputs[cid].label)
        p, inp = read_case(preds[cid]), read_case(inputs[cid])
        check_same_grid(p, inp, names=(f"prediction {preds[cid].label}", f"input {inputs[cid].label}"), case=cid)
        body = body_mask(inp.array, spec.source_kind, inp.affine)
        row.update(pair_free_scores(inp, spec.source_kind, p, reference, seed, body=body))
        return pair_free_figure(out / "figures" / f"{cid}.png", cid, inp, p, body, reference) if figures else None

    for cid in tqdm(sorted(preds), desc="evaluate", unit="case", disable=not progress):
        row: dict[str, Any] = {"case": cid, "pred": str(preds[cid].label), "input": ""}
        figure = _isolated(row, cid, partial(score, cid, row))
        if figure is not None:
            case_figures[cid] = figure
        rows.append(row)
    metric_names = list(PAIR_FREE_DEFINITIONS)
    summary = summarise(rows, metric_names)
    summary.update(
        task=task,
        evaluation="without pairs",
        reference_cohort=sorted(str(c.label) for c in refs.values()),
        mask_source="each input's body mask (MR: half-Otsu; CT: -500 HU)",
        definitions=PAIR_FREE_DEFINITIONS,
        **(extra_summary or {}),
    )
    _write_csv(out / "metrics.csv", rows, metric_names, sources=("pred", "input"))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    result = EvaluationResult(rows=rows, summary=summary, out=out)
    result.figures = write_report(out, rows, summary, metric_names, case_figures)
    return result


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{out}: cannot create the output folder ({exc.strerror or exc}); choose another --out"
        ) from exc


def _write_csv(
    path: Path, rows: list[dict[str, Any]], metric_names: list[str], sources: tuple[str, ...] = ("pred", "ref", "mask")
) -> None:
    columns = ["case", *metric_names, "window", "status", "error", *sources, "uncertainty", "seconds"]
    shown = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    atomic_write_csv(path, shown, columns)


def format_summary(result: EvaluationResult) -> str:
    """A short terminal table: one line per case, then the means."""
    names = _metric_columns(result.rows)
    header = ["case", *names, "status"]
    lines = [header]
    for row in result.rows:
        lines.append([row["case"], *(f"{row[n]:.4g}" if n in row else "-" for n in names), row["status"]])
    means = result.summary["metrics"]
    lines.append(
        [
            "mean",
            *(f"{means[n]['mean']:.4g}" if n in means else "-" for n in names),
            f"{result.summary['n_done']}/{result.summary['n_cases']} done",
        ]
    )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)) for line in lines)
    for row in result.failed:
        named = f"'{row['case']}'" in row["error"]
        text += f"\nFAILED: {row['error']}" if named else f"\nFAILED {row['case']}: {row['error']}"
    return text
