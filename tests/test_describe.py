"""What info says about scans, and the modality check translate and train rely on."""

from __future__ import annotations

import numpy as np
import pytest

from medtranslate.core.errors import InputError
from medtranslate.imaging.volume import Volume
from medtranslate.io.describe import check_modality, describe_paths, format_table, looks_like
from medtranslate.io.files import read_volume, write_nifti

from .conftest import SAMPLE, cli, ct_like, oblique_affine


@pytest.mark.parametrize(
    "array,modality,expected",
    [
        (ct_like(), None, "CT"),
        (read_volume(SAMPLE / "mr2ct" / "sub-01" / "mr.nii.gz").array, None, "MR"),
        (np.array([[[0, 1], [1, 0]]] * 2, dtype=np.uint8), None, "mask"),
        (ct_like().astype(np.float32) / 1000.0, None, "unknown"),  # negative values, not HU: neither
        (np.abs(ct_like()), "CT", "CT"),  # a DICOM modality tag wins over the values
    ],
)
def test_looks_like(array, modality, expected):
    assert looks_like(Volume(array, np.eye(4), modality=modality)) == expected


def test_check_modality_refuses_the_wrong_kind_and_constant_images():
    ct, mr = (
        Volume(ct_like(), np.eye(4), source="ct.nii.gz"),
        Volume(np.abs(ct_like()).astype(np.int16), np.eye(4), source="mr.nii.gz"),
    )
    check_modality(ct, "ct", ct.source, "denoising")
    check_modality(mr, "mr", mr.source, "synthesis")
    with pytest.raises(
        InputError, match=r"mr.nii.gz: values \[\d+, \d+\] do not look like CT in HU .*; denoising: give it a CT"
    ):
        check_modality(mr, "ct", mr.source, "denoising")
    with pytest.raises(InputError, match=r"ct.nii.gz: this is a CT \(values in HU, air near -1000\), but synthesis"):
        check_modality(ct, "mr", ct.source, "synthesis")
    with pytest.raises(InputError, match="every voxel is 7.0; the image is empty or constant"):
        check_modality(Volume(np.full((8, 8, 8), 7, np.int16), np.eye(4)), "mr", "flat", "synthesis")


def test_info_describes_the_good_files_of_a_folder_with_bad_ones(tmp_path):
    write_nifti(tmp_path / "good_ct.nii.gz", ct_like(), np.diag([0.8, 0.8, 2.5, 1.0]))
    (tmp_path / "broken_ct.nii.gz").write_bytes(b"\x1f\x8b\x08 broken")
    nan = ct_like().astype(np.float32)
    nan[0, 0, 0] = np.nan
    write_nifti(tmp_path / "nan_ct.nii.gz", nan, np.eye(4))
    rows = describe_paths([tmp_path])
    by_case = {r["case"]: r for r in rows}
    assert by_case["good (ct)"]["status"] == "ok" and by_case["good (ct)"]["spacing"] == "0.8x0.8x2.5 mm"
    assert by_case["good (ct)"]["looks_like"] == "CT"
    assert by_case["broken (ct)"]["status"] == "failed" and "broken_ct.nii.gz" in by_case["broken (ct)"]["error"]
    assert "NaN" in by_case["nan (ct)"]["error"]
    table = format_table(rows)
    assert table.splitlines()[0].split() == [
        "case",
        "format",
        "shape",
        "spacing",
        "file_unit",
        "orientation",
        "dtype",
        "range",
        "looks_like",
    ]
    assert "good (ct)" in table and table.count("FAILED:") == 2


@pytest.mark.parametrize("unit, scale", [("meter", 1e-3), ("micron", 1e3), ("mm", 1.0), ("unknown", 1.0)])
def test_nifti_spatial_units_are_honoured_and_shown(tmp_path, unit, scale):
    """A NIfTI whose header declares metres (xyzt_units) was read as mm: a head 0.2 mm wide. Now readers get mm."""
    import nibabel as nib

    from medtranslate.io.files import read_volume

    affine = oblique_affine()
    img = nib.Nifti1Image(ct_like(), np.diag([scale] * 3 + [1.0]) @ affine)
    img.header.set_xyzt_units(unit if unit != "unknown" else 0)
    nib.save(img, str(tmp_path / "pt_ct.nii.gz"))
    volume = read_volume(tmp_path / "pt_ct.nii.gz")
    assert np.allclose(volume.affine, affine, atol=1e-6) and volume.unit == unit
    row = describe_paths([tmp_path / "pt_ct.nii.gz"])[0]
    expected = {"meter": "meter (converted)", "micron": "micron (converted)", "unknown": "unknown (read as mm)"}
    assert row["file_unit"] == expected.get(unit, "mm") and row["spacing"] == "0.9x1.3x2.5 mm"


def test_info_on_a_real_world_folder_skips_environments_and_lists_duplicates(tmp_path, capsys):
    """A folder holding a virtual environment beside the scans stopped on a duplicate case id in site-packages and
    listed nothing."""
    from medtranslate.cli import main

    write_nifti(tmp_path / "scans" / "pt1_ct.nii.gz", ct_like(), np.eye(4))
    write_nifti(tmp_path / "scans" / "old" / "pt1_ct.nii.gz", ct_like(seed=1), np.eye(4))  # the same id twice
    venv = tmp_path / "venv"  # a virtual environment: its name says nothing, its pyvenv.cfg does
    (venv).mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages" / "pkg" / "data"
    for folder in (venv / "lib" / "data", site):
        write_nifti(folder / "pt1_ct.nii.gz", ct_like(), np.eye(4))
        (folder / "broken.nii.gz").write_bytes(b"not an image")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("pt1 (ct)") == 2 and "FAILED" not in out and "site-packages" not in out


def test_info_quotes_a_c_librarys_messages_with_the_file_they_are_about(tmp_path):
    """MetaIO (inside ITK) printed "MetaImage: Read: Cannot open data file" on the terminal, naming no file."""

    write_nifti(tmp_path / "good_ct.nii.gz", ct_like(), np.eye(4))
    header = "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\nElementDataFile = gone.raw\n"
    (tmp_path / "lost_ct.mha").write_text(header)
    result = cli("info", str(tmp_path))
    assert result.returncode == 1, result.stderr  # one file of two failed
    lines = (result.stdout + result.stderr).splitlines()
    quoted = [line for line in lines if "Cannot open data file" in line]
    assert len(quoted) == 1 and "lost_ct.mha" in quoted[0], lines
    assert "good (ct)" in result.stdout
