"""Fuzz-style: a folder of hostile files beside two good cases, through every command that reads a folder.

Each command must end in bounded time, do the good cases exactly as it does them alone, report every bad file by
name in one line, print no traceback, leave no temporary file, and change no input.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medtranslate.cli import main
from medtranslate.core.config import load_config
from medtranslate.data.phantom import make_subject
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume, write_dicom_series, write_nifti
from medtranslate.training.train import Trainer

from .conftest import cli, ct_like, oblique_affine, run_cli, translate_cli, write_config
from .test_io import _nan_origin, _zero_spacing, raw_nifti

TIMEOUT = 180  # seconds per command; the symlink loops alone once made info and translate run forever


def make_hostile(folder: Path) -> list[str]:
    """Write 23 hostile cases into ``folder``; returns their case ids (every one must be reported as failed)."""
    folder.mkdir(parents=True, exist_ok=True)
    aff = oblique_affine()
    values = ct_like()
    (folder / "h01_text.nii.gz").write_bytes(b"this is not an image at all")
    (folder / "h02_empty.nii.gz").write_bytes(b"")
    good = write_nifti(folder.parent / "_tmp.nii.gz", values, aff)
    data = good.read_bytes()
    good.unlink()
    (folder / "h03_truncated.nii.gz").write_bytes(data[: len(data) // 2])
    plain = write_nifti(folder.parent / "_tmp.nii", values, aff)
    (folder / "h04_short.nii").write_bytes(plain.read_bytes()[:-300])
    plain.unlink()
    nib.save(nib.Nifti1Image(np.zeros((10, 1, 1), np.int16), np.eye(4)), str(folder / "h05_line.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 3), np.int16), np.eye(4)), str(folder / "h06_time.nii.gz"))
    nan = values.astype(np.float32)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, aff), str(folder / "h07_nanvoxel.nii.gz"))
    raw_nifti(folder / "h08_zerospacing.nii.gz", values, _zero_spacing)
    raw_nifti(folder / "h09_nanaffine.nii.gz", values, _nan_origin)
    nib.save(
        nib.Nifti1Image(np.zeros((8, 9, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4)),
        str(folder / "h10_rgb.nii.gz"),
    )
    nib.save(nib.Nifti1Image(values.astype(np.complex64), np.eye(4)), str(folder / "h11_complex.nii.gz"))
    (folder / "h12_garbage.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10\n\n\x00\x01")
    (folder / "h13_noraw.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\nElementDataFile = missing.raw\n"
    )
    huge = nib.Nifti1Header()
    huge.set_data_shape((5000, 5000, 5000))
    huge.set_data_dtype(np.int16)
    (folder / "h14_huge.nii").write_bytes(huge.binaryblock + b"\0" * 104)
    (folder / "h15_huge.nii.gz").write_bytes(gzip.compress(huge.binaryblock + b"\0" * 104))
    (folder / "h16_gzipnoise.nii.gz").write_bytes(gzip.compress(np.random.default_rng(0).bytes(5000)))
    os.symlink(folder / "nowhere.nii.gz", folder / "h17_dangling.nii.gz")
    series = Volume(ct_like(shape=(20, 22, 10)), oblique_affine(spacing=(0.9, 1.1, 5.0)))
    for name in ("h18_gap", "h19_duplicate", "h20_truncated", "h21_uneven"):
        write_dicom_series(folder / name, series, modality="CT", rescale_intercept=-1024)
    files = {n: sorted((folder / n).iterdir()) for n in ("h18_gap", "h19_duplicate", "h20_truncated", "h21_uneven")}
    files["h18_gap"][4].unlink()
    dup = pydicom.dcmread(files["h19_duplicate"][5])
    dup.ImagePositionPatient = pydicom.dcmread(files["h19_duplicate"][4]).ImagePositionPatient
    dup.save_as(files["h19_duplicate"][5])
    victim = files["h20_truncated"][3]
    victim.write_bytes(victim.read_bytes()[:-200])
    moved = pydicom.dcmread(files["h21_uneven"][6])
    moved.ImagePositionPatient = [float(v) + 1.7 for v in moved.ImagePositionPatient]
    moved.save_as(files["h21_uneven"][6])
    (folder / "h22_notdicom").mkdir()
    (folder / "h22_notdicom" / "slice1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    raw_nifti(folder / "h23_inf.nii.gz", np.full((8, 8, 8), np.inf, np.float32))
    os.symlink(".", folder / "loop1")  # links back to the folder itself: a walk that follows them never ends
    os.symlink(".", folder / "loop2")
    return sorted(p.name.split(".")[0] for p in folder.iterdir() if p.name.startswith("h"))


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):  # not following links: the tree as stored
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p)] = (
                f"link:{os.readlink(p)}"
                if p.is_symlink()
                else hashlib.sha256(p.read_bytes()).hexdigest()
                if p.is_file()
                else "dir"
            )
    return out


def _no_partials(*folders: Path) -> None:
    for folder in folders:
        left = [p for p in Path(folder).rglob(".*")] if Path(folder).exists() else []
        assert not left, left


def _check_cli(result, hostile: list[str]) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-3000:]
    failed = {line.split()[1].rstrip(":") for line in result.stdout.splitlines() if line.startswith("FAILED ")}
    assert set(hostile) <= failed, sorted(set(hostile) - failed)


@pytest.fixture(scope="module")
def model(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = load_config(write_config(out / "c.yaml", tiny_data, "intensity_map"))
    Trainer(cfg, out / "run", progress=False).fit()
    return out / "run" / "checkpoints" / "best.pt"


def _good_mr(folder: Path) -> None:
    for i in (1, 2):
        s = make_subject(300 + i, shape=(40, 36, 12), spacing=(5.5, 6.1, 11.9))
        write_nifti(folder / f"good{i}.nii.gz", s.mr.array, s.mr.affine)


def _good_ct(folder: Path) -> None:
    for i in (1, 2):
        s = make_subject(300 + i, shape=(40, 36, 12), spacing=(5.5, 6.1, 11.9))
        write_nifti(folder / f"good{i}.nii.gz", s.ct.array[:, :, 4:6], s.ct.affine)


@pytest.mark.slow
def test_info_and_convert(tmp_path):
    folder = tmp_path / "in"
    hostile = make_hostile(folder)
    _good_ct(folder)
    assert len(hostile) >= 20
    before = _snapshot(folder)
    result = run_cli("info", str(folder), timeout=TIMEOUT)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    ok_rows = [line for line in result.stdout.splitlines() if line.startswith("good")]
    assert len(ok_rows) == 2 and all("40x36x2" in line for line in ok_rows)
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    for cid in hostile:
        assert sum(cid in line for line in failures) == 1, cid
    # convert, one file at a time, in process (the same main() the console script runs)
    for path in sorted(folder.iterdir()):
        if path.name.startswith("loop"):
            continue
        out = tmp_path / "conv" / f"{path.name.split('.')[0]}.nii.gz"
        status = main(["convert", str(path), str(out)])
        if path.name.startswith("good"):
            assert status == 0 and np.array_equal(read_volume(out).array, read_volume(path).array)
        else:
            assert status == 2 and not out.exists(), path.name
    assert _snapshot(folder) == before
    _no_partials(tmp_path / "conv", folder)


@pytest.mark.slow
def test_translate(tmp_path, model):
    folder, clean = tmp_path / "in", tmp_path / "clean"
    hostile = make_hostile(folder)
    _good_mr(folder)
    _good_mr(clean)
    before = _snapshot(folder)
    result = translate_cli(str(model), str(folder), str(tmp_path / "out"), timeout=TIMEOUT)
    assert result.returncode == 1
    _check_cli(result, hostile)
    assert f"2 done, 0 skipped, {len(hostile)} failed" in result.stdout
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open(encoding="utf-8")))
    assert all("\n" not in r["error"] for r in rows)
    alone = translate_cli(str(model), str(clean), str(tmp_path / "alone"))
    assert alone.returncode == 0
    for i in (1, 2):
        got, expected = (
            read_volume(tmp_path / "out" / f"good{i}_sct.nii.gz"),
            read_volume(tmp_path / "alone" / f"good{i}_sct.nii.gz"),
        )
        assert np.array_equal(got.array, expected.array) and np.array_equal(got.affine, expected.affine)
    assert _snapshot(folder) == before
    _no_partials(tmp_path / "out", folder)


@pytest.mark.slow
def test_simulate_lowdose(tmp_path):
    folder, clean = tmp_path / "in", tmp_path / "clean"
    hostile = make_hostile(folder)
    _good_ct(folder)
    _good_ct(clean)
    before = _snapshot(folder)
    result = run_cli(
        "simulate-lowdose",
        "--dose",
        "0.5",
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    _check_cli(result, hostile)
    assert "2 done" in result.stdout
    alone = cli(
        "simulate-lowdose", "--dose", "0.5", "--input", str(clean), "--output", str(tmp_path / "alone"), "--no-progress"
    )
    assert alone.returncode == 0
    for name in ("good1_ld", "good1_nd", "good2_ld", "good2_nd"):
        assert np.array_equal(
            read_volume(tmp_path / "out" / f"{name}.nii.gz").array,
            read_volume(tmp_path / "alone" / f"{name}.nii.gz").array,
        )
    assert _snapshot(folder) == before
    _no_partials(tmp_path / "out", folder)


@pytest.mark.slow
def test_evaluate(tmp_path):
    folder, refs = tmp_path / "pred", tmp_path / "ref"
    hostile = make_hostile(folder)
    for i in (1, 2):
        s = make_subject(300 + i, shape=(40, 36, 12), spacing=(5.5, 6.1, 11.9))
        write_nifti(refs / f"good{i}_ct.nii.gz", s.ct.array, s.ct.affine)
        write_nifti(folder / f"good{i}_sct.nii.gz", s.ct.array + 25, s.ct.affine, np.int16)
    for cid in hostile:  # every hostile prediction has a valid reference: the prediction is what fails
        shutil.copy(refs / "good1_ct.nii.gz", refs / f"{cid}_ct.nii.gz")
    before = _snapshot(folder)
    result = run_cli(
        "evaluate",
        "--pred",
        str(folder),
        "--ref",
        str(refs),
        "--out",
        str(tmp_path / "e"),
        "--no-progress",
        timeout=TIMEOUT,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "e" / "metrics.csv").open(encoding="utf-8"))}
    assert {cid for cid, r in rows.items() if r["status"] == "failed"} == set(hostile)
    assert all(cid in rows[cid]["error"] or rows[cid]["pred"] in rows[cid]["error"] for cid in hostile)
    for i in (1, 2):
        assert rows[f"good{i}"]["status"] == "done" and float(rows[f"good{i}"]["mae"]) == pytest.approx(25.0, abs=0.5)
    assert _snapshot(folder) == before
    _no_partials(tmp_path / "e", folder)
