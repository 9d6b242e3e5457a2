"""Fused, parallel 3D SSIM kernels (numba) for the CPU.

Why hand-written: scikit-image's ``structural_similarity`` filters five full-size float64 maps one after the other
on one core and evaluates the formula everywhere; SynthRAD needs the map only inside the body mask. These kernels
compute the five 7x7x7 box sums with running sums (float64, so the variances do not cancel badly), in parallel
over slices, and evaluate both SynthRAD formulas row by row (SIMD over each row that holds mask voxels, summed over
those voxels), without materialising any map. The power of the 2025 term, which libm cannot vectorise, is a series
(``_row_terms``; exact to ~1e-15). The agreement with scikit-image is tested to 1e-4 and the speed-up is measured
in ``benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

WIN = 7
HALF = 3


@njit(inline="always")
def _value(x, m, lo, hi, raw, d, h, w):  # pragma: no cover - compiled
    """Voxel (d, h, w) of x as SynthRAD prepares it when raw (clipped to [lo, hi], shifted by lo, 0 outside the mask
    m), else as it is (already prepared), in float64."""
    a = np.float64(x[d, h, w])
    if raw:
        return min(max(a, lo), hi) - lo if m[d, h, w] else 0.0
    return a


@njit(cache=True)
def _plane(x, y, m, lo, hi, raw, d, rows, plane):  # pragma: no cover - compiled
    """7x7 in-plane box sums of x, y, xx, yy, xy of slice d into plane (5, H-6, W-6), float64."""
    h_n, w_n = x.shape[1], x.shape[2]
    wp = w_n - WIN + 1
    for h in range(h_n):
        s0 = s1 = s2 = s3 = s4 = 0.0
        for w in range(w_n):
            a = _value(x, m, lo, hi, raw, d, h, w)
            b = _value(y, m, lo, hi, raw, d, h, w)
            s0 += a
            s1 += b
            s2 += a * a
            s3 += b * b
            s4 += a * b
            if w >= WIN:
                a0 = _value(x, m, lo, hi, raw, d, h, w - WIN)
                b0 = _value(y, m, lo, hi, raw, d, h, w - WIN)
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


# Reassociation lets LLVM vectorise the row sums; "numpy" error model: no zero-division branch (every denominator
# holds a positive constant). No "nnan"/"ninf": values stay IEEE.
_FAST = {"reassoc", "contract", "arcp", "nsz"}
POW_SERIES_FLOOR = 0.5  # power series below are exact to ~1e-15 for terms in [0.5, 1]


# length: the per-voxel SSIM terms of one image row, written out for numba to compile into one loop
@njit(fastmath=_FAST, error_model="numpy", cache=True)
def _row_terms(a0, a1, a2, a3, a4, mrow, n, cov, c1a, c2a, c1b, c2b, weight, terms):  # pragma: no cover - compiled
    """One output row of the SSIM formulas (box sums a0..a4 of x, y, xx, yy, xy), computed for every voxel (SIMD)
    and summed over the mask row.

    Returns (sum of SSIM a, sum of the 2025 term b ** weight for terms >= POW_SERIES_FLOOR, mask count, number of
    mask voxels whose term is below the floor); terms receives the terms before the power.
    The power is exp(weight * ln t) with both as series: ln t = 2 atanh((t - 1) / (t + 1)) (|u| <= 1/3 for
    t >= 0.5, 14 terms) and exp(y) to degree 11 (|y| <= 0.21 for weights <= 0.3): libm's pow does not vectorise.
    """
    c3b = c2b / 2.0
    inv = 1.0 / n
    sa = 0.0
    sb = 0.0
    cnt = 0.0
    good = 0.0
    for k in range(mrow.shape[0]):
        mk = np.float64(mrow[k] != 0)
        ux = a0[k] * inv
        uy = a1[k] * inv
        vx = cov * (a2[k] * inv - ux * ux)
        vy = cov * (a3[k] * inv - uy * uy)
        vxy = cov * (a4[k] * inv - ux * uy)
        sa += mk * ((2.0 * ux * uy + c1a) * (2.0 * vxy + c2a)) / ((ux * ux + uy * uy + c1a) * (vx + vy + c2a))
        cnt += mk
        lum = (2.0 * ux * uy + c1b) / (ux * ux + uy * uy + c1b)
        lum = lum if lum > 0.0 else 0.0
        vx0 = vx if vx > 0.0 else 0.0
        vy0 = vy if vy > 0.0 else 0.0
        sx = np.sqrt(vx0)
        sy = np.sqrt(vy0)
        con = (2.0 * sx * sy + c2b) / (vx + vy + c2b)
        con = con if con > 0.0 else 0.0
        stru = (vxy + c3b) / (sx * sy + c3b)
        stru = stru if stru > 0.0 else 0.0
        t = lum * con * stru
        terms[k] = t
        ok = t >= POW_SERIES_FLOOR
        okf = np.float64(ok)
        v = t if ok else 1.0
        u = (v - 1.0) / (v + 1.0)
        u2 = u * u
        # written out: an inner loop would stop LLVM from vectorising this one
        s = 1.0 / 25.0 + u2 * (1.0 / 27.0)
        s = 1.0 / 23.0 + u2 * s
        s = 1.0 / 21.0 + u2 * s
        s = 1.0 / 19.0 + u2 * s
        s = 1.0 / 17.0 + u2 * s
        s = 1.0 / 15.0 + u2 * s
        s = 1.0 / 13.0 + u2 * s
        s = 1.0 / 11.0 + u2 * s
        s = 1.0 / 9.0 + u2 * s
        s = 1.0 / 7.0 + u2 * s
        s = 1.0 / 5.0 + u2 * s
        s = 1.0 / 3.0 + u2 * s
        s = 1.0 + u2 * s
        y = weight * 2.0 * u * s
        e = 1.0 + y * (1.0 / 11.0)
        e = 1.0 + y * e * (1.0 / 10.0)
        e = 1.0 + y * e * (1.0 / 9.0)
        e = 1.0 + y * e * (1.0 / 8.0)
        e = 1.0 + y * e * (1.0 / 7.0)
        e = 1.0 + y * e * (1.0 / 6.0)
        e = 1.0 + y * e * (1.0 / 5.0)
        e = 1.0 + y * e * (1.0 / 4.0)
        e = 1.0 + y * e * (1.0 / 3.0)
        e = 1.0 + y * e * (1.0 / 2.0)
        e = 1.0 + y * e
        sb += mk * okf * e
        good += mk * okf
    return sa, sb, cnt, cnt - good


# complexity: one compiled pass over the volume computes both SSIM variants, its branches per voxel inside the
# parallel loop; kept as one function so the whole loop body is numba's to optimise
@njit(parallel=True, cache=True)
def masked_ssim_sums(x, y, mask, lo, hi, raw, c1a, c2a, c1b, c2b, weight, n_chunks):  # noqa: C901  # pragma: no cover - compiled
    """Sum two SSIM variants over mask voxels at least 3 voxels from every border of x.

    raw: x and y are the prediction and reference as given; each voxel is prepared as it is read (clipped to
    [lo, hi], shifted by lo, 0 outside the mask), so no prepared copy is ever written. Else x and y are prepared.

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
        terms = np.empty(wp)
        sa = sb = cnt = 0.0
        for d in range(o0, o1 + WIN - 1):
            slot = d % WIN
            if d >= o0 + WIN:  # slide the window: drop the slice that leaves it
                for c in range(5):
                    for h in range(hp):
                        for k in range(wp):
                            acc[c, h, k] -= ring[slot, c, h, k]
            _plane(x, y, mask, lo, hi, raw, d, rows, ring[slot])
            for c in range(5):
                for h in range(hp):
                    for k in range(wp):
                        acc[c, h, k] += ring[slot, c, h, k]
            if d < o0 + WIN - 1:
                continue
            dz = d - WIN + 1 + HALF  # the window's centre slice
            for h in range(hp):
                mrow = mask[dz, h + HALF, HALF : HALF + wp]
                if not mrow.any():
                    continue
                ra, rb, rc, rest = _row_terms(
                    acc[0, h],
                    acc[1, h],
                    acc[2, h],
                    acc[3, h],
                    acc[4, h],
                    mrow,
                    n,
                    cov,
                    c1a,
                    c2a,
                    c1b,
                    c2b,
                    weight,
                    terms,
                )
                sa += ra
                sb += rb
                cnt += rc
                if rest:  # terms below POW_SERIES_FLOOR: the library's power, voxel by voxel (rare)
                    for k in range(wp):
                        if mask[dz, h + HALF, k + HALF] != 0 and terms[k] < POW_SERIES_FLOOR:
                            sb += terms[k] ** weight
        totals[ci, 0] = sa
        totals[ci, 1] = sb
        totals[ci, 2] = cnt
    return totals[:, 0].sum(), totals[:, 1].sum(), totals[:, 2].sum()


