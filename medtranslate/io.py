"""Read any common scan format into one in-memory form, find and pair cases, write NIfTI atomically.

The in-memory form is a :class:`Volume`: a numpy array indexed (i, j, k) as stored, and a 4x4 affine that maps
voxel indices to RAS world coordinates in mm (the NIfTI convention). NIfTI files are read with nibabel (which,
unlike SimpleITK, raises on a truncated ``.nii.gz``); NRRD, MetaImage and DICOM series with SimpleITK, whose LPS
geometry is converted to RAS.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .errors import InputError, OutputError

__all__ = [
    "Volume",
    "Case",
    "Pair",
    "read_volume",
    "read_case",
    "write_nifti",
    "write_dicom_series",
    "find_cases",
    "pair_cases",
    "atomic_path",
    "atomic_write_text",
    "affine_to_sitk",
    "case_id_from_name",
    "convert_to_nifti",
]

logger = logging.getLogger(__name__)
# ITK prints warnings straight to stderr (e.g. "no DICOM files" for an empty folder); we raise our own errors instead.
sitk.ProcessObject.SetGlobalWarningDisplay(False)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".ima")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES + DICOM_SUFFIXES
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Names (case-insensitive) that say which kind of image a file or folder holds.
ROLE_ALIASES: dict[str, str] = {
    "mr": "mr", "mri": "mr", "t1": "mr", "t1w": "mr",
    "ct": "ct",
    "ld": "ld", "low": "ld", "lowdose": "ld", "low_dose": "ld", "ldct": "ld",
    "nd": "nd", "full": "nd", "fulldose": "nd", "full_dose": "nd", "normal": "nd", "ndct": "nd",
    "mask": "mask", "body": "mask", "bodymask": "mask", "body_mask": "mask",
    "sct": "sct", "denoised": "denoised",
}


@dataclass
class Volume:
    """A 3D scan: voxel array (i, j, k) plus a voxel-to-RAS-mm affine.

    Attributes:
        array: the voxel values, in the file's own dtype (HU for CT).
        affine: 4x4 float64 matrix from voxel index to RAS world coordinates (mm).
        source: where it was read from ("" when made in memory).
        format: nifti | nrrd | metaimage | dicom | memory.
        modality: DICOM modality when known (e.g. "CT", "MR").
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    format: str = "memory"
    modality: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


@dataclass(frozen=True)
class Case:
    """One readable image found in a folder: a file, or one DICOM series in a folder."""

    case_id: str
    path: Path
    role: str | None = None
    series_uid: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}" + (f" (series {self.series_uid})" if self.series_uid else "")


@dataclass
class Pair:
    """Cases of one subject matched by id: a source image, a target image and optionally a mask."""

    case_id: str
    source: Case
    target: Case | None = None
    mask: Case | None = None


