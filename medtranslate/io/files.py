"""Read any common scan format into one in-memory form, write NIfTI atomically (cases are found in :mod:`.cases`).

The in-memory form is a :class:`Volume`: a numpy array indexed (i, j, k) as stored, and a 4x4 affine that maps
voxel indices to RAS world coordinates in mm (the NIfTI convention). NIfTI files are read with nibabel (which,
unlike SimpleITK, raises on a truncated ``.nii.gz``); NRRD and MetaImage with SimpleITK, whose LPS geometry is
converted to RAS; DICOM series by :mod:`medtranslate.io.dicom`, which checks the slice geometry.

Every reader refuses what is not one real-valued 3D volume on a valid grid (complex or colour voxels, NaN voxels, a
voxel-to-world matrix with a zero or NaN column) with an :class:`InputError` naming the file, so no such file
reaches the transforms, where it would fail with a library's traceback or, worse, give a volume on a wrong grid.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medtranslate.core.atomic import atomic_output
from medtranslate.core.errors import InputError, OutputError, native_call
from medtranslate.io.cases import NIFTI_SUFFIXES, SITK_SUFFIXES, Case
from medtranslate.io.dicom import DICOM_SUFFIXES, is_dicom_file, read_series
from medtranslate.io.dicom import write_series as write_dicom_series

__all__ = [
    "Volume",
    "read_volume",
    "read_case",
    "write_nifti",
    "write_dicom_series",
    "affine_to_sitk",
    "voxel_spacing",
    "check_affine",
    "sitk_to_volume",
    "convert_to_nifti",
    "sha256",
    "to_ras",
]

logger = logging.getLogger(__name__)
# ITK prints warnings straight to stderr (e.g. "no DICOM files" for an empty folder); we raise our own errors instead.
sitk.ProcessObject.SetGlobalWarningDisplay(False)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D scan: voxel array (i, j, k) plus a voxel-to-RAS-mm affine.

    Attributes:
        array: the voxel values, in the file's own dtype (HU for CT).
        affine: 4x4 float64 matrix from voxel index to RAS world coordinates (mm).
        source: where it was read from ("" when made in memory).
        format: nifti | nrrd | metaimage | dicom | memory.
        modality: DICOM modality when known (e.g. "CT", "MR").
        unit: the spatial unit the file declares (NIfTI ``xyzt_units``: mm, meter, micron or unknown, read as mm).
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    format: str = "memory"
    modality: str | None = None
    unit: str = "mm"  # the spatial unit the file declared (the affine is always in mm: metres and microns converted)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in voxel_spacing(self.affine))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along the array axes i, j, k: the lengths of the affine's first three columns."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


# ----------------------------------------------------------------------------------------------------- reading


def check_affine(affine: np.ndarray, path: str | Path) -> np.ndarray:
    """Raise unless ``affine`` is a finite voxel-to-world matrix with three independent, non-zero axes."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(
            f"{path}: the voxel-to-world matrix (affine) holds NaN or infinite values; fix the header (origin, "
            "spacing, direction) or re-export the image"
        )
    spacing = voxel_spacing(affine)
    if (spacing < 1e-6).any():
        axes = ", ".join("ijk"[i] for i in np.flatnonzero(spacing < 1e-6))
        raise InputError(
            f"{path}: voxel spacing is zero along axis {axes}; fix the header (pixdim / spacing) or re-export the image"
        )
    if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-6:
        raise InputError(
            f"{path}: the voxel axes are parallel (a degenerate direction matrix); fix the header or re-export the "
            "image"
        )
    return affine


