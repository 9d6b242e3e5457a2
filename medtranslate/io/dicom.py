"""DICOM series in and out, with the slice geometry checked instead of trusted.

Reading: every DICOM file of the folder that belongs to the series is read (pydicom), its slice position is taken as
ImagePositionPatient projected on the slice normal (the cross product of the ImageOrientationPatient rows), and the
slices are sorted by it. A series with a missing, duplicated, unevenly placed or truncated slice, or slices of
different size or orientation, is refused with an error naming the folder and the positions or file: a reader that
went on would build a volume with a wrong spacing (9 slices at 5.625 mm where the scanner made 10 at 5 mm with one
lost). GDCM (through SimpleITK) then decodes the pixels in that order and applies RescaleSlope/Intercept, so CT
comes out in HU.

Writing: one file per slice, CT Image Storage (or MR), values through RescaleSlope/Intercept, new UIDs, character
set UTF-8; the folder appears whole or not at all (:func:`medtranslate.core.atomic.atomic_output`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medtranslate import __version__
from medtranslate.core.atomic import OwnFolder, atomic_output
from medtranslate.core.errors import InputError, native_call, native_messages

__all__ = ["DICOM_SUFFIXES", "is_dicom_file", "series_ids", "read_series", "write_series", "new_uid"]

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".ima")
# Uncompressed transfer syntaxes: the pixel data length is known from the header, so a truncated file shows.
_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
# Relative tolerance on slice steps: scanners write positions with about 6 significant digits.
_STEP_TOLERANCE = 0.01
_MAX_LISTED = 4


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def series_ids(folder: Path) -> list[str]:
    """SeriesInstanceUIDs of the DICOM files directly in ``folder`` (GDCM's view)."""
    with native_messages() as said:  # GDCM's complaints about files that are not DICOM: the caller explains
        try:
            found = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        except RuntimeError:
            found = []
    for line in said:
        logger.debug("%s: %s", folder, line)
    return found


@dataclass
class _Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient (mm)
    orientation: np.ndarray  # ImageOrientationPatient (6 values)
    size: tuple[int, int]
    frames: int
    modality: str | None


def _candidate_files(folder: Path) -> list[Path]:
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() in DICOM_SUFFIXES or (not entry.suffix and is_dicom_file(entry)):
            files.append(entry)
    return files


def _read_header(path: Path, series_uid: str, folder: Path) -> _Slice | None:
    """The slice facts of one file of ``series_uid`` (None for a file of another series)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise InputError(
            f"{folder}: {path.name} cannot be read as DICOM ({type(exc).__name__}); remove it from the series folder "
            "or replace it"
        ) from exc
    if str(ds.get("SeriesInstanceUID", "")) != series_uid:
        return None
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
        if ds.get(tag) is None:
            raise InputError(
                f"{folder}: {path.name} has no {tag}, so its place in the volume is unknown; re-export the series "
                "with full geometry"
            )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax in _UNCOMPRESSED and "PixelData" in ds:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("BitsAllocated", 16))
            // 8
            * int(ds.get("SamplesPerPixel", 1))
            * frames
        )
        if len(ds.PixelData) < expected:
            raise InputError(
                f"{folder}: {path.name} is truncated ({len(ds.PixelData)} of {expected} bytes of pixel data); the "
                "copy is incomplete, copy the series again"
            )
    return _Slice(
        path,
        np.array([float(v) for v in ds.ImagePositionPatient]),
        np.array([float(v) for v in ds.ImageOrientationPatient]),
        (int(ds.Rows), int(ds.Columns)),
        frames,
        str(ds.get("Modality", "")).strip() or None,
    )


def _fmt(positions: np.ndarray) -> str:
    return ", ".join(f"{p:.2f}" for p in positions)


def _check_and_sort(slices: list[_Slice], folder: Path) -> tuple[list[_Slice], float]:
    """Slices sorted along the normal; raise unless they form one evenly spaced stack. Returns them and the step."""
    first = slices[0]
    for s in slices[1:]:
        if s.size != first.size:
            raise InputError(
                f"{folder}: slices differ in size: {first.path.name} is {first.size[0]}x{first.size[1]}, "
                f"{s.path.name} is {s.size[0]}x{s.size[1]}; the folder mixes series, separate them"
            )
        if not np.allclose(s.orientation, first.orientation, atol=1e-3):
            raise InputError(
                f"{folder}: slices differ in orientation ({first.path.name} vs {s.path.name}); the folder mixes "
                "series or a localizer, separate them"
            )
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-3:
        raise InputError(
            f"{folder}: ImageOrientationPatient of {first.path.name} is degenerate ({_fmt(first.orientation)}); "
            "re-export the series"
        )
    normal /= np.linalg.norm(normal)
    where = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(where, kind="stable")
    slices, where = [slices[i] for i in order], where[order]
    steps = np.diff(where)
    if len(steps) == 0:
        return slices, 0.0
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        i = int(duplicate[0])
        raise InputError(
            f"{folder}: two slices share a position: {slices[i].path.name} and {slices[i + 1].path.name} "
            f"are both at {where[i]:.2f} mm along the slice normal; remove the duplicate (or separate the series) and "
            "read again"
        )
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > _STEP_TOLERANCE * step + 1e-3)
    if uneven.size:
        i = int(uneven[0])
        ratio = steps[i] / step
        hint = (
            f"{int(round(ratio)) - 1} slice(s) missing"
            if abs(ratio - round(ratio)) < 0.05 and ratio > 1.5
            else "uneven slice spacing"
        )
        listed = ", ".join(f"{where[j]:.2f} -> {where[j + 1]:.2f}" for j in uneven[:_MAX_LISTED]) + (
            " ..." if uneven.size > _MAX_LISTED else ""
        )
        raise InputError(
            f"{folder}: slice positions are not evenly spaced ({hint}): {len(slices)} slices from {where[0]:.2f} to "
            f"{where[-1]:.2f} mm with a "
            f"step of {step:.3g} mm, but {listed} mm; medtranslate does not guess the missing geometry: complete the "
            "series, or "
            "resample it to a regular grid first (e.g. 3D Slicer, SimpleITK)"
        )
    return slices, step


def read_series(folder: str | os.PathLike, series_uid: str | None = None):
    """Read one DICOM series from a folder into a :class:`~medtranslate.imaging.volume.Volume`, its geometry checked.

    Raises:
        InputError: no series, several series and none chosen, an unreadable or truncated file, or slices that do not
            form one evenly spaced stack.
    """
    from medtranslate.imaging.volume import sitk_to_volume

    folder = Path(folder)
    series = series_ids(folder)
    if not series:
        raise InputError(
            f"{folder}: folder holds no DICOM series (and no other image file was given); point to a DICOM folder or "
            "an image file"
        )
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"{folder}: DICOM folder holds {len(series)} series ({', '.join(series)}); "
                "put each series in its own folder, or pass the parent folder to a batch command so each series "
                "becomes its own case"
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise InputError(f"{folder}: no DICOM series {series_uid} here; found: {', '.join(series)}")
    slices = [s for s in (_read_header(p, series_uid, folder) for p in _candidate_files(folder)) if s is not None]
    if not slices:
        raise InputError(f"{folder}: no readable file of series {series_uid}; re-export the series")
    if len(slices) == 1 and slices[0].frames > 1:
        step = None  # one multi-frame file: GDCM places its frames
    else:
        slices, step = _check_and_sort(slices, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in slices])
    reader.LoadPrivateTagsOff()
    try:
        img = native_call(reader.Execute, folder, logger)  # GDCM applies RescaleSlope/Intercept: CT comes out in HU
    except RuntimeError as exc:
        raise InputError(
            f"{folder}: cannot decode the pixels of series {series_uid} ({exc}); a file may be corrupt"
        ) from exc
    if step is not None and img.GetDimension() == 3:
        if img.GetSize()[2] != len(slices):
            raise InputError(
                f"{folder}: {len(slices)} slices listed but {img.GetSize()[2]} decoded; a file may be corrupt"
            )
        if len(slices) > 1 and abs(img.GetSpacing()[2] - step) > _STEP_TOLERANCE * step + 1e-3:
            raise InputError(
                f"{folder}: decoded slice spacing {img.GetSpacing()[2]:.4g} mm differs from the positions' step "
                f"{step:.4g} mm; re-export the series"
            )
    if img.GetDimension() == 3 and img.GetSize()[2] == 1 and len(slices) == 1:
        img.SetSpacing((*img.GetSpacing()[:2], _slice_thickness(slices[0].path)))  # one slice: no positions' step
    volume = sitk_to_volume(img, folder, "dicom", modality=slices[0].modality)
    # GDCM widens integer data when it applies a rescale; keep int16 when the values fit, as other formats do.
    arr = volume.array
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 2 and arr.size and arr.min() >= -32768 and arr.max() <= 32767:
        volume.array = arr.astype(np.int16)
    return volume


def _slice_thickness(path: Path) -> float:
    """SliceThickness of a lone slice (its extent along the normal), 1 mm when the file has none."""
    import pydicom

    try:
        value = float(pydicom.dcmread(str(path), stop_before_pixels=True).get("SliceThickness", 0) or 0)
    except (ValueError, TypeError, OSError, pydicom.errors.InvalidDicomError):
        value = 0.0
    return value if np.isfinite(value) and value > 0 else 1.0


# What a derived series keeps of the series it was made from (DICOM PS3.3 modules): the patient, the study, the frame
# of reference (the same geometry, so structures drawn on one belong to the other), how the patient lay, and for a CT
# source its tube voltage. ITK keys (group|element) and pydicom keywords.
CONTEXT_TAGS = {
    "0010|0010": "PatientName",
    "0010|0020": "PatientID",
    "0010|0030": "PatientBirthDate",
    "0010|0040": "PatientSex",
    "0020|000d": "StudyInstanceUID",
    "0008|0020": "StudyDate",
    "0008|0030": "StudyTime",
    "0008|0090": "ReferringPhysicianName",
    "0020|0010": "StudyID",
    "0008|0050": "AccessionNumber",
    "0008|1030": "StudyDescription",
    "0020|0052": "FrameOfReferenceUID",
    "0020|1040": "PositionReferenceIndicator",
    "0018|5100": "PatientPosition",
    "0018|0015": "BodyPartExamined",
    "0018|0060": "KVP",
}


# The value representation of every attribute the writer sets from text it does not control (a case id, a source
# series' values, a description), and the most bytes each holds (DICOM PS3.5 6.2; PN: per component group).
WRITTEN_VR = {
    "0010|0010": "PN", "0010|0020": "LO", "0010|0030": "DA", "0010|0040": "CS", "0020|000d": "UI", "0008|0020": "DA",
    "0008|0030": "TM", "0008|0090": "PN", "0020|0010": "SH", "0008|0050": "SH", "0008|1030": "LO", "0020|0052": "UI",
    "0020|1040": "LO", "0018|5100": "CS", "0018|0015": "CS", "0018|0060": "DS", "0020|0011": "IS", "0008|103e": "LO",
    "0020|4000": "LT",
}  # fmt: skip
VR_MAX_BYTES = {"PN": 64, "LO": 64, "SH": 16, "CS": 16, "DA": 8, "TM": 14, "UI": 64, "DS": 16, "IS": 12, "LT": 10240}
_VR_PATTERN = {
    "CS": r"[A-Z0-9_ ]*",
    "DA": r"[0-9]{8}|",
    "TM": r"[0-9]{2,6}(\.[0-9]{1,6})?|",
    "UI": r"[0-9]+(\.[0-9]+)*|",
    "DS": r" *[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)? *|",
    "IS": r" *[-+]?[0-9]+ *|",
}


def fit_vr(key: str, value: object) -> str:
    """``value`` as attribute ``key`` may hold it: one value (a backslash separates values, so a source's second
    value is dropped and one in a name replaced), no control characters, at most its VR's length in UTF-8 bytes (cut
    on a character boundary); a coded value (CS, DA, TM, UI, DS, IS) that does not fit its form becomes empty (type 2:
    present, unknown) rather than invalid."""
    vr = WRITTEN_VR.get(key)
    if vr is None:
        return str(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""  # type: ignore[index]
    text = str(value)
    if vr == "LT":  # free text: any line breaks, but no other control characters
        text = "".join(c for c in text if c in "\r\n\t\f" or ord(c) >= 32)
    else:
        text = "".join(c if ord(c) >= 32 else " " for c in text).replace("\\", "-" if vr != "PN" else " ").strip()
    if vr in _VR_PATTERN and not re.fullmatch(_VR_PATTERN[vr], text):
        return ""
    data = text.encode("utf-8")[: VR_MAX_BYTES[vr]]
    return data.decode("utf-8", "ignore").rstrip()


def source_context(folder: str | os.PathLike, series_uid: str | None = None) -> dict[str, str]:
    """The :data:`CONTEXT_TAGS` of a DICOM series (from its first file), plus its SeriesNumber, as strings that fit
    their value representations (:func:`fit_vr`)."""
    import pydicom

    folder = Path(folder)
    uid = series_uid or (series_ids(folder) or [None])[0]
    for path in _candidate_files(folder):
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if uid is not None and str(ds.get("SeriesInstanceUID", "")) != uid:
            continue
        context = {key: fit_vr(key, ds.get(word, "") or "") for key, word in CONTEXT_TAGS.items()}
        context["0020|0011"] = fit_vr("0020|0011", ds.get("SeriesNumber", "") or "")
        return context
    raise InputError(f"{folder}: no DICOM file of series {uid}; check the folder")


def new_uid() -> str:
    """A new, globally unique DICOM UID."""
    from pydicom.uid import generate_uid

    return str(generate_uid())


# what a series folder written by write_series holds: only such a folder is ever replaced
DICOM_SERIES = OwnFolder("slice_0000.dcm", ("slice_[0-9]*.dcm",), "a DICOM series written by medtranslate")


def _series_tags(
    modality: str,
    series_description: str,
    rescale_intercept: float,
    comments: str | None,
    context: dict[str, str] | None,
    patient_id: str,
    derived: bool,
) -> dict[str, str]:
    """The tags every slice of a new series shares: patient, study and frame of reference (the source's, or new
    ones), a new series, the equipment, and the image module's attributes for CT or MR."""
    series_uid = new_uid()
    now = datetime.now()
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    source = dict(context or {})
    base = {key: "" for key in CONTEXT_TAGS}  # type 2 attributes: present, empty when unknown
    base.update(
        {
            "0010|0010": patient_id,
            "0010|0020": patient_id,
            "0020|000d": new_uid(),
            "0008|0020": date,
            "0008|0030": time_,
            "0020|0052": new_uid(),
        }
    )
    base.update({k: v for k, v in source.items() if k in CONTEXT_TAGS and (v or k not in ("0020|000d", "0020|0052"))})
    base = {k: fit_vr(k, v) for k, v in base.items()}  # a case id of 200 characters, a name with a backslash, ...
    number = source.get("0020|0011", "")
    series_number = fit_vr("0020|0011", int(number) + 1000) if number.strip().lstrip("-").isdigit() else "1"
    shared = {
        **base,
        "0008|0005": "ISO_IR 192",  # UTF-8: names, descriptions and comments may hold any script
        "0008|0008": "DERIVED\\SECONDARY\\AXIAL" if derived else "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0060": modality,
        "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
        "0008|0012": date,
        "0008|0013": time_,
        "0008|0021": date,
        "0008|0031": time_,
        "0008|0023": date,
        "0008|0033": time_,
        "0008|0070": "medtranslate",  # the equipment that made this series is the software
        "0008|1090": "medtranslate",
        "0018|1020": f"medtranslate {__version__}",
        "0008|103e": fit_vr("0008|103e", series_description),
        "0020|000e": series_uid,
        "0020|0011": series_number,
        "0020|0012": "1",
        "0020|0060": "",
        "0028|1052": f"{rescale_intercept:g}",
        "0028|1053": "1",
        "0028|1054": "HU" if modality == "CT" else "US",
    }
    if modality == "MR":  # the MR Image module's type 1/2 attributes (an MR series is written in the tests)
        for key in ("0018|0060", "0028|1052", "0028|1053", "0028|1054"):  # CT's, not MR's (values stored as is)
            shared.pop(key)
        shared.update(
            {"0018|0020": "RM", "0018|0021": "NONE", "0018|0022": "", "0018|0023": "3D", "0018|0080": "",
             "0018|0081": "", "0018|0091": ""}
        )  # fmt: skip
    if comments:
        shared["0020|4000"] = fit_vr("0020|4000", comments)
    return shared