@njit(parallel=True, cache=True)
def stats(p, r, m, lo, hi):  # pragma: no cover - compiled
    """One read-only pass over a prediction/reference pair (float32) and mask (uint8): over mask voxels, sum |p - r|
    (unclipped), the sum of squared differences clipped to [lo, hi], the voxel count, the maxima of p and r; and the
    number of non-finite voxels anywhere."""
    d_n, h_n, w_n = p.shape
    out = np.zeros((d_n, 6))
    for d in prange(d_n):
        s_abs = s_sq = cnt = bad = 0.0
        p_max = r_max = -np.inf
        for h in range(h_n):
            for w in range(w_n):
                a = np.float64(p[d, h, w])
                b = np.float64(r[d, h, w])
                if not (np.isfinite(a) and np.isfinite(b)):
                    bad += 1.0
                if m[d, h, w]:
                    s_abs += abs(a - b)
                    dd = min(max(a, lo), hi) - min(max(b, lo), hi)
                    s_sq += dd * dd
                    cnt += 1.0
                    p_max = max(p_max, a)
                    r_max = max(r_max, b)
        out[d, 0], out[d, 1], out[d, 2], out[d, 3], out[d, 4], out[d, 5] = s_abs, s_sq, cnt, p_max, r_max, bad
    return out[:, 0].sum(), out[:, 1].sum(), out[:, 2].sum(), out[:, 3].max(), out[:, 4].max(), out[:, 5].sum()


@njit(parallel=True, cache=True)
def down2(a, m, lo, hi, raw):  # pragma: no cover - compiled
    """2x2x2 box mean with a zero before the first voxel of every axis, then every second voxel (SynthRAD 2025).

    raw: a is read as ``masked_ssim_sums`` reads it (prepared voxel by voxel with mask m and [lo, hi])."""
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
                                s += _value(a, m, lo, hi, raw, kk, ii, jj)
                out[k, i, j] = s / 8.0
    return out
