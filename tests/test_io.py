"""Reading every format into one form, writing NIfTI safely, finding and pairing cases (cases.py), and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medtranslate.core.errors import InputError, OutputError
from medtranslate.imaging.volume import Volume, affine_to_sitk
from medtranslate.io.cases import find_cases, pair_cases
from medtranslate.io.files import read_case, read_volume, write_dicom_series, write_nifti

from .conftest import ct_like, oblique_affine


def canonical(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine reoriented to the closest RAS axes: equal for the same scan however it is stored."""
    ornt = nib.orientations.io_orientation(volume.affine)
    array = nib.orientations.apply_orientation(volume.array, ornt)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    return array, affine


def write_all_formats(folder: Path, volume: Volume) -> dict[str, Path]:
    """The same scan written with SimpleITK as NIfTI, NRRD and MetaImage, and as a DICOM CT series."""
    folder.mkdir(parents=True, exist_ok=True)
    img = affine_to_sitk(volume.array, volume.affine)
    paths = {"nifti": folder / "scan1.nii.gz", "nrrd": folder / "scan2.nrrd", "metaimage": folder / "scan3.mha"}
    for path in paths.values():
        sitk.WriteImage(img, str(path))
    # Stored as unsigned values with RescaleIntercept -1024, as many scanners do: the reader must apply it.
    write_dicom_series(folder / "dicom", volume, modality="CT", rescale_intercept=-1024)
    paths["dicom"] = folder / "dicom"
    return paths


def test_same_scan_in_all_formats_gives_same_values_and_world_coordinates(tmp_path, ct_volume):
    paths = write_all_formats(tmp_path, ct_volume)
    ref_array, ref_affine = canonical(ct_volume)
    assert ct_volume.orientation != "RAS"
    for fmt, path in paths.items():
        vol = read_volume(path)
        assert vol.format == fmt
        assert vol.shape == ct_volume.shape, fmt
        np.testing.assert_allclose(vol.affine, ct_volume.affine, atol=1e-3, err_msg=fmt)
        array, affine = canonical(vol)
        np.testing.assert_array_equal(np.asarray(array, dtype=np.float64), ref_array.astype(np.float64), err_msg=fmt)
        np.testing.assert_allclose(affine, ref_affine, atol=1e-3, err_msg=fmt)
    nii = nib.load(str(paths["nifti"]))
    np.testing.assert_allclose(nii.affine, ct_volume.affine, atol=1e-4)


def test_dicom_ct_comes_out_in_hu(tmp_path, ct_volume):
    write_dicom_series(tmp_path / "series", ct_volume, modality="CT", rescale_intercept=-1024)
    first = pydicom.dcmread(sorted((tmp_path / "series").iterdir())[0])
    assert float(first.RescaleIntercept) == -1024 and first.pixel_array.min() >= 0  # stored values are not HU
    vol = read_volume(tmp_path / "series")
    assert vol.modality == "CT"
    assert vol.array.min() == ct_volume.array.min() < -1000
    np.testing.assert_array_equal(vol.array, ct_volume.array)


def test_write_nifti_sets_qform_and_sform_and_leaves_no_partial_file(tmp_path, ct_volume):
    out = write_nifti(tmp_path / "out.nii.gz", ct_volume.array, ct_volume.affine, np.int16)
    img = nib.load(str(out))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), ct_volume.affine, atol=1e-4)
    np.testing.assert_allclose(img.get_sform(), ct_volume.affine, atol=1e-4)
    assert img.get_data_dtype() == np.int16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    with pytest.raises(OutputError, match="already exists"):
        write_nifti(out, ct_volume.array, ct_volume.affine)
    before = out.read_bytes()
    write_nifti(out, ct_volume.array + 1, ct_volume.affine, np.int16, overwrite=True)
    assert out.read_bytes() != before


def test_write_nifti_float_to_int_rounds_and_clips(tmp_path, ct_volume):
    values = np.full(ct_volume.shape, 40000.4, dtype=np.float32)
    values[0, 0, 0] = -1.6
    out = write_nifti(tmp_path / "x.nii.gz", values, ct_volume.affine, np.int16)
    data = np.asanyarray(nib.load(str(out)).dataobj)
    assert data.dtype == np.int16 and data.max() == 32767 and data[0, 0, 0] == -2


def _touch_nifti(path: Path, affine: np.ndarray, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, np.full((4, 5, 6), value, np.int16), affine)