def write_series(
    folder: str | os.PathLike,
    volume,
    modality: str = "CT",
    series_description: str = "medtranslate",
    rescale_intercept: float = 0.0,
    comments: str | None = None,
    overwrite: bool = False,
    context: dict[str, str] | None = None,
    patient_id: str = "",
    derived: bool = True,
) -> list[Path]:
    """Write a volume as a DICOM series (one file per slice along k), keeping its geometry.

    Values are stored as int16 (or uint16 when ``rescale_intercept`` makes them non-negative) with RescaleSlope 1 and
    the given RescaleIntercept, so readers recover the values (HU for CT) exactly. The folder is written under a
    temporary name and renamed into place; without ``overwrite`` an existing folder is an error.

    ``context`` (from :func:`source_context`): the series joins its source's patient, study and frame of reference,
    with a new Series Instance UID; without one it gets a new study and frame of reference, and ``patient_id`` as
    patient name and ID. ``derived``: ImageType DERIVED\\SECONDARY (a computed image), else ORIGINAL\\PRIMARY.
    The series is a complete CT (or MR) Image IOD: every module's type 1 and 2 attributes are present, as
    ``dciodvfy`` checks in the tests.
    """
    from medtranslate.imaging.volume import affine_to_sitk, check_affine

    folder = Path(folder)
    check_affine(volume.affine, str(folder))
    # ITK's DICOM writer applies the inverse rescale itself, (value - intercept) / slope, from the tags we set:
    # hand it the values in output units, as int16 (HU fit), and it stores them as unsigned when intercept allows.
    values = np.clip(np.rint(np.asarray(volume.array, dtype=np.float64)), -32768, 32767).astype(np.int16)
    img = affine_to_sitk(values, volume.affine)
    shared = _series_tags(modality, series_description, rescale_intercept, comments, context, patient_id, derived)
    direction = img.GetDirection()
    iop = "\\".join(
        f"{v:.10f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    )
    sx, sy, sz = img.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    names = []
    with atomic_output(folder, directory=True, overwrite=overwrite, own=DICOM_SERIES) as tmp:
        for k in range(img.GetDepth()):
            slc = img[:, :, k]
            pos = img.TransformIndexToPhysicalPoint((0, 0, k))
            tags = {
                **shared,
                "0008|0018": new_uid(),
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
                "0020|0037": iop,
                "0028|0030": f"{sy:.6f}\\{sx:.6f}",
                "0018|0050": f"{sz:.6f}",
            }
            for key, value in tags.items():
                slc.SetMetaData(key, value)
            out = tmp / f"slice_{k:04d}.dcm"
            writer.SetFileName(str(out))
            try:
                writer.Execute(slc)
            except RuntimeError as exc:
                raise OSError(f"DICOM writer failed ({str(exc).strip().splitlines()[-1][:120]})") from exc
            names.append(out.name)
    return [folder / n for n in names]


RT_DOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_SOP_CLASS = {"photon": "1.2.840.10008.5.1.4.1.1.481.5", "proton": "1.2.840.10008.5.1.4.1.1.481.8"}  # RT (Ion)
# what an RT Dose object keeps of its CT's context: patient, study, frame of reference (PS3.3 A.18's modules)
_RT_DOSE_CONTEXT = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator",
)  # fmt: skip


