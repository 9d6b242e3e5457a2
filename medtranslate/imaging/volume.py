"""A scan in memory: a voxel array and its voxel-to-RAS affine in mm, with the geometry every layer shares.

:class:`Volume` is the one in-memory form of a scan (the NIfTI convention: array indexed (i, j, k) as stored, affine
from voxel index to RAS world coordinates in mm). The checks here refuse what is not one real-valued 3D volume on a
valid grid, naming the file; SimpleITK images (LPS) convert to and from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medtranslate.core.errors import InputError

__all__ = ["Volume", "voxel_spacing", "check_affine", "check_array", "sitk_to_volume", "affine_to_sitk", "to_ras"]

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


def check_array(array: np.ndarray, path: Path) -> np.ndarray:
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


def sitk_to_volume(img: sitk.Image, path: Path, fmt: str, modality: str | None = None) -> Volume:
    """Convert a SimpleITK image (LPS geometry, array z-y-x) into a :class:`Volume` (RAS affine, array i-j-k)."""
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector data); "
            "medtranslate needs a single-channel 3D scan"
        )
    array = sitk.GetArrayFromImage(img)
    array = check_array(array.transpose(tuple(range(array.ndim))[::-1]), path)
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


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reordered to RAS+ voxel axes (R, A, S; flips and transposes only, no resampling) and its voxel
    sizes (mm) in that order: for views and beams that must know which way is up, whatever the file's orientation."""
    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(np.asarray(array), ornt)
    spacing = voxel_spacing(affine)
    return data, tuple(float(spacing[int(i)]) for i in ornt[:, 0].argsort())  # type: ignore[return-value]