# ----------------------------------------------------------------------------------------------------- reading


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_volume(array: np.ndarray, path: Path) -> np.ndarray:
    """Squeeze trailing singleton dimensions and reject what is not one 3D volume."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        raise InputError(
            f"{path}: 4D image of shape {array.shape} (a time series or several channels); "
            "medtranslate translates one 3D volume per file: split it into 3D volumes first"
        )
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(
            f"{path}: image of shape {array.shape} is not a 3D volume; medtranslate needs a 3D scan "
            "(for DICOM, pass the folder holding all slices of the series, not one slice)"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{path}: {bad} voxels are NaN or infinite; fix or replace them (e.g. with the background value)")
    return array


def _read_nifti(path: Path) -> Volume:
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise InputError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc}); the file is corrupt or truncated, re-export it") from exc
    array = _check_volume(np.asarray(array), path)
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), source=str(path), format="nifti")


def sitk_to_volume(img: sitk.Image, path: Path, fmt: str, modality: str | None = None) -> Volume:
    """Convert a SimpleITK image (LPS geometry, array z-y-x) into a :class:`Volume` (RAS affine, array i-j-k)."""
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector data); "
            "medtranslate needs a single-channel 3D scan"
        )
    array = sitk.GetArrayFromImage(img)
    array = _check_volume(array.transpose(tuple(range(array.ndim))[::-1]), path)
    dim = img.GetDimension()
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.array(img.GetSpacing(), dtype=np.float64)[:3])
    affine[:3, 3] = np.array(img.GetOrigin(), dtype=np.float64)[:3]
    return Volume(array=array, affine=_LPS_TO_RAS @ affine, source=str(path), format=fmt, modality=modality)


def affine_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Build a SimpleITK image (LPS) from an (i, j, k) array and a voxel-to-RAS affine."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return img


def _read_sitk_file(path: Path) -> Volume:
    suffix = path.suffix.lower()
    fmt = "nrrd" if suffix in (".nrrd", ".nhdr") else "metaimage" if suffix in (".mha", ".mhd") else "dicom"
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(f"{path}: cannot read as {fmt} image ({first}); the file is corrupt or not an image") from exc
    return sitk_to_volume(img, path, fmt)


def _dicom_series(folder: Path) -> list[str]:
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def _read_dicom_series(folder: Path, series_uid: str | None) -> Volume:
    series = _dicom_series(folder)
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series (and no other image file was given); point to a DICOM folder or an image file")
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"{folder}: DICOM folder holds {len(series)} series ({', '.join(series)}); "
                "put each series in its own folder, or pass the parent folder to a batch command so each series becomes its own case"
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise InputError(f"{folder}: no DICOM series {series_uid} here; found: {', '.join(series)}")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()  # GDCM applies RescaleSlope/Intercept: CT comes out in HU
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series {series_uid} ({str(exc).strip().splitlines()[-1]})") from exc
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
    volume = sitk_to_volume(img, folder, "dicom", modality=modality)
    # GDCM widens integer data when it applies a rescale; keep int16 when the values fit, as other formats do.
    if volume.array.dtype.kind in "iu" and volume.array.dtype.itemsize > 2 and volume.array.min() >= -32768 and volume.array.max() <= 32767:
        volume.array = volume.array.astype(np.int16)
    return volume


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a 3D scan from NIfTI, NRRD, MetaImage, a DICOM file or a DICOM series folder.

    Args:
        path: a file, or a folder holding one DICOM series (or several, with ``series_uid``).
        series_uid: which DICOM series to read when a folder holds several.

    Returns:
        The volume with a voxel-to-RAS affine; CT from DICOM in HU.

    Raises:
        InputError: the path is missing, unreadable, not 3D, or holds NaN voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return _read_dicom_series(path, series_uid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    if name.endswith(SITK_SUFFIXES + DICOM_SUFFIXES) or _is_dicom_file(path):
        return _read_sitk_file(path)
    raise InputError(
        f"{path}: unrecognised image format; medtranslate reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
        "MetaImage (.mha, .mhd) and DICOM (a folder of slices)"
    )


def read_case(case: Case) -> Volume:
    """Read the volume behind a :class:`Case` found by :func:`find_cases`."""
    return read_volume(case.path, series_uid=case.series_uid)


# ----------------------------------------------------------------------------------------------------- writing


def atomic_path(path: Path) -> Path:
    """A hidden temporary name beside ``path`` with the same suffix, for write-then-rename."""
    name = path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    return path.with_name(f".{name[: len(name) - len(suffix)]}.partial-{os.getpid()}{suffix}")


def atomic_write_text(path: Path, text: str) -> Path:
    """Write text to a temporary name beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); check the folder is writable") from exc
    return path


def write_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    dtype: np.dtype | type | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a NIfTI file atomically (temporary name, then rename) with qform and sform both set.

    Args:
        path: target ``.nii`` or ``.nii.gz`` file.
        array: voxel values (i, j, k).
        affine: voxel-to-RAS affine.
        dtype: on-disk dtype (values are rounded and clipped to its range when it is an integer type).
        overwrite: replace an existing file; without it an existing file is an error.

    Raises:
        OutputError: the target exists (without ``overwrite``), has the wrong suffix, or cannot be written.
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise OutputError(f"{path}: output must end in .nii.gz or .nii")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; choose another name or pass --overwrite")
    data = np.asarray(array)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        data = data.astype(dtype)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    tmp = atomic_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); check the folder exists and is writable") from exc
    return path


def write_dicom_series(
    folder: str | os.PathLike,
    volume: Volume,
    modality: str = "CT",
    series_description: str = "medtranslate",
    rescale_intercept: float = 0.0,
    comments: str | None = None,
) -> list[Path]:
    """Write a volume as a DICOM series (one file per slice along k), keeping its geometry.

    Values are stored as int16 (or uint16 when ``rescale_intercept`` makes them non-negative) with
    RescaleSlope 1 and the given RescaleIntercept, so readers recover the values (HU for CT) exactly.
    The folder is written under a temporary name and renamed into place.
    """
    folder = Path(folder)
    if folder.exists():
        raise OutputError(f"{folder}: already exists; choose another folder")
    # ITK's DICOM writer applies the inverse rescale itself, (value - intercept) / slope, from the tags we set:
    # hand it the values in output units, as int16 (HU fit), and it stores them as unsigned when intercept allows.
    values = np.clip(np.rint(np.asarray(volume.array, dtype=np.float64)), -32768, 32767).astype(np.int16)
    img = affine_to_sitk(values, volume.affine)
    study_uid, series_uid, frame_uid = (pydicom_uid() for _ in range(3))
    direction = img.GetDirection()
    iop = "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    sx, sy, sz = img.GetSpacing()
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(img.GetDepth()):
        slc = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": pydicom_uid(),
            "0008|103e": series_description,
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0052": frame_uid,
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": iop,
            "0028|0030": f"{sy:.6f}\\{sx:.6f}",
            "0018|0050": f"{sz:.6f}",
            "0028|1052": f"{rescale_intercept:g}",
            "0028|1053": "1",
            "0028|1054": "HU" if modality == "CT" else "US",
        }
        if comments:
            tags["0020|4000"] = comments[:10240]
        for key, value in tags.items():
            slc.SetMetaData(key, value)
        out = tmp / f"slice_{k:04d}.dcm"
        writer.SetFileName(str(out))
        writer.Execute(slc)
        paths.append(folder / out.name)
    os.replace(tmp, folder)
    return paths