def write_rtdose(
    path: str | os.PathLike,
    dose,
    context: dict[str, str] | None,
    description: str,
    plan_uid: str,
    modality: str,
    comment: str = "",
    patient_id: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a dose (Gy, a :class:`Volume` on a grid whose slices are planes) as one DICOM RT Dose file.

    ``context`` (:func:`source_context` of the CT the dose was computed on) puts it in that CT's patient, study and
    frame of reference, so a planning system or 3D Slicer shows it over that CT; without one it gets new ones, and
    ``patient_id`` as patient name and ID. ``plan_uid``: the SOP Instance UID of the ``modality`` (photon, proton)
    plan the dose is of, which DICOM requires a plan's dose to name; no RT Plan object is written (the plan lives in
    the dose engine), so doses of one plan share the UID and nothing else answers to it. The
    dose is stored as 16-bit unsigned integers times DoseGridScaling (within 1/131070 of the maximum: 0.5 mGy of
    60 Gy), a physical dose over the whole course (DoseSummationType PLAN). ``dciodvfy`` finds it a valid RT Dose.
    """
    import pydicom

    from medtranslate.imaging.volume import affine_to_sitk

    path = Path(path)
    img = affine_to_sitk(np.asarray(dose.array, dtype=np.float64), dose.affine)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    if not np.allclose(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2], atol=1e-6):
        raise InputError(f"{path}: the dose grid's slice axis is not the normal of its rows and columns (a left-handed "
                         "grid); resample it to a right-handed one first")  # fmt: skip
    ds = _rtdose_header(context, description, comment, patient_id)
    _rtdose_grid(ds, img, direction)
    plan = pydicom.Dataset()
    plan.ReferencedSOPClassUID, plan.ReferencedSOPInstanceUID = RT_PLAN_SOP_CLASS[modality], plan_uid
    ds.ReferencedRTPlanSequence = [plan]
    with atomic_output(path, overwrite=overwrite) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return path


def _rtdose_header(context: dict[str, str] | None, description: str, comment: str, patient_id: str):
    """An RT Dose dataset's file meta, patient, study, frame of reference, series and equipment (write_rtdose)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    now = datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_DOSE_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = new_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RT_DOSE_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    by_word = {word: key for key, word in CONTEXT_TAGS.items()}
    for word in _RT_DOSE_CONTEXT:
        setattr(ds, word, fit_vr(by_word[word], (context or {}).get(by_word[word], "")))
    for word in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not getattr(ds, word):
            setattr(ds, word, new_uid())
    if not context:
        ds.PatientName = ds.PatientID = fit_vr("0010|0020", patient_id)
    ds.OperatorsName = ""
    ds.StudyDate = ds.StudyDate or now.strftime("%Y%m%d")
    ds.StudyTime = ds.StudyTime or now.strftime("%H%M%S")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTDOSE", new_uid(), "1"
    ds.SeriesDescription = fit_vr("0008|103e", description)
    ds.Manufacturer, ds.ManufacturerModelName = "medtranslate", "medtranslate"
    ds.SoftwareVersions = f"medtranslate {__version__}"
    ds.InstanceNumber = "1"
    ds.ImageComments = fit_vr("0020|4000", comment) if comment else ""
    return ds


def _rtdose_grid(ds, img: sitk.Image, direction: np.ndarray) -> None:
    """The dose's geometry (Image Plane, Multi-frame) and its values (Image Pixel, DoseGridScaling) into ``ds``."""
    import pydicom

    values = np.clip(sitk.GetArrayFromImage(img), 0.0, None)  # frames, rows, columns
    scaling = float(values.max()) / (2**16 - 1) if values.max() > 0 else 1.0
    pixels = np.rint(values / scaling).astype(np.uint16)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in img.GetOrigin()]
    ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1])]
    sx, sy, sz = img.GetSpacing()
    ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing (between rows: along y), then column spacing
    ds.SliceThickness = f"{sz:.6f}"
    ds.GridFrameOffsetVector = [f"{k * sz:.6f}" for k in range(pixels.shape[0])]
    ds.NumberOfFrames = str(pixels.shape[0])
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)  # frames are at GridFrameOffsetVector
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = f"{scaling:.8e}"  # DS: at most 16 characters
    ds.add_new(0x7FE00010, "OW", pixels.astype("<u2").tobytes())  # PixelData
