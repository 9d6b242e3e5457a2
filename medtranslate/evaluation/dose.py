"""Dose on a synthetic CT against dose on its reference CT, the way a clinic checks an sCT before planning on it.

Per case and modality, one plan is made and optimised on the reference CT; the same plan (its beams and beamlet
weights: what a machine would deliver) is recomputed on the sCT; the two doses are compared by gamma pass rate and DVH
metrics. A dose difference is then only the sCT's: its HU change the radiological depths the beams see.

- Engine: pyRadPlan (the Python port of matRad, DKFZ; Wieser et al. 2017, Med Phys 44(6)) with its generic machine
  data: photons by its singular-value-decomposed pencil beam (Bortfeld et al. 1993), protons by its Hong pencil beam
  (Hong et al. 1996). Gamma: pymedphys (Low et al. 1998; global, with a low-dose cutoff). Both are the ``dose``
  extra (``pip install -e ".[dose]"``).
- HU to density: one curve for CT and sCT, the engine's own default (pyRadPlan's ``default_hlut``, HU -> relative
  electron density / stopping power) unless a calibration CSV (HU, value; ``calibrations/``) is given.
- Grid: both images resampled to ``grid_mm`` cubes on the world's axes (linear HU, nearest masks) before planning; the
  doses are written on that grid (NIfTI, Gy over the whole course).
- Target and organs: the user's target mask when given; otherwise a sphere of ``target_radius_mm`` at the centre of
  the body (centre of mass of the reference CT's body mask), so any sCT/CT pair can be checked without contours. The
  body outside the target is the organ at risk whose mean and maximum dose are reported.
- Plan: ``fractions`` x 2 Gy to the target (``prescription_gy`` in all), a squared deviation from it in the target and
  a squared overdose above half of it in the rest of the body; photons from 7 equally spaced gantry angles (step-and-
  shoot IMRT as matRad's examples plan it), protons from 2 opposed lateral fields (90 and 270 degrees).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medtranslate.core.checks import require_choice, require_exists, require_int, require_number
from medtranslate.core.errors import ConfigError, InputError
from medtranslate.imaging.transforms import body_mask, check_same_grid
from medtranslate.imaging.volume import Volume, affine_to_sitk, sitk_to_volume

__all__ = [
    "DoseSettings",
    "MODALITIES",
    "CaseDose",
    "Plan",
    "make_plan",
    "recompute",
    "forward_dose",
    "plan_and_recompute",
    "gamma_pass_rate",
    "dvh_metrics",
    "dose_folder",
]

logger = logging.getLogger(__name__)

MODALITIES = ("photon", "proton")
# gamma criteria (dose %, distance mm): SynthRAD 2025's dose ranking uses 2 %/2 mm; 3 %/3 mm is the clinic's usual
GAMMA_CRITERIA = ((2.0, 2.0), (3.0, 3.0))
LOW_DOSE_CUTOFF_PERCENT = 10.0  # points below 10 % of the maximum dose are not judged (AAPM TG-218's usual threshold)


@dataclass(frozen=True)
class DoseSettings:
    """How each case is planned; defaults documented in docs/commands/dose.md."""

    modalities: tuple[str, ...] = ("photon",)
    fractions: int = 30
    prescription_gy: float = 60.0  # 30 x 2 Gy
    grid_mm: float = 3.0
    target_radius_mm: float = 15.0
    bixel_mm: float = 5.0  # photon bixel width / proton lateral spot spacing
    photon_angles: tuple[float, ...] = tuple(round(i * 360.0 / 7, 2) for i in range(7))
    proton_angles: tuple[float, ...] = (90.0, 270.0)
    hlut: tuple[tuple[float, float], ...] | None = None  # (HU, value) points; None: the engine's default
    max_iter: int = 500  # the optimiser's iterations (pyRadPlan's default)
    local_gamma: bool = False
    target_name: str | None = None  # which of a case's structures is the target (io.structures.split_structures)

    def check(self) -> None:
        if not self.modalities:
            raise ConfigError(f"no dose modality given; expected one or more of: {', '.join(MODALITIES)}")
        for m in self.modalities:
            require_choice("dose modality", m, MODALITIES)
        require_int("dose fractions", self.fractions, 1, 100)
        require_number("dose prescription_gy", self.prescription_gy, 0.1, 200.0)
        require_number("dose grid_mm", self.grid_mm, 1.0, 10.0)
        require_number("dose target_radius_mm", self.target_radius_mm, 3.0, 100.0)
        for name, angles in (("photon_angles", self.photon_angles), ("proton_angles", self.proton_angles)):
            if not 1 <= len(angles) <= 36 or len(set(angles)) < len(angles):
                raise ConfigError(f"dose {name}: give 1 to 36 different gantry angles, got {list(angles)}")
            for a in angles:
                require_number(f"dose {name} angle", a, 0.0, below=360.0)


@dataclass
class CaseDose:
    """Doses on CT and sCT (Gy, on the planning grid) and what they were compared on."""

    modality: str
    dose_ct: Volume
    dose_sct: Volume
    target: np.ndarray  # z, y, x on the dose grid, as the engine reads images
    body: np.ndarray
    hu: np.ndarray  # the reference CT on the dose grid
    organs: dict[str, np.ndarray] = field(default_factory=dict)  # by structure name, on the dose grid
    metrics: dict[str, float] = field(default_factory=dict)
    gamma: dict[str, np.ndarray] = field(default_factory=dict)  # z, y, x on the dose grid, per criterion


@contextlib.contextmanager
def _engine_quiet() -> Iterator[None]:
    """The engines' own noise kept out of our output: deprecation notices of their dependencies, numpy's divide
    warnings inside pyRadPlan's ray tracer, "no GPU, using the CPU", and pyRadPlan's log lines about the defaults this
    module chose on purpose (its generator and engine, the dose grid it was given)."""
    # pyRadPlan logs through its own logger, pymedphys through the root logger (a line per gamma option)
    engine_log, root = logging.getLogger("pyRadPlan"), logging.getLogger()
    level, root_level = engine_log.level, root.level
    engine_log.setLevel(logging.ERROR)
    root.setLevel(max(root_level, logging.WARNING))
    reporter = sys.modules.get("pyRadPlan.core")  # its progress bars (a tqdm per beam and ray), once it is imported
    bars = reporter.ProgressReporter.console_progress if reporter else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", "Requested GPU device is not available", UserWarning)
            if reporter:
                reporter.ProgressReporter.console_progress = False
            yield
    finally:
        engine_log.setLevel(level)
        root.setLevel(root_level)
        if reporter:
            reporter.ProgressReporter.console_progress = bars


def require_engine() -> tuple[Any, Any]:
    """pyRadPlan and pymedphys, or a ConfigError that says how to install them."""
    try:
        with _engine_quiet():
            import pymedphys
            import pyRadPlan
    except ImportError as exc:
        raise ConfigError(
            f'dose evaluation needs the dose extra ({exc.name} is not installed): pip install -e ".[dose]" '
            "(with -c constraints-cpu.txt on a CPU machine)"
        ) from None
    return pyRadPlan, pymedphys


def _resampled(volume: Volume, spacing_mm: float, reference: sitk.Image | None, nearest: bool) -> sitk.Image:
    """The volume on ``reference``'s grid, or on a grid of ``spacing_mm`` cubes covering it whose axes are the world's
    (identity direction, LPS): pyRadPlan, as matRad, places beams in voxel coordinates of an axis-aligned image."""
    image = affine_to_sitk(volume.array.astype(np.float32), volume.affine)
    if reference is None:
        size = np.array(image.GetSize())
        corners = np.array(
            [
                image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (size - 1) * np.array(bits)])
                for bits in np.ndindex(2, 2, 2)
            ]
        )
        low, high = corners.min(axis=0), corners.max(axis=0)
        reference = sitk.Image([int(n) for n in np.floor((high - low) / spacing_mm) + 1], sitk.sitkFloat32)
        reference.SetSpacing((spacing_mm,) * 3)
        reference.SetOrigin(tuple(float(v) for v in low))
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0 if nearest else -1024.0)


def default_target(body: np.ndarray, spacing_mm: float, radius_mm: float) -> np.ndarray:
    """A sphere of ``radius_mm`` at the body's centre of mass; InputError when it does not fit inside the body."""
    from scipy import ndimage

    if not body.any():
        raise InputError("no body in the reference CT (nothing above -500 HU) to place a target in")
    centre = np.array(ndimage.center_of_mass(body))
    grid = np.indices(body.shape, dtype=np.float32)
    r2 = sum(((grid[i] - centre[i]) * spacing_mm) ** 2 for i in range(3))
    target = r2 <= radius_mm**2
    if not target.any() or (target & ~body).mean() > 0:
        inside = (target & body).sum() / max(int(target.sum()), 1)
        raise InputError(
            f"the default target (a {radius_mm:g} mm sphere at the body's centre) is only {100 * inside:.0f} % inside "
            "the body; give a smaller --target-radius or a target mask (--target)"
        )
    return target


