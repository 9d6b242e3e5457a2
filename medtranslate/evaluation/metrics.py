"""Masked 3D image metrics in HU, defined exactly as the SynthRAD challenge defines them.

- MAE (HU): mean of |ref - pred| over mask voxels, no clipping.
- PSNR (dB): both clipped to the edition's range, mask voxels only, data range hi - lo.
  SynthRAD 2023: [-1024, 3000], 4024; SynthRAD 2025: [-1024, 3071], 4095.
- SSIM (SynthRAD 2023 recipe): clip; voxels outside the mask set to lo; shift by -lo; 3D SSIM with a uniform 7^3
  window, sample covariance, K1 0.01, K2 0.03; score = mean of the SSIM map over mask voxels at least 3 voxels
  from every border.
- MS-SSIM (SynthRAD 2025 evaluation code): same preparation with [-1024, 3071]; edge-pad each dimension to 97;
  5 levels, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) applied to luminance, contrast and structure alike,
  each component clipped at 0; per level the masked mean (3-voxel crop) clipped to [0, 1]; between levels a
  zero-padded 2x2x2 box filter and every second voxel (the mask: every second voxel); score = product over levels.
- Low-dose CT (LDCT benchmark, Eulig et al. 2024): per axial slice, window to [0, 1] (head L40/W80, abdomen
  L50/W400, chest L-600/W1500), SSIM (uniform 7x7 window) and PSNR with data range 1, averaged over slices; RMSE in HU.

Inputs are numpy arrays or torch tensors (CPU or CUDA), all of one shape, arrays indexed as stored. On the CPU the
SSIM maps are computed by fused numba kernels (see ``_ssim_kernels``); CUDA tensors stay on the GPU (torch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medtranslate.core.errors import InputError
from medtranslate.core.tasks import get_task

__all__ = [
    "EDITIONS",
    "MS_SSIM_WEIGHTS",
    "WINDOWS",
    "mae",
    "psnr",
    "ssim",
    "ms_ssim",
    "synthrad_metrics",
    "ldct_metrics",
    "similarity_scores",
]

K1, K2 = 0.01, 0.03
WIN, HALF = 7, 3


@dataclass(frozen=True)
class Edition:
    year: int
    lo: float
    hi: float

    @property
    def data_range(self) -> float:
        return self.hi - self.lo


EDITIONS = {2023: Edition(2023, -1024.0, 3000.0), 2025: Edition(2025, -1024.0, 3071.0)}
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as used by SynthRAD 2025
MS_SSIM_MIN_SIZE = 97  # SynthRAD 2025: room for 5 levels of a 7^3 window
# Display windows (level, width) in HU for low-dose CT metrics (LDCT benchmark, Eulig et al. 2024).
WINDOWS = {"head": (40.0, 80.0), "abdomen": (50.0, 400.0), "chest": (-600.0, 1500.0)}


def _edition(edition: int) -> Edition:
    if edition not in EDITIONS:
        raise InputError(f"unknown SynthRAD edition {edition!r}; expected one of: {', '.join(map(str, EDITIONS))}")
    return EDITIONS[edition]


def _as_inputs(pred: Any, ref: Any, mask: Any) -> tuple[Any, Any, Any]:
    """Shape checks; CUDA tensors stay float64 tensors on their device, everything else becomes float32 numpy."""
    if any(isinstance(a, torch.Tensor) and a.is_cuda for a in (pred, ref, mask)):
        device = next(a.device for a in (pred, ref, mask) if isinstance(a, torch.Tensor) and a.is_cuda)
        p, r, m = (torch.as_tensor(a, device=device) for a in (pred, ref, mask))
        p, r, m = p.to(torch.float64), r.to(torch.float64), m > 0
    else:
        p, r, m = (
            a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in (pred, ref, mask)
        )
        p, r = np.ascontiguousarray(p, dtype=np.float32), np.ascontiguousarray(r, dtype=np.float32)
        m = np.ascontiguousarray(m > 0)
    if not (p.shape == r.shape == m.shape):
        raise InputError(
            f"shapes differ: prediction {tuple(p.shape)}, reference {tuple(r.shape)}, mask {tuple(m.shape)}"
        )
    if p.ndim != 3:
        raise InputError(f"metrics need 3D volumes, got shape {tuple(p.shape)}")
    if not bool(m.any()):
        raise InputError("the mask is empty: no voxel to score")
    return p, r, m


@dataclass
class _Prepared:
    """SynthRAD-prepared volumes of one edition's range plus the statistics gathered on the way.

    On the CPU x and y are the prediction and reference as given and ``clip`` holds (lo, hi): the kernels prepare
    each voxel as they read it (writing prepared copies cost more than the SSIM itself). Tensors are prepared here
    (clip None).
    """

    x: Any
    y: Any
    abs_sum: float
    sq_sum: float
    count: float
    p_max: float
    r_max: float
    clip: tuple[float, float] | None = None


def _prepare(p: Any, r: Any, m: Any, ed: Edition) -> _Prepared:
    """Clip to the edition's range, set outside-mask voxels to lo, shift so lo is 0; gather MAE/PSNR sums."""
    if isinstance(p, torch.Tensor):
        if not bool(torch.isfinite(p).all() and torch.isfinite(r).all()):
            raise InputError("the prediction or reference holds NaN or infinite voxels")
        pc, rc = p.clamp(ed.lo, ed.hi), r.clamp(ed.lo, ed.hi)
        x, y = torch.where(m, pc, ed.lo) - ed.lo, torch.where(m, rc, ed.lo) - ed.lo
        d = pc[m] - rc[m]
        return _Prepared(
            x,
            y,
            float((p[m] - r[m]).abs().sum()),
            float((d * d).sum()),
            float(m.sum()),
            float(p[m].max()),
            float(r[m].max()),
        )
    from medtranslate.evaluation import _ssim_kernels as kern

    with numba_threads():
        abs_sum, sq_sum, count, p_max, r_max, bad = kern.stats(p, r, m.view(np.uint8), ed.lo, ed.hi)
    if bad:
        raise InputError(f"the prediction or reference holds {int(bad)} NaN or infinite voxels")
    return _Prepared(p, r, abs_sum, sq_sum, count, p_max, r_max, (float(ed.lo), float(ed.hi)))


