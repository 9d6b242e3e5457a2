"""CT forward projection and filtered back-projection by the Fourier slice theorem, batched over slices.

A projection at angle theta is, in Fourier space, the image's 2D transform along a line through the origin at theta
(the Fourier slice theorem; Kak & Slaney, *Principles of Computerized Tomographic Imaging*, 1988, ch. 3). So the
projector evaluates the image's 2D transform at polar points with a non-uniform FFT (type 2) and takes 1D inverse
FFTs along the detector; filtered back-projection is the adjoint: ramp-filter each projection's 1D FFT and gather the
polar samples onto the image with a type-1 non-uniform FFT ("gridding"; Schomberg & Timmer 1995, IEEE TMI 14(3)).
The work is O(N^2 log N + views x detectors) per slice instead of the O(views x N^2) of rotating or tracing rays.

Backends: on CPU FINUFFT (Barnett et al. 2019, SIAM J Sci Comput 41(5)); on any torch device (CUDA) torchkbnufft's
Kaiser-Bessel NUFFT. The image model is band-limited (frequencies beyond the pixel Nyquist are left out), so a
finer detector than the pixel does not alias.

Conventions (those of scikit-image's ``radon``, which the tests compare against): image ``[row, col]``, centre at
``(N // 2, N // 2)``, x = col - centre, y = centre - row, and the detector coordinate of a point at angle theta is
``t = x cos(theta) + y sin(theta)``; lengths in pixels.

Fan-beam geometry (``FanBeam``): a third-generation scanner with an equiangular detector arc centred on the focal spot.
The defaults are the Siemens SOMATOM Definition AS+ of the AAPM/Mayo Low Dose CT Grand Challenge and of the
TCIA "LDCT-and-Projection-data" library (Moen et al. 2021, Med Phys 48(2)), as recorded in its DICOM-CT-PD headers:
595 mm source to isocentre, 1085.6 mm source to detector, 736 channels of 1.2858 mm, 1152 views per turn per focal
spot. Fan rays are drawn from a finely sampled parallel sinogram; reconstruction rebins fan rays to parallel rays
and filters those, as Siemens scanners do (Stierstorfer et al. 2004, Phys Med Biol 49(11), weighted FBP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FanBeam", "ParallelBeam", "Projector", "fan_to_parallel", "parallel_to_fan"]

NUFFT_EPS = 1e-6  # FINUFFT's requested relative precision (1e-6 costs ~25 % more than 1e-3: measured)


@dataclass(frozen=True)
class ParallelBeam:
    """Parallel rays: ``views`` angles evenly over ``span`` radians, ``detectors`` bins ``detector_px`` pixels apart."""

    views: int
    detectors: int
    detector_px: float = 1.0
    span: float = math.pi

    @property
    def angles(self) -> np.ndarray:
        return np.arange(self.views) * (self.span / self.views)

    @property
    def positions(self) -> np.ndarray:
        """Detector coordinates t (pixels), centred as scikit-image centres its padded image."""
        return (np.arange(self.detectors) - self.detectors // 2) * self.detector_px

    @classmethod
    def covering(cls, size: int, views: int, detector_px: float = 1.0, span: float = math.pi) -> ParallelBeam:
        """Enough detectors to cover the diagonal of a ``size`` x ``size`` image; an odd number, so t and -t pair up."""
        half = int(math.ceil(size * math.sqrt(2) / 2 / detector_px)) + 1
        return cls(views, 2 * half + 1, detector_px, span)


@dataclass(frozen=True)
class FanBeam:
    """An equiangular fan beam over a full turn; distances in mm (defaults: the Mayo/AAPM scanner, module docstring)."""

    source_to_centre_mm: float = 595.0
    source_to_detector_mm: float = 1085.6
    detectors: int = 736
    detector_mm: float = 1.2858
    views: int = 1152

    @property
    def channel_angle(self) -> float:
        return self.detector_mm / self.source_to_detector_mm

    @property
    def gammas(self) -> np.ndarray:
        """Fan angle of each channel (radians), centre channel at 0."""
        return (np.arange(self.detectors) - (self.detectors - 1) / 2) * self.channel_angle

    @property
    def betas(self) -> np.ndarray:
        return np.arange(self.views) * (2 * math.pi / self.views)

    @property
    def field_of_view_mm(self) -> float:
        """Diameter of the circle every view sees."""
        return 2 * self.source_to_centre_mm * math.sin(self.gammas[-1])

    @property
    def spacing_at_centre_mm(self) -> float:
        return self.source_to_centre_mm * self.channel_angle


def _ramp(m: int, spacing: float) -> np.ndarray:
    """Ramp filter on an m-point FFT grid: the DFT of the band-limited ramp kernel sampled at ``spacing``.

    Kak & Slaney eq. 3.61: h(0) = 1/(4 s^2), h(n s) = -1/(n pi s)^2 for odd n, 0 for even n. Taking the kernel's DFT
    (instead of sampling |w|) gives the zero-frequency bin its true weight, so reconstructions have no DC offset.
    """
    n = np.rint(np.fft.fftfreq(m) * m).astype(np.int64)  # 0, 1, ..., -1 (exact integers: odd is odd)
    h = np.zeros(m)
    h[0] = 1.0 / (4 * spacing**2)
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd] * spacing) ** 2
    return np.real(np.fft.fft(h)) * spacing


class _Finufft:
    def __init__(self, size: int, kr: np.ndarray, kc: np.ndarray, batch: int):
        import finufft

        # the oversampling fixed (1.25, FINUFFT's low-memory choice, which it made on 2 threads), not left to FINUFFT:
        # it chooses by the thread count, and its two choices differ by up to 1e-3 HU, enough to round some voxels of
        # the int16 outputs the other way on a machine with another number of cores
        options = {"eps": NUFFT_EPS, "dtype": "complex128", "nthreads": max(torch.get_num_threads(), 1)}
        self.type2 = finufft.Plan(2, (size, size), n_trans=batch, upsampfac=1.25, **options)
        self.type1 = finufft.Plan(1, (size, size), n_trans=batch, upsampfac=1.25, **options)
        for plan in (self.type2, self.type1):
            plan.setpts(kr, kc)
        self.batch = batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.complex128)
        out = self.type2.execute(self._fill(x))[: len(x)]
        return torch.from_numpy(np.ascontiguousarray(out))

    def adjoint(self, coeffs: torch.Tensor) -> torch.Tensor:
        c = np.ascontiguousarray(coeffs.detach().cpu().numpy(), dtype=np.complex128)
        out = self.type1.execute(self._fill(c))[: len(c)]
        return torch.from_numpy(np.ascontiguousarray(out.real))

    def _fill(self, a: np.ndarray) -> np.ndarray:
        """FINUFFT plans have a fixed batch: pad the last, smaller chunk with zeros."""
        if len(a) == self.batch:
            return a
        return np.concatenate([a, np.zeros((self.batch - len(a),) + a.shape[1:], a.dtype)])


class _TorchNufft:
    def __init__(self, size: int, kr: np.ndarray, kc: np.ndarray, device: torch.device):
        import torchkbnufft as tkbn

        self.size, self.device = size, device
        self.ktraj = torch.tensor(np.stack([kr, kc]), dtype=torch.float32, device=device)
        self.type2 = tkbn.KbNufft(im_size=(size, size)).to(device)
        self.type1 = tkbn.KbNufftAdjoint(im_size=(size, size)).to(device)
        # torchkbnufft's image origin is at index N // 2, as ours; it uses exp(-i k n) forward like FINUFFT's type 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.complex64)[:, None]
        return self.type2(x, self.ktraj)[:, 0]

    def adjoint(self, coeffs: torch.Tensor) -> torch.Tensor:
        c = coeffs.to(self.device, torch.complex64)[:, None]
        return self.type1(c, self.ktraj)[:, 0].real


class Projector:
    """Parallel-beam projector and FBP for ``size`` x ``size`` images; batched over a leading slice dimension.

    ``backend``: "finufft" (CPU), "torch" (torchkbnufft, any device) or "auto" (FINUFFT on CPU, torch elsewhere).
    """

    def __init__(
        self, size: int, geometry: ParallelBeam, device: str | torch.device = "cpu", backend: str = "auto", batch=16
    ):
        self.size, self.geometry, self.device = size, geometry, torch.device(device)
        g = geometry
        # zero-pad the detector to 2x (at least 2 D - 1 avoids wrap-around in the ramp filter; Kak & Slaney 3.3)
        self.m = 2 * g.detectors
        # FFT index of each detector: t = 0 (detector D // 2) at index 0, negative t wrapped to the end
        self.fft_index = (torch.arange(g.detectors) - g.detectors // 2) % self.m
        freq = np.fft.fftfreq(self.m, d=g.detector_px)  # cycles per pixel
        ang = g.angles
        kx = freq[None, :] * np.cos(ang)[:, None]
        ky = freq[None, :] * np.sin(ang)[:, None]
        # band-limited image: leave out frequencies beyond the pixel Nyquist in x or y
        self.keep = torch.from_numpy((np.abs(kx) < 0.5) & (np.abs(ky) < 0.5))
        kr, kc = -2 * np.pi * ky, 2 * np.pi * kx  # row index runs against y
        kr, kc = np.clip(kr, -np.pi, np.pi).ravel(), np.clip(kc, -np.pi, np.pi).ravel()
        if backend == "auto":
            backend = "finufft" if self.device.type == "cpu" else "torch"
        if backend == "finufft":
            if self.device.type != "cpu":
                raise ValueError("the finufft backend runs on the CPU; use backend='torch' on other devices")
            self.nufft = _Finufft(size, kr, kc, batch)
        elif backend == "torch":
            self.nufft = _TorchNufft(size, kr, kc, self.device)
        else:
            raise ValueError(f"backend must be auto, finufft or torch, not {backend!r}")
        self.backend, self.batch = backend, batch
        self.ramp = torch.from_numpy(_ramp(self.m, g.detector_px))

    def _chunks(self, x: torch.Tensor):
        step = self.batch if self.backend == "finufft" else len(x)
        for i in range(0, len(x), step):
            yield x[i : i + step]

    def _pad(self, sino: torch.Tensor) -> torch.Tensor:
        """(B, V, D) -> (B, V, M) with detector t at FFT index t mod M."""
        b, v, _ = sino.shape
        out = torch.zeros(b, v, self.m, dtype=sino.dtype, device=sino.device)
        out[..., self.fft_index.to(sino.device)] = sino
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Line integrals (pixel lengths) of (B, N, N) images -> (B, views, detectors) float64."""
        g, out = self.geometry, []
        for chunk in self._chunks(images):
            coeffs = self.nufft.forward(chunk).reshape(len(chunk), g.views, self.m).cpu()
            coeffs = coeffs * self.keep
            full = torch.fft.ifft(coeffs.to(torch.complex128), dim=-1).real / g.detector_px
            out.append(full[..., self.fft_index])
        return torch.cat(out)

    def fbp(self, sino: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection (ramp filter) of (B, views, detectors) -> (B, N, N) float64."""
        g, out = self.geometry, []
        # each line is seen span / pi times: weight so a full turn and a half turn give the same image
        weight = (g.span / g.views) / (g.span / math.pi) / self.m
        for chunk in self._chunks(sino.to(torch.float64).cpu()):
            spec = torch.fft.fft(self._pad(chunk), dim=-1) * (self.ramp * weight) * self.keep
            out.append(self.nufft.adjoint(spec.reshape(len(chunk), -1)).to(torch.float64).cpu())
        return torch.cat(out)


def _interp(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, periodic_rows: bool) -> torch.Tensor:
    """Bilinear interpolation of (B, R, C) float64 at fractional (rows, cols) of any shape; outside the columns: 0."""
    from medtranslate.simulation._rebin_kernel import bilinear

    as_array = lambda t: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
    out = np.empty((values.shape[0], rows.numel()))
    bilinear(as_array(values), as_array(rows).reshape(-1), as_array(cols).reshape(-1), periodic_rows, out)
    return torch.from_numpy(out).reshape(values.shape[:1] + rows.shape)


def parallel_to_fan(sino: torch.Tensor, parallel: ParallelBeam, fan: FanBeam, pixel_mm: float) -> torch.Tensor:
    """Fan-beam line integrals from a parallel sinogram over a full turn: (B, Vp, Dp) -> (B, fan views, channels).

    Fan ray (beta, gamma) is the parallel ray theta = beta + gamma - pi/2, t = R sin(gamma).
    """
    if abs(parallel.span - 2 * math.pi) > 1e-9:
        raise ValueError("fan rays need a parallel sinogram over a full turn (span 2 pi)")
    gam = torch.from_numpy(fan.gammas)[None, :]
    beta = torch.from_numpy(fan.betas)[:, None]
    theta = beta + gam - math.pi / 2
    t_px = fan.source_to_centre_mm * torch.sin(gam) / pixel_mm
    rows = torch.remainder(theta, 2 * math.pi) / (2 * math.pi / parallel.views)
    cols = (t_px / parallel.detector_px + parallel.detectors // 2).expand_as(rows)
    return _interp(sino, rows, cols, periodic_rows=True)


def fan_to_parallel(sino: torch.Tensor, fan: FanBeam, parallel: ParallelBeam, pixel_mm: float) -> torch.Tensor:
    """Rebin fan rays to parallel rays over a full turn: (B, fan views, channels) -> (B, Vp, Dp); 0 outside the fan."""
    if abs(parallel.span - 2 * math.pi) > 1e-9:
        raise ValueError("rebinning a full fan turn gives parallel views over a full turn (span 2 pi)")
    theta = torch.from_numpy(parallel.angles)[:, None]
    t_mm = torch.from_numpy(parallel.positions)[None, :] * pixel_mm
    ratio = t_mm / fan.source_to_centre_mm
    inside = ratio.abs() < 1
    gam = torch.asin(ratio.clamp(-1, 1))
    beta = theta - gam + math.pi / 2
    rows = torch.remainder(beta, 2 * math.pi) / (2 * math.pi / fan.views)
    cols = (gam / fan.channel_angle + (fan.detectors - 1) / 2).expand_as(rows)
    cols = torch.where(inside.expand_as(rows), cols, torch.full_like(cols, -10.0))
    return _interp(sino, rows, cols, periodic_rows=True)