def _structures(
    pyRadPlan: Any,
    ct: Any,
    target: np.ndarray,
    body: np.ndarray,
    organs: dict[str, np.ndarray],
    reference: sitk.Image,
    s: DoseSettings,
):
    from pyRadPlan.cst import StructureSet
    from pyRadPlan.optimization.objectives import SquaredDeviation, SquaredOverdosing

    def mask(a: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(a.astype(np.uint8))
        image.CopyInformation(reference)
        return image

    # priorities as matRad's examples weigh target against normal tissue (several hundred to one)
    vois = [
        {
            "name": "target",
            "voi_type": "TARGET",
            "mask": mask(target),
            "ct_image": ct,
            "objectives": [SquaredDeviation(d_ref=s.prescription_gy, priority=800)],
        },
        {
            "name": "body",
            "voi_type": "OAR",
            "mask": mask(body & ~target),
            "ct_image": ct,
            "objectives": [SquaredOverdosing(d_max=s.prescription_gy / 2, priority=100)],
        },
    ]
    # each organ at risk kept below half the prescription as the body is, with the same weight: a generic plan that
    # spares what the user delineated without inventing organ-specific constraints
    vois += [
        {
            "name": name,
            "voi_type": "OAR",
            "mask": mask(organ & ~target),
            "ct_image": ct,
            "objectives": [SquaredOverdosing(d_max=s.prescription_gy / 2, priority=100)],
        }
        for name, organ in organs.items()
        if (organ & ~target).any()
    ]
    return StructureSet(vois=vois, ct_image=ct)


def _plan(pyRadPlan: Any, modality: str, s: DoseSettings) -> Any:
    grid: dict[str, Any] = {"dose_grid": {"resolution": {"x": s.grid_mm, "y": s.grid_mm, "z": s.grid_mm}}}
    opt = {"max_iter": s.max_iter}
    if s.hlut is not None:
        grid["hlut"] = np.asarray(s.hlut, dtype=np.float64)
    angles = list(s.photon_angles if modality == "photon" else s.proton_angles)
    stf = {"gantry_angles": angles, "couch_angles": [0.0] * len(angles), "bixel_width": s.bixel_mm}
    if modality == "photon":
        return pyRadPlan.PhotonPlan(prop_stf=stf, prop_dose_calc=grid, prop_opt=opt, num_of_fractions=s.fractions)
    return pyRadPlan.IonPlan(
        radiation_mode="protons",
        machine="Generic",
        prop_stf=stf,
        prop_dose_calc=grid,
        prop_opt=opt,
        num_of_fractions=s.fractions,
    )


def _dose_array(result: Any) -> np.ndarray:
    dose = result["physical_dose"]
    return sitk.GetArrayFromImage(dose) if isinstance(dose, sitk.Image) else np.asarray(dose)


@dataclass
class Plan:
    """A plan optimised on a reference CT: the engine's objects, the beamlet weights, the dose on that CT."""

    modality: str
    settings: DoseSettings
    grid: sitk.Image  # the dose grid (the reference CT resampled to it)
    target: np.ndarray  # z, y, x on the grid, as the engine reads images
    body: np.ndarray
    organs: dict[str, np.ndarray]  # by structure name, on the grid
    engine: dict[str, Any]  # pln, stf, weights
    dose_ct: np.ndarray


def _engine_ct(pyRadPlan: Any, hu: np.ndarray, grid: sitk.Image) -> Any:
    image = sitk.GetImageFromArray(np.rint(hu).astype(np.int16))
    image.CopyInformation(grid)
    return pyRadPlan.CT(cube_hu=image)


def _stf_ct(pyRadPlan: Any, hu: np.ndarray, grid: sitk.Image, hlut: tuple[tuple[float, float], ...] | None) -> Any:
    """The CT the proton spot generator chooses energies on. pyRadPlan 0.5's generator converts HU with its default
    curve whatever the dose engine was given, so with a calibration curve the HU are first mapped to the values whose
    default-curve stopping power is the given curve's: the energies then reach the target the dose engine sees."""
    if hlut is None:
        return _engine_ct(pyRadPlan, hu, grid)
    table = np.asarray(hlut, dtype=np.float64)
    spr = np.interp(hu, table[:, 0], table[:, 1])
    default = pyRadPlan.ct.default_hlut()[1:]  # its first two points share one value (air)
    last = (default[-1, 1] - default[-2, 1]) / (default[-1, 0] - default[-2, 0])
    # beyond the default curve's densest point, along its last segment (np.interp would hold it flat)
    beyond = default[-1, 0] + (spr - default[-1, 1]) / last
    mapped = np.where(spr > default[-1, 1], beyond, np.interp(spr, default[:, 1], default[:, 0]))
    return _engine_ct(pyRadPlan, np.clip(mapped, -1024, 32767), grid)  # int16, as the engine's CT is held


def make_plan(
    ct: Volume,
    settings: DoseSettings,
    modality: str,
    target: Volume | None = None,
    organs: dict[str, Volume] | None = None,
) -> Plan:
    """Optimise a plan on ``ct``: the default or given target, the body and any given organs at risk (module
    docstring); masks on any grid (resampled to the dose grid by nearest neighbour)."""
    from medtranslate.io.structures import structure_key

    pyRadPlan, _ = require_engine()
    grid = _resampled(ct, settings.grid_mm, None, nearest=False)
    on_grid = sitk_to_volume(grid, Path(str(ct.source)), "nifti")  # i, j, k with its affine, as masks are made
    body = body_mask(on_grid.array, "ct", on_grid.affine).transpose(2, 1, 0)

    def on_dose_grid(mask: Volume, what: str) -> np.ndarray:
        out = sitk.GetArrayFromImage(_resampled(mask, settings.grid_mm, grid, nearest=True)) > 0.5
        if not out.any():
            raise InputError(f"{mask.source or what}: the {what} is empty on the {settings.grid_mm:g} mm dose grid")
        return out

    if target is not None:
        tmask = on_dose_grid(target, "target mask")
    else:
        tmask = default_target(body, settings.grid_mm, settings.target_radius_mm)
    omasks = {name: on_dose_grid(mask, f"organ '{name}'") for name, mask in (organs or {}).items()}
    keys = [structure_key(n) for n in omasks]
    if len(set(keys)) < len(keys):
        raise InputError(f"organ names {sorted(omasks)} give the same metric column twice; rename one")
    with _engine_quiet():
        hu = sitk.GetArrayFromImage(grid)
        ct_e = _engine_ct(pyRadPlan, hu, grid)
        cst = _structures(pyRadPlan, ct_e, tmask, body, omasks, grid, settings)
        pln = _plan(pyRadPlan, modality, settings)
        on_stf = _stf_ct(pyRadPlan, hu, grid, settings.hlut) if modality == "proton" else ct_e
        stf = pyRadPlan.generate_stf(on_stf, cst, pln)
        dij = pyRadPlan.calc_dose_influence(ct_e, cst, stf, pln)
        weights = pyRadPlan.fluence_optimization(ct_e, cst, stf, dij, pln)
        dose_ct = _dose_array(dij.compute_result_ct_grid(weights))
    engine = {"pln": pln, "stf": stf, "weights": weights}
    return Plan(modality, settings, grid, tmask, body, omasks, engine, dose_ct)


def forward_dose(plan: Plan, sct: Volume, weights: np.ndarray | None = None) -> np.ndarray:
    """The dose (Gy, z, y, x on the plan's grid) of the plan's beams on ``sct`` with the plan's beamlet weights, or
    with ``weights`` (one per beamlet of ``plan.engine["stf"]``, e.g. a single spot)."""
    pyRadPlan, _ = require_engine()
    s, e = plan.settings, plan.engine
    with _engine_quiet():
        sct_hu = sitk.GetArrayFromImage(_resampled(sct, s.grid_mm, plan.grid, False))
        sct_e = _engine_ct(pyRadPlan, sct_hu, plan.grid)
        cst = _structures(pyRadPlan, sct_e, plan.target, plan.body, plan.organs, plan.grid, s)
        w = e["weights"] if weights is None else np.asarray(weights, dtype=np.float64)
        return _dose_array(pyRadPlan.calc_dose_forward(sct_e, cst, e["stf"], e["pln"], w))


def recompute(plan: Plan, sct: Volume) -> CaseDose:
    """The plan's beamlet weights recomputed on ``sct`` (on the reference CT's grid); doses, masks and metrics."""
    s = plan.settings
    dose_sct = forward_dose(plan, sct)

    def as_volume(array: np.ndarray, name: str) -> Volume:
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(plan.grid)
        return sitk_to_volume(image, Path(name), "nifti")

    ct_hu = sitk.GetArrayFromImage(plan.grid)
    case = CaseDose(
        plan.modality,
        as_volume(plan.dose_ct, "dose_ct"),
        as_volume(dose_sct, "dose_sct"),
        plan.target,
        plan.body,
        ct_hu,
        plan.organs,
    )
    case.metrics = compare_doses(
        plan.dose_ct, dose_sct, plan.target, plan.body, s.grid_mm, s.local_gamma, case.gamma, plan.organs
    )
    return case


def plan_and_recompute(
    ct: Volume,
    sct: Volume,
    settings: DoseSettings,
    modality: str,
    target: Volume | None = None,
    organs: dict[str, Volume] | None = None,
) -> CaseDose:
    """Optimise a plan on ``ct`` and recompute it on ``sct`` (same grid as ``ct``)."""
    return recompute(make_plan(ct, settings, modality, target, organs), sct)


def gamma_index(
    reference: np.ndarray, evaluated: np.ndarray, spacing_mm: float, percent: float, mm: float, local: bool = False
) -> np.ndarray:
    """Gamma of each point of the reference dose (pymedphys; global unless ``local``; NaN below the low-dose cutoff,
    at most 2), both doses on one isotropic grid."""
    _, pymedphys = require_engine()
    axes = tuple(np.arange(n, dtype=np.float64) * spacing_mm for n in reference.shape)
    with _engine_quiet():  # quiet=True: no progress lines on stdout (pymedphys announces a change of that option)
        return pymedphys.gamma(
            axes,
            np.asarray(reference, dtype=np.float64),
            axes,
            np.asarray(evaluated, dtype=np.float64),
            dose_percent_threshold=percent,
            distance_mm_threshold=mm,
            lower_percent_dose_cutoff=LOW_DOSE_CUTOFF_PERCENT,
            local_gamma=local,
            max_gamma=2.0,  # a point is failed once gamma passes 2; searching further only costs time
            quiet=True,
        )


def pass_rate(gamma: np.ndarray) -> float:
    """Percentage of the judged points (gamma not NaN) with gamma <= 1."""
    judged = np.isfinite(gamma)
    if not judged.any():
        raise InputError("no dose above the low-dose cutoff to compare; the plan delivered nothing")
    return float(100.0 * np.mean(gamma[judged] <= 1.0))


def gamma_pass_rate(
    reference: np.ndarray, evaluated: np.ndarray, spacing_mm: float, percent: float, mm: float, local: bool = False
) -> float:
    """Percentage of the reference's points above the low-dose cutoff with gamma <= 1."""
    return pass_rate(gamma_index(reference, evaluated, spacing_mm, percent, mm, local))


def dvh_metrics(
    dose: np.ndarray, target: np.ndarray, organ: np.ndarray, organs: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Target D98, D95, D50, D2 (the dose that x % of the target receives at least) and Dmean; Dmean and Dmax of the
    body outside the target (``organ``) and of each of ``organs`` (``organ_<name>_dmean``, whole organ)."""
    from medtranslate.io.structures import structure_key

    dose = np.asarray(dose, dtype=np.float64)
    t = dose[target]
    out = {f"target_d{p}": float(np.percentile(t, 100 - p)) for p in (98, 95, 50, 2)}
    out["target_dmean"] = float(t.mean())
    named = {"body": organ, **{f"organ_{structure_key(n)}": m for n, m in (organs or {}).items()}}
    for name, mask in named.items():
        o = dose[mask]
        out[f"{name}_dmean"] = float(o.mean()) if o.size else float("nan")
        out[f"{name}_dmax"] = float(o.max()) if o.size else float("nan")
    return out


def compare_doses(
    dose_ct: np.ndarray,
    dose_sct: np.ndarray,
    target: np.ndarray,
    body: np.ndarray,
    spacing_mm: float,
    local: bool,
    gamma_maps: dict[str, np.ndarray] | None = None,
    organs: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Gamma pass rates at each criterion and DVH metrics of both doses with their differences (sCT - CT, Gy); the
    gamma of every point goes into ``gamma_maps`` when given (for the figures)."""
    out: dict[str, float] = {}
    for percent, mm in GAMMA_CRITERIA:
        name = f"gamma_{percent:g}pct_{mm:g}mm"
        gamma = gamma_index(dose_ct, dose_sct, spacing_mm, percent, mm, local)
        out[name] = pass_rate(gamma)
        if gamma_maps is not None:
            gamma_maps[name] = gamma
    organ = body & ~target
    on_ct, on_sct = dvh_metrics(dose_ct, target, organ, organs), dvh_metrics(dose_sct, target, organ, organs)
    for key in on_ct:
        out[f"{key}_ct"], out[f"{key}_sct"] = on_ct[key], on_sct[key]
        out[f"{key}_diff"] = on_sct[key] - on_ct[key]
    return out


def dose_figure(path: Path, title: str, case: CaseDose) -> Path:
    """Three planes through the target's centre: the CT, the dose difference (sCT - CT) over it, and gamma at 2 %/2 mm;
    beside them the DVHs of target and body on both CTs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtranslate.evaluation.report import save_figure

    ct_dose, sct_dose = (np.asarray(v.array).transpose(2, 1, 0) for v in (case.dose_ct, case.dose_sct))  # z, y, x
    diff = sct_dose - ct_dose
    gamma = case.gamma.get("gamma_2pct_2mm", np.full(diff.shape, np.nan))
    centre = [int(round(c)) for c in np.argwhere(case.target).mean(axis=0)]
    limit = max(float(np.abs(diff).max()), 1e-3)
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.2))
    planes = (
        ("axial", lambda a: a[centre[0]]),
        ("coronal", lambda a: a[:, centre[1]]),
        ("sagittal", lambda a: a[:, :, centre[2]]),
    )
    for col, (name, cut) in enumerate(planes):
        origin = "lower" if col else "upper"  # coronal and sagittal: the head up
        ax = axes[0, col]
        ax.imshow(cut(case.hu), cmap="gray", vmin=-200, vmax=300, origin=origin)
        im = ax.imshow(cut(diff), cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6, origin=origin)
        ax.contour(cut(case.target), levels=[0.5], colors="k", linewidths=0.8, origin=origin)
        ax.set_title(f"{name}: dose sCT - CT", fontsize=9)
        ax.axis("off")
        ax = axes[1, col]
        g = ax.imshow(cut(gamma), cmap="magma_r", vmin=0, vmax=2, origin=origin)
        ax.set_title(f"{name}: gamma 2 %/2 mm", fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes[0, :3].tolist(), shrink=0.8, label="Gy")
    fig.colorbar(g, ax=axes[1, :3].tolist(), shrink=0.8, label="gamma (> 1 fails)")
    ax = axes[0, 3]
    top = max(float(ct_dose.max()), float(sct_dose.max()), 1e-3)
    bins = np.linspace(0.0, top * 1.05, 200)
    curves = [(case.target, "target", "#c44e52"), (case.body & ~case.target, "body", "#4c72b0")]
    colours = ("#55a868", "#8172b2", "#ccb974", "#64b5cd", "#8c8c8c", "#937860")
    curves += [(m, name, colours[i % len(colours)]) for i, (name, m) in enumerate(case.organs.items())]
    for mask, label, colour in curves:
        for dose, style, which in ((ct_dose, "-", "CT"), (sct_dose, "--", "sCT")):
            values = dose[mask]
            volume = [100.0 * float(np.mean(values >= b)) for b in bins] if values.size else [0.0] * len(bins)
            ax.plot(bins, volume, style, color=colour, lw=1.2, label=f"{label}, {which}")
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_title("DVH", fontsize=9)
    ax.legend(fontsize=7)
    axes[1, 3].axis("off")
    axes[1, 3].text(
        0, 0.5, "\n".join(f"{k}: {v:.2f}" for k, v in case.metrics.items() if "gamma" in k or "d95" in k), fontsize=8
    )
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return path


def dose_folder(
    pred: str | Path,
    ref: str | Path,
    out: str | Path,
    settings: DoseSettings,
    target: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard: str | None = None,
    structures: str | Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Plan on every reference CT, recompute on its sCT; per case and modality ``<out>/<case>/<modality>_dose_ct``,
    ``_dose_sct`` (NIfTI, Gy) and ``_metrics.json``; then ``metrics.csv`` and ``summary.json`` over every case done
    (this run's or an earlier one's). Returns the manifest rows of this run and the summary.

    ``target``: a folder of target masks by case id; ``structures``: a folder of each case's structures (target and
    organs at risk: :mod:`medtranslate.io.structures`); one or neither."""
    from medtranslate.evaluation.evaluate import PRED_ROLES
    from medtranslate.io.cases import select_cases
    from medtranslate.io.files import read_case
    from medtranslate.io.structures import read_structures, split_structures
    from medtranslate.runtime.batch import run_cases
    from medtranslate.runtime.distributed import merge_shards, shard_manifest, shard_of

    index, count = shard_of(shard)
    pred, ref, out = Path(pred), Path(ref), Path(out)
    _check_inputs(settings, out, {"--pred": pred, "--ref": ref, "--target": target, "--structures": structures})
    refs = select_cases(ref, ("ct", None), "reference CT")
    preds = select_cases(pred, PRED_ROLES, "synthetic CT")
    targets = select_cases(target, ("target", None), "target mask") if target is not None else {}
    cases = sorted(refs.values(), key=lambda c: c.case_id)[index::count]

    def outputs(case: Any) -> list[Path]:
        # a DICOM reference CT gets its doses as RT Dose files too, in its frame of reference
        names = ["dose_ct.nii.gz", "dose_sct.nii.gz", "metrics.json", "dose.png"]
        names += ["dose_ct.dcm", "dose_sct.dcm"] if case.series_uid else []
        return [out / case.case_id / f"{m}_{n}" for m in settings.modalities for n in names]

    def work(case: Any, paths: list[Path]) -> None:
        cid = case.case_id
        if cid not in preds:
            raise InputError(f"case '{cid}': no synthetic CT for it in {pred}; names must match the reference's")
        if target is not None and cid not in targets:
            raise InputError(f"case '{cid}': no target mask for it in {target}")
        ct, sct = read_case(case), read_case(preds[cid])
        check_same_grid(sct, ct, names=(f"sCT {preds[cid].label}", f"CT {case.label}"), case=cid)
        mask, organs = read_case(targets[cid]) if cid in targets else None, {}
        if structures is not None:
            found = read_structures(Path(structures), cid, ct)
            mask, organs = split_structures(found, settings.target_name, f"case '{cid}'")
        _dose_case(case, ct, sct, mask, organs, settings, paths)

    # the masks planned on are part of what makes the doses: other --target or --structures are other settings
    masks = {"target": str(Path(target).resolve()) if target else None}
    masks["structures"] = str(Path(structures).resolve()) if structures else None
    key = _settings_key(settings, masks)
    rows = run_cases(
        cases,
        shard_manifest(out, index, count),
        outputs,
        work,
        overwrite=overwrite,
        progress=progress,
        extra={"settings": key, "pred": str(pred)},
        desc="dose",
    )
    merge_shards(out, index, count)
    return rows, _write_tables(out, rows, settings, key, masks)


def _check_inputs(settings: DoseSettings, out: Path, given: dict[str, str | Path | None]) -> None:
    """Settings, the engine, the inputs by option (each one given exists; none holds the output), the output folder."""
    from medtranslate.runtime.batch import prepare_output_folder

    settings.check()
    require_engine()
    if given["--target"] is not None and given["--structures"] is not None:
        raise ConfigError("give the target as --target masks or among --structures, not both")
    if settings.target_name is not None and given["--structures"] is None:
        raise ConfigError("--target-name names a structure of --structures; give --structures too")
    for flag, path in given.items():
        if path is not None:
            require_exists(path, flag)
    prepare_output_folder([Path(p) for p in given.values() if p is not None], out, "--out")


def _dose_case(
    case: Any,
    ct: Volume,
    sct: Volume,
    target: Volume | None,
    organs: dict[str, Volume],
    settings: DoseSettings,
    paths: list[Path],
) -> None:
    """Plan and recompute every modality of one case; write its doses (NIfTI, and RT Dose beside them for a DICOM CT:
    ``paths`` says which), its figure and its metrics."""
    import json

    from medtranslate.core.atomic import atomic_write_text
    from medtranslate.io.dicom import new_uid, source_context, write_rtdose
    from medtranslate.io.files import write_nifti

    cid, per = case.case_id, len(paths) // len(settings.modalities)
    for i, modality in enumerate(settings.modalities):
        result = plan_and_recompute(ct, sct, settings, modality, target, organs)
        dose_ct, dose_sct, metrics, figure, *dicom = paths[per * i : per * (i + 1)]
        write_nifti(dose_ct, result.dose_ct.array, result.dose_ct.affine, np.float32, overwrite=True)
        write_nifti(dose_sct, result.dose_sct.array, result.dose_sct.affine, np.float32, overwrite=True)
        if dicom:
            context, plan_uid = source_context(case.path, case.series_uid), new_uid()
            for path, dose, on in zip(dicom, (result.dose_ct, result.dose_sct), ("CT", "sCT"), strict=True):
                what = f"{modality} dose on the {on}"
                write_rtdose(path, dose, context, what, plan_uid, modality, f"medtranslate dose: {what}", cid, True)
        dose_figure(figure, f"{cid}, {modality}", result)
        atomic_write_text(metrics, json.dumps({"case": cid, "modality": modality, **result.metrics}) + "\n")


def _write_tables(
    out: Path, rows: list[dict[str, Any]], settings: DoseSettings, key: str, masks: dict[str, str | None]
) -> dict[str, Any]:
    """metrics.csv (a row per case, modality-prefixed columns), summary.json and report.html over the cases made with
    ``key``'s settings; returns the summary."""
    import json

    from medtranslate.core.atomic import atomic_write_csv, atomic_write_text
    from medtranslate.evaluation.evaluate import summarise
    from medtranslate.evaluation.report import write_report
    from medtranslate.runtime.batch import read_manifest

    # every case made with these settings, by this run or an earlier one or another shard; never one a manifest says
    # was made with other settings (a refused case keeps its files, not its place in the table)
    made = {
        r["case"]
        for m in sorted(out.glob("manifest*.csv"))
        for r in read_manifest(m)
        if r.get("status") in ("done", "skipped") and r.get("settings") == key
    }
    per_case: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*/*_metrics.json")):
        if path.parent.name in made:
            found = json.loads(path.read_text())
            row = per_case.setdefault(found["case"], {"case": found["case"], "status": "done", "error": ""})
            modality = found["modality"]
            row.update({f"{modality}_{k}": v for k, v in found.items() if k not in ("case", "modality")})
    failed = [r for r in rows if r["status"] == "failed" and r["case"] not in per_case]
    table = list(per_case.values()) + [{"case": r["case"], "status": "failed", "error": r["error"]} for r in failed]
    names = sorted({k for r in table for k in r} - {"case", "status", "error"}, key=_column_order)
    atomic_write_csv(out / "metrics.csv", table, ["case", *names, "status", "error"])
    summary = summarise(table, names)
    summary.update(
        evaluation="dose",
        engine="pyRadPlan (photon SVD pencil beam, proton Hong pencil beam; generic machines), gamma by pymedphys",
        settings={**_settings_dict(settings), **masks},
        definitions=DOSE_DEFINITIONS,
        task="mr2ct",
        mask_source="the target (given, or the default sphere), the organs given, and the body of the reference CT "
        "(> -500 HU)",
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    figures = {
        f"{cid} {m}": out / cid / f"{m}_dose.png"
        for cid in per_case
        for m in settings.modalities
        if (out / cid / f"{m}_dose.png").is_file()
    }
    headline = [n for n in names if n.endswith(("gamma_2pct_2mm", "gamma_3pct_3mm", "target_d95_diff"))]
    write_report(out, table, summary, headline, figures)
    return summary


DOSE_DEFINITIONS = {
    "gamma_2pct_2mm, gamma_3pct_3mm": "percentage of the points of the CT's dose above 10 % of its maximum whose gamma "
    "(sCT's dose against CT's; global, pymedphys) is at most 1",
    "target_d98, d95, d50, d2": "the dose (Gy) that at least 98, 95, 50, 2 % of the target receives",
    "target_dmean, body_dmean, body_dmax": "mean dose of the target; mean and maximum dose of the body outside it",
    "organ_<name>_dmean, organ_<name>_dmax": "mean and maximum dose of a given organ at risk (the whole organ)",
    "_ct, _sct, _diff": "on the CT, on the sCT, and sCT - CT (Gy); each prefixed by its modality",
}


def _column_order(name: str) -> tuple[int, str]:
    """Gamma first, then the target's differences, then the rest, each group alphabetical."""
    group = 0 if "gamma" in name else 1 if name.endswith("_diff") else 2
    return group, name


def _settings_dict(s: DoseSettings) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(s)
    out["hlut"] = "engine default (pyRadPlan default_hlut)" if s.hlut is None else [list(p) for p in s.hlut]
    return out


def _settings_key(s: DoseSettings, masks: dict[str, str | None]) -> str:
    """What makes the doses differ, for the manifest: a case made with other settings is refused, not mixed in."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps({**_settings_dict(s), **masks}, sort_keys=True).encode()).hexdigest()[:16]