def pydicom_uid() -> str:
    """A new, globally unique DICOM UID."""
    from pydicom.uid import generate_uid

    return str(generate_uid())


# ----------------------------------------------------------------------------------------------------- discovery


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _role_of(name: str) -> str | None:
    return ROLE_ALIASES.get(name.lower())


def case_id_from_name(name: str, parent: str) -> tuple[str, str | None]:
    """Case id and role from a file (or DICOM folder) name and its parent folder's name.

    ``<id>/mr.nii.gz`` and ``mr/<id>.nii.gz`` both give (``<id>``, ``"mr"``); ``<id>_ct.nii.gz`` gives
    (``<id>``, ``"ct"``); anything else gives (stem, None).
    """
    stem = _strip_suffix(name)
    if _role_of(stem):
        return parent, _role_of(stem)
    if _role_of(parent):
        return stem, _role_of(parent)
    match = re.match(r"^(.+?)[_\-.]([A-Za-z0-9]+)$", stem)
    if match and _role_of(match.group(2)):
        return match.group(1), _role_of(match.group(2))
    return stem, None


def find_cases(folder: str | os.PathLike) -> list[Case]:
    """List every image case below ``folder`` (or the single case a file is).

    Image files are recognised by suffix (NIfTI, NRRD, MetaImage); a folder holding DICOM files gives one case per
    series (SeriesInstanceUID). Case ids and roles come from names, see :func:`case_id_from_name`.

    Raises:
        InputError: the path does not exist, holds no images, or two images claim the same id and role.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder; check the path")
    if root.is_file():
        cid, role = case_id_from_name(root.name, root.parent.name)
        return [Case(cid, root, role)]
    cases: list[Case] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        dicom_here = False
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # hidden files, including our own partial outputs
            path = here / name
            low = name.lower()
            if low.endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
                cid, role = case_id_from_name(name, here.name)
                cases.append(Case(cid, path, role))
            elif low.endswith(DICOM_SUFFIXES) or (not Path(low).suffix and _is_dicom_file(path)):
                dicom_here = True
        if dicom_here:
            series = _dicom_series(here)
            parent = here.parent.name if here != root else here.name
            cid, role = case_id_from_name(here.name, parent)
            for n, uid in enumerate(series):
                sid = cid if len(series) == 1 else f"{cid}_s{n + 1}"
                cases.append(Case(sid, here, role, series_uid=uid))
    if not cases:
        raise InputError(
            f"{root}: no images found (looked for .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd and DICOM series); check the folder"
        )
    seen: dict[tuple[str, str | None], Case] = {}
    for case in cases:
        key = (case.case_id, case.role)
        if key in seen:
            raise InputError(
                f"{root}: two images have case id '{case.case_id}'"
                + (f" and role '{case.role}'" if case.role else "")
                + f": {seen[key].label} and {case.label}; rename one so each case id is unique"
            )
        seen[key] = case
    return cases


def pair_cases(
    cases: list[Case],
    source_role: str,
    target_role: str | None,
) -> tuple[list[Pair], dict[str, str]]:
    """Match source and target images (and masks) of the same case id.

    Args:
        cases: from :func:`find_cases`.
        source_role: e.g. "mr" or "ld".
        target_role: e.g. "ct" or "nd"; None when only sources are needed.

    Returns:
        The complete pairs sorted by id, and {case id: reason} for every case that could not be paired.
    """
    by_id: dict[str, dict[str, Case]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, {})[case.role or "?"] = case
    pairs, unmatched = [], {}
    for cid in sorted(by_id):
        roles = by_id[cid]
        src = roles.get(source_role)
        tgt = roles.get(target_role) if target_role else None
        if src is None:
            unmatched[cid] = f"no {source_role} image (found: {', '.join(sorted(roles))})"
            continue
        if target_role and tgt is None:
            unmatched[cid] = f"no {target_role} image (found: {', '.join(sorted(roles))})"
            continue
        pairs.append(Pair(cid, src, tgt, roles.get("mask")))
    return pairs, unmatched


def convert_to_nifti(source: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert one readable scan (file or DICOM series folder) to NIfTI, keeping values, dtype and geometry.

    Raises:
        InputError: the source cannot be read.
        OutputError: the output is the source itself, exists (without ``overwrite``), or cannot be written.
    """
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve() or (source.is_dir() and source.resolve() in output.resolve().parents):
        raise OutputError(f"{output}: output would overwrite or write into the input {source}; choose another output path")
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists; choose another name or pass --overwrite")
    volume = read_volume(source)
    return write_nifti(output, volume.array, volume.affine, overwrite=overwrite)
