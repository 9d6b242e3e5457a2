"""The command line through the main() the console script runs: help, info, convert, one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medtranslate.cli import build_parser
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume, write_dicom_series

from .conftest import SAMPLE, cli, ct_like, oblique_affine
from .test_io import _bad_inputs


def test_help_lists_every_subcommand_and_each_has_help():
    result = cli("--help")
    assert result.returncode == 0
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert {"info", "convert", "sample-data"} <= set(commands)
    for name in commands:
        assert name in result.stdout
        sub = cli(name, "--help")
        assert sub.returncode == 0 and "usage: medtranslate " + name in sub.stdout


def test_info_on_sample_data_describes_every_case():
    result = cli("info", str(SAMPLE / "mr2ct" / "sub-01"))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0] + " " + line.split()[1]: line for line in result.stdout.splitlines()[1:]}
    assert "128x128x64" in lines["sub-01 (ct)"] and "1.75x1.75x2.6" in lines["sub-01 (ct)"]
    assert lines["sub-01 (ct)"].rstrip().endswith("CT") and lines["sub-01 (mr)"].rstrip().endswith("MR")
    assert "int16" in lines["sub-01 (mr)"]


def test_convert_dicom_folder_keeps_geometry_and_hu(tmp_path):
    volume = Volume(ct_like(), oblique_affine())
    write_dicom_series(tmp_path / "series", volume, modality="CT", rescale_intercept=-1024)
    out = tmp_path / "out.nii.gz"
    result = cli("convert", str(tmp_path / "series"), str(out))
    assert result.returncode == 0, result.stderr
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    again = cli("convert", str(tmp_path / "series"), str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    same = cli("convert", str(out), str(out), "--overwrite")
    assert same.returncode == 2 and "overwrite" in same.stderr
    assert read_volume(out).shape == volume.shape


def test_info_reports_a_bad_case_and_goes_on(tmp_path):
    good = tmp_path / "good.nii.gz"
    cli("convert", str(SAMPLE / "mr2ct" / "sub-02" / "ct.nii.gz"), str(good))
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    result = cli("info", str(tmp_path))
    assert result.returncode == 1
    assert "good" in result.stdout and "FAILED" in result.stdout and "bad.nii.gz" in result.stdout


@pytest.mark.slow
def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (path, text) in _bad_inputs(inputs).items():
        out = tmp_path / f"{name}.nii.gz"
        result = cli("convert", str(path), str(out))
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (name, result.stderr)
        assert str(path) in lines[0] and text in lines[0], (name, lines[0])
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_a_missing_path_names_itself_and_the_option_that_gave_it(tmp_path, checkpoints):
    """Every command that reads a path given on its command line, the same one line, nothing written."""
    gone = tmp_path / "gone"
    out = tmp_path / "out"
    commands = {
        "--input": [
            ["translate", "--model", str(checkpoints["pix2pix"]), "--input", str(gone), "--output", str(out)],
            ["simulate-lowdose", "--dose", "0.25", "--input", str(gone), "--output", str(out)],
            ["preprocess", "--input", str(gone), "--output", str(out)],
        ],
        "the path": [["convert", str(gone), str(out / "x.nii.gz")]],
    }
    for flag, runs in commands.items():
        for args in runs:
            result = cli(*args)
            assert result.returncode == 2, (args[0], result.stderr)
            expected = f"medtranslate {args[0]}: error: {gone}: no such file or folder; check {flag}"
            assert result.stderr.strip() == expected
            assert not out.exists()
    # info describes each path it is given, a missing one as a failed row of its table
    result = cli("info", str(gone))
    assert result.returncode == 2 and f"FAILED: {gone}: no such file or folder; check the path" in result.stdout