@pytest.mark.parametrize("layout", ["role_folders", "subject_folders"])
def test_pairing_both_layouts_case_insensitive(tmp_path, layout):
    aff = np.eye(4)
    if layout == "role_folders":
        _touch_nifti(tmp_path / "MR" / "p01.nii.gz", aff)
        _touch_nifti(tmp_path / "ct" / "p01.nii.gz", aff)
        _touch_nifti(tmp_path / "t1w" / "p02.nii.gz", aff)
        _touch_nifti(tmp_path / "ct" / "p02.nii.gz", aff)
        _touch_nifti(tmp_path / "mr" / "p03.nii.gz", aff)  # no CT: must be reported
    else:
        _touch_nifti(tmp_path / "p01" / "MR.nii.gz", aff)
        _touch_nifti(tmp_path / "p01" / "ct.nii.gz", aff)
        _touch_nifti(tmp_path / "p02" / "T1.nii.gz", aff)
        _touch_nifti(tmp_path / "p02" / "CT.nii.gz", aff)
        _touch_nifti(tmp_path / "p02" / "mask.nii.gz", aff)
        _touch_nifti(tmp_path / "p03" / "t1w.nii.gz", aff)
    pairs, unmatched = pair_cases(find_cases(tmp_path), "mr", "ct")
    assert [p.case_id for p in pairs] == ["p01", "p02"]
    assert all(p.source.role == "mr" and p.target.role == "ct" for p in pairs)
    assert list(unmatched) == ["p03"] and "no ct image" in unmatched["p03"]
    if layout == "subject_folders":
        assert pairs[1].mask is not None and pairs[1].mask.path.name == "mask.nii.gz"


@pytest.mark.parametrize("names", [("ld", "nd"), ("low", "full"), ("LD", "ND")])
def test_pairing_lowdose_names(tmp_path, names):
    low, full = names
    _touch_nifti(tmp_path / "c1" / f"{low}.nii.gz", np.eye(4))
    _touch_nifti(tmp_path / "c1" / f"{full}.nii.gz", np.eye(4))
    _touch_nifti(tmp_path / f"c2_{low}.nii.gz", np.eye(4))
    _touch_nifti(tmp_path / f"c2_{full}.nii.gz", np.eye(4))
    pairs, unmatched = pair_cases(find_cases(tmp_path), "ld", "nd")
    assert [p.case_id for p in pairs] == ["c1", "c2"] and not unmatched


def test_find_cases_all_formats_and_dicom_series_as_cases(tmp_path, ct_volume):
    write_all_formats(tmp_path / "a", ct_volume)
    shifted = Volume(ct_volume.array, ct_volume.affine.copy())
    shifted.affine[:3, 3] += 5.0
    # a second series in the same DICOM folder
    write_dicom_series(tmp_path / "b", shifted, modality="CT")
    for f in (tmp_path / "b").iterdir():
        f.rename(tmp_path / "a" / "dicom" / f"b_{f.name}")
    (tmp_path / "b").rmdir()
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    cases = find_cases(tmp_path)
    dicom = [c for c in cases if c.series_uid]
    assert len(dicom) == 2 and dicom[0].case_id != dicom[1].case_id
    assert sorted(c.path.name for c in cases if not c.series_uid) == ["scan1.nii.gz", "scan2.nrrd", "scan3.mha"]
    vols = [read_case(c) for c in dicom]
    offsets = sorted(float(v.affine[0, 3]) for v in vols)
    assert offsets[1] - offsets[0] == pytest.approx(5.0, abs=1e-3)
    with pytest.raises(InputError, match="2 series"):
        read_volume(tmp_path / "a" / "dicom")


def test_duplicate_case_ids_are_an_error_naming_both_files(tmp_path):
    _touch_nifti(tmp_path / "x" / "p1.nii.gz", np.eye(4))
    _touch_nifti(tmp_path / "y" / "p1.nii.gz", np.eye(4))
    with pytest.raises(InputError, match=r"p1.*x/p1\.nii\.gz.*y/p1\.nii\.gz"):
        find_cases(tmp_path)


# ------------------------------------------------------------------------------------------------ bad input


