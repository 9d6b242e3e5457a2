"""Registration, N4 and grid operations (medtranslate.preprocessing.register) on phantoms with known transforms and
bias fields."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medtranslate.core.errors import InputError
from medtranslate.data.phantom import LABELS, make_subject
from medtranslate.imaging.transforms import body_mask
from medtranslate.imaging.volume import Volume
from medtranslate.preprocessing.register import (
    crop_to_mask,
    n4,
    register,
    reorient,
    resample_onto,
    resample_spacing,
    to_sitk,
)

# a head phantom on a coarser grid than the sample data's (96 x 96 x 48 voxels of 2.33 x 2.33 x 3.47 mm), for speed
SHAPE, SPACING = (96, 96, 48), (2.33, 2.33, 3.47)


@pytest.fixture(scope="module")
def subject():
    return make_subject(7, shape=SHAPE, spacing=SPACING)


def _centre(vol: Volume) -> np.ndarray:
    return np.array(to_sitk(vol).TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in vol.shape]))


def _head_points(vol: Volume, mask: np.ndarray, step: int = 20) -> np.ndarray:
    img = to_sitk(vol)
    return np.array(
        [img.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in np.argwhere(mask)[::step]]
    )


def _residual(known: sitk.Transform, found: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """|known(found(x)) - x| in mm: zero when ``found`` undoes ``known`` exactly."""
    return np.array(
        [np.linalg.norm(np.array(known.TransformPoint(found.TransformPoint(tuple(p)))) - p) for p in points]
    )


def _rigid(centre: np.ndarray, degrees: tuple[float, float, float], mm: tuple[float, float, float]) -> sitk.Transform:
    t = sitk.Euler3DTransform()
    t.SetCenter(tuple(float(c) for c in centre))
    t.SetRotation(*np.radians(degrees))
    t.SetTranslation(mm)
    return t


def _angle(matrix: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1, 1))))


def test_rigid_misalignment_of_10_degrees_and_8_mm_is_recovered_within_half_a_degree_and_half_a_mm(subject):
    # moving: the subject's MR moved by a known rotation (10 degrees about an oblique axis) and shift (8 mm)
    known = _rigid(_centre(subject.mr), (6.1, -5.16, 6.2), (5.0, -4.0, 4.8))
    assert abs(_angle(np.array(known.GetMatrix()).reshape(3, 3)) - 10.0) < 0.1
    assert abs(np.linalg.norm(known.GetTranslation()) - 8.0) < 0.01
    moved = resample_onto(subject.mr, subject.mr, known)
    ct_mask = body_mask(subject.ct.array, "ct", subject.ct.affine)
    result = register(
        subject.ct, moved, "rigid", fixed_mask=ct_mask, moving_mask=body_mask(moved.array, "mr", moved.affine)
    )
    points = _head_points(subject.ct, ct_mask)
    before = _residual(known, sitk.Euler3DTransform(), points)
    after = _residual(known, result.transform, points)
    assert before.mean() > 8.0  # the misalignment is real
    residual_rotation = np.array(known.GetMatrix()).reshape(3, 3) @ np.array(result.transform.GetMatrix()).reshape(3, 3)
    assert _angle(residual_rotation) < 0.5
    assert after.mean() < 0.5, f"mean residual {after.mean():.2f} mm over the head"
    assert not result.diverged and result.metric_after < result.metric_before
    assert result.linear_parameters()["rotation_deg"] == pytest.approx(
        _angle(np.array(known.GetMatrix()).reshape(3, 3)), abs=0.5
    )


def test_a_smooth_deformation_of_up_to_6_mm_is_undone_to_a_mean_residual_below_1_mm(subject):
    # a known smooth deformation: a B-spline with control points 60 mm apart and random coefficients, scaled so
    # that the largest displacement inside the head is 6 mm. Same modality (CT onto CT): on MR onto CT the
    # B-spline stage made the phantom's alignment worse (docs/commands/preprocess.md), so deformable is for one modality
    ct_img = to_sitk(subject.ct)
    known = sitk.BSplineTransformInitializer(ct_img, [3, 3, 2], order=3)
    rng = np.random.default_rng(0)
    params = rng.normal(0, 1, len(known.GetParameters()))
    ct_mask = body_mask(subject.ct.array, "ct", subject.ct.affine)
    points = _head_points(subject.ct, ct_mask)
    known.SetParameters(tuple(params))
    peak = max(np.linalg.norm(np.array(known.TransformPoint(tuple(p))) - p) for p in points)
    known.SetParameters(tuple(params * 6.0 / peak))
    moved = resample_onto(subject.ct, subject.ct, known, background=-1024)
    result = register(
        subject.ct, moved, "deformable", fixed_mask=ct_mask, moving_mask=body_mask(moved.array, "ct", moved.affine)
    )
    before = _residual(known, sitk.Euler3DTransform(), points)
    after = _residual(known, result.transform, points)
    assert before.max() == pytest.approx(6.0, abs=0.05) and before.mean() > 2.0
    assert after.mean() < 1.0, f"mean residual {after.mean():.2f} mm (before {before.mean():.2f} mm)"
    assert [s["stage"] for s in result.stages] == ["rigid", "affine", "deformable"]


def test_n4_halves_the_intensity_variation_inside_white_matter_under_a_known_bias_field(subject):
    # the phantom MR times a known smooth multiplicative field of +-20 % (a tilted plane through the head)
    mr = np.asarray(subject.mr.array, dtype=np.float32)
    i = np.indices(mr.shape)[0].astype(np.float32)
    field = 1.0 + 0.2 * (2 * i / (mr.shape[0] - 1) - 1)
    biased = Volume(mr * field, subject.mr.affine)
    white = subject.labels == LABELS["white"]

    def cov(a: np.ndarray) -> float:
        return float(a[white].std() / a[white].mean())

    corrected, bias = n4(biased)
    assert cov(corrected.array) <= 0.5 * cov(biased.array), (cov(biased.array), cov(corrected.array))
    assert bias.shape == mr.shape and np.all(bias > 0)
    # the field found follows the one put in (correlation inside the head)
    head = body_mask(biased.array, "mr", biased.affine)
    assert np.corrcoef(bias[head], field[head])[0, 1] > 0.75  # the phantom has a smooth field of its own too
    assert corrected.array[white].mean() == pytest.approx(biased.array[white].mean(), rel=0.1)


def test_registration_of_an_unrelated_image_is_reported_as_diverged_or_refused(subject):
    # "moving": a smooth random texture with no body in it, so there is nothing the registration can align
    rng = np.random.default_rng(1)
    small = Volume(np.asarray(subject.ct.array)[::2, ::2, ::2], subject.ct.affine @ np.diag([2, 2, 2, 1]))
    noise = Volume(rng.uniform(0, 500, small.shape).astype(np.float32), small.affine)
    result = register(small, noise, "rigid")
    assert result.metric_after > result.metric_before - 0.01  # no real alignment was found


def test_grid_operations_keep_world_coordinates(subject):
    ct = subject.ct
    ras = reorient(ct)
    assert ras.orientation == "RAS"
    img, img_ras = to_sitk(ct), to_sitk(ras)
    # the same voxel value sits at the same world point
    for ijk in [(10, 20, 5), (50, 40, 30)]:
        world = img.TransformIndexToPhysicalPoint(ijk)
        back = img_ras.TransformPhysicalPointToIndex(world)
        assert ras.array[back] == ct.array[ijk]
    mask = body_mask(ct.array, "ct", ct.affine)
    (cropped,) = crop_to_mask([ct], mask, 5.0)
    assert all(c < s for c, s in zip(cropped.shape, ct.shape, strict=True))
    lo = np.argwhere(mask).min(axis=0) - np.ceil(5.0 / np.array(ct.spacing)).astype(int)
    lo = np.maximum(lo, 0)
    np.testing.assert_allclose(cropped.affine[:3, 3], (ct.affine @ np.append(lo, 1))[:3])
    assert cropped.array[0, 0, 0] == ct.array[tuple(lo)]
    grid = resample_spacing(ct, (1.0, 1.0, 1.0))
    assert grid.spacing == pytest.approx((1.0, 1.0, 1.0))
    extent_old = np.array(ct.shape) * np.array(ct.spacing)
    assert np.abs(np.array(grid.shape) * 1.0 - extent_old).max() <= 1.0
    fine = resample_onto(ct, grid)
    # the centre of the field of view maps to the same world point
    np.testing.assert_allclose(_centre(fine), _centre(ct), atol=0.6)
    with pytest.raises(InputError, match="spacing"):
        resample_spacing(ct, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="empty"):
        crop_to_mask([ct], np.zeros(ct.shape, bool), 5.0)
