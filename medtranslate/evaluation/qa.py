"""Quality checks beyond image similarity: periodic grid artefacts, slice-to-slice consistency, preserved anatomy.

- ``artefact_index``: the in-plane power of a volume at the period-2 and period-4 grid frequencies relative to their
  neighbouring frequencies. Transposed convolutions with stride 2 stamp a periodic pattern on a generator's output
  (Odena et al. 2016, "Deconvolution and checkerboard artifacts"); it shows as peaks at those frequencies. Per axial
  slice: subtract the mean, apply a 2D Hann window, take the power spectrum; average the spectra over the slices; then
  sum the power at the 15 frequencies (k1 N1 / 4, k2 N2 / 4), k1, k2 in 0..3, not both 0, and divide by the sum of the
  mean power of each one's 5 x 5 neighbourhood (itself left out). About 1 for a CT or MR scan (0.7 to 1.0 on the
  sample data), more where a grid is stamped on the image.
- ``slice_consistency``: mean |(p[z+1] - p[z]) - (r[z+1] - r[z])| in HU over voxel pairs inside the mask, along the
  axial axis: how far the prediction's change from one slice to the next is from the reference's. A 2D model that
  decides each slice on its own flickers between slices, which raises it; 0 when the changes match.
- ``dice``: 2 |A and B| / (|A| + |B|) of two binary masks; used for the body mask of input and output (anatomy moved
  or invented) and for bone (> 250 HU) of prediction and reference.
- ``uncertainty_scores``: whether a voxel-wise uncertainty map (``translate --uncertainty``) points at the errors:
  Spearman's rank correlation of uncertainty and |error| over mask voxels, and how many times their share of the
  errors above 100 HU the 5 % most uncertain voxels hold (1: no better than chance; at most 1 / the fraction of
  voxels with such errors).

Every function takes numpy arrays indexed as stored and the axis of the axial slices; none knows about files.
"""

from __future__ import annotations

import numpy as np

from medtranslate.core.errors import InputError
from medtranslate.imaging.volume import voxel_spacing

__all__ = [
    "BONE_HU",
    "BIG_ERROR_HU",
    "artefact_index",
    "slice_consistency",
    "dice",
    "uncertainty_scores",
    "anatomy_window",
]

# Bone for Dice: above 250 HU (SynthRAD 2025 scores segmentations from TotalSegmentator, which needs downloaded weights;
# a threshold needs none).
BONE_HU = 250.0
_NEIGHBOURS = 2  # half-width of the neighbourhood (5 x 5 bins)
BIG_ERROR_HU = 100.0  # an error that matters for the uncertainty scores
TOP_FRACTION = 0.05  # the most uncertain voxels, for the enrichment


def _axial_first(volume: np.ndarray, axial_axis: int) -> np.ndarray:
    data = np.asarray(volume)
    if data.ndim != 3:
        raise InputError(f"a 3D volume is needed, got shape {data.shape}")
    return np.moveaxis(data, axial_axis, 0)


def _grid_points(n1: int, n2: int) -> list[tuple[int, int]]:
    points = {(round(n1 * k1 / 4) % n1, round(n2 * k2 / 4) % n2) for k1 in range(4) for k2 in range(4) if k1 or k2}
    return sorted(points - {(0, 0)})


def artefact_index(volume: np.ndarray, axial_axis: int = 2) -> float:
    """Power at the period-2 and period-4 grid frequencies over that of their neighbours, averaged over axial slices.

    Raises:
        InputError: slices smaller than 8 x 8 pixels (no neighbourhood to compare with).
    """
    slices = _axial_first(volume, axial_axis).astype(np.float64)
    n1, n2 = slices.shape[1:]
    if min(n1, n2) < 8:
        raise InputError(f"the grid-artefact index needs slices of at least 8 x 8 pixels, got {n1} x {n2}")
    window = np.outer(np.hanning(n1), np.hanning(n2))
    power = np.zeros((n1, n2))
    for s in slices:  # one slice at a time: a 512 x 512 x 300 volume never needs a second volume-sized buffer
        power += np.abs(np.fft.fft2((s - s.mean()) * window)) ** 2
    offsets = [
        (i, j) for i in range(-_NEIGHBOURS, _NEIGHBOURS + 1) for j in range(-_NEIGHBOURS, _NEIGHBOURS + 1) if i or j
    ]
    peak, around = 0.0, 0.0
    for u, v in _grid_points(n1, n2):
        peak += power[u, v]
        around += float(np.mean([power[(u + i) % n1, (v + j) % n2] for i, j in offsets]))
    return float(peak / around) if around > 0 else 1.0


