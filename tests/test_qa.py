"""Quality checks beyond similarity: the grid-artefact index, slice consistency, Dice."""

from __future__ import annotations

import numpy as np
import pytest

from medtranslate.errors import InputError
from medtranslate.io import read_volume
from medtranslate.qa import artefact_index, dice, slice_consistency
from medtranslate.transforms import axial_axis

from .conftest import SAMPLE


@pytest.fixture(scope="module")
def ct():
    return read_volume(SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz")


def _grid(shape, period, axes=(0, 1)):
    idx = np.indices(shape)
    return np.where(((idx[axes[0]] // (period // 2)) + (idx[axes[1]] // (period // 2))) % 2 == 0, 1.0, -1.0)


def test_artefact_index_is_about_one_for_scans_and_high_for_a_stamped_grid(ct):
    axis = axial_axis(ct.affine)
    for name in ("ct.nii.gz", "mr.nii.gz"):
        vol = read_volume(SAMPLE / "mr2ct" / "sub-07" / name)
        assert 0.5 < artefact_index(vol.array, axis) < 1.5, name
    plane = [a for a in range(3) if a != axis]
    body = ct.array > -500
    # a 20 HU grid, faint beside the anatomy and twice the phantom's noise, passes the index's limit of 2 (issue 12)
    for period in (2, 4):
        stamped = ct.array + 20.0 * _grid(ct.shape, period, plane) * body
        assert artefact_index(stamped, axis) > 3.0, period
    # a pattern along the slice axis only is not an in-plane grid
    along = ct.array + 20.0 * _grid(ct.shape, 2, (axis, axis)) * body
    assert artefact_index(along, axis) < 1.5


def test_slice_consistency_sees_flicker_between_slices(ct):
    axis = axial_axis(ct.affine)
    mask = ct.array > -500
    rng = np.random.default_rng(0)
    shape = [1, 1, 1]
    shape[axis] = ct.shape[axis]
    flicker = rng.normal(0, 40, shape)  # each slice shifted on its own, as a 2D model may do
    steady = ct.array.astype(np.float32) + 40.0
    assert slice_consistency(steady, ct.array, mask, axis) == pytest.approx(0.0, abs=1e-3)
    assert slice_consistency(steady + flicker, ct.array, mask, axis) > 30.0
    with pytest.raises(InputError, match="shapes differ"):
        slice_consistency(steady[:-1], ct.array, mask, axis)


def test_dice():
    a = np.zeros((10, 10, 10), bool)
    b = a.copy()
    a[2:6], b[4:8] = True, True
    assert dice(a, b) == pytest.approx(0.5) and dice(a, a) == 1.0 and dice(a & False, b & False) == 1.0
    with pytest.raises(InputError, match="differ in shape"):
        dice(a, b[:5])
