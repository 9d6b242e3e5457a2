"""DICOM series: slice geometry is checked, not trusted; written series are valid and land atomically."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest

from medtranslate.core.errors import InputError, OutputError
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume, write_dicom_series

from .conftest import cli, ct_like, oblique_affine


@pytest.fixture
def series(tmp_path):
    """A 10-slice CT series at 5 mm (oblique, non-RAS) and its volume."""
    affine = oblique_affine(spacing=(0.9, 1.1, 5.0))
    volume = Volume(ct_like(shape=(20, 22, 10)), affine)
    write_dicom_series(tmp_path / "series", volume, modality="CT", rescale_intercept=-1024)
    return tmp_path / "series", volume


def _files(folder):
    return sorted(folder.iterdir())


def _move_along_normal(path, mm):
    ds = pydicom.dcmread(path)
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + mm * np.cross(row, col)]
    ds.save_as(path)


def test_a_complete_series_reads_with_its_spacing_whatever_the_file_order(series, tmp_path):
    folder, volume = series
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, f in enumerate(reversed(_files(folder))):  # names no longer follow the slice order
        shutil.copy(f, shuffled / f"img{(i * 7) % 10:02d}_{i}.dcm")
    for path in (folder, shuffled):
        vol = read_volume(path)
        np.testing.assert_array_equal(vol.array, volume.array)
        np.testing.assert_allclose(vol.affine, volume.affine, atol=1e-3)


def test_a_missing_slice_is_refused_naming_the_gap(series):
    folder, _ = series
    os.remove(_files(folder)[4])
    with pytest.raises(
        InputError, match=r"not evenly spaced \(1 slice\(s\) missing\): 9 slices .* step of 5 mm, but .* -> .* mm"
    ) as info:
        read_volume(folder)
    assert str(folder) in str(info.value)


def test_duplicate_positions_are_refused_naming_both_files(series):
    folder, _ = series
    files = _files(folder)
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = pydicom.dcmread(files[4]).ImagePositionPatient
    ds.save_as(files[5])
    with pytest.raises(InputError, match=r"two slices share a position: slice_000[45].dcm and slice_000[45].dcm"):
        read_volume(folder)


def test_uneven_positions_are_refused(series):
    folder, _ = series
    _move_along_normal(_files(folder)[6], 2.0)
    with pytest.raises(InputError, match=r"not evenly spaced \(uneven slice spacing\)"):
        read_volume(folder)


def test_a_truncated_slice_is_refused_naming_the_file(series):
    folder, _ = series
    victim = _files(folder)[3]
    victim.write_bytes(victim.read_bytes()[:-200])
    with pytest.raises(InputError, match=r"slice_0003.dcm is truncated \(\d+ of \d+ bytes of pixel data\)"):
        read_volume(folder)


def test_a_slice_of_another_size_or_orientation_is_refused(series, tmp_path):
    folder, _ = series
    other = Volume(ct_like(shape=(16, 16, 3)), oblique_affine(spacing=(0.9, 1.1, 5.0)))
    write_dicom_series(tmp_path / "small", other, modality="CT")
    small = pydicom.dcmread(_files(tmp_path / "small")[0])
    small.SeriesInstanceUID = pydicom.dcmread(_files(folder)[0]).SeriesInstanceUID
    small.save_as(folder / "zz_extra.dcm")
    with pytest.raises(InputError, match="slices differ in size"):
        read_volume(folder)


def test_a_geometry_problem_is_a_one_line_error_in_every_command(series, tmp_path):
    folder, _ = series
    os.remove(_files(folder)[2])
    case = tmp_path / "in" / "pt01"
    shutil.copytree(folder, case)
    before = sorted((p.name, p.read_bytes()) for p in case.iterdir())
    info = cli("info", str(tmp_path / "in"))
    assert info.returncode == 2 and "slice(s) missing" in info.stdout and "Traceback" not in info.stderr
    convert = cli("convert", str(case), str(tmp_path / "x.nii.gz"))
    assert convert.returncode == 2 and "slice(s) missing" in convert.stderr and not (tmp_path / "x.nii.gz").exists()
    sim = cli(
        "simulate-lowdose",
        "--dose",
        "0.5",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "sim"),
        "--no-progress",
    )
    assert sim.returncode == 1 and "FAILED pt01" in sim.stdout and "slice(s) missing" in sim.stdout
    assert sorted((p.name, p.read_bytes()) for p in case.iterdir()) == before


def test_write_is_atomic_and_does_not_replace_without_overwrite(tmp_path):
    volume = Volume(ct_like(shape=(12, 12, 4)), np.diag([1.0, 1.0, 2.0, 1.0]))
    write_dicom_series(tmp_path / "s", volume)
    with pytest.raises(OutputError, match="already exists"):
        write_dicom_series(tmp_path / "s", volume)
    shifted = Volume(volume.array + 5, volume.affine)
    write_dicom_series(tmp_path / "s", shifted, overwrite=True)
    np.testing.assert_array_equal(read_volume(tmp_path / "s").array, shifted.array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_non_ascii_folder_and_comments_are_written_as_utf8(tmp_path):
    volume = Volume(ct_like(shape=(12, 12, 4)), np.diag([1.0, 1.0, 2.0, 1.0]))
    folder = tmp_path / "Patiënt_Ørsted" / "séries"
    write_dicom_series(folder, volume, comments="made from /data/Patiënt_Ørsted/mr.nii.gz")
    ds = pydicom.dcmread(_files(folder)[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192" and "Ørsted" in ds.ImageComments
    np.testing.assert_array_equal(read_volume(folder).array, volume.array)