def _psnr_of(prep: _Prepared, ed: Edition) -> float:
    mse = prep.sq_sum / prep.count
    return math.inf if mse == 0 else 10.0 * math.log10(ed.data_range**2 / mse)


def mae(pred: Any, ref: Any, mask: Any) -> float:
    """Mean absolute error in HU over mask voxels (no clipping)."""
    p, r, m = _as_inputs(pred, ref, mask)
    prep = _prepare(p, r, m, EDITIONS[2023])
    return prep.abs_sum / prep.count


def psnr(pred: Any, ref: Any, mask: Any, edition: int = 2023) -> float:
    """PSNR in dB over mask voxels, both clipped to the edition's HU range."""
    ed = _edition(edition)
    p, r, m = _as_inputs(pred, ref, mask)
    return _psnr_of(_prepare(p, r, m, ed), ed)


# ----------------------------------------------------------------------------------------------------- SSIM core


def _crop_to_mask(x: Any, y: Any, m: Any) -> tuple[Any, Any, Any]:
    """Crop to the mask's bounding box plus the window half-width (clamped to the volume).

    Exact: every scored voxel keeps its whole window, and voxels near the volume's own border stay excluded.
    """
    mm = m.cpu().numpy() if isinstance(m, torch.Tensor) else m
    sl = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mm.any(axis=other))
        sl.append(slice(max(int(idx[0]) - HALF, 0), min(int(idx[-1]) + HALF + 1, mm.shape[axis])))
    sl = tuple(sl)
    return x[sl], y[sl], m[sl]


def _box_valid_torch(v: torch.Tensor) -> torch.Tensor:
    """7^3 box means over the valid region (running sums via cumsum, float64)."""
    for axis in range(-3, 0):
        c = torch.cumsum(v, dim=axis)
        c = torch.cat([torch.zeros_like(c.narrow(axis, 0, 1)), c], dim=axis)
        n = v.shape[axis]
        v = c.narrow(axis, WIN, n - WIN + 1) - c.narrow(axis, 0, n - WIN + 1)
    return v / WIN**3


