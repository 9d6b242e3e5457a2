"""``medtranslate preprocess``: register, bias-correct, reorient, resample, mask, crop and cut a folder of cases.

Steps run in one fixed order, each only when asked for:

1. read every image of a case (``<id>/mr.nii.gz``, ``<id>_ct.nii.gz``, DICOM series, ...: the layouts of
   :mod:`medtranslate.io.cases`);
2. ``orient``: permute and flip the voxel axes to RAS (no interpolation);
3. ``n4``: N4 bias-field correction of MR images (:func:`medtranslate.preprocessing.register.n4`);
4. ``register``: every other image of the case is registered onto the reference image (``reference_role``, CT by
   default) and resampled onto its grid; the transform is saved as ``<role>_to_<ref>.tfm``;
5. ``spacing`` / ``to_reference``: the reference is resampled to new voxel sizes, and the other images onto the
   reference's grid (registration implies the latter);
6. ``mask``: a body mask from the reference (the way :func:`medtranslate.imaging.transforms.body_mask` builds one),
   written as ``mask.nii.gz``; a mask the case already has is carried onto the new grid instead;
7. ``crop_margin_mm``: every image cropped to the mask's bounding box plus a margin;
8. ``slabs``: cut along the axial axis into N equal slabs, each its own case ``<id>-slabK``.

Outputs, per case: ``<out>/<id>/<role>.nii.gz`` (CT as int16 HU, MR as float32, masks as uint8) that ``train``,
``run`` and ``translate`` read as they are; ``preprocess.json``, the record of every step, parameter, metric value,
input checksum and software version; ``qc.png`` when registering (checkerboards of the image on the reference,
before and after). For the cohort: ``manifest.csv`` (as ``translate`` writes it) and ``qc.html`` with the similarity
per case and the outliers flagged. Inputs are never modified; every file is written atomically; a finished case is
skipped unless ``overwrite``; a bad case is recorded with its reason and the rest go on.
"""

from __future__ import annotations

import html
import json
import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from medtranslate.core.atomic import OwnFolder
from medtranslate.core.checks import require_choice, require_exists, require_int, require_number
from medtranslate.core.errors import InputError
from medtranslate.imaging.volume import Volume
from medtranslate.io.cases import Case, find_cases, usable_id
from medtranslate.io.files import read_case, sha256, write_nifti

__all__ = ["PreprocessOptions", "preprocess_case", "preprocess_folder", "write_qc_page"]

logger = logging.getLogger(__name__)

CT_ROLES = ("ct", "ld", "nd", "sct", "denoised")
BACKGROUND = {"ct": -1024.0, "mr": 0.0}
MIN_BODY_DICE = 0.5  # below this, the two images after registration do not show the same body part
MIN_BODY_COVERED = 0.25  # share of the moved body (in mm^3) inside the reference's field of view, below: another part
OUTLIER_MADS = 3.0  # qc.html flags a case whose final similarity is this many median deviations worse


