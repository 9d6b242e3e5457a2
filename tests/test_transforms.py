"""MONAI preprocessing, intensity scaling and its inverse, body masks, and the shared geometry check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtranslate.core.errors import GeometryMismatchError, InputError
from medtranslate.data.phantom import LABELS, make_subject
from medtranslate.imaging.preprocessor import Preprocessor
from medtranslate.imaging.transforms import (
    IntensityParams,
    body_mask,
    check_same_grid,
    ct_intensity,
    fill_holes,
    mr_intensity,
)
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume

from .conftest import SAMPLE, ct_like, oblique_affine


@pytest.fixture(scope="module")
def small_subject():
    return make_subject(7, shape=(64, 64, 32), spacing=(3.5, 3.5, 5.2))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_ct_intensity_round_trip_and_clipping():
    p = ct_intensity()
    hu = np.array([-2000.0, -1024.0, 0.0, 1000.0, 3071.0, 5000.0])
    y = p.forward(hu)
    assert y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_allclose(p.inverse(y), np.clip(hu, -1024, 3071), atol=1e-9)
    assert IntensityParams.from_dict(p.to_dict()) == p


def test_mr_intensity_uses_robust_percentiles_inside_mask():
    rng = np.random.default_rng(0)
    mr = rng.uniform(100, 200, (20, 20, 20))
    mr[0, 0, 0] = 1e6  # one hot voxel must not set the scale
    mask = np.ones_like(mr, dtype=bool)
    p = mr_intensity(mr, mask)
    assert 100 <= p.lo < 102 and 198 < p.hi <= 200
    y = p.forward(mr)
    assert y.min() == -1.0 and y.max() == 1.0 and abs(float(np.median(y))) < 0.05
    with pytest.raises(InputError, match="empty"):
        IntensityParams("mr", 5.0, 5.0)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("masked", [False, True])
def test_mr_intensity_leaves_the_image_as_it_was_and_equals_the_float32_percentiles(dtype, masked):
    """The percentiles are taken on a copy they may reorder (no second copy); never on the caller's image."""
    mr = np.random.default_rng(1).integers(0, 900, (16, 16, 12)).astype(dtype)
    mask = (np.arange(mr.size).reshape(mr.shape) % 3 > 0) if masked else None
    kept = mr.copy()
    p = mr_intensity(mr, mask)
    assert np.array_equal(mr, kept)
    values = mr.astype(np.float32)[mask] if masked else mr.astype(np.float32)
    assert (p.lo, p.hi) == tuple(float(v) for v in np.percentile(values, (0.5, 99.5)))


def test_body_mask_ct_and_mr_cover_the_head(small_subject):
    s = small_subject
    head = s.labels != LABELS["air"]
    ct_mask = body_mask(s.ct.array, "ct", s.ct.affine)
    mr_mask = body_mask(s.mr.array, "mr", s.mr.affine)
    assert dice(ct_mask, head) > 0.95
    assert dice(mr_mask, head) > 0.9
    # internal air (sinuses) and dark bone are inside the mask: holes are filled
    assert ct_mask[s.labels == LABELS["sinus_air"]].mean() > 0.95
    assert mr_mask[s.labels == LABELS["cortical"]].mean() > 0.9
    # a speck of noise outside the head is not part of the largest component
    ct = s.ct.array.copy()
    ct[0, 0, 0] = 500
    assert not body_mask(ct, "ct", s.ct.affine)[0, 0, 0]


def test_preprocessor_orients_to_ras_and_pads_with_background(ct_volume):
    pre = Preprocessor(divisible=16)
    out = pre(ct_volume, ct_intensity())
    image = out["image"]
    assert image.shape[0] == 1 and all(s % 16 == 0 for s in image.shape[1:])
    # RAS: the affine's columns point along +x, +y, +z (closest axes)
    axes = np.asarray(image.affine)[:3, :3]
    assert all(axes[np.argmax(np.abs(axes[:, i])), i] > 0 for i in range(3))
    assert float(image.min()) == -1.0 and float(image.max()) <= 1.0
    assert set(np.unique(out["mask"].numpy())) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def oblique_ct() -> Volume:
    """A sample-data head CT (anisotropic, non-RAS) whose grid is additionally rotated to be oblique.

    Slightly smoothed to a clinical kernel's sharpness, so resampling error stays small where geometry is right.
    """
    from scipy import ndimage

    ct = read_volume(SAMPLE / "mr2ct" / "sub-01" / "ct.nii.gz")
    rotation = oblique_affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    return Volume(ndimage.gaussian_filter(ct.array.astype(np.float32), (1.5, 1.5, 1.0)), rotation @ ct.affine)


