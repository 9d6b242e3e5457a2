"""Procedural paired MR/CT head phantoms for the sample data and the tests.

Each subject gets a random but plausible anatomy: scalp, subcutaneous fat, a skull with cortical tables and
cancellous diploe, CSF, folded grey matter over white matter, deep grey nuclei, lateral ventricles, eyes in fatty
orbits, a skull base, and air sinuses lined with mucosa. The same label map is rendered twice:

- CT in HU: per-tissue HU, smooth texture, a slight blur (scanner PSF) and Gaussian noise;
- T1-weighted-like MR: per-tissue signal, partial-volume blur, a smooth multiplicative bias field and Rician noise.

As in real T1, cortical bone and air are both dark in MR: telling them apart needs context, which is the real
difficulty of MR -> CT synthesis. Subjects differ in size, position and rotation; volumes are int16 on a
non-RAS, anisotropic grid. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medtranslate.core.atomic import atomic_write_text
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import write_nifti

__all__ = [
    "TISSUES",
    "PhantomSubject",
    "make_subject",
    "misalign",
    "write_sample_data",
    "write_cohorts",
    "SAMPLE_SPLIT",
    "COHORT_SPLIT",
]

logger = logging.getLogger(__name__)

# Tissue classes: (CT HU, T1 MR signal in arbitrary units, CT texture amplitude in HU).
# HU values are textbook ranges (e.g. fat -100..-50, CSF 0..15, grey matter 35..45, white matter 20..30,
# cortical bone 1000..2000, cancellous bone 300..600); T1 contrast order: fat > WM > GM > muscle > CSF > bone ~ air.
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, 0.0, 0.0),
    "skin": (45.0, 380.0, 8.0),
    "fat": (-95.0, 950.0, 10.0),
    "cortical": (1450.0, 40.0, 120.0),
    "cancellous": (450.0, 600.0, 90.0),
    "csf": (8.0, 120.0, 3.0),
    "grey": (38.0, 430.0, 3.0),
    "white": (27.0, 640.0, 3.0),
    "deep_grey": (42.0, 480.0, 3.0),
    "vitreous": (12.0, 90.0, 2.0),
    "muscle": (50.0, 360.0, 8.0),
    "mucosa": (40.0, 330.0, 6.0),
    "sinus_air": (-980.0, 0.0, 15.0),
}
LABELS = {name: i for i, name in enumerate(TISSUES)}

SHAPE = (128, 128, 64)
SPACING = (1.75, 1.75, 2.6)  # mm: anisotropic, as most clinical head scans are
ORIENTATIONS = ("LPS", "LAS", "RPS", "LPI")  # none is RAS: readers must honour the affine

# Train/validation/test split of the committed sample data (split by subject, never by slice).
SAMPLE_SPLIT = {
    "train": ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"],
    "val": ["sub-06"],
    "test": ["sub-07", "sub-08"],
}


@dataclass
class PhantomSubject:
    """One rendered subject: MR and CT on the same grid, the tissue label map and a body mask."""

    mr: Volume
    ct: Volume
    labels: np.ndarray
    mask: np.ndarray


def _affine(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], axcodes: str, offset: np.ndarray
) -> np.ndarray:
    """Axis-aligned voxel-to-RAS affine whose axes point along ``axcodes``, centred near the world origin."""
    sign = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, code in enumerate(axcodes):
        row, s = sign[code]
        affine[row, axis] = s * spacing[axis]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    affine[:3, 3] = offset - centre
    return affine


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, spacing: tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma_mm``."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), [sigma_mm / s for s in spacing], mode="wrap"
    )
    return (field - field.mean()) / (field.std() + 1e-8)


def _ellipsoid(u: np.ndarray, centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    """Normalised ellipsoid radius (<1 inside) at head-frame points ``u`` of shape (3, ...)."""
    return np.sqrt(sum(((u[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))


# length: one structure after another, each drawing from ``rng`` in turn; that order makes the committed sample data
# (sample-data regenerates it voxel for voxel), so the steps stay in one readable sequence
def _labels(rng: np.random.Generator, u: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Tissue label map from head-frame coordinates ``u`` (mm; x right, y anterior, z superior)."""
    shape = u.shape[1:]
    size = rng.uniform(0.9, 1.08)
    a, b, c = 74.0 * size * rng.uniform(0.95, 1.05), 92.0 * size, 84.0 * size
    # Head outline: an ellipsoid with a smooth, low-frequency bumpy surface.
    r = _ellipsoid(u, (0.0, 0.0, 0.0), (a, b, c)) * (1.0 + 0.025 * _smooth_noise(rng, shape, 14.0, spacing))
    depth = np.linalg.norm(u, axis=0) * (1.0 - r) / np.maximum(r, 1e-3)  # mm below the skin along the ray
    lab = np.full(shape, LABELS["air"], dtype=np.uint8)

    skin = rng.uniform(3.0, 4.5)
    fat = skin + rng.uniform(2.5, 4.5)
    diploe_var = 1.2 * _smooth_noise(rng, shape, 10.0, spacing)
    outer = fat + rng.uniform(2.0, 3.0)
    diploe = outer + rng.uniform(3.0, 4.5) + diploe_var
    inner = diploe + rng.uniform(1.5, 2.5)
    csf = inner + rng.uniform(2.0, 3.5)
    layers = [
        (skin, "skin"),
        (fat, "fat"),
        (outer, "cortical"),
        (diploe, "cancellous"),
        (inner, "cortical"),
        (csf, "csf"),
    ]
    inside = depth >= 0
    lab[inside] = LABELS["grey"]
    for limit, name in reversed(layers):
        lab[inside & (depth < limit)] = LABELS[name]

    # Cortex: a grey band of varying thickness over white matter; sulci cut CSF into it.
    gyri = _smooth_noise(rng, shape, 3.5, spacing)
    band = csf + 5.0 + 3.5 * gyri
    lab[depth > band] = LABELS["white"]
    lab[(depth >= csf) & (depth < csf + 6.0) & (gyri > 0.9)] = LABELS["csf"]

    # Deep grey nuclei (thalamus, basal ganglia) and lateral ventricles.
    for sx in (-1.0, 1.0):
        lab[_ellipsoid(u, (sx * 12.0, -4.0, 2.0), (9.0, 13.0, 9.0)) < 1] = LABELS["deep_grey"]
        lab[_ellipsoid(u, (sx * 17.0, 10.0, 4.0), (6.0, 9.0, 7.0)) < 1] = LABELS["deep_grey"]
    vent = rng.uniform(0.8, 1.3)
    for sx in (-1.0, 1.0):
        lab[_ellipsoid(u, (sx * 7.0 * vent, 2.0, 14.0), (5.0 * vent, 27.0, 8.0 * vent)) < 1] = LABELS["csf"]
    lab[_ellipsoid(u, (0.0, -4.0, 4.0), (1.5, 10.0, 6.0)) < 1] = LABELS["csf"]

    # Skull base: below a tilted plane the brain gives way to a bony plate, then muscle, orbits and sinuses.
    base_z = -c * rng.uniform(0.30, 0.36) + 0.12 * u[1]
    below = inside & (depth >= outer) & (u[2] < base_z)
    lab[below & (u[2] >= base_z - 7.0)] = LABELS["cortical"]
    lab[below & (u[2] >= base_z - 5.5) & (u[2] < base_z - 1.5)] = LABELS["cancellous"]
    soft = below & (u[2] < base_z - 7.0)
    lab[soft] = LABELS["muscle"]
    lab[soft & (_smooth_noise(rng, shape, 4.0, spacing) > 0.7)] = LABELS["fat"]
    eye_z = -c * 0.30
    for sx in (-1.0, 1.0):
        centre = (sx * 31.0, b * 0.70, eye_z)
        lab[inside & (_ellipsoid(u, centre, (17.0, 16.0, 15.0)) < 1) & (depth >= skin)] = LABELS["fat"]
        lab[_ellipsoid(u, centre, (12.0, 12.0, 12.0)) < 1] = LABELS["vitreous"]
        lab[(_ellipsoid(u, centre, (12.0, 12.0, 12.0)) >= 1) & (_ellipsoid(u, centre, (13.0, 13.0, 13.0)) < 1)] = (
            LABELS["skin"]
        )
    # Frontal sinus inside the frontal bone, sphenoid and maxillary sinuses low and central.
    sinuses = [
        ((0.0, b * 0.80, eye_z + 22.0), (14.0 * rng.uniform(0.7, 1.2), 7.0, 9.0 * rng.uniform(0.8, 1.2))),
        ((0.0, b * 0.25, base_z.mean() - 16.0), (11.0, 10.0, 9.0)),
        ((-20.0, b * 0.5, base_z.mean() - 24.0), (12.0, 16.0, 14.0)),
        ((20.0, b * 0.5, base_z.mean() - 24.0), (12.0, 16.0, 14.0)),
    ]
    for centre, radii in sinuses:
        shell = _ellipsoid(u, centre, tuple(x + 3.0 for x in radii)) < 1
        lumen = _ellipsoid(u, centre, radii) < 1
        lining = _ellipsoid(u, centre, tuple(x - 1.5 for x in radii)) < 1
        walled = depth > outer + 1.0  # sinuses are closed cavities: keep skin, fat and a bony wall outside them
        lab[shell & inside & (depth > fat)] = LABELS["cortical"]
        lab[lumen & walled] = LABELS["mucosa"]
        lab[lining & walled & (depth > outer + 2.5)] = LABELS["sinus_air"]
    return lab