def _sums_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    ca: tuple[float, float],
    cb: tuple[float, float],
    weight: float,
    want_a: bool,
) -> tuple[float, float, float]:
    x, y = x.to(torch.float64), y.to(torch.float64)
    mu = _box_valid_torch(torch.stack([x, y, x * x, y * y, x * y]))
    inner = m[HALF:-HALF, HALF:-HALF, HALF:-HALF]
    ux, uy, uxx, uyy, uxy = (t[inner] for t in mu)
    cov = WIN**3 / (WIN**3 - 1.0)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    sum_a = 0.0
    if want_a:
        c1, c2 = ca
        sum_a = float((((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))).sum())
    c1, c2 = cb
    lum = ((2 * ux * uy + c1) / (ux * ux + uy * uy + c1)).clamp_min(0)
    sx, sy = vx.clamp_min(0).sqrt(), vy.clamp_min(0).sqrt()
    con = ((2 * sx * sy + c2) / (vx + vy + c2)).clamp_min(0)
    stru = ((vxy + c2 / 2) / (sx * sy + c2 / 2)).clamp_min(0)
    return sum_a, float(((lum * con * stru) ** weight).sum()), float(inner.sum())


def _masked_sums(
    x: Any,
    y: Any,
    m: Any,
    clip: tuple[float, float] | None,
    ca: tuple[float, float],
    cb: tuple[float, float],
    weight: float,
    want_a: bool,
) -> tuple[float, float, float]:
    """Sums of SSIM (constants ca) and of the SynthRAD 2025 level term (constants cb, weight) over scored voxels.

    clip: (lo, hi) when x and y are raw (see ``_Prepared``); m is then also their preparation mask."""
    x, y, m = _crop_to_mask(x, y, m)
    if min(x.shape) < WIN:
        return 0.0, 0.0, 0.0
    if isinstance(x, torch.Tensor):
        return _sums_torch(x, y, m, ca, cb, weight, want_a)
    import numba

    from medtranslate.evaluation import _ssim_kernels as kern

    lo, hi = clip if clip is not None else (0.0, 0.0)
    # contiguous inputs: the crop's views are strided, and every memory layout is a separate compilation (~5 s each)
    x, y, mu = np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(m).view(np.uint8)
    with numba_threads():
        chunks = 2 * numba.get_num_threads()  # a few slabs per thread balance the load; each slab recomputes 6 slices
        return kern.masked_ssim_sums(x, y, mu, lo, hi, clip is not None, ca[0], ca[1], cb[0], cb[1], weight, chunks)


@contextlib.contextmanager
def numba_threads() -> Iterator[None]:
    """numba's parallel kernels on torch's thread count, and torch's count as it was after them. numba's OpenMP layer
    launches with its own count (every core unless NUMBA_NUM_THREADS) and leaves it as the calling thread's OpenMP
    count, which is the one torch reads: one SSIM during validation raised training from OMP_NUM_THREADS=1 or
    train.num_threads to every core for the rest of the run."""
    import numba

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _constants(data_range: float) -> tuple[float, float]:
    return (K1 * data_range) ** 2, (K2 * data_range) ** 2


def _down2(a: Any, m: Any, clip: tuple[float, float] | None) -> Any:
    """SynthRAD 2025's downsampling: 2x2x2 box filter with zeros before the first voxel, then every second voxel.

    clip: (lo, hi) when a is raw (see ``_Prepared``), prepared with mask m as it is read."""
    if not isinstance(a, torch.Tensor):
        from medtranslate.evaluation import _ssim_kernels as kern

        lo, hi = clip if clip is not None else (0.0, 0.0)
        with numba_threads():
            return kern.down2(
                np.ascontiguousarray(a, dtype=np.float32),
                np.ascontiguousarray(m).view(np.uint8),
                lo,
                hi,
                clip is not None,
            )
    p = torch.nn.functional.pad(a[None, None], (1, 0, 1, 0, 1, 0))[0, 0]
    for axis in range(3):
        n = p.shape[axis] // 2
        p = (
            p.narrow(axis, 0, 2 * n)[(slice(None),) * axis + (slice(0, None, 2),)]
            + p.narrow(axis, 1, 2 * n - 1)[(slice(None),) * axis + (slice(0, None, 2),)]
        ) / 2.0
    return p


