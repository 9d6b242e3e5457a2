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
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medtranslate.core.atomic import atomic_output
from medtranslate.core.checks import require_exists
from medtranslate.core.errors import InputError, OutputError, native_call
from medtranslate.imaging.volume import Volume, check_affine, check_array, sitk_to_volume
from medtranslate.io.cases import NIFTI_SUFFIXES, SITK_SUFFIXES, Case
from medtranslate.io.dicom import DICOM_SUFFIXES, is_dicom_file, read_series
from medtranslate.io.dicom import write_series as write_dicom_series

__all__ = [
    "read_volume",
    "read_case",
    "write_nifti",
    "write_dicom_series",
    "convert_to_nifti",
    "sha256",
]

logger = logging.getLogger(__name__)
# ITK prints warnings straight to stderr (e.g. "no DICOM files" for an empty folder); we raise our own errors instead.
sitk.ProcessObject.SetGlobalWarningDisplay(False)

# ----------------------------------------------------------------------------------------------------- reading


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
    array = check_array(np.asarray(array), path)
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
    path = require_exists(path)
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