def make_subject(
    seed: int,
    shape: tuple[int, int, int] = SHAPE,
    spacing: tuple[float, float, float] = SPACING,
    axcodes: str | None = None,
) -> PhantomSubject:
    """Render one random head as paired int16 MR and CT volumes on a non-RAS anisotropic grid.

    Args:
        seed: the subject's random seed; the same seed gives the same volumes.
        shape: voxels along i, j, k (k is the axial axis).
        spacing: voxel size in mm along i, j, k.
        axcodes: orientation of the grid axes (e.g. "LPS"); by default drawn from a few non-RAS codes.
    """
    rng = np.random.default_rng(seed)
    axcodes = axcodes or ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    scale = np.array(shape) * np.array(spacing) / np.array(SHAPE) / np.array(SPACING)
    affine = _affine(shape, spacing, axcodes, offset=rng.uniform(-6, 6, 3) + np.array([0.0, 0.0, 0.0]))
    # World -> head frame: the head sits off centre (its top inside the field of view) and is rotated.
    centre = np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), -12.0 * scale[2] + rng.uniform(-4, 4)])
    rot = _rotation(rng, 10.0)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    u = (rot.T @ (world - centre[:, None])).reshape(3, *shape).astype(np.float32)
    u /= float(np.clip(scale.mean(), 0.25, 4.0))  # smaller test grids get a proportionally smaller head
    lab = _labels(rng, u, spacing)

    hu = np.array([t[0] for t in TISSUES.values()], dtype=np.float32)
    t1 = np.array([t[1] for t in TISSUES.values()], dtype=np.float32)
    tex = np.array([t[2] for t in TISSUES.values()], dtype=np.float32)
    # Per-subject variation of tissue properties (bone density, T1 contrast).
    hu = hu * np.where(hu > 200, rng.uniform(0.85, 1.15), 1.0)
    t1 = t1 * rng.uniform(0.92, 1.08, len(t1))

    # CT: tissue HU + per-tissue smooth texture, a slight blur (scanner PSF), then quantum-like noise.
    ct = hu[lab] + tex[lab] * _smooth_noise(rng, shape, 1.5, spacing)
    ct = ndimage.gaussian_filter(ct, [0.6 * min(spacing) / s for s in spacing])
    ct = ct + rng.normal(0.0, 12.0, shape)
    ct = np.clip(ct, -1024, 3071)

    # MR: tissue signal with partial-volume blur, smooth bias field, and Rician noise (magnitude of complex noise).
    mr = t1[lab] * (1.0 + 0.04 * _smooth_noise(rng, shape, 2.0, spacing))
    mr = ndimage.gaussian_filter(mr, [0.6 * min(spacing) / s for s in spacing])
    bias = np.exp(0.18 * _smooth_noise(rng, shape, 60.0, spacing))
    sigma = 0.025 * t1[LABELS["white"]]
    mr = np.sqrt((mr * bias + rng.normal(0.0, sigma, shape)) ** 2 + rng.normal(0.0, sigma, shape) ** 2)

    ct_vol = Volume(np.rint(ct).astype(np.int16), affine.copy())
    mr_vol = Volume(np.rint(mr).astype(np.int16), affine.copy())
    from medtranslate.imaging.transforms import body_mask

    mask = body_mask(ct_vol.array, "ct", affine)
    return PhantomSubject(mr=mr_vol, ct=ct_vol, labels=lab, mask=mask)