@dataclass(frozen=True)
class PreprocessOptions:
    """What ``preprocess`` does to each case (see the module's steps)."""

    reference_role: str = "ct"  # the image the others are registered onto
    register: str | None = None  # rigid | affine | deformable
    n4: bool = False  # N4 bias-field correction of MR images
    n4_shrink: int = 4  # N4 fits on a copy shrunk by this factor
    n4_iterations: tuple[int, ...] = (50, 50, 30, 20)  # N4 iterations per level
    orient: str = "RAS"  # RAS | keep
    spacing: tuple[float, float, float] | None = None  # resample to voxels of this size (mm)
    to_reference: bool = False  # resample the other images onto the reference grid
    mask: bool = False  # write a body mask (mask.nii.gz) made from the reference
    crop_margin_mm: float | None = None  # crop to the body plus this margin (mm)
    slabs: int = 1  # cut each case into this many axial slabs
    seed: int = 0  # seed of the registration's sampling
    max_rotation_deg: float = 30.0  # a registration rotating further is refused (a head tilts by 10-15 degrees)

    def __post_init__(self) -> None:
        from medtranslate.io.cases import ROLE_ALIASES
        from medtranslate.preprocessing.register import KINDS

        require_choice(
            "--reference-role", self.reference_role, tuple(sorted(set(ROLE_ALIASES.values()))), error=InputError
        )
        if self.register is not None:
            require_choice("--register", self.register, KINDS, error=InputError)
        require_choice("--orient", self.orient, ("RAS", "keep"), error=InputError)
        require_int("--n4-shrink", self.n4_shrink, 1, 16, error=InputError)
        for it in self.n4_iterations:
            require_int("--n4-iterations", it, 1, 1000, error=InputError)
        if self.spacing is not None:
            if len(self.spacing) != 3:
                raise InputError(f"--spacing {self.spacing}: give three voxel sizes in mm, e.g. --spacing 1 1 2.5")
            for s in self.spacing:
                require_number("--spacing", s, minimum=0.05, maximum=50, error=InputError)
        if self.crop_margin_mm is not None:
            require_number("--crop-to-body", self.crop_margin_mm, minimum=0, maximum=500, error=InputError)
        require_int("--slabs", self.slabs, 1, 1000, error=InputError)
        require_int("--seed", self.seed, 0, 2**31, error=InputError)
        require_number("--max-rotation", self.max_rotation_deg, minimum=0, maximum=180, error=InputError)

    @property
    def on_reference_grid(self) -> bool:
        return self.register is not None or self.to_reference


def _kind(role: str, volume: Volume) -> str:
    """'ct' (HU) or 'mr': by role, or for a file whose name names none, by its values."""
    if role in CT_ROLES:
        return "ct"
    if role == "mr":
        return "mr"
    from medtranslate.io.describe import looks_like

    return "ct" if looks_like(volume) == "CT" else "mr"


def _versions() -> dict[str, str]:
    import nibabel
    import SimpleITK as sitk

    from medtranslate import __version__

    return {
        "medtranslate": __version__,
        "SimpleITK": sitk.Version_VersionString(),
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
        "python": platform.python_version(),
    }


MIN_SLAB_SLICES = 7  # a slab is a volume of its own: at least the 7 slices of the SSIM window evaluate scores with


def _slab_bounds(n_slices: int, slabs: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_slices, slabs + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in pairwise(edges)]


def output_ids(case_id: str, options: PreprocessOptions) -> list[str]:
    return [case_id] if options.slabs == 1 else [f"{case_id}-slab{k + 1}" for k in range(options.slabs)]


def preprocess_case(case_id: str, images: dict[str, Case], out: Path, options: PreprocessOptions) -> dict[str, Any]:
    """Run the steps on one case's images ({role: Case}) and write its outputs under ``out``; returns its record.

    Raises:
        InputError: a missing partner, an unreadable image, a registration that made the alignment worse, or
            images that do not show the same body part.
    """
    t_case = time.perf_counter()
    steps: list[dict[str, Any]] = []
    record: dict[str, Any] = {
        "case": case_id,
        "options": asdict(options),
        "inputs": {role: {"path": c.label, "sha256": sha256(c.path)} for role, c in sorted(images.items())},
        "versions": _versions(),
        "steps": steps,
    }
    given_mask = images.pop("mask", None)
    _check_case(case_id, images, options)
    vols = {role: read_case(c) for role, c in images.items()}
    work = _CaseWork(
        case_id,
        options,
        vols,
        {role: _kind(role, v) for role, v in vols.items()},
        read_case(given_mask) if given_mask is not None else None,
        steps,
    )
    if options.orient == "RAS":
        _orient(work)
    if options.n4:
        _n4(work)
    if options.register:
        _register_all(work)
    _resample(work)
    qc_after = dict(work.vols) if work.before_views else {}
    _make_masks(work)
    if options.crop_margin_mm is not None:
        _crop(work)
    if options.slabs > 1:
        _check_slabs(work)
    first = next(iter(images.values())).path
    ids = [usable_id(i, first) for i in output_ids(case_id, options)]
    _write_case(work, ids, out, record, qc_after, t_case)
    return record


