"""Describe scans for ``medtranslate info``: format, geometry, intensities, and whether they look like CT or MR."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from medtranslate.core.errors import InputError, MedTranslateError
from medtranslate.imaging.volume import Volume
from medtranslate.io.cases import find_cases
from medtranslate.io.files import read_case

__all__ = ["looks_like", "looks_like_hu", "check_modality", "describe_volume", "describe_paths", "format_table"]

logger = logging.getLogger(__name__)

# Hounsfield units: air near -1000 in at least 1 % of the voxels (a scan of a body holds air around it; -800 leaves
# room for noise and partial volume), nothing below the -3024 padding value scanners write, nothing above dense metal.
HU_AIR_P1, HU_MIN, HU_MAX = -800.0, -3100.0, 40000.0


def looks_like_hu(array: np.ndarray) -> bool:
    """True when the values look like CT in HU. ``info`` labels and ``simulate-lowdose`` checks with this one test."""
    low = float(np.percentile(array[::2, ::2, ::2], 1))
    return low <= HU_AIR_P1 and float(array.min()) >= HU_MIN and float(array.max()) <= HU_MAX


def looks_like(volume: Volume) -> str:
    """'CT' when values look like Hounsfield units (air near -1000), 'MR' when they are non-negative,
    'mask' for binary images, else 'unknown'.

    A DICOM modality tag, when present, wins.
    """
    if volume.modality in ("CT", "MR"):
        return volume.modality
    if volume.array.dtype == bool or (
        np.issubdtype(volume.array.dtype, np.integer) and int(volume.array.max()) <= 1 and int(volume.array.min()) >= 0
    ):
        return "mask"
    if looks_like_hu(volume.array):
        return "CT"
    if float(volume.array.min()) >= -1e-3 * max(1.0, float(volume.array.max())):
        return "MR"
    return "unknown"


def check_modality(volume: Volume, kind: str, name: str, purpose: str) -> None:
    """Raise unless ``volume`` can be the ``kind`` ("ct": HU; "mr") image that ``purpose`` needs.

    A CT must look like HU (:func:`looks_like_hu`); an MR must not (an image in HU given to an MR model is a CT).
    A DICOM modality tag, when present, decides.
    """
    arr = volume.array
    if not arr.size or float(arr.min()) == float(arr.max()):
        raise InputError(
            f"{name}: every voxel is {float(arr.flat[0]) if arr.size else 'missing'}; the image is empty or constant: "
            "check the file"
        )
    found = volume.modality if volume.modality in ("CT", "MR") else ("CT" if looks_like_hu(arr) else None)
    if kind == "ct" and found != "CT":
        raise InputError(
            f"{name}: values [{float(arr.min()):.0f}, {float(arr.max()):.0f}] do not look like CT in HU (air near "
            "-1000 expected)"
            + (f" and the DICOM modality is {volume.modality}" if volume.modality else "")
            + f"; {purpose}: give it a CT in Hounsfield units"
        )
    if kind == "mr" and found == "CT":
        raise InputError(
            f"{name}: this is a CT ("
            + ("DICOM modality CT" if volume.modality == "CT" else "values in HU, air near -1000")
            + f"), but {purpose}: give it an MR image, or use a model trained for CT input"
        )


def describe_volume(volume: Volume) -> dict[str, Any]:
    """One row of facts about a volume."""
    return {
        "format": volume.format,
        "shape": "x".join(str(s) for s in volume.shape),
        "spacing": "x".join(f"{s:.3g}" for s in volume.spacing) + " mm",
        "file_unit": {"mm": "mm", "unknown": "unknown (read as mm)"}.get(volume.unit, f"{volume.unit} (converted)"),
        "orientation": volume.orientation,
        "dtype": str(volume.array.dtype),
        "range": f"[{float(volume.array.min()):.6g}, {float(volume.array.max()):.6g}]",
        "looks_like": looks_like(volume),
    }


def describe_paths(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Describe every case under the given paths; a case that cannot be read gets status 'failed' and the reason."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            cases = find_cases(path, unique=False)  # info describes every file, whatever its name
        except MedTranslateError as exc:
            rows.append({"case": str(path), "status": "failed", "error": str(exc)})
            continue
        for case in cases:
            row: dict[str, Any] = {"case": case.case_id + (f" ({case.role})" if case.role else ""), "path": case.label}
            try:
                row.update(describe_volume(read_case(case)), status="ok", error="")
            except MedTranslateError as exc:
                row.update(status="failed", error=str(exc))
            except Exception as exc:  # a defect, not bad input: report it and describe the other files
                row.update(
                    status="failed",
                    error=f"{case.label}: unexpected {type(exc).__name__} ({str(exc)[:200]}); please report this with "
                    "the file",
                )
                logger.debug("traceback of %s", case.label, exc_info=True)
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows from :func:`describe_paths`; failed rows show their error."""
    columns = ["case", "format", "shape", "spacing", "file_unit", "orientation", "dtype", "range", "looks_like"]
    ok = [r for r in rows if r["status"] == "ok"]
    lines = []
    if ok:
        widths = {c: max(len(c), *(len(str(r[c])) for r in ok)) for c in columns}
        lines.append("  ".join(c.ljust(widths[c]) for c in columns))
        lines.extend("  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in ok)
    lines.extend(f"FAILED: {r['error']}" for r in rows if r["status"] != "ok")
    return "\n".join(lines)