def misalign(volume: Volume, seed: int, max_deg: float, max_mm: float) -> tuple[Volume, dict[str, list[float]]]:
    """``volume`` moved on its own grid by a random rigid transform, as a scan taken on another day would be.

    Rotation: up to ``max_deg`` about each axis, about the centre of the field of view; shift: up to ``max_mm``
    along each axis. Returns the moved volume (same grid, linear interpolation, the volume's minimum where nothing
    moved in) and the transform's
    parameters (ITK convention: it maps points of the grid to the points of the original that land there).
    """
    import SimpleITK as sitk

    from medtranslate.preprocessing.register import resample_onto, to_sitk

    rng = np.random.default_rng(seed)
    angles = rng.uniform(-max_deg, max_deg, 3)
    shift = rng.uniform(-max_mm, max_mm, 3)
    tx = sitk.Euler3DTransform()
    img = to_sitk(volume)
    tx.SetCenter(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in volume.shape]))
    tx.SetRotation(*np.radians(angles))
    tx.SetTranslation(tuple(float(v) for v in shift))
    moved = resample_onto(volume, volume, tx, background=float(np.min(volume.array)))
    array = (
        np.rint(moved.array).astype(volume.array.dtype)
        if np.issubdtype(volume.array.dtype, np.integer)
        else moved.array
    )
    return Volume(array, volume.affine.copy()), {
        "rotation_deg_xyz": [round(float(a), 3) for a in angles],
        "translation_mm_lps": [round(float(v), 3) for v in shift],
    }


