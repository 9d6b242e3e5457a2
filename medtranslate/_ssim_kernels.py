"""Fused, parallel 3D SSIM kernels (numba) for the CPU.

Why hand-written: scikit-image's ``structural_similarity`` filters five full-size float64 maps one after the other
on one core and evaluates the formula everywhere; SynthRAD needs the map only inside the body mask. These kernels
compute the five 7x7x7 box sums with running sums (float64, so the variances do not cancel badly), in parallel
over slices, and evaluate both SynthRAD formulas only at mask voxels, without materialising any map. The
agreement with scikit-image is tested to 1e-4 and the speed-up is measured in ``benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

WIN = 7
HALF = 3


@njit(cache=True)
def _plane(x, y, d, rows, plane):  # pragma: no cover - compiled
    """7x7 in-plane box sums of x, y, xx, yy, xy of slice d into plane (5, H-6, W-6), float64."""
    h_n, w_n = x.shape[1], x.shape[2]
    wp = w_n - WIN + 1
    for h in range(h_n):
        s0 = s1 = s2 = s3 = s4 = 0.0
        for w in range(w_n):
            a = np.float64(x[d, h, w])
            b = np.float64(y[d, h, w])
            s0 += a
            s1 += b
            s2 += a * a
            s3 += b * b
            s4 += a * b
            if w >= WIN:
                a0 = np.float64(x[d, h, w - WIN])
                b0 = np.float64(y[d, h, w - WIN])
                s0 -= a0
                s1 -= b0
                s2 -= a0 * a0
                s3 -= b0 * b0
                s4 -= a0 * b0
            if w >= WIN - 1:
                k = w - WIN + 1
                rows[0, h, k] = s0
                rows[1, h, k] = s1
                rows[2, h, k] = s2
                rows[3, h, k] = s3
                rows[4, h, k] = s4
    # column sums: walk down the rows keeping one running sum per column (contiguous, vectorisable)
    for c in range(5):
        for k in range(wp):
            plane[c, 0, k] = 0.0
        for h in range(WIN):
            for k in range(wp):
                plane[c, 0, k] += rows[c, h, k]
        for h in range(1, h_n - WIN + 1):
            for k in range(wp):
                plane[c, h, k] = plane[c, h - 1, k] + rows[c, h + WIN - 1, k] - rows[c, h - 1, k]


@njit(parallel=True, cache=True)
def masked_ssim_sums(x, y, mask, c1a, c2a, c1b, c2b, weight, want_a, n_chunks):  # pragma: no cover - compiled
    """Sum two SSIM variants over mask voxels at least 3 voxels from every border of x.

    a: the standard SSIM (scikit-image formula, sample covariance, 7^3 uniform window) with constants c1a, c2a.
    b: SynthRAD 2025's per-level term (clip(L) * clip(C) * clip(S)) ** weight with constants c1b, c2b.

    The volume is split into n_chunks slabs along axis 0, processed in parallel; each slab keeps the in-plane box
    sums of its last 7 slices in a ring buffer, so no full-size intermediate is ever written.
    Returns (sum_a, sum_b, count).
    """
    d_n, h_n, w_n = x.shape
    hp, wp = h_n - WIN + 1, w_n - WIN + 1
    dp = d_n - WIN + 1
    n = np.float64(WIN * WIN * WIN)
    cov = n / (n - 1.0)
    c3b = c2b / 2.0
    size = (dp + n_chunks - 1) // n_chunks
    totals = np.zeros((n_chunks, 3))
    for ci in prange(n_chunks):
        o0 = ci * size
        o1 = min(dp, o0 + size)
        if o0 >= o1:
            continue
        ring = np.empty((WIN, 5, hp, wp))
        rows = np.empty((5, h_n, wp))
        acc = np.zeros((5, hp, wp))
        sa = sb = cnt = 0.0
        for d in range(o0, o1 + WIN - 1):
            slot = d % WIN
            if d >= o0 + WIN:  # slide the window: drop the slice that leaves it
                for c in range(5):
                    for h in range(hp):
                        for k in range(wp):
                            acc[c, h, k] -= ring[slot, c, h, k]
            _plane(x, y, d, rows, ring[slot])
            for c in range(5):
                for h in range(hp):
                    for k in range(wp):
                        acc[c, h, k] += ring[slot, c, h, k]
            if d < o0 + WIN - 1:
                continue
            dz = d - WIN + 1 + HALF  # the window's centre slice
            for h in range(hp):
                for k in range(wp):
                    if mask[dz, h + HALF, k + HALF] == 0:
                        continue
                    ux = acc[0, h, k] / n
                    uy = acc[1, h, k] / n
                    vx = cov * (acc[2, h, k] / n - ux * ux)
                    vy = cov * (acc[3, h, k] / n - uy * uy)
                    vxy = cov * (acc[4, h, k] / n - ux * uy)
                    if want_a:
                        sa += ((2.0 * ux * uy + c1a) * (2.0 * vxy + c2a)) / (
                            (ux * ux + uy * uy + c1a) * (vx + vy + c2a)
                        )
                    lum = max((2.0 * ux * uy + c1b) / (ux * ux + uy * uy + c1b), 0.0)
                    sx = np.sqrt(max(vx, 0.0))
                    sy = np.sqrt(max(vy, 0.0))
                    con = max((2.0 * sx * sy + c2b) / (vx + vy + c2b), 0.0)
                    stru = max((vxy + c3b) / (sx * sy + c3b), 0.0)
                    sb += (lum * con * stru) ** weight
                    cnt += 1.0
        totals[ci, 0] = sa
        totals[ci, 1] = sb
        totals[ci, 2] = cnt
    return totals[:, 0].sum(), totals[:, 1].sum(), totals[:, 2].sum()


@njit(parallel=True, cache=True)
def prepare(p, r, m, lo, hi):  # pragma: no cover - compiled
    """One pass over a prediction/reference pair (float32) and mask (uint8).

    Returns the SynthRAD-prepared volumes (clipped to [lo, hi], outside-mask voxels at lo, shifted so lo is 0) and
    per-volume statistics over mask voxels: sum |p - r| (unclipped), sum of squared clipped differences, voxel count,
    maximum of p and of r, and the number of non-finite voxels anywhere.
    """
    d_n, h_n, w_n = p.shape
    x = np.empty((d_n, h_n, w_n), dtype=np.float32)
    y = np.empty((d_n, h_n, w_n), dtype=np.float32)
    abs_sum = np.zeros(d_n)
    sq_sum = np.zeros(d_n)
    count = np.zeros(d_n)
    p_max = np.full(d_n, -np.inf)
    r_max = np.full(d_n, -np.inf)
    bad = np.zeros(d_n)
    for d in prange(d_n):
        for h in range(h_n):
            for w in range(w_n):
                a = np.float64(p[d, h, w])
                b = np.float64(r[d, h, w])
                if not (np.isfinite(a) and np.isfinite(b)):
                    bad[d] += 1.0
                if m[d, h, w]:
                    abs_sum[d] += abs(a - b)
                    ac = min(max(a, lo), hi)
                    bc = min(max(b, lo), hi)
                    sq_sum[d] += (ac - bc) * (ac - bc)
                    count[d] += 1.0
                    p_max[d] = max(p_max[d], a)
                    r_max[d] = max(r_max[d], b)
                    x[d, h, w] = ac - lo
                    y[d, h, w] = bc - lo
                else:
                    x[d, h, w] = 0.0
                    y[d, h, w] = 0.0
    return x, y, abs_sum.sum(), sq_sum.sum(), count.sum(), p_max.max(), r_max.max(), bad.sum()


@njit(parallel=True, cache=True)
def down2(a):  # pragma: no cover - compiled
    """2x2x2 box mean with a zero before the first voxel of every axis, then every second voxel (SynthRAD 2025)."""
    d_n, h_n, w_n = a.shape
    od, oh, ow = (d_n + 1) // 2, (h_n + 1) // 2, (w_n + 1) // 2
    out = np.empty((od, oh, ow), dtype=np.float32)
    for k in prange(od):
        for i in range(oh):
            for j in range(ow):
                s = 0.0
                for dk in range(2):
                    kk = 2 * k - 1 + dk
                    if kk < 0:
                        continue
                    for di in range(2):
                        ii = 2 * i - 1 + di
                        if ii < 0:
                            continue
                        for dj in range(2):
                            jj = 2 * j - 1 + dj
                            if jj >= 0:
                                s += a[kk, ii, jj]
                out[k, i, j] = s / 8.0
    return out