@pytest.mark.parametrize(
    "kwargs,tolerance",
    [
        ({}, 0.01),
        ({"crop_to_body": True, "divisible": 32}, 0.01),
        ({"spacing": (1.0, 1.0, 1.0), "crop_to_body": True, "divisible": 16}, 10.0),
        ({"spacing": (1.5, 1.5, 2.0), "crop_to_body": True, "divisible": 16}, 10.0),
    ],
)
def test_identity_network_inverts_to_input_grid_and_hu(oblique_ct, kwargs, tolerance):
    """An identity "network" on an oblique, anisotropic, non-RAS CT comes back on the input's exact grid in HU."""
    volume = oblique_ct
    assert volume.orientation != "RAS" and len(set(np.round(volume.spacing, 3))) > 1
    pre = Preprocessor(**kwargs)
    intensity = ct_intensity()
    data = pre(volume, intensity)
    prediction = torch.as_tensor(data["image"]).clone()  # plain tensor, as a network returns
    restored = pre.invert(prediction, data["image"], intensity, volume)
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored.affine, volume.affine)
    mask = body_mask(volume.array, "ct", volume.affine)
    mad = float(np.abs(restored.array - volume.array)[mask].mean())
    assert mad < tolerance, mad
    # the bound has teeth: the same result one voxel off would fail it
    assert float(np.abs(np.roll(restored.array, 1, axis=0) - volume.array)[mask].mean()) > 3 * tolerance


def test_inverted_volume_writes_and_reads_back_on_input_grid(tmp_path):
    from medtranslate.io.files import write_nifti

    volume = Volume(ct_like(shape=(30, 26, 12), seed=5), oblique_affine(spacing=(0.7, 1.1, 3.0)))
    pre = Preprocessor(spacing=(1.2, 1.2, 1.2), divisible=8)
    data = pre(volume, ct_intensity())
    restored = pre.invert(data["image"].as_tensor(), data["image"], ct_intensity(), volume)
    path = write_nifti(tmp_path / "r.nii.gz", restored.array, restored.affine, np.int16)
    back = read_volume(path)
    check_same_grid(back, volume)


def test_check_same_grid_names_what_differs(ct_volume):
    other = Volume(ct_volume.array, ct_volume.affine.copy())
    check_same_grid(ct_volume, other)
    other.affine[:3, 2] *= 1.2
    with pytest.raises(GeometryMismatchError, match=r"case 'pt012': spacing differs: prediction .* vs reference"):
        check_same_grid(other, ct_volume, names=("prediction", "reference"), case="pt012")
    with pytest.raises(GeometryMismatchError, match="shape differs"):
        check_same_grid(Volume(ct_volume.array[:-1], ct_volume.affine), ct_volume)
    shifted = Volume(ct_volume.array, ct_volume.affine.copy())
    shifted.affine[0, 3] += 1.0
    with pytest.raises(GeometryMismatchError, match="origin differs"):
        check_same_grid(shifted, ct_volume)


@pytest.mark.parametrize("spacing_z", [0.7, 2.5, 6.0])
def test_outside_body_in_slabs_is_the_whole_volume_distance_transform(spacing_z):
    """The air beyond 5 mm of the body is found slab by slab (so the transform's memory is a slab's): it must be
    exactly what one distance transform of the whole volume gives, across slab borders and slabs without body."""
    from scipy import ndimage

    from medtranslate.imaging.transforms import SLAB, outside_body, voxel_spacing

    mask = np.zeros((30, 34, 3 * SLAB + 5), bool)
    mask[8:22, 10:25, SLAB - 3 : SLAB + 9] = True  # across a slab border
    mask[3:6, 4:7, 3 * SLAB + 2] = True  # a speck in the last, short slab
    affine = np.diag([0.9, 1.1, spacing_z, 1.0])
    whole = ndimage.distance_transform_edt(~mask, sampling=voxel_spacing(affine)) > 5.0
    assert np.array_equal(outside_body(np.zeros(mask.shape), "ct", affine, mask=mask), whole)


def test_fill_holes_is_scipys_fill_slice_by_slice_and_fills_every_3d_hole():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        mask = rng.random(shape) < rng.random()
        for axis in range(3):
            expected = mask.copy()
            for k in range(shape[axis]):
                index = tuple(k if a == axis else slice(None) for a in range(3))
                expected[index] = ndimage.binary_fill_holes(mask[index])
            assert np.array_equal(fill_holes(mask, axis), expected), (shape, axis)
            # a slice-wise fill fills every 3D hole too (body_mask fills slice by slice only)
            assert np.array_equal(fill_holes(ndimage.binary_fill_holes(mask), axis), expected), (shape, axis)
    ring = np.zeros((9, 9, 3), dtype=bool)  # a closed ring in each axial slice, open along the axis
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring, 2)[4, 4].all() and not ndimage.binary_fill_holes(ring)[4, 4].any()  # 3D: open at the ends