LDCT_DOSE = 0.25  # dose fraction of the low-dose sample pairs
LDCT_SLICES = slice(16, 48)  # the central 32 axial slices keep sample_data/ under its 45 MB budget

# Disjoint cohorts for unpaired training: subjects sub-11.. give only an MR (mr2ct) or a normal-dose CT (ldct),
# subjects sub-21.. only a CT or a low-dose CT; no subject is in both cohorts. The MR cohort is head-only on a
# coarser grid and the CT cohort head-and-neck on another, as scans from two departments are.
MR_ONLY_SPACING, MR_ONLY_SLICES = (2.0, 2.0, 3.0), 40  # 120 mm above the skull base's level: no neck
CT_ONLY_SPACING = (2.0, 2.0, 2.6)
COHORT_SPLIT = {
    "train": [f"sub-{n}" for n in (11, 12, 13, 14, 15, 21, 22, 23, 24, 25)],
    "val": ["sub-06"],
    "test": ["sub-07", "sub-08"],
}


def _resampled(volume: Volume, spacing: tuple[float, float, float], background: float) -> Volume:
    """``volume`` on a grid of ``spacing`` covering the same extent (same origin and axes), linearly interpolated."""
    import SimpleITK as sitk

    from medtranslate.imaging.volume import affine_to_sitk, sitk_to_volume

    img = affine_to_sitk(volume.array.astype(np.float32), volume.affine)
    size = [max(int(round(n * s / t)), 1) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing, strict=True)]
    out = sitk.Resample(
        img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing, img.GetDirection(), background
    )
    return sitk_to_volume(out, Path("phantom"), "nifti")


