"""Delineated structures of a case (target, organs at risk) as masks on its CT's grid: NIfTI masks or a DICOM RTSTRUCT.

A case's structures are a folder ``<root>/<id>/`` holding masks (``<name>.nii.gz``, nonzero inside; any grid, as
they are resampled by nearest neighbour wherever they are used) and/or RT Structure Set files (``.dcm``, Modality
RTSTRUCT; other DICOM files there, such as the CT's slices of an export, are skipped), or a single RT Structure Set
file ``<root>/<id>.dcm``. An RTSTRUCT's closed planar contours (patient
coordinates, LPS mm) are filled on the planes of the CT they were drawn on: a voxel is inside when its centre is
inside a contour, and contours on one plane are combined by exclusive or, so a contour inside another is a hole (the
convention of the RTSTRUCT exports of the usual planning systems).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from medtranslate.core.errors import InputError
from medtranslate.imaging.volume import Volume
from medtranslate.io.cases import NIFTI_SUFFIXES, strip_suffix

__all__ = ["read_structures", "rasterise_rtstruct", "split_structures", "structure_key"]

logger = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# names (lower case) of structures that are not organs at risk: the body outline (made from the CT instead) and the
# target volumes nested inside a planning target (ICRU 50/62: GTV in CTV in ITV in PTV)
NOT_ORGANS = re.compile(r"^(body|external|skin|outline|gtv|ctv|itv|ptv|target)")
PLANE_TOLERANCE = 0.1  # voxels: a contour whose points leave its plane by more is not drawn on this CT's slices


def structure_key(name: str) -> str:
    """A structure's name as a metric column may hold it: lower case, runs of anything else than a-z0-9 as one _."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "structure"


def _fill_contour(mask: np.ndarray, ijk: np.ndarray, where: str) -> None:
    """XOR one closed planar contour (continuous voxel coordinates, N x 3) into ``mask``."""
    from skimage.draw import polygon

    spread = ijk.max(axis=0) - ijk.min(axis=0)
    flat = [a for a in range(3) if spread[a] <= PLANE_TOLERANCE]
    if not flat:
        raise InputError(
            f"{where}: a contour does not lie in a plane of the CT's voxel grid (it spans {np.round(spread, 2)} "
            "voxels); the RTSTRUCT must be drawn on this CT (or give the structures as NIfTI masks)"
        )
    axis = flat[-1]  # k for axial contours of an axial CT
    plane = int(round(float(ijk[:, axis].mean())))
    if not 0 <= plane < mask.shape[axis]:
        return  # a contour beyond the CT's slices covers no voxel of it
    rows, cols = (a for a in range(3) if a != axis)
    rr, cc = polygon(ijk[:, rows], ijk[:, cols], (mask.shape[rows], mask.shape[cols]))
    index: list = [slice(None)] * 3
    index[axis] = plane
    view = mask[tuple(index)]  # a view: the XOR lands in ``mask``
    view[rr, cc] ^= True


def _is_rtstruct(path: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"])
    except Exception:  # not DICOM at all: rasterise_rtstruct names it
        return True
    return str(ds.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS or ds.get("Modality") == "RTSTRUCT"


def rasterise_rtstruct(path: Path, reference: Volume) -> dict[str, Volume]:
    """Every structure of an RT Structure Set with closed planar contours, as a mask on ``reference``'s grid."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # pydicom raises several kinds for a file that is not DICOM
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS and ds.get("Modality") != "RTSTRUCT":
        raise InputError(f"{path}: not an RT Structure Set (Modality {ds.get('Modality')}); give RTSTRUCT files only")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    to_voxel = np.linalg.inv(reference.affine)
    out = {}
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"roi_{int(roi.ReferencedROINumber)}")
        mask = np.zeros(reference.shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue  # points and open lines enclose no volume
            lps = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            ras = np.c_[-lps[:, 0], -lps[:, 1], lps[:, 2], np.ones(len(lps))]
            _fill_contour(mask, (ras @ to_voxel.T)[:, :3], f"{path}, structure '{name}'")
        if mask.any():
            out[name] = Volume(mask.astype(np.uint8), reference.affine, source=str(path), format="dicom")
        else:
            logger.warning("%s: structure '%s' covers no voxel of the CT; left out", path, name)
    return out


def read_structures(root: Path, case_id: str, reference: Volume) -> dict[str, Volume]:
    """The structures of case ``case_id`` under ``root`` (module docstring), each a mask; InputError when there are
    none or two share a name."""
    from medtranslate.io.files import read_volume

    folder, single = root / case_id, root / f"{case_id}.dcm"
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [single] * single.is_file()
    out: dict[str, Volume] = {}
    for path in files:
        low = path.name.lower()
        if low.endswith(NIFTI_SUFFIXES):
            found = {strip_suffix(path.name): read_volume(path)}
        elif low.endswith(".dcm") and (path == single or _is_rtstruct(path)):
            found = rasterise_rtstruct(path, reference)  # in a folder, other DICOM files (the CT's slices) are skipped
        else:
            continue
        for name, mask in found.items():
            if name.lower() in (n.lower() for n in out):
                raise InputError(f"{path}: a second structure named '{name}' for case '{case_id}'; rename one")
            out[name] = mask
    if not out:
        raise InputError(
            f"case '{case_id}': no structures in {folder} or {single} (expected <name>.nii.gz masks or an RTSTRUCT "
            ".dcm)"
        )
    return out


def split_structures(
    structures: dict[str, Volume], target_name: str | None, where: str
) -> tuple[Volume | None, dict[str, Volume]]:
    """The target and the organs at risk among a case's structures.

    The target is the structure named ``target_name`` (case-insensitive) when given, else the one named ``target``
    or ``PTV...``; None when there is none (the caller's default target then). Organs are the others, except the body
    outline and nested target volumes (:data:`NOT_ORGANS`), which are logged as not used.
    """
    by_lower = {n.lower(): n for n in structures}
    if target_name is not None:
        if target_name.lower() not in by_lower:
            raise InputError(
                f"{where}: no structure named '{target_name}' (found: {', '.join(sorted(structures))}); check "
                "--target-name"
            )
        target = by_lower[target_name.lower()]
    else:
        candidates = [n for n in structures if n.lower() == "target" or n.lower().startswith("ptv")]
        if len(candidates) > 1:
            raise InputError(
                f"{where}: several possible targets ({', '.join(sorted(candidates))}); name one with --target-name"
            )
        target = candidates[0] if candidates else None
    organs = {n: v for n, v in structures.items() if n != target and not NOT_ORGANS.match(n.lower())}
    skipped = sorted(set(structures) - set(organs) - {target})
    if skipped:
        logger.info("%s: not used as organs at risk: %s", where, ", ".join(skipped))
    return (structures[target] if target else None), organs