def _check_volume(array: np.ndarray, path: Path) -> np.ndarray:
    """Squeeze trailing singleton dimensions and reject what is not one real-valued 3D volume."""
    if array.dtype.names is not None or array.dtype.kind == "V":
        raise InputError(
            f"{path}: voxels are colour (RGB) or structured values; medtranslate needs one grey value per voxel: "
            "convert to greyscale first"
        )
    if array.dtype.kind == "c":
        raise InputError(
            f"{path}: voxels are complex numbers (raw MR k-space or phase data?); medtranslate needs real-valued "
            "images: save the magnitude image"
        )
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"{path}: voxels of type {array.dtype} are not numbers medtranslate can use; save the image as integers "
            "or floats"
        )
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:  # one slice: for a slice-wise tool, a volume of depth 1
        array = array[:, :, None]
    if array.ndim == 4:
        raise InputError(
            f"{path}: 4D image of shape {array.shape} (a time series or several channels); "
            "medtranslate translates one 3D volume per file: split it into 3D volumes first"
        )
    if array.ndim != 3 or sorted(array.shape)[1] < 2:
        raise InputError(
            f"{path}: image of shape {array.shape} is not a slice or a volume (a line or a point); medtranslate needs "
            "a 3D scan or one slice of it"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(
            f"{path}: {bad} voxels are NaN or infinite; fix or replace them (e.g. with the background value)"
        )
    return array


def _read_nifti(path: Path) -> Volume:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for files that are not NIfTI
        raise InputError(
            f"{path}: cannot read as NIfTI ({_reason(exc)}); the file is corrupt or not an image, re-export it"
        ) from exc
    _check_nifti_size(img, path)
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated data
        raise InputError(
            f"{path}: cannot read as NIfTI ({_reason(exc)}); the file is corrupt or truncated, re-export it"
        ) from exc
    array = _check_volume(np.asarray(array), path)
    affine, unit = _affine_in_mm(img, path)
    return Volume(array=array, affine=check_affine(affine, path), source=str(path), format="nifti", unit=unit)


# NIfTI's spatial units (xyzt_units) in mm; "unknown" (0) is read as mm, as nibabel, ITK and every viewer do
_NIFTI_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


def _affine_in_mm(img: nib.Nifti1Image, path: Path) -> tuple[np.ndarray, str]:
    """The voxel-to-world affine in mm whatever spatial unit the header declares, and that unit."""
    unit = str(img.header.get_xyzt_units()[0]) if hasattr(img.header, "get_xyzt_units") else "unknown"
    scale = _NIFTI_MM.get(unit, 1.0)
    affine = np.array(img.affine, dtype=np.float64)
    if scale != 1.0:
        affine[:3, :] *= scale  # voxel axes and origin alike
        logger.info("%s: spatial unit %s in the header; spacing and origin converted to mm", path, unit)
    return affine, unit


def _reason(exc: BaseException) -> str:
    """A library's exception as one short line: type and the first line of its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _check_nifti_size(img: nib.Nifti1Image, path: Path) -> None:
    """An uncompressed file shorter than its header says is truncated: refuse it before allocating the voxels."""
    if path.name.lower().endswith(".gz"):
        return
    header = img.header
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
    expected = offset + int(np.prod(header.get_data_shape(), dtype=np.float64)) * header.get_data_dtype().itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            f"{path}: truncated: the header promises {expected} bytes, the file holds {actual}; the copy is "
            "incomplete, re-export or copy it again"
        )


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
    return Volume(
        array=array, affine=check_affine(_LPS_TO_RAS @ affine, path), source=str(path), format=fmt, modality=modality
    )


def affine_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Build a SimpleITK image (LPS) from an (i, j, k) array and a voxel-to-RAS affine."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = voxel_spacing(lps)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return img


def _read_sitk_file(path: Path) -> Volume:
    suffix = path.suffix.lower()
    fmt = "nrrd" if suffix in (".nrrd", ".nhdr") else "metaimage" if suffix in (".mha", ".mhd") else "dicom"
    try:
        img = native_call(lambda: sitk.ReadImage(str(path)), path, logger)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read as {fmt} image ({exc}); the file is corrupt or not an image") from exc
    return sitk_to_volume(img, path, fmt)


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
        return read_series(path, series_uid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    if name.endswith(SITK_SUFFIXES + DICOM_SUFFIXES) or is_dicom_file(path):
        return _read_sitk_file(path)
    raise InputError(
        f"{path}: unrecognised image format; medtranslate reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
        "MetaImage (.mha, .mhd) and DICOM (a folder of slices)"
    )


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, or of a folder's files (names and contents, in name order; e.g. a DICOM series)."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reordered to RAS+ voxel axes (R, A, S; flips and transposes only, no resampling) and its voxel
    sizes (mm) in that order: for views and beams that must know which way is up, whatever the file's orientation."""
    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(np.asarray(array), ornt)
    spacing = voxel_spacing(affine)
    return data, tuple(float(spacing[int(i)]) for i in ornt[:, 0].argsort())  # type: ignore[return-value]


def read_case(case: Case) -> Volume:
    """Read the volume behind a :class:`Case` found by :func:`find_cases`."""
    return read_volume(case.path, series_uid=case.series_uid)


# ----------------------------------------------------------------------------------------------------- writing


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
    affine = check_affine(affine, path)
    data = np.asarray(array)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(dtype)
            data = np.rint(data)  # one temporary, clipped in place: a large volume is not copied twice more
            np.clip(data, info.min, info.max, out=data)
        data = data.astype(dtype, copy=False)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def convert_to_nifti(source: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert one readable scan (file or DICOM series folder) to NIfTI, keeping values, dtype and geometry.

    Raises:
        InputError: the source cannot be read.
        OutputError: the output is the source itself, exists (without ``overwrite``), or cannot be written.
    """
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve() or (source.is_dir() and source.resolve() in output.resolve().parents):
        raise OutputError(
            f"{output}: output would overwrite or write into the input {source}; choose another output path"
        )
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists; choose another name or pass --overwrite")
    volume = read_volume(source)
    return write_nifti(output, volume.array, volume.affine, overwrite=overwrite)