def _superior(volume: Volume, n: int) -> Volume:
    """The ``n`` most superior axial slices of ``volume``."""
    from medtranslate.imaging.transforms import axial_axis, axial_slab

    axis = axial_axis(volume.affine)
    depth = volume.shape[axis]
    upward = volume.affine[2, axis] > 0
    return axial_slab(volume, depth - n, depth) if upward else axial_slab(volume, 0, n)


def write_cohorts(
    out: str | Path, n_subjects: int = 5, seed: int = 2026, overwrite: bool = False, ldct: bool = True
) -> list[Path]:
    """Write disjoint cohorts beside the paired sample data, and ``<out>/split_cohorts.json``.

    - ``<out>/mr2ct/mr/sub-1N.nii.gz``: MR-only subjects, head only (the upper 120 mm) on a 2 x 2 x 3 mm grid;
    - ``<out>/mr2ct/ct/sub-2N.nii.gz``: CT-only subjects, head and neck on a 2 x 2 x 2.6 mm grid;
    - ``<out>/ldct/nd/sub-1N.nii.gz`` and ``<out>/ldct/ld/sub-2N.nii.gz``: normal-dose CTs of the first subjects and
      low-dose CTs of the others, simulated as the paired ones are.

    No mask files: each scan's body mask is made from itself. ``split_cohorts.json`` trains on the cohorts and keeps
    the paired sample set's validation and test cases, so a model trained on cohorts is scored as a paired one is.
    """
    from medtranslate.core.checks import require_int
    from medtranslate.core.errors import InputError
    from medtranslate.imaging.transforms import axial_slab
    from medtranslate.simulation.lowdose import simulate_lowdose, simulate_normal_dose, write_ct

    require_int("--cohorts", n_subjects, 0, 9, error=InputError)
    out = Path(out)
    written = []
    for k in range(n_subjects):
        for n, mr2ct_role, ldct_role in ((11 + k, "mr", "nd"), (21 + k, "ct", "ld")):
            sid = f"sub-{n}"
            subject = make_subject(seed * 1000 + n)
            path = out / "mr2ct" / mr2ct_role / f"{sid}.nii.gz"
            if mr2ct_role == "mr":
                vol = _superior(_resampled(subject.mr, MR_ONLY_SPACING, 0.0), MR_ONLY_SLICES)
                written.append(write_nifti(path, np.rint(vol.array), vol.affine, np.int16, overwrite=overwrite))
            else:
                vol = _resampled(subject.ct, CT_ONLY_SPACING, -1024.0)
                written.append(write_ct(path, Volume(np.rint(vol.array), vol.affine), overwrite=overwrite))
            if ldct:
                crop = axial_slab(subject.ct, LDCT_SLICES.start, LDCT_SLICES.stop)
                if ldct_role == "nd":
                    image = simulate_normal_dose(crop, name=f"{sid} CT")
                else:
                    image = simulate_lowdose(crop, LDCT_DOSE, seed=seed * 1000 + n, name=f"{sid} CT")[0]
                written.append(write_ct(out / "ldct" / ldct_role / f"{sid}.nii.gz", image, overwrite=overwrite))
            logger.info("wrote cohort subject %s", sid)
    if n_subjects:
        split = dict(COHORT_SPLIT)
        split["train"] = [s for s in split["train"] if int(s[4:]) % 10 <= n_subjects]
        written.append(atomic_write_text(out / "split_cohorts.json", json.dumps(split, indent=2) + "\n"))
    return written


