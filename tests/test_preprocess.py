"""``medtranslate preprocess`` end to end: real files, the real CLI in a subprocess, SimpleITK registration."""

from __future__ import annotations

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medtranslate.data.phantom import make_subject, misalign
from medtranslate.io.cases import find_cases, pair_cases
from medtranslate.io.files import read_volume, write_nifti
from medtranslate.preprocessing.register import resample_onto, to_sitk

from .conftest import cli

SHAPE, SPACING = (80, 80, 40), (2.8, 2.8, 4.16)


def _digest(folder) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two subjects whose MR is misaligned with their CT (up to 6 degrees and 6 mm per axis), an MR without its
    CT, and a CT whose 'MR' shows something else (a 3 cm ball)."""
    root = tmp_path_factory.mktemp("cohort") / "in"
    truth = {}
    for n in (1, 2):
        s = make_subject(300 + n, shape=SHAPE, spacing=SPACING)
        moved, params = misalign(s.mr, n, 6.0, 6.0)
        write_nifti(root / f"sub-{n}" / "mr.nii.gz", moved.array, moved.affine)
        write_nifti(root / f"sub-{n}" / "ct.nii.gz", s.ct.array, s.ct.affine)
        truth[f"sub-{n}"] = (s, params)
    write_nifti(root / "sub-3" / "mr.nii.gz", s.mr.array, s.mr.affine)  # its CT is missing
    ball = np.zeros(SHAPE, np.int16)
    idx = np.indices(SHAPE) * np.array(SPACING)[:, None, None, None]
    ball[np.sqrt(((idx - idx.mean(axis=(1, 2, 3), keepdims=True)) ** 2).sum(axis=0)) < 15] = 600
    write_nifti(root / "sub-4" / "mr.nii.gz", ball, s.ct.affine)
    write_nifti(root / "sub-4" / "ct.nii.gz", s.ct.array, s.ct.affine)
    return root, truth


def test_preprocess_registers_each_pair_writes_what_train_reads_and_records_everything(tmp_path, cohort):
    root, truth = cohort
    before = _digest(root)
    out = tmp_path / "out"
    args = ["preprocess", "--input", str(root), "--output", str(out), "--register", "rigid", "--mask"]
    proc = cli(*args, "--crop-to-body", "10", "--no-progress")
    assert proc.returncode == 1, proc.stderr  # two cases fail, two are done
    rows = {r["case"]: r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {
        "sub-1": "done",
        "sub-2": "done",
        "sub-3": "failed",
        "sub-4": "failed",
    }
    assert "no ct image" in rows["sub-3"]["error"] and "--reference-role" in rows["sub-3"]["error"]
    assert "sub-4" in rows["sub-4"]["error"] and "same" in rows["sub-4"]["error"]
    assert "FAILED sub-3" in proc.stdout and "2 done, 0 skipped, 2 failed" in proc.stdout
    assert not (out / "sub-3").exists() and not (out / "sub-4").exists()  # nothing written for a failed case
    assert _digest(root) == before  # inputs untouched

    for cid, (subject, params) in truth.items():
        folder = out / cid
        mr, ct, mask = (read_volume(folder / f"{r}.nii.gz") for r in ("mr", "ct", "mask"))
        # one grid for all three, RAS, cropped around the body
        assert mr.shape == ct.shape == mask.shape and mr.orientation == "RAS"
        np.testing.assert_allclose(mr.affine, ct.affine)
        np.testing.assert_allclose(mask.affine, ct.affine)
        assert np.prod(ct.shape) < 0.8 * np.prod(SHAPE) and all(c <= s for c, s in zip(ct.shape, SHAPE, strict=True))
        # the CT is the input CT, moved by nothing: its voxels sit at the same world points
        original_ct = resample_onto(subject.ct, ct, None, "nearest")
        assert np.array_equal(original_ct.array.astype(np.int16), ct.array)
        # the transform found undoes the misalignment: points of the body land within 1 mm (voxels are 2.8 mm)
        tx = sitk.ReadTransform(str(folder / "mr_to_ct.tfm"))
        moved_by = sitk.Euler3DTransform()
        moved_by.SetCenter(to_sitk(subject.mr).TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in SHAPE]))
        moved_by.SetRotation(*np.radians(params["rotation_deg_xyz"]))
        moved_by.SetTranslation(params["translation_mm_lps"])
        img = to_sitk(mask)
        points = [img.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in np.argwhere(mask.array > 0)[::25]]
        residual = [np.linalg.norm(np.subtract(moved_by.TransformPoint(tx.TransformPoint(p)), p)) for p in points]
        initial = [np.linalg.norm(np.subtract(moved_by.TransformPoint(p), p)) for p in points]
        assert np.mean(residual) < 1.0 < 4.0 < np.mean(initial), (np.mean(residual), np.mean(initial))
        # and the MR written lines up with the true (never misaligned) MR better than the input did
        true_mr = resample_onto(subject.mr, ct).array
        misaligned = resample_onto(read_volume(root / cid / "mr.nii.gz"), ct).array
        body = mask.array > 0
        assert _ncc(mr.array[body], true_mr[body]) > _ncc(misaligned[body], true_mr[body]) + 0.1
        # the record: every step, the metric before and after, the inputs' checksums, versions
        record = json.loads((folder / "preprocess.json").read_text())
        assert [s["step"] for s in record["steps"]] == ["orient", "register", "resample", "mask", "crop"]
        reg = record["steps"][1]
        assert reg["metric_after"] < reg["metric_before"] and reg["body_dice_after"] > 0.9
        assert reg["stages"][0]["stage"] == "rigid" and reg["linear"]["rotation_deg"] > 1.0
        assert record["inputs"]["mr"]["sha256"] == hashlib.sha256((root / cid / "mr.nii.gz").read_bytes()).hexdigest()
        assert {"medtranslate", "SimpleITK", "numpy"} <= set(record["versions"])
        assert record["options"]["register"] == "rigid"
        # the transform file resamples the input MR onto the CT exactly as the output was made
        original_mr = read_volume(root / cid / "mr.nii.gz")
        again = resample_onto(original_mr, ct, tx).array
        np.testing.assert_allclose(again, mr.array, atol=0.01)
        # and its inverse takes the output back onto the input MR's own grid (inside the cropped field of view)
        back = resample_onto(mr, original_mr, sitk.ReadTransform(str(folder / "ct_to_mr.tfm")), background=-1e6)
        inside = (back.array > -1e5) & (original_mr.array > 50)
        assert inside.sum() > 1000 and _ncc(back.array[inside], original_mr.array[inside]) > 0.9
        assert (folder / "qc.png").stat().st_size > 10_000
    page = (out / "qc.html").read_text()
    assert "sub-4" in page and "failed" in page and page.count("<img") == 2

    # the output is what train/run read: pairs by case id
    pairs, unmatched = pair_cases(find_cases(out), "mr", "ct")
    assert [p.case_id for p in pairs] == ["sub-1", "sub-2"] and all(p.mask for p in pairs) and not unmatched

    # run again: finished cases are skipped, failed ones tried again
    proc = cli(*args, "--crop-to-body", "10", "--no-progress")
    assert "0 done, 2 skipped, 2 failed" in proc.stdout

    # two shards split the cohort between them; the QC page gathers both
    sharded = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        cli("preprocess", "--input", str(root), "--output", str(sharded), "--register", "rigid", "--shard", shard)
    halves = [list(csv.DictReader(open(sharded / f"manifest.shard{i}of2.csv"))) for i in (0, 1)]
    assert sorted(r["case"] for half in halves for r in half) == ["sub-1", "sub-2", "sub-3", "sub-4"]
    assert all(len(half) == 2 for half in halves)
    page = (sharded / "qc.html").read_text()
    assert all(f">{c}<" in page for c in ("sub-1", "sub-2", "sub-3", "sub-4"))


def test_resampling_slabs_n4_and_keeping_the_orientation(tmp_path, cohort):
    root, _ = cohort
    out = tmp_path / "out"
    proc = cli(
        "preprocess",
        "--input",
        str(root / "sub-1"),
        "--output",
        str(out),
        "--n4",
        "--orient",
        "keep",
        "--spacing",
        "3.5",
        "3.5",
        "5",
        "--slabs",
        "2",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    original = nib.load(root / "sub-1" / "ct.nii.gz")
    slabs = [read_volume(out / f"sub-1-slab{k}" / "ct.nii.gz") for k in (1, 2)]
    assert all(v.spacing == pytest.approx((3.5, 3.5, 5.0)) for v in slabs)
    assert all(v.orientation == "".join(nib.aff2axcodes(original.affine)) for v in slabs)
    # the two slabs tile the resampled volume: same in-plane grid, consecutive along the axial axis
    extent = np.array(SHAPE) * np.array(SPACING)
    assert slabs[0].shape[:2] == slabs[1].shape[:2]
    assert (slabs[0].shape[2] + slabs[1].shape[2]) * 5.0 == pytest.approx(extent[2], abs=5.0)
    gap = slabs[1].affine[:3, 3] - (slabs[0].affine @ np.array([0, 0, slabs[0].shape[2], 1]))[:3]
    np.testing.assert_allclose(gap, 0, atol=1e-4)
    record = json.loads((out / "sub-1-slab1" / "preprocess.json").read_text())
    steps = [s["step"] for s in record["steps"]]
    assert steps == ["n4", "resample"]
    assert record["steps"][0]["role"] == "mr" and record["steps"][0]["bias_max"] > record["steps"][0]["bias_min"]
    mr = read_volume(out / "sub-1-slab1" / "mr.nii.gz")
    assert mr.array.dtype == np.float32 and slabs[0].array.dtype == np.int16


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--slabs", "0"], "--slabs"),
        (["--spacing", "1", "0", "1"], "--spacing"),
        (["--reference-role", "pet"], "--reference-role"),
        (["--n4-iterations", "0"], "--n4-iterations"),
        (["--crop-to-body", "-3"], "--crop-to-body"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, cohort, extra, message):
    root, _ = cohort
    out = tmp_path / "out"
    proc = cli("preprocess", "--input", str(root), "--output", str(out), "--no-progress", *extra)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_registration_without_a_partner_in_the_api_is_an_input_error(tmp_path, cohort):
    from medtranslate.core.errors import InputError
    from medtranslate.io.cases import Case
    from medtranslate.preprocessing.preprocess import PreprocessOptions, preprocess_case

    root, _ = cohort
    only_ct = {"ct": Case("sub-1", root / "sub-1" / "ct.nii.gz", "ct")}
    with pytest.raises(InputError, match="nothing to register"):
        preprocess_case("sub-1", only_ct, tmp_path, PreprocessOptions(register="rigid"))
    assert not any(tmp_path.iterdir())


def test_more_slabs_than_the_volume_can_hold_are_refused(tmp_path):
    """--slabs 1000 on 64 slices once wrote 936 empty and 64 one-slice volumes, all marked done."""
    from medtranslate.cli import main

    s = make_subject(310, shape=(24, 24, 16), spacing=(6.0, 6.0, 8.0))
    write_nifti(tmp_path / "in" / "pt" / "ct.nii.gz", s.ct.array, s.ct.affine)
    out = tmp_path / "out"
    assert main(["preprocess", "--input", str(tmp_path / "in"), "--output", str(out), "--slabs", "1000"]) == 1
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert rows[0]["status"] == "failed"
    assert (
        "--slabs 1000 would cut the ct's 16 axial slices into slabs of 0; each slab needs at least 7"
        in rows[0]["error"]
        and "use --slabs 2 or fewer" in rows[0]["error"]
    )
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.csv", "qc.html"]
    assert main(["preprocess", "--input", str(tmp_path / "in"), "--output", str(out), "--slabs", "2"]) == 0
    assert [read_volume(out / f"pt-slab{k}" / "ct.nii.gz").shape[2] for k in (1, 2)] == [8, 8]


def _head(tmp_path, name, z=None, moved_deg=0.0, shift_ct_mm=0.0):
    """A phantom MR and its CT (optionally only axial slices z[0]:z[1], moved by ``shift_ct_mm`` along every axis, or
    with the MR rotated by up to ``moved_deg`` about each axis)."""
    s = make_subject(5, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0))
    mr = misalign(s.mr, 1, moved_deg, 0.0)[0] if moved_deg else s.mr
    write_nifti(tmp_path / name / "pt" / "mr.nii.gz", mr.array, mr.affine)
    a, b = z or (0, 24)
    affine = s.ct.affine.copy()
    affine[:3, 3] = (s.ct.affine @ np.array([0, 0, a, 1]))[:3] + shift_ct_mm
    write_nifti(tmp_path / name / "pt" / "ct.nii.gz", s.ct.array[:, :, a:b], affine)
    return tmp_path / name


def _preprocess(inp, out, *extra):
    from medtranslate.cli import main

    status = main(["preprocess", "--input", str(inp), "--output", str(out), "--register", "rigid", *extra])
    return status, list(csv.DictReader((out / "manifest.csv").open()))[0]


def test_a_registration_onto_a_sliver_of_the_body_or_beyond_plausible_rotation_is_refused(tmp_path):
    """Onto a small reference (a crop of the CT) the body Dice passes trivially, as it is measured on the crop's grid;
    a wild transform was recorded as done. What share of the body lands in the reference's view is now checked, and
    the rotation is bounded (--max-rotation)."""
    status, row = _preprocess(_head(tmp_path, "sliver", z=(11, 13)), tmp_path / "o1")
    assert status == 1 and "only 12% of the mr's body lies in the ct's field of view (at least 25%" in row["error"]
    assert not (tmp_path / "o1" / "pt").exists()
    status, row = _preprocess(_head(tmp_path, "half", z=(4, 20)), tmp_path / "o2")
    assert status == 0  # two thirds of the head: a real partial field of view is fine
    record = json.loads((tmp_path / "o2" / "pt" / "preprocess.json").read_text())
    step = next(s for s in record["steps"] if s["step"] == "register")
    assert 0.7 < step["body_in_reference_fov"] < 0.95
    tilted = _head(tmp_path, "tilted", moved_deg=6.0)
    status, row = _preprocess(tilted, tmp_path / "o3", "--max-rotation", "1")
    assert status == 1 and "registration rotated the mr by" in row["error"] and "--max-rotation 1" in row["error"]
    status, row = _preprocess(tilted, tmp_path / "o4")
    assert status == 0 and row["status"] == "done"


def test_images_that_do_not_overlap_as_placed_register_from_their_centres(tmp_path):
    """A CT whose origin is 2 m away once stopped preprocess with an 'unexpected RuntimeError' of ITK's metric."""
    status, row = _preprocess(_head(tmp_path, "far", shift_ct_mm=2000.0), tmp_path / "out")
    assert status == 0, row["error"]
    ct = read_volume(tmp_path / "out" / "pt" / "ct.nii.gz")
    mr = read_volume(tmp_path / "out" / "pt" / "mr.nii.gz")
    assert np.allclose(ct.affine, mr.affine) and mr.array.max() > 0  # the MR found and moved onto the CT


def test_n4_of_a_thin_volume_is_a_clear_error_and_a_thin_slab_is_corrected(tmp_path):
    """A 2-slice MR with --n4 once gave ITK's 'Zero-valued spacing' as an unexpected RuntimeError."""
    from medtranslate.cli import main

    s = make_subject(5, shape=(32, 32, 16), spacing=(6.0, 6.0, 8.0))
    for name, (a, b) in (("thin", (7, 9)), ("slab", (6, 10))):
        write_nifti(tmp_path / name / "pt" / "mr.nii.gz", s.mr.array[:, :, a:b], s.mr.affine)
    assert main(["preprocess", "--input", str(tmp_path / "thin"), "--output", str(tmp_path / "o1"), "--n4"]) == 1
    error = list(csv.DictReader((tmp_path / "o1" / "manifest.csv").open()))[0]["error"]
    assert "shape (32, 32, 2) is too thin for N4 bias-field correction" in error and "leave out --n4" in error
    assert main(["preprocess", "--input", str(tmp_path / "slab"), "--output", str(tmp_path / "o2"), "--n4"]) == 0
