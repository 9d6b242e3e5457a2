"""Bilinear interpolation of a stack of sinograms at fractional (row, column) points, compiled with numba.

Why hand-written: in torch each of the four neighbours is a gather of every slice at every point, then a product and
a sum into the output, each a pass over memory; here each output value is made in one go, from the four values it
needs, several times faster (benchmarks/bench_lowdose.py). The arithmetic and its order are those of that torch
expression, so the results are the same to the bit (tests/test_ctproj.py), and so is the sample data.
"""

from __future__ import annotations

import math

from numba import njit


@njit(cache=True, nogil=True)
def bilinear(values, rows, cols, periodic_rows, out):  # pragma: no cover - compiled
    """out[k, p] = values[k] interpolated bilinearly at (rows[p], cols[p]), for values (K, R, C) float64.

    Neighbours beyond the columns weigh 0; beyond the rows they wrap round (periodic_rows) or take the edge row. The
    four neighbours are summed from 0 in the order (r0, c0), (r0, c0 + 1), (r0 + 1, c0), (r0 + 1, c0 + 1), each
    weight being (row weight x column weight) x inside.
    """
    n_slices, n_rows, n_cols = values.shape
    for k in range(n_slices):
        image, line = values[k], out[k]
        for p in range(rows.size):
            r_floor, c_floor = math.floor(rows[p]), math.floor(cols[p])
            fr, fc = rows[p] - r_floor, cols[p] - c_floor
            r0, c0 = int(r_floor), int(c_floor)
            total = 0.0
            for dr in range(2):
                wr = 1.0 - fr if dr == 0 else fr
                r = r0 + dr
                r = r % n_rows if periodic_rows else min(max(r, 0), n_rows - 1)
                for dc in range(2):
                    wc = 1.0 - fc if dc == 0 else fc
                    c = c0 + dc
                    inside = 1.0 if 0 <= c < n_cols else 0.0
                    total += image[r, min(max(c, 0), n_cols - 1)] * (wr * wc * inside)
            line[p] = total