def write_sample_data(
    out: str | Path,
    n_subjects: int = 8,
    seed: int = 2026,
    overwrite: bool = False,
    ldct: bool = True,
    misalign_deg: float = 0.0,
    misalign_mm: float = 0.0,
    cohorts: int = 5,
) -> list[Path]:
    """Write the sample data set and ``<out>/split.json``.

    - ``<out>/mr2ct/sub-XX/{mr,ct,mask}.nii.gz``: paired MR/CT phantoms and the CT body mask; with ``misalign_deg``
      or ``misalign_mm`` the MR is moved by a random rigid transform of up to that much per axis (as real MR and CT,
      taken on different days, are), and ``misalignment.json`` beside it says by how much;
    - ``<out>/ldct/sub-XX/{ld,nd}.nii.gz``: low-dose (25 %) / normal-dose pairs simulated in the projection domain
      from the central 32 slices of each phantom CT (see :mod:`medtranslate.simulation.lowdose`);
    - ``cohorts`` subjects in each of two disjoint cohorts and ``<out>/split_cohorts.json`` (:func:`write_cohorts`).

    Deterministic: the same seed writes the same voxels.
    """
    from medtranslate.core.checks import require_int
    from medtranslate.core.errors import InputError
    from medtranslate.imaging.transforms import axial_slab
    from medtranslate.simulation.lowdose import simulate_lowdose, write_ct

    require_int("--subjects", n_subjects, 1, 10 if cohorts else 999, error=InputError)  # cohorts are sub-11..
    require_int("--seed", seed, 0, 2**31, error=InputError)
    if (Path(out) / "split.json").exists() and not overwrite:  # checked first: it is written last
        from medtranslate.core.errors import OutputError

        raise OutputError(f"{Path(out) / 'split.json'}: already exists; choose another --out or pass --overwrite")
    from medtranslate.core.checks import require_number

    require_number("--misalign degrees", misalign_deg, minimum=0, maximum=45, error=InputError)
    require_number("--misalign mm", misalign_mm, minimum=0, maximum=100, error=InputError)
    out = Path(out)
    written = []
    for n in range(1, n_subjects + 1):
        sid = f"sub-{n:02d}"
        subject = make_subject(seed * 1000 + n)
        folder = out / "mr2ct" / sid
        mr, moved_by = subject.mr, None
        if misalign_deg or misalign_mm:
            mr, moved_by = misalign(mr, seed * 1000 + n + 500, misalign_deg, misalign_mm)
        written.append(write_nifti(folder / "mr.nii.gz", mr.array, mr.affine, np.int16, overwrite=overwrite))
        if moved_by is not None:  # after the MR, whose write refuses an existing file without overwrite
            written.append(atomic_write_text(folder / "misalignment.json", json.dumps(moved_by, indent=2) + "\n"))
        written.append(
            write_nifti(folder / "ct.nii.gz", subject.ct.array, subject.ct.affine, np.int16, overwrite=overwrite)
        )
        written.append(
            write_nifti(folder / "mask.nii.gz", subject.mask, subject.ct.affine, np.uint8, overwrite=overwrite)
        )
        if ldct:
            crop = axial_slab(subject.ct, LDCT_SLICES.start, LDCT_SLICES.stop)
            ld, nd = simulate_lowdose(crop, LDCT_DOSE, seed=seed * 1000 + n, name=f"{sid} CT")
            for name, vol in (("ld", ld), ("nd", nd)):
                written.append(write_ct(out / "ldct" / sid / f"{name}.nii.gz", vol, overwrite=overwrite))
        logger.info("wrote %s", sid)
    written += write_cohorts(out, cohorts, seed, overwrite, ldct)
    split = {k: [s for s in v if int(s[4:]) <= n_subjects] for k, v in SAMPLE_SPLIT.items()}
    written.append(atomic_write_text(out / "split.json", json.dumps(split, indent=2) + "\n"))
    return written