def slice_consistency(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, axial_axis: int = 2) -> float:
    """Mean |slice-to-slice change of the prediction - that of the reference| (HU) over neighbouring voxels in the mask.

    Raises:
        InputError: shapes differ, fewer than 2 slices, or no pair of neighbouring mask voxels.
    """
    p, r, m = (_axial_first(a, axial_axis) for a in (pred, ref, mask))
    if not p.shape == r.shape == m.shape:
        raise InputError(f"shapes differ: prediction {p.shape}, reference {r.shape}, mask {m.shape}")
    if p.shape[0] < 2:
        raise InputError("slice consistency needs at least 2 axial slices")
    both = (m[1:] > 0) & (m[:-1] > 0)
    if not both.any():
        raise InputError("no two neighbouring slices share a mask voxel; slice consistency is undefined")
    dp = np.diff(p.astype(np.float32), axis=0)[both]
    dr = np.diff(r.astype(np.float32), axis=0)[both]
    return float(np.abs(dp - dr).mean(dtype=np.float64))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def uncertainty_scores(std: np.ndarray, error: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How well an uncertainty map ranks the errors, over mask voxels (see the module's docstring).

    Returns ``unc_mean_std`` (HU), ``unc_spearman`` and, when some error exceeds BIG_ERROR_HU,
    ``unc_top5_enrichment``: (share of those errors among the 5 % most uncertain voxels) / (share of voxels there).
    """
    from scipy.stats import spearmanr

    m = np.asarray(mask, dtype=bool)
    u = np.asarray(std, dtype=np.float64)[m]
    e = np.abs(np.asarray(error, dtype=np.float64))[m]
    if u.size < 2:
        raise InputError("uncertainty scores need at least 2 mask voxels")
    out = {"unc_mean_std": float(u.mean())}
    out["unc_spearman"] = float(spearmanr(u, e).statistic) if np.ptp(u) > 0 and np.ptp(e) > 0 else 0.0
    big = e > BIG_ERROR_HU
    if big.any():
        top = u >= np.quantile(u, 1.0 - TOP_FRACTION)
        out["unc_top5_enrichment"] = float((big & top).sum() / big.sum() / top.mean())
    return out


# Which display window a low-dose CT is scored in, from what is in the field: lung (air-filled parenchyma, -950 to
# -400 HU; Hounsfield-unit ranges of lung tissue as radiology texts give them) in more than 3 % of the body -> chest;
# otherwise a body at most 240 mm across in the axial plane -> head (an adult skull is about 140-200 mm wide), at least
# 260 mm -> abdomen; in between the anatomy is not clear and the caller must say.
LUNG_HU = (-950.0, -400.0)
LUNG_FRACTION = 0.03
HEAD_MAX_MM, ABDOMEN_MIN_MM = 240.0, 260.0


def anatomy_window(
    ref: np.ndarray, body: np.ndarray, affine: np.ndarray, axial_axis: int = 2
) -> tuple[str | None, str]:
    """The window (head, chest, abdomen) the anatomy of a reference CT calls for, or None, and the reason in words."""
    body = np.asarray(body, dtype=bool)
    if not body.any():
        return None, "no body in the mask"
    values = np.asarray(ref)[body]
    lung = float(((values > LUNG_HU[0]) & (values < LUNG_HU[1])).mean())
    if lung > LUNG_FRACTION:
        return "chest", f"lung ({LUNG_HU[0]:g} to {LUNG_HU[1]:g} HU) in {lung:.0%} of the body"
    spacing = voxel_spacing(affine)
    width = 0.0
    for axis in (a for a in range(3) if a != axial_axis):
        others = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(body.any(axis=others))
        width = max(width, (idx[-1] - idx[0] + 1) * float(spacing[axis]))
    if width <= HEAD_MAX_MM:
        return "head", f"no lung, body {width:.0f} mm across"
    if width >= ABDOMEN_MIN_MM:
        return "abdomen", f"no lung, body {width:.0f} mm across"
    return None, f"no lung, body {width:.0f} mm across (between a head and an abdomen)"