@dataclass
class _CaseWork:
    """One case on its way through the steps: its images and their kinds, the mask it came with, the record's steps,
    and what the steps make (registration transforms, the QC's before-views, body masks)."""

    case_id: str
    options: PreprocessOptions
    vols: dict[str, Volume]
    kinds: dict[str, str]
    mask_vol: Volume | None
    steps: list[dict[str, Any]]
    transforms: dict[str, Any] = field(default_factory=dict)
    before_views: dict[str, Volume] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    home: str = ""  # the image whose mask is the case's mask.nii.gz
    shared: bool = False  # one grid (and one mask) for every image

    @property
    def ref_role(self) -> str:
        return self.options.reference_role


def _check_case(case_id: str, images: dict[str, Case], options: PreprocessOptions) -> None:
    ref_role = options.reference_role
    if ref_role not in images and (options.on_reference_grid or options.mask):
        found = ", ".join(sorted(images)) or "nothing"
        raise InputError(
            f"case {case_id}: no {ref_role} image to register or resample onto (found: {found}); add its partner, or "
            f"pass --reference-role with one of: {found}"
        )
    if options.register and len(images) < 2:
        raise InputError(
            f"case {case_id}: only a {next(iter(images))} image, nothing to register onto it; --register needs the "
            "partner (e.g. the MR and the CT of the same subject) in the same case"
        )


def _orient(work: _CaseWork) -> None:
    from medtranslate.preprocessing.register import reorient

    work.vols = {role: reorient(v) for role, v in work.vols.items()}
    work.mask_vol = reorient(work.mask_vol) if work.mask_vol is not None else None
    work.steps.append({"step": "orient", "axcodes": "RAS"})


