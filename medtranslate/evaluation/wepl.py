"""Water-equivalent path length (WEPL) of proton beams through a CT: how far a synthetic CT moves a proton's range.

A proton stops after a path whose water-equivalent length is fixed by its energy, so an error in the relative
stopping power (RSP) along its path moves the end of its range by the same water-equivalent length. This module
converts both CTs to RSP with the same calibration, integrates RSP along parallel beams through the body at a set of
gantry angles, and compares the integrals ray by ray.

- Calibration: HU -> RSP, piecewise linear between the points of a table (a CSV file with two columns, HU and RSP,
  one point per line, HU increasing; values beyond the ends take the end values). This is the scanner- and
  protocol-specific curve a proton centre commissions (Schneider et al. 1996's stoichiometric method is the usual
  way to make one); none is built in, because a curve from another scanner would give range errors that are not the
  synthetic CT's.
- Beams: parallel, in the axial plane, through the whole body (RSP is 0 outside the body mask: no couch, no air);
  gantry angles rotate the beam about the patient's long axis (0 deg: along the anterior-posterior axis). A ray's WEPL
  does not depend on which way it is travelled, so angles 180 deg apart give the same integrals.
- Scores over the rays that cross at least ``MIN_WEPL_MM`` of water-equivalent body in the reference: mean and 95th
  percentile of |WEPL(sCT) - WEPL(CT)| in mm and in % of WEPL(CT), and the mean signed difference (range shift).
- The same integral of the relative electron density (a HU-to-RED calibration in the same format) is the radiological
  path length that photon dose calculation scales depth with: a proxy for photon dose errors (prefix ``rpl``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medtranslate.core.errors import InputError
from medtranslate.imaging.volume import to_ras

__all__ = ["ANGLES", "MIN_WEPL_MM", "read_calibration", "hu_to_rsp", "wepl_maps", "wepl_scores"]

ANGLES = (0.0, 45.0, 90.0, 135.0)  # four distinct beam lines (their opposites give the same integrals)
MIN_WEPL_MM = 10.0  # rays that graze the skin (a few mm of tissue) would dominate relative errors


MAX_CALIBRATION_BYTES = 1 << 20  # a curve has tens of points; /dev/zero or a scan given by mistake is refused at once
# bounds of a plausible curve: HU of any scanner's range with room; relative stopping power or electron density of
# the densest implant metals is about 4-8 (gold about 16 in electron density), so 20 leaves room and refuses 1e308
MAX_HU, MAX_RATIO = 100_000.0, 20.0


def read_calibration(path: str | Path, quantity: str = "RSP", flag: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (HU, value) points of a calibration CSV (``#`` comments, one header line); errors name file and line.

    ``quantity``: what the second column is (RSP, or RED for electron density), for the messages; ``flag``: the
    option that named the file (default ``--hu-to-<quantity>``), for the messages.
    """
    path = Path(path)
    flag = flag or f"--hu-to-{quantity.lower()}"
    try:
        if not path.is_file() or path.stat().st_size > MAX_CALIBRATION_BYTES:
            what = "not a regular file" if not path.is_file() else f"{path.stat().st_size} bytes"
            raise InputError(
                f"{path}: {what}; a HU-to-{quantity} calibration is a small CSV file (lines HU,{quantity}): check "
                f"{flag}"
            )
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: cannot read the HU-to-{quantity} calibration ({type(exc).__name__}); check {flag}"
        ) from exc
    points, rows = [], 0
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        rows += 1
        try:
            hu, rsp = (float(v) for v in row[:2])
        except ValueError:
            if rows == 1:  # a header (after any comment lines)
                continue
            raise InputError(
                f"{path}, line {n}: expected two numbers, HU and {quantity}, got {','.join(row)!r}"
            ) from None
        if not (abs(hu) <= MAX_HU and 0 <= rsp <= MAX_RATIO):
            raise InputError(
                f"{path}, line {n}: expected HU within +-{MAX_HU:g} and {quantity} from 0 to {MAX_RATIO:g} "
                f"(relative to water), got {hu:g}, {rsp:g}"
            )
        points.append((hu, rsp))
    if len(points) < 2:
        raise InputError(f"{path}: a calibration needs at least two (HU, {quantity}) points, found {len(points)}")
    hu_values = np.array([p[0] for p in points])
    if np.any(np.diff(hu_values) <= 0):
        raise InputError(f"{path}: the HU column must increase from line to line")
    return hu_values, np.array([p[1] for p in points])


def hu_to_rsp(hu: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Relative stopping power of every voxel (float32), piecewise linear in HU, constant beyond the table."""
    return np.interp(np.asarray(hu, dtype=np.float32), table[0], table[1]).astype(np.float32)


def wepl_maps(
    hu: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    table: tuple[np.ndarray, np.ndarray],
    angles: tuple[float, ...] = ANGLES,
) -> dict[float, np.ndarray]:
    """WEPL (mm) of every parallel ray through the body, per gantry angle: a (rays, axial slices) map each.

    The axial slices are resampled to square pixels (the finer of the two in-plane spacings) before the beams are
    cast, so the integral's step is the same in every direction.
    """
    from scipy import ndimage

    rsp = hu_to_rsp(hu, table) * (np.asarray(mask) > 0)
    rsp, spacing = to_ras(rsp, affine)
    step = float(min(spacing[0], spacing[1]))
    zoom = (spacing[0] / step, spacing[1] / step, 1.0)
    if not np.allclose(zoom, 1.0):
        rsp = ndimage.zoom(rsp, zoom, order=1)
    maps = {}
    for angle in angles:
        turned = ndimage.rotate(rsp, angle, axes=(0, 1), reshape=True, order=1) if angle % 360 else rsp
        maps[float(angle)] = turned.sum(axis=1) * step  # beams along the anterior-posterior axis of the turned slice
    return maps


def wepl_scores(
    pred_hu: np.ndarray,
    ref_hu: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    table: tuple[np.ndarray, np.ndarray],
    angles: tuple[float, ...] = ANGLES,
    prefix: str = "wepl",
) -> tuple[dict[str, float], dict[float, np.ndarray]]:
    """Range scores of a synthetic CT against its reference (see the module's docstring) and the per-angle maps of
    WEPL(sCT) - WEPL(CT) in mm (NaN where a ray crosses less than MIN_WEPL_MM of body)."""
    ref = wepl_maps(ref_hu, mask, affine, table, angles)
    pred = wepl_maps(pred_hu, mask, affine, table, angles)
    diffs, rel, maps = [], [], {}
    for angle in ref:
        through = ref[angle] >= MIN_WEPL_MM
        d = pred[angle] - ref[angle]
        diffs.append(d[through])
        rel.append(100.0 * d[through] / ref[angle][through])
        maps[angle] = np.where(through, d, np.nan)
    d, r = np.concatenate(diffs), np.concatenate(rel)
    if d.size == 0:
        raise InputError(f"no beam crosses {MIN_WEPL_MM:g} mm of water-equivalent body; check the mask")
    scores = {
        f"{prefix}_mean_mm": float(d.mean()),
        f"{prefix}_mae_mm": float(np.abs(d).mean()),
        f"{prefix}_p95_mm": float(np.percentile(np.abs(d), 95)),
        f"{prefix}_mae_pct": float(np.abs(r).mean()),
        f"{prefix}_p95_pct": float(np.percentile(np.abs(r), 95)),
    }
    return scores, maps