def _pad_to_min(a: Any, size: int) -> Any:
    pads = [(max(size - n, 0) // 2, max(size - n, 0) - max(size - n, 0) // 2) for n in a.shape]
    if not any(b or e for b, e in pads):
        return a
    if isinstance(a, torch.Tensor):
        flat = [v for b, e in reversed(pads) for v in (b, e)]
        return torch.nn.functional.pad(a[None, None].to(torch.float64), flat, mode="replicate")[0, 0].to(a.dtype)
    return np.pad(a, pads, mode="edge")


def _score(p: Any, r: Any, m: Any, ed: Edition, want_ms: bool) -> dict[str, float]:
    """All metrics of one case; SSIM and MS-SSIM level 0 share their box sums where the definitions coincide."""
    if min(p.shape) < WIN:
        raise InputError(
            f"SSIM needs at least {WIN} voxels along every axis (its {WIN}x{WIN}x{WIN} window), the volume is "
            f"{'x'.join(map(str, p.shape))}: too few slices to score"
        )
    prep = _prepare(p, r, m, ed)
    ed25 = EDITIONS[2025]
    ca, cb = _constants(ed.data_range), _constants(ed25.data_range)
    # Same prepared volumes for both recipes unless the edition clips lower than 2025 and a voxel is above that.
    same_prep = ed == ed25 or (prep.p_max <= ed.hi and prep.r_max <= ed.hi)
    share = want_ms and same_prep and min(p.shape) >= MS_SSIM_MIN_SIZE
    sum_a, sum_b, count = _masked_sums(prep.x, prep.y, m, prep.clip, ca, cb, MS_SSIM_WEIGHTS[0], True)
    if not count:
        raise InputError(
            f"no mask voxel lies {HALF} or more voxels inside the volume's border, where SSIM is defined; check the "
            "mask"
        )
    out = {"mae": prep.abs_sum / prep.count, "psnr": _psnr_of(prep, ed), "ssim": sum_a / count, "ms_ssim": math.nan}
    if not want_ms:
        return out
    if share:
        levels = [sum_b / count if count else math.nan]
        xs, ys, ms, clip = prep.x, prep.y, m, prep.clip
    else:
        prep25 = prep if same_prep else _prepare(p, r, m, ed25)
        # edge padding commutes with the voxel-wise preparation, so raw volumes may be padded before it
        xs, ys, ms = (_pad_to_min(a, MS_SSIM_MIN_SIZE) for a in (prep25.x, prep25.y, m))
        clip = prep25.clip
        levels = []
    while len(levels) < len(MS_SSIM_WEIGHTS):
        if levels:  # next scale; from here on the volumes are prepared
            xs, ys, ms, clip = _down2(xs, ms, clip), _down2(ys, ms, clip), ms[::2, ::2, ::2], None
        if not bool(ms.any()):
            levels.append(math.nan)
            continue
        _, sb, cnt = _masked_sums(xs, ys, ms, clip, ca, cb, MS_SSIM_WEIGHTS[len(levels)], False)
        levels.append(sb / cnt if cnt else math.nan)
    out["ms_ssim"] = float(np.prod([v if math.isnan(v) else min(max(v, 0.0), 1.0) for v in levels]))
    return out


def ssim(pred: Any, ref: Any, mask: Any, edition: int = 2023) -> float:
    """Masked 3D SSIM, SynthRAD 2023 recipe, with the edition's clipping range and data range."""
    ed = _edition(edition)
    return _score(*_as_inputs(pred, ref, mask), ed, want_ms=False)["ssim"]


def ms_ssim(pred: Any, ref: Any, mask: Any) -> float:
    """Masked 3D MS-SSIM, SynthRAD 2025 recipe."""
    return _score(*_as_inputs(pred, ref, mask), EDITIONS[2025], want_ms=True)["ms_ssim"]


def synthrad_metrics(pred: Any, ref: Any, mask: Any, edition: int = 2023) -> dict[str, float]:
    """All SynthRAD metrics of one case: mae, psnr and ssim (edition's range) and ms_ssim (2025 recipe).

    Args:
        pred: synthetic CT in HU. ref: reference CT in HU. mask: voxels to score (> 0).
        edition: 2023 or 2025: the clipping range and data range of PSNR and SSIM.

    Raises:
        InputError: shapes differ, not 3D, empty mask, NaN voxels, or an unknown edition.
    """
    ed = _edition(edition)
    return _score(*_as_inputs(pred, ref, mask), ed, want_ms=True)


# ----------------------------------------------------------------------------------------------------- low-dose CT


def ldct_metrics(
    pred: Any, ref: Any, axial_axis: int = 2, window: str = "head", mask: Any | None = None
) -> dict[str, float]:
    """Low-dose CT metrics: per axial slice, windowed SSIM and PSNR on [0, 1], averaged; RMSE in HU.

    Args:
        pred, ref: volumes in HU.
        axial_axis: the array axis of the axial slices.
        window: head, abdomen or chest.
        mask: optional; RMSE is then computed inside it (SSIM and PSNR always use whole slices).
    """
    from scipy.ndimage import uniform_filter

    if window not in WINDOWS:
        raise InputError(f"unknown window '{window}'; expected one of: {', '.join(WINDOWS)}")
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    r = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    if p.shape != r.shape or p.ndim != 3:
        raise InputError(f"shapes differ or are not 3D: prediction {p.shape}, reference {r.shape}")
    p = np.moveaxis(p.astype(np.float64), axial_axis, 0)
    r = np.moveaxis(r.astype(np.float64), axial_axis, 0)
    if min(p.shape[1:]) < WIN:
        raise InputError(
            f"slice SSIM needs slices of at least {WIN}x{WIN} pixels (its window), the slices are "
            f"{p.shape[1]}x{p.shape[2]}"
        )
    if not (np.isfinite(p).all() and np.isfinite(r).all()):
        raise InputError("the prediction or reference holds NaN or infinite voxels")
    level, width = WINDOWS[window]
    lo = level - width / 2.0
    pw, rw = np.clip((p - lo) / width, 0, 1), np.clip((r - lo) / width, 0, 1)
    # 2D SSIM per slice: 7x7 uniform window, sample covariance, data range 1, 3-pixel border cropped.
    size = (1, WIN, WIN)
    ux, uy = uniform_filter(pw, size), uniform_filter(rw, size)
    cov = 49.0 / 48.0
    vx = cov * (uniform_filter(pw * pw, size) - ux * ux)
    vy = cov * (uniform_filter(rw * rw, size) - uy * uy)
    vxy = cov * (uniform_filter(pw * rw, size) - ux * uy)
    c1, c2 = _constants(1.0)
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    ssim_slices = smap[:, HALF:-HALF, HALF:-HALF].mean(axis=(1, 2))
    mse = ((pw - rw) ** 2).mean(axis=(1, 2))
    psnr_slices = np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-300)), np.inf)
    diff = p - r
    if mask is not None:
        inside = np.moveaxis(
            np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask) > 0, axial_axis, 0
        )
        if inside.shape != diff.shape or not inside.any():
            raise InputError("the mask is empty or of another shape than the volumes: no voxel to score")
        diff = diff[inside]
    finite = psnr_slices[np.isfinite(psnr_slices)]
    return {
        "ssim": float(ssim_slices.mean()),
        "psnr": float(finite.mean()) if finite.size else math.inf,
        "rmse": float(np.sqrt(np.mean(diff**2))),
    }


def similarity_scores(
    pred: Any, ref: Any, mask: Any, task: str, axial_axis: int, edition: int = 2023, window: str = "head"
) -> dict[str, float]:
    """The similarity metrics of ``task`` for one case, as validation and ``evaluate`` both report them: the SynthRAD
    metrics for MR -> CT; for low-dose CT the windowed slice metrics and the MAE in HU inside the mask.

    Args:
        pred, ref: volumes in HU (arrays). mask: voxels to score. axial_axis: the array axis of the axial slices.
        edition: SynthRAD edition (mr2ct). window: display window of the slice metrics (ldct).
    """
    if get_task(task).metrics == "synthrad":
        return synthrad_metrics(pred, ref, mask, edition=edition)
    scores = ldct_metrics(pred, ref, axial_axis=axial_axis, window=window, mask=mask)
    scores["mae"] = float(np.abs(np.asarray(pred, dtype=np.float64) - ref)[np.asarray(mask) > 0].mean())
    return scores