def _n4(work: _CaseWork) -> None:
    from medtranslate.preprocessing.register import n4

    options = work.options
    for role in [r for r in work.vols if work.kinds[r] == "mr"]:
        t0 = time.perf_counter()
        corrected, bias = n4(work.vols[role], shrink=options.n4_shrink, iterations=options.n4_iterations)
        work.vols[role] = corrected
        work.steps.append(
            {
                "step": "n4",
                "role": role,
                "shrink": options.n4_shrink,
                "iterations": list(options.n4_iterations),
                "bias_min": round(float(bias.min()), 4),
                "bias_max": round(float(bias.max()), 4),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )


def _register_all(work: _CaseWork) -> None:
    """Register every other image onto the reference; refuse a registration that cannot be right."""
    from medtranslate.evaluation.qa import dice as qa_dice
    from medtranslate.imaging.transforms import body_mask
    from medtranslate.preprocessing.register import register, resample_onto

    options, ref_role = work.options, work.ref_role
    ref = work.vols[ref_role]
    ref_mask = body_mask(ref.array, work.kinds[ref_role], ref.affine)
    for role in [r for r in work.vols if r != ref_role]:
        t0 = time.perf_counter()
        moving = work.vols[role]
        mov_mask = body_mask(moving.array, work.kinds[role], moving.affine)
        result = register(ref, moving, options.register, fixed_mask=ref_mask, moving_mask=mov_mask, seed=options.seed)
        moved_mask = (
            resample_onto(Volume(mov_mask.astype(np.float32), moving.affine), ref, result.transform, "nearest").array
            > 0.5
        )
        dice = qa_dice(moved_mask, ref_mask) if ref_mask.any() else 0.0  # no reference body: no match
        step = {
            "step": "register",
            "role": role,
            "onto": ref_role,
            "kind": options.register,
            "metric": "negative Mattes mutual information (lower is better)",
            "metric_before": round(result.metric_before, 6),
            "metric_after": round(result.metric_after, 6),
            "body_dice_after": round(dice, 4),
            "stages": result.stages,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if result.kind != "deformable":
            step["linear"] = result.linear_parameters()
        work.steps.append(step)
        # Dice is measured on the reference's grid, which a small reference (a crop) passes trivially: also ask
        # how much of the moved image's body lands in the reference's field of view at all
        covered = float(moved_mask.sum() * np.prod(ref.spacing)) / max(
            float(mov_mask.sum() * np.prod(moving.spacing)), 1e-9
        )
        _check_registration(work, role, result, dice, covered, step)
        work.transforms[role] = result.transform


def _check_registration(work: _CaseWork, role: str, result: Any, dice: float, covered: float, step: dict) -> None:
    case_id, ref_role, options = work.case_id, work.ref_role, work.options
    if result.diverged:
        raise InputError(
            f"case {case_id}: registering the {role} onto the {ref_role} made the alignment worse (mutual "
            f"information {-result.metric_before:.4f} before, {-result.metric_after:.4f} after); check in a "
            "viewer that both show the same subject and body part, or try --register rigid"
        )
    if dice < MIN_BODY_DICE:
        raise InputError(
            f"case {case_id}: after registration the {role} and the {ref_role} bodies overlap by Dice "
            f"{dice:.2f} (< {MIN_BODY_DICE}); they do not seem to show the same body part; check the images"
        )
    step["body_in_reference_fov"] = round(covered, 4)
    if covered < MIN_BODY_COVERED:
        raise InputError(
            f"case {case_id}: after registration only {covered:.0%} of the {role}'s body lies in the "
            f"{ref_role}'s field of view (at least {MIN_BODY_COVERED:.0%} expected); the {ref_role} shows a "
            "much smaller part of the body: check the images, or register onto another --reference-role"
        )
    rotation = result.linear_parameters()["rotation_deg"]
    if rotation > options.max_rotation_deg:
        raise InputError(
            f"case {case_id}: registration rotated the {role} by {rotation:.1f} degrees onto the {ref_role} "
            f"(more than --max-rotation {options.max_rotation_deg:g}); a patient is rarely turned that far "
            "between scans: check the images (same subject? same orientation in the headers?), or pass "
            "--max-rotation if it is real"
        )


def _resample(work: _CaseWork) -> None:
    """Bring the images onto the grid they end on: the reference's (resampled to new voxel sizes when asked), or
    each its own."""
    from medtranslate.preprocessing.register import resample_onto, resample_spacing

    options, ref_role, kinds = work.options, work.ref_role, work.kinds
    if options.on_reference_grid:
        grid = work.vols[ref_role]
        if options.spacing:
            grid = resample_spacing(grid, options.spacing)
        new = {}
        for role, vol in work.vols.items():
            if role == ref_role and not options.spacing:
                new[role] = vol
                continue
            new[role] = resample_onto(vol, grid, work.transforms.get(role), background=BACKGROUND[kinds[role]])
            if role in work.transforms:  # for the QC figure: the image as its header placed it, on the same grid
                work.before_views[role] = resample_onto(vol, grid, None, background=BACKGROUND[kinds[role]])
        work.vols = new
        if work.mask_vol is not None:
            work.mask_vol = resample_onto(work.mask_vol, grid, None, "nearest")
        work.steps.append(
            {
                "step": "resample",
                "onto": ref_role,
                "spacing_mm": [round(s, 4) for s in grid.spacing],
                "shape": list(grid.shape),
            }
        )
    elif options.spacing:
        work.vols = {
            role: resample_onto(v, resample_spacing(v, options.spacing), None, background=BACKGROUND[kinds[role]])
            for role, v in work.vols.items()
        }
        if work.mask_vol is not None:
            work.mask_vol = resample_onto(
                work.mask_vol, resample_spacing(work.mask_vol, options.spacing), None, "nearest"
            )
        work.steps.append({"step": "resample", "spacing_mm": list(options.spacing)})


def _make_masks(work: _CaseWork) -> None:
    """The body masks: the case's own mask when it lies on the grid of the image(s) it belongs to, else made from
    the images when a mask or a crop is asked for."""
    from medtranslate.imaging.transforms import body_mask

    vols, options = work.vols, work.options
    work.home = home = work.ref_role if work.ref_role in vols else next(iter(vols))
    mask_vol = work.mask_vol
    if mask_vol is not None:
        same_grid = mask_vol.shape == vols[home].shape and np.allclose(mask_vol.affine, vols[home].affine, atol=1e-3)
        if not same_grid:
            logger.warning("case %s: its mask is not on the %s's grid; not carried over", work.case_id, home)
            mask_vol = None
    work.shared = shared = options.on_reference_grid or len(vols) == 1
    if mask_vol is not None:
        given = np.asarray(mask_vol.array) > 0
        for role in vols if shared else [home]:
            work.masks[role] = given
        work.steps.append({"step": "mask", "source": "the case's own mask"})
    elif options.mask or options.crop_margin_mm is not None:
        if shared:
            common = body_mask(vols[home].array, work.kinds[home], vols[home].affine)
            work.masks = {role: common for role in vols}
            source = f"body mask of the {home}"
        else:
            work.masks = {role: body_mask(v.array, work.kinds[role], v.affine) for role, v in vols.items()}
            source = "body mask of each image"
        work.steps.append({"step": "mask", "source": source})


def _crop(work: _CaseWork) -> None:
    from medtranslate.imaging.transforms import body_mask
    from medtranslate.preprocessing.register import crop_to_mask

    margin = work.options.crop_margin_mm
    for role, v in work.vols.items():
        if role not in work.masks:
            work.masks[role] = body_mask(v.array, work.kinds[role], v.affine)
        mask_image = Volume(work.masks[role].astype(np.uint8), v.affine)
        work.vols[role], cropped_mask = crop_to_mask([v, mask_image], work.masks[role], margin)
        work.masks[role] = cropped_mask.array > 0
    work.steps.append({"step": "crop", "margin_mm": margin})


def _check_slabs(work: _CaseWork) -> None:
    from medtranslate.imaging.transforms import axial_axis

    slabs = work.options.slabs
    for role, v in work.vols.items():
        n = v.shape[axial_axis(v.affine)]
        if n < slabs * MIN_SLAB_SLICES:
            raise InputError(
                f"case {work.case_id}: --slabs {slabs} would cut the {role}'s {n} axial slices into slabs of "
                f"{n // slabs}; each slab needs at least {MIN_SLAB_SLICES} (the 3D SSIM window of "
                f"evaluate): use --slabs {max(1, n // MIN_SLAB_SLICES)} or fewer"
            )


def _write_case(
    work: _CaseWork, ids: list[str], out: Path, record: dict[str, Any], qc_after: dict[str, Volume], t_case: float
) -> None:
    """One folder per output case (slabs give several), each complete or not at all."""
    from medtranslate.core.atomic import atomic_output, atomic_write_text

    options, ref_role = work.options, work.ref_role
    record["outputs"] = {}
    for k, out_id in enumerate(ids):
        final = out / out_id
        with atomic_output(final, directory=True, own=PREPROCESSED_CASE) as folder:
            files = _write_images(work, folder, k)
            for role, tx in work.transforms.items():
                _write_transform(folder / f"{role}_to_{ref_role}.tfm", tx)
                files.append(f"{role}_to_{ref_role}.tfm")
                if options.register != "deformable":  # a B-spline has no closed-form inverse
                    _write_transform(folder / f"{ref_role}_to_{role}.tfm", tx.GetInverse())
                    files.append(f"{ref_role}_to_{role}.tfm")
            if work.before_views:  # one figure of the whole case, drawn once and copied into every slab's folder
                if k == 0:
                    _qc_figure(folder / "qc.png", work.case_id, work.before_views, qc_after, ref_role, work.kinds)
                else:
                    shutil.copyfile(out / ids[0] / "qc.png", folder / "qc.png")
                files.append("qc.png")
            record["outputs"][out_id] = files
            record["seconds"] = round(time.perf_counter() - t_case, 2)
            atomic_write_text(folder / "preprocess.json", json.dumps(record, indent=2, default=str) + "\n")


def _write_images(work: _CaseWork, folder: Path, k: int) -> list[str]:
    """The images (slab ``k`` of each when cut) and the masks that go with them; returns the file names."""
    from medtranslate.imaging.transforms import axial_axis, axial_slab

    files = []
    for role, v in work.vols.items():
        part, part_mask = v, work.masks.get(role)
        if work.options.slabs > 1:
            start, stop = _slab_bounds(v.shape[axial_axis(v.affine)], work.options.slabs)[k]
            part = axial_slab(v, start, stop)
            if part_mask is not None:
                part_mask = axial_slab(Volume(part_mask.astype(np.uint8), v.affine), start, stop).array > 0
        dtype = np.int16 if work.kinds[role] == "ct" else np.float32
        write_nifti(folder / f"{role}.nii.gz", part.array, part.affine, dtype, overwrite=True)
        files.append(f"{role}.nii.gz")
        if part_mask is not None and (role == work.home or not work.shared):
            name = "mask.nii.gz" if role == work.home else f"mask_{role}.nii.gz"
            write_nifti(folder / name, part_mask, part.affine, np.uint8, overwrite=True)
            files.append(name)
    return files


# what a case folder written by preprocess holds: only such a folder is ever replaced (--overwrite)
PREPROCESSED_CASE = OwnFolder(
    "preprocess.json", ("*.nii.gz", "*.tfm", "qc.png", "preprocess.json"), "a case folder written by preprocess"
)


def _write_transform(path: Path, transform: Any) -> Path:
    import SimpleITK as sitk

    from medtranslate.core.atomic import atomic_output

    with atomic_output(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    h, w = a.shape
    yy, xx = np.indices((h, w))
    board = ((yy * tiles // h) + (xx * tiles // w)) % 2 == 0
    return np.where(board, a, b)


def _display(array: np.ndarray, kind: str) -> np.ndarray:
    lo, hi = (-200.0, 300.0) if kind == "ct" else tuple(np.percentile(array, [1, 99.5]))
    return np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1)


def _qc_figure(
    path: Path,
    case_id: str,
    before: dict[str, Volume],
    after: dict[str, Volume],
    ref_role: str,
    kinds: dict[str, str],
) -> Path:
    """Checkerboards of each registered image over the reference, before and after, in three planes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtranslate.evaluation.report import orthogonal_views, save_figure
    from medtranslate.imaging.volume import to_ras

    ref = after[ref_role]
    r, sp = to_ras(ref.array, ref.affine)
    aspects = (sp[1] / sp[0], sp[2] / sp[0], sp[2] / sp[1])  # rows / columns of the axial, coronal, sagittal views
    centre = tuple(s // 2 for s in r.shape)
    rows = [(role, when, vol) for role in before for when, vol in (("before", before[role]), ("after", after[role]))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    ref_views = [_display(v, kinds[ref_role]) for v in orthogonal_views(r, centre)]
    for row, (role, when, vol) in enumerate(rows):
        m, _ = to_ras(vol.array, vol.affine)
        for col, (rv, mv) in enumerate(zip(ref_views, orthogonal_views(m, centre), strict=True)):
            ax = axes[row, col]
            board = _checkerboard(rv, _display(mv, kinds[role]))
            ax.imshow(board, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspects[col])
            ax.set_axis_off()
            ax.set_title(f"{role} on {ref_role}, {when}" if col == 0 else "", fontsize=9, loc="left")
    fig.suptitle(f"{case_id}: registration check (checkerboard)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _gather(inp: Path) -> dict[str, dict[str, Case]]:
    by_id: dict[str, dict[str, Case]] = {}
    for case in find_cases(inp):
        by_id.setdefault(case.case_id, {})
        role = case.role or "image"
        if role in by_id[case.case_id]:
            logger.warning(
                "case %s: two %s images (%s, %s); using the first",
                case.case_id,
                role,
                by_id[case.case_id][role].label,
                case.label,
            )
            continue
        by_id[case.case_id][role] = case
    if not by_id:
        raise InputError(f"{inp}: no images found (NIfTI, NRRD, MetaImage or DICOM); check --input")
    return by_id


def preprocess_folder(
    input: str | Path,
    output: str | Path,
    options: PreprocessOptions,
    shard: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Preprocess every case of a folder into ``output``; resumable and shardable like ``translate``.

    Returns:
        The manifest rows of this run.
    """
    from medtranslate.runtime.batch import prepare_output_folder, run_cases
    from medtranslate.runtime.distributed import merge_shards, shard_manifest, shard_of

    inp, out = Path(input), Path(output)
    require_exists(inp, "--input")
    index, count = shard_of(shard)
    prepare_output_folder(inp, out)
    by_id = _gather(inp)
    ids = sorted(by_id)[index::count]
    cases = []
    for cid in ids:
        roles = by_id[cid]
        first = roles.get(options.reference_role) or next(iter(roles.values()))
        cases.append(Case(cid, first.path, first.role, first.series_uid))

    def outputs(case: Case) -> list[Path]:
        return [out / oid / "preprocess.json" for oid in output_ids(case.case_id, options)]

    def work(case: Case, targets: list[Path]) -> None:
        preprocess_case(case.case_id, dict(by_id[case.case_id]), out, options)

    manifest = shard_manifest(out, index, count)
    rows = run_cases(cases, manifest, outputs, work, overwrite=overwrite, progress=progress, desc="preprocess")
    merge_shards(out, index, count)
    write_qc_page(out)  # every shard rewrites it with all the cases finished so far (atomically)
    return rows


def write_qc_page(out: Path) -> Path:
    """``qc.html``: one row per case of the manifests (all shards'), its registration numbers, outliers flagged,
    QC images."""
    from medtranslate.core.atomic import atomic_write_text
    from medtranslate.evaluation.report import embedded_png
    from medtranslate.runtime.batch import read_manifest

    rows = [r for path in sorted(out.glob("manifest*.csv")) for r in read_manifest(path)]
    records = {}
    for row in rows:
        for oid in [row["case"], *[p.parent.name for p in map(Path, row.get("output", "").split(";")) if p.name]]:
            rec = out / oid / "preprocess.json"
            if rec.is_file():
                try:
                    records[row["case"]] = json.loads(rec.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    pass
                break
    finals = {}
    for cid, rec in records.items():
        regs = [s for s in rec.get("steps", []) if s.get("step") == "register"]
        if regs:
            finals[cid] = max(s["metric_after"] for s in regs)
    flagged = set()
    if len(finals) >= 3:
        values = np.array(list(finals.values()))
        med = float(np.median(values))
        mad = float(np.median(np.abs(values - med))) or 1e-6
        flagged = {cid for cid, v in finals.items() if v > med + OUTLIER_MADS * mad}
    lines = [
        "<!doctype html><meta charset='utf-8'><title>medtranslate preprocess QC</title>",
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        ".bad{background:#fdd}</style>",
        f"<h1>Preprocessing QC: {html.escape(str(out))}</h1>",
        "<p>Similarity: negative Mattes mutual information (lower is better) before and after registration. "
        f"Flagged: final similarity more than {OUTLIER_MADS:g} median absolute deviations worse than the cohort's "
        "median, or a failed case. Look at these first.</p>",
        "<table><tr><th>case</th><th>status</th><th>MI before</th><th>MI after</th><th>body Dice</th>"
        "<th>seconds</th><th>note</th></tr>",
    ]
    for row in rows:
        cid = row["case"]
        regs = [s for s in records.get(cid, {}).get("steps", []) if s.get("step") == "register"]
        before = ", ".join(f"{s['metric_before']:.4f}" for s in regs)
        after = ", ".join(f"{s['metric_after']:.4f}" for s in regs)
        dice = ", ".join(f"{s['body_dice_after']:.3f}" for s in regs)
        bad = row["status"] == "failed" or cid in flagged
        note = row.get("error", "") or ("outlier" if cid in flagged else "")
        lines.append(
            f"<tr class='{'bad' if bad else ''}'><td>{html.escape(cid)}</td><td>{html.escape(row['status'])}</td>"
            f"<td>{before}</td><td>{after}</td><td>{dice}</td><td>{html.escape(str(row.get('seconds', '')))}</td>"
            f"<td>{html.escape(note)}</td></tr>"
        )
    lines.append("</table>")
    for row in rows:
        png = out / row["case"] / "qc.png"
        if png.is_file():
            lines.append(f"<h3>{html.escape(row['case'])}</h3>{embedded_png(png)}")
    return atomic_write_text(out / "qc.html", "\n".join(lines) + "\n")
