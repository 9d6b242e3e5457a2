"""The procedural head phantom: determinism, plausible tissue values, and the committed sample data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtranslate.data.phantom import COHORT_SPLIT, LABELS, SAMPLE_SPLIT, make_subject, write_sample_data
from medtranslate.io.files import read_volume

from .conftest import SAMPLE, cli

SMALL = dict(shape=(64, 64, 32), spacing=(3.5, 3.5, 5.2))


@pytest.fixture(scope="module")
def subject():
    return make_subject(11)


def core(subject, tissue: str) -> np.ndarray:
    """Voxels well inside a tissue (eroded by one voxel), away from partial-volume edges.

    The skull's tables are thinner than a slice, so bone is eroded in-plane only.
    """
    from scipy import ndimage

    mask = subject.labels == LABELS[tissue]
    return ndimage.binary_erosion(mask, structure=np.ones((3, 3, 1 if tissue == "cortical" else 3), bool))


def test_same_seed_same_volumes_other_seed_other_anatomy():
    first = make_subject(11, **SMALL)
    again = make_subject(11, **SMALL)
    np.testing.assert_array_equal(again.ct.array, first.ct.array)
    np.testing.assert_array_equal(again.mr.array, first.mr.array)
    other = make_subject(12, **SMALL)
    assert (other.labels != first.labels).mean() > 0.05


def test_grid_is_int16_non_ras_and_anisotropic(subject):
    for vol in (subject.ct, subject.mr):
        assert vol.array.dtype == np.int16
        assert vol.orientation != "RAS"
        assert vol.spacing[2] > vol.spacing[0]
    np.testing.assert_array_equal(subject.ct.affine, subject.mr.affine)


@pytest.mark.parametrize(
    "tissue,lo,hi",
    [
        ("air", -1024, -950),
        ("fat", -130, -60),
        ("csf", -10, 25),
        ("white", 10, 45),
        ("grey", 20, 55),
        ("cortical", 600, 2100),
    ],
)
def test_ct_tissues_have_plausible_hu(subject, tissue, lo, hi):
    values = subject.ct.array[core(subject, tissue)]
    assert values.size > 20, tissue
    assert lo <= float(np.median(values)) <= hi


def test_mr_is_t1_like_bone_and_air_both_dark(subject):
    med = {
        t: float(np.median(subject.mr.array[core(subject, t)]))
        for t in ("white", "grey", "csf", "fat", "cortical", "air")
    }
    assert med["fat"] > med["white"] > med["grey"] > med["csf"]
    assert med["cortical"] < 0.25 * med["white"] and med["air"] < 0.25 * med["white"]
    # ... while CT separates them by more than 2000 HU: context is needed to tell them apart
    ct = subject.ct.array
    assert float(np.median(ct[core(subject, "cortical")])) - float(np.median(ct[core(subject, "air")])) > 1500


def test_committed_sample_data_matches_its_split_and_budget():
    split = json.loads((SAMPLE / "split.json").read_text())
    assert split == SAMPLE_SPLIT
    subjects = sorted(p.name for p in (SAMPLE / "mr2ct").iterdir() if p.name.startswith("sub-"))
    assert subjects == sorted(sum(SAMPLE_SPLIT.values(), []))
    assert len(subjects) >= 8
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 45 * 2**20
    ct = read_volume(SAMPLE / "mr2ct" / "sub-01" / "ct.nii.gz")
    assert ct.shape == (128, 128, 64) and ct.array.dtype == np.int16 and ct.orientation != "RAS"


def test_committed_cohorts_share_no_subject_and_differ_in_grid_and_field_of_view():
    assert json.loads((SAMPLE / "split_cohorts.json").read_text()) == COHORT_SPLIT
    ids = {
        (task, role): sorted(p.name.removesuffix(".nii.gz") for p in (SAMPLE / task / role).glob("*.nii.gz"))
        for task, role in (("mr2ct", "mr"), ("mr2ct", "ct"), ("ldct", "ld"), ("ldct", "nd"))
    }
    for task, (a, b) in (("mr2ct", ("mr", "ct")), ("ldct", ("ld", "nd"))):
        assert len(ids[task, a]) == len(ids[task, b]) == 5 and not set(ids[task, a]) & set(ids[task, b])
        assert sorted(ids[task, a] + ids[task, b]) == sorted(COHORT_SPLIT["train"])
        paired = {p.name for p in (SAMPLE / task).iterdir() if p.name.startswith("sub-")}
        assert not paired & set(ids[task, a] + ids[task, b])
    mr, ct = (
        read_volume(SAMPLE / "mr2ct" / "mr" / "sub-11.nii.gz"),
        read_volume(SAMPLE / "mr2ct" / "ct" / "sub-21.nii.gz"),
    )
    assert mr.spacing == pytest.approx((2.0, 2.0, 3.0)) and ct.spacing == pytest.approx((2.0, 2.0, 2.6))
    assert mr.shape[2] * 3.0 < 0.75 * ct.shape[2] * 2.6  # the MRs are head only, the CTs head and neck


@pytest.mark.slow
def test_sample_data_command_regenerates_committed_files_exactly(tmp_path):
    result = cli("sample-data", "--out", str(tmp_path), "--subjects", "1", "--cohorts", "1")
    assert result.returncode == 0, result.stderr
    files = [
        f"{task}/sub-01/{name}.nii.gz"
        for task, names in (("mr2ct", "mr ct mask"), ("ldct", "ld nd"))
        for name in names.split()
    ]
    files += ["mr2ct/mr/sub-11.nii.gz", "mr2ct/ct/sub-21.nii.gz", "ldct/nd/sub-11.nii.gz", "ldct/ld/sub-21.nii.gz"]
    for name in files:
        new, old = read_volume(tmp_path / name), read_volume(SAMPLE / name)
        np.testing.assert_array_equal(new.array, old.array)
        np.testing.assert_allclose(new.affine, old.affine, atol=1e-6)
    assert json.loads((tmp_path / "split_cohorts.json").read_text())["train"] == ["sub-11", "sub-21"]
    again = cli("sample-data", "--out", str(tmp_path), "--subjects", "1")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_misaligned_sample_data_moves_only_the_mr_and_says_by_how_much(tmp_path):
    # the library call without the low-dose pairs (a CT simulation the misalignment does not touch); the command's
    # --misalign reaches the same checks (below)
    write_sample_data(tmp_path, 1, misalign_deg=4, misalign_mm=3, cohorts=0, ldct=False)
    folder = tmp_path / "mr2ct" / "sub-01"
    moved_by = json.loads((folder / "misalignment.json").read_text())
    assert all(abs(a) <= 4 for a in moved_by["rotation_deg_xyz"]) and max(map(abs, moved_by["rotation_deg_xyz"])) > 0.5
    assert all(abs(t) <= 3 for t in moved_by["translation_mm_lps"])
    for name in ("ct", "mask"):  # the CT and its mask are the committed ones, voxel for voxel
        new, old = read_volume(folder / f"{name}.nii.gz"), read_volume(SAMPLE / "mr2ct" / "sub-01" / f"{name}.nii.gz")
        np.testing.assert_array_equal(new.array, old.array)
    mr, committed = read_volume(folder / "mr.nii.gz"), read_volume(SAMPLE / "mr2ct" / "sub-01" / "mr.nii.gz")
    np.testing.assert_allclose(mr.affine, committed.affine, atol=1e-6)  # same grid, moved content
    assert mr.array.dtype == np.int16 and np.abs(mr.array.astype(float) - committed.array).mean() > 10
    bad = cli("sample-data", "--out", str(tmp_path / "x"), "--misalign", "90", "3")
    assert bad.returncode == 2 and "--misalign degrees" in bad.stderr


def test_sample_data_never_replaces_a_split_file_without_overwrite(tmp_path):
    """Into a folder holding only a user's split.json, sample-data once wrote its own over it."""
    from medtranslate.cli import main

    (tmp_path / "split.json").write_text('{"train": ["mine"]}')
    assert main(["sample-data", "--out", str(tmp_path), "--subjects", "1"]) == 2
    assert (tmp_path / "split.json").read_text() == '{"train": ["mine"]}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.json"]