def raw_nifti(path: Path, array: np.ndarray, edit=lambda header: None) -> Path:
    """A .nii.gz written byte by byte from a header we edit: it can hold what nibabel's writer would fix or refuse."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    edit(header)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + array.tobytes("F")))
    return path


def _zero_spacing(header):
    header["qform_code"] = 0
    header["srow_z"] = [0.0, 0.0, 0.0, 0.0]


def _nan_origin(header):
    header["qform_code"] = 0
    header["srow_x"] = [1.0, 0.0, 0.0, np.nan]


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, text the error must contain)."""
    aff = oblique_affine()
    good = write_nifti(tmp_path / "good.nii.gz", ct_like(), aff)
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.nii.gz").write_bytes(b"this is not an image at all")
    data = good.read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    nib.save(nib.Nifti1Image(np.zeros((10, 1, 1), np.int16), np.eye(4)), str(tmp_path / "line.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 3), np.int16), np.eye(4)), str(tmp_path / "timeseries.nii.gz"))
    nan = ct_like().astype(np.float32)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, aff), str(tmp_path / "nan.nii.gz"))
    mixed = tmp_path / "mixed"
    write_dicom_series(mixed, Volume(ct_like(), aff), modality="CT")
    write_dicom_series(tmp_path / "other", Volume(ct_like(seed=1), aff), modality="CT")
    for f in (tmp_path / "other").iterdir():
        f.rename(mixed / f"o_{f.name}")
    (tmp_path / "other").rmdir()
    values = ct_like()
    raw_nifti(tmp_path / "zero_spacing.nii.gz", values, _zero_spacing)
    raw_nifti(tmp_path / "nan_affine.nii.gz", values, _nan_origin)
    rgb = np.zeros((8, 9, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    nib.save(nib.Nifti1Image(values.astype(np.complex64), np.eye(4)), str(tmp_path / "complex.nii.gz"))
    plain = write_nifti(tmp_path / "plain.nii", values, aff)
    (tmp_path / "short.nii").write_bytes(plain.read_bytes()[:-100])
    gap = write_dicom_series(tmp_path / "gap", Volume(values, aff), modality="CT")
    os.remove(gap[3])
    return {
        "missing": (tmp_path / "nope.nii.gz", "no such file"),
        "empty_folder": (tmp_path / "empty", "no DICOM series"),
        "not_an_image": (tmp_path / "text.nii.gz", "cannot read as NIfTI"),
        "truncated": (tmp_path / "truncated.nii.gz", "corrupt or truncated"),
        "line": (tmp_path / "line.nii.gz", "not a slice or a volume"),
        "4d": (tmp_path / "timeseries.nii.gz", "4D image"),
        "nan": (tmp_path / "nan.nii.gz", "NaN"),
        "mixed_series": (mixed, "2 series"),
        "zero_spacing": (tmp_path / "zero_spacing.nii.gz", "voxel spacing is zero along axis k"),
        "nan_affine": (tmp_path / "nan_affine.nii.gz", "affine) holds NaN"),
        "rgb": (tmp_path / "rgb.nii.gz", "colour (RGB)"),
        "complex": (tmp_path / "complex.nii.gz", "complex numbers"),
        "short_nii": (tmp_path / "short.nii", "truncated: the header promises"),
        "dicom_gap": (tmp_path / "gap", "1 slice(s) missing"),
    }


def test_every_bad_input_raises_input_error_naming_the_file(tmp_path):
    for name, (path, text) in _bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            read_volume(path)
        message = str(info.value)
        assert str(path) in message, name
        assert text in message, (name, message)


def test_empty_folder_for_find_cases(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="no images found"):
        find_cases(tmp_path / "e")


def test_read_does_not_modify_inputs(tmp_path, ct_volume):
    paths = write_all_formats(tmp_path, ct_volume)
    before = {p: os.stat(p).st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    contents = {p: p.read_bytes() for p in before}
    for path in paths.values():
        read_volume(path)
    find_cases(tmp_path)
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    assert all(p.read_bytes() == c for p, c in contents.items())


def test_a_folder_of_symlink_loops_is_searched_once(tmp_path):
    folder = tmp_path / "data"
    _touch_nifti(folder / "a" / "p1_ct.nii.gz", np.eye(4), value=-1000)
    os.symlink("..", folder / "a" / "up1")
    os.symlink("..", folder / "a" / "up2")
    os.symlink("../a", folder / "a" / "self")
    os.symlink(folder / "a", folder / "b")  # the same real folder under a second name
    cases = find_cases(folder)  # took exponential time, i.e. forever, before each real folder was searched once
    assert [(c.case_id, c.role) for c in cases] == [("p1", "ct")]


def test_write_nifti_refuses_a_degenerate_affine_and_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match="spacing is zero"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.int16), np.diag([1.0, 1.0, 0.0, 1.0]))
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_a_folder_named_for_its_role_may_say_the_role_again(tmp_path, ct_volume):
    # translate --output sct writes sct/<id>_sct.nii.gz: evaluate must find case <id> there, as sct/<id>.nii.gz
    for name in ("sct/pt01_sct.nii.gz", "sct/pt02.nii.gz", "ct/pt03_mr.nii.gz", "mr/pt04_t1w.nii.gz"):
        write_nifti(tmp_path / name, ct_volume.array, ct_volume.affine)
    found = {(c.case_id, c.role) for c in find_cases(tmp_path)}
    assert found == {("pt01", "sct"), ("pt02", "sct"), ("pt03_mr", "ct"), ("pt04", "mr")}
