"""The noise that separates a low-dose CT cohort from a normal-dose one, measured without pairs, and noise made from it.

An unpaired denoiser has no clean partner for its low-dose scans, but it can make one for its normal-dose scans: add
noise like the low-dose cohort's and learn to remove it. :func:`measure_noise` measures that noise the way CT physics
measures a scanner's noise, by its noise power spectrum (NPS; ICRU Report 87, 2012; Boedeker et al. 2007, Med Phys
34(8)): square regions of flat soft tissue, each minus a fitted second-order polynomial (the "detrending" that
removes slow anatomy and cupping), |FFT|^2 averaged. Both cohorts are measured the same way. The tissue's own texture
is in both; the dose's noise is only in the low-dose one and is independent of the anatomy, so it adds power:
``NPS_noise = NPS_low - NPS_normal`` (clipped at 0), and per region ``var_noise = var_low - median(var_normal)``.
A normal-dose cohort with noise of its own is handled alike: what is measured is the noise the low dose adds.

:class:`NoiseModel` makes noise with that spectrum (white Gaussian noise filtered by sqrt(NPS), interpolated to the
image's frequency grid) and a standard deviation drawn per image from the measured regions' spread (5th to 95th
percentile), so the generator learns to remove every level the cohort shows, as a blind denoiser does (Zhang et al.
2017, DnCNN, trained on a range of noise levels).

tests/test_noise.py checks level and spectrum on known noise; docs/unpaired.md compares the measurement with the
sample data's true noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from medtranslate.core.errors import InputError

__all__ = ["ROI_SIZE", "NoiseModel", "flat_regions", "measure_noise"]

ROI_SIZE = 16  # pixels; small enough to fit in a head's soft tissue at 1-2 mm pixels
SOFT_TISSUE_HU = (-150.0, 200.0)  # a region counts as flat tissue when its local mean stays in this range
MIN_REGIONS = 10  # per cohort; below, the spectrum (each frequency a mean of this many powers) is too rough
MAX_REGIONS = 20000  # per cohort; a random subset beyond (memory)
MAX_REGIONS_PER_SCAN = 2000  # a random subset beyond, drawn before the regions are cut out (memory on large scans)
SIGMA_PERCENTILES = (5.0, 95.0)


def _detrend_projector(size: int) -> np.ndarray:
    """The matrix that removes the best-fitting second-order polynomial from a flattened size x size region."""
    y, x = np.mgrid[:size, :size] / (size - 1.0) - 0.5
    basis = np.stack([np.ones(size * size), y.ravel(), x.ravel(), (y * y).ravel(), (x * x).ravel(), (x * y).ravel()], 1)
    return np.eye(size * size) - basis @ np.linalg.pinv(basis)


def flat_regions(
    volume_hu: np.ndarray, size: int = ROI_SIZE, limit: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Detrended ``(n, size, size)`` regions of flat soft tissue from a ``(Z, X, Y)`` CT in HU (half-overlapping).

    A region is taken where all its pixels are inside the body (> -500 HU) and its local mean (7-pixel box) stays in
    :data:`SOFT_TISSUE_HU`: no air, bone or edge of either, only tissue whose variation is texture and noise. With
    ``limit``, at most that many, a random subset (from ``rng``) of the places found.
    """
    vol = np.asarray(volume_hu, dtype=np.float32)
    smooth = ndimage.uniform_filter(vol, size=(1, 7, 7))
    ok = (vol > -500) & (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
    step = size // 2
    windows = np.lib.stride_tricks.sliding_window_view(ok, (size, size), axis=(1, 2))[:, ::step, ::step]
    z, xi, yi = np.nonzero(windows.all(axis=(-2, -1)))
    if limit is not None and len(z) > limit:
        keep = np.sort((rng or np.random.default_rng(0)).choice(len(z), limit, replace=False))
        z, xi, yi = z[keep], xi[keep], yi[keep]
    x, y = xi * step, yi * step
    if len(z) == 0:
        return np.zeros((0, size, size), np.float32)
    idx = np.arange(size)
    regions = vol[z[:, None, None], x[:, None, None] + idx[None, :, None], y[:, None, None] + idx[None, None, :]]
    flat = regions.reshape(len(z), -1).astype(np.float64) @ _detrend_projector(size).T
    return flat.reshape(-1, size, size).astype(np.float32)


def _cohort_regions(volumes: Iterable[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """The flat regions of every scan, one scan at a time (``volumes`` may be a generator that reads them lazily)."""
    parts = [flat_regions(v, size, MAX_REGIONS_PER_SCAN, rng) for v in volumes]
    regions = np.concatenate(parts) if parts else np.zeros((0, size, size), np.float32)
    if len(regions) > MAX_REGIONS:
        regions = regions[np.sort(rng.choice(len(regions), MAX_REGIONS, replace=False))]
    return regions


def _power(regions: np.ndarray) -> np.ndarray:
    """Mean |FFT|^2 / pixels: its mean over frequencies is the regions' variance (Parseval)."""
    return (np.abs(np.fft.fft2(regions.astype(np.float64))) ** 2).mean(0) / regions[0].size


@dataclass
class NoiseModel:
    """Noise with a measured spectrum and spread of levels; see the module docstring.

    Attributes:
        nps: ``(R, R)`` noise power spectrum in HU^2 (FFT order, DC at [0, 0]) on an R-pixel region's frequency grid.
        sigmas: sorted noise standard deviations in HU, one per measured low-dose region, between the percentiles.
    """

    nps: np.ndarray
    sigmas: np.ndarray

    @property
    def variance(self) -> float:
        return float(self.nps.mean())

    def filter(self, height: int, width: int) -> torch.Tensor:
        """sqrt of the spectrum shape (mean 1) interpolated to an ``height x width`` image's FFT grid."""
        r = self.nps.shape[0]
        fy = np.fft.fftfreq(height)[:, None] * r % r + np.zeros((1, width))
        fx = np.fft.fftfreq(width)[None, :] * r % r + np.zeros((height, 1))
        shape = ndimage.map_coordinates(self.nps, [fy, fx], order=1, mode="grid-wrap")
        shape = np.clip(shape, 0, None)
        return torch.from_numpy(np.sqrt(shape / shape.mean())).float()

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Noise in HU of ``shape`` (..., H, W) on the CPU: per image one level from :attr:`sigmas`."""
        *lead, h, w = shape
        white = torch.randn(shape, generator=generator)
        coloured = torch.fft.ifft2(torch.fft.fft2(white) * self.filter(h, w)).real
        pick = torch.randint(0, len(self.sigmas), tuple(lead), generator=generator)
        sigma = torch.from_numpy(self.sigmas).float()[pick]
        return coloured * sigma[..., None, None]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"nps": torch.from_numpy(self.nps.copy()), "sigmas": torch.from_numpy(self.sigmas.copy())}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NoiseModel:
        return cls(state["nps"].double().numpy(), state["sigmas"].double().numpy())

    def describe(self) -> str:
        lo, mid, hi = np.percentile(self.sigmas, [0, 50, 100])
        return f"noise SD {mid:.1f} HU (range {lo:.1f}-{hi:.1f} over the low-dose regions)"


def measure_noise(
    low: Iterable[np.ndarray], normal: Iterable[np.ndarray], seed: int = 0, size: int = ROI_SIZE
) -> NoiseModel:
    """The noise the low-dose volumes have beyond the normal-dose ones (``(Z, X, Y)`` arrays in HU, unpaired; each
    iterable is read once, one volume at a time).

    Raises:
        InputError: too little flat soft tissue in either cohort to measure, or no more noise in the low-dose one.
    """
    rng = np.random.default_rng(seed)
    lo_regions, nd_regions = _cohort_regions(low, rng, size), _cohort_regions(normal, rng, size)
    for name, regions in (("low-dose", lo_regions), ("normal-dose", nd_regions)):
        if len(regions) < MIN_REGIONS:
            raise InputError(
                f"the {name} training scans hold {len(regions)} regions of {size}x{size} pixels of flat soft tissue "
                f"({SOFT_TISSUE_HU[0]:g} to {SOFT_TISSUE_HU[1]:g} HU); measuring their noise needs {MIN_REGIONS}: "
                "add cases, or use model.inverse: network"
            )
    nps = np.clip(_power(lo_regions) - _power(nd_regions), 0, None)
    # the median: a few regions that hold an edge of the anatomy would pull a mean up, and every level down with it
    texture = float(np.median(nd_regions.var(axis=(1, 2))))
    low_var = lo_regions.var(axis=(1, 2))
    per_region = np.sqrt(np.clip(low_var - texture, 0, None))
    if nps.mean() <= 0.05 * texture or np.median(per_region) <= 0:
        raise InputError(
            "the low-dose training scans are no noisier than the normal-dose ones (flat-tissue variance "
            f"{float(np.median(low_var)):.1f} vs {texture:.1f} HU^2): check that the low-dose role holds the low-dose "
            "scans"
        )
    lo_p, hi_p = np.percentile(per_region, SIGMA_PERCENTILES)
    sigmas = np.sort(per_region[(per_region >= lo_p) & (per_region <= hi_p)])
    return NoiseModel(nps=nps, sigmas=sigmas.astype(np.float64))
