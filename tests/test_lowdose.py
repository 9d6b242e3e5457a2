"""Projection-domain low-dose simulation: noise grows as 1/sqrt(dose), HU is preserved, bad input is refused."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medtranslate.core.errors import InputError
from medtranslate.imaging.transforms import axial_slab
from medtranslate.imaging.volume import Volume
from medtranslate.io.describe import looks_like
from medtranslate.io.files import read_volume, write_nifti
from medtranslate.simulation.lowdose import simulate_lowdose, simulate_normal_dose

from .conftest import SAMPLE, cli, oblique_affine, torch_threads, torchrun_cli


def water_cylinder(n: int = 96, slices: int = 3) -> Volume:
    """A 0 HU water cylinder (radius 40 mm) in air, 1 mm pixels."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disk = xx**2 + yy**2 < 40**2
    hu = np.where(disk, 0.0, -1000.0)
    return Volume(np.repeat(hu[:, :, None], slices, axis=2).astype(np.int16), np.diag([1.0, 1.0, 3.0, 1.0]))


@pytest.mark.parametrize("geometry", ["fan", "parallel"])
def test_noise_grows_as_one_over_sqrt_dose_and_hu_is_kept(geometry):
    vol = water_cylinder()
    n = vol.shape[0]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    centre = (xx**2 + yy**2 < 20**2)[:, :, None].repeat(vol.shape[2], axis=2)
    air = (xx**2 + yy**2 > 45**2)[:, :, None].repeat(vol.shape[2], axis=2)
    stds = {}
    for dose in (0.5, 0.25, 0.125):
        ld, nd = simulate_lowdose(vol, dose, seed=7, geometry=geometry)
        stds[dose] = float(np.std((ld.array - nd.array)[centre]))
        for img in (ld, nd):
            assert abs(float(img.array[centre].mean()) - 0.0) < 10  # water stays water
            assert abs(float(img.array[air].mean()) + 1000.0) < 10  # air stays air
    for dose in (0.25, 0.125):
        expected = stds[0.5] * np.sqrt(0.5 / dose)
        assert stds[dose] == pytest.approx(expected, rel=0.15), stds


@pytest.mark.parametrize("geometry", ["fan", "parallel"])
def test_normal_dose_image_is_the_original_ct_within_3_hu_without_streaks(geometry):
    # the phantom CT of the sample data (1.75 mm pixels, skull, sinuses, sharp edges); before the Fourier-slice
    # projector the normal-dose reconstruction was 43 HU off on average and carried radial streaks
    ct = axial_slab(read_volume(SAMPLE / "mr2ct" / "sub-02" / "ct.nii.gz"), 30, 34)
    _, nd = simulate_lowdose(ct, 0.25, geometry=geometry)
    orig = ct.array.astype(np.float64)
    body = orig > -500
    err = nd.array - orig
    assert np.abs(err[body]).mean() < 3.0 and abs(err[body].mean()) < 0.5
    soft = (orig > 0) & (orig < 80)  # streaks would show as structured error in the brain: there is almost none
    assert np.percentile(np.abs(err[soft]), 99) < 10.0


def test_geometry_and_views_are_checked():
    with pytest.raises(InputError, match="geometry"):
        simulate_lowdose(water_cylinder(32, 1), 0.5, geometry="cone")
    with pytest.raises(InputError, match="views"):
        simulate_lowdose(water_cylinder(32, 1), 0.5, views=0)


def test_same_seed_same_noise_and_pairs_differ_only_in_noise():
    vol = water_cylinder(64, 2)
    a_ld, a_nd = simulate_lowdose(vol, 0.25, seed=1)
    b_ld, b_nd = simulate_lowdose(vol, 0.25, seed=1)
    c_ld, c_nd = simulate_lowdose(vol, 0.25, seed=2)
    assert np.array_equal(a_ld.array, b_ld.array) and np.array_equal(a_nd.array, b_nd.array)
    assert not np.array_equal(a_ld.array, c_ld.array)
    assert abs(float((a_ld.array - a_nd.array).mean())) < 5  # zero-mean noise
    # the normal-dose image depends on neither seed nor dose, and comes alone without the noise's cost
    nd = simulate_normal_dose(vol)
    assert np.array_equal(nd.array, a_nd.array) and np.array_equal(nd.array, c_nd.array)
    assert np.array_equal(nd.affine, vol.affine) and nd.array.dtype == np.float32


def test_the_simulation_does_not_depend_on_the_thread_count():
    """The same CT and seed on 1 and on 2 threads, to the bit: a 4-core laptop regenerates the committed sample data
    (FINUFFT once chose its oversampling by the thread count, and a few int16 voxels came out 1 HU apart)."""
    crop = axial_slab(read_volume(SAMPLE / "ldct" / "sub-01" / "nd.nii.gz"), 0, 4)
    out = {}
    for threads in (1, 2):
        with torch_threads(threads):
            out[threads] = simulate_lowdose(crop, 0.25, seed=5)
    for a, b in zip(out[1], out[2], strict=True):
        assert np.array_equal(a.array, b.array)


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5])
def test_dose_outside_range_is_refused(dose):
    with pytest.raises(InputError, match=r"--dose .* must be a finite number > 0 and <= 1"):
        simulate_lowdose(water_cylinder(32, 1), dose)


def test_non_ct_input_is_refused_naming_the_file(tmp_path):
    mr = read_volume(SAMPLE / "mr2ct" / "sub-01" / "mr.nii.gz")
    with pytest.raises(InputError, match="mr.nii.gz.*do not look like CT"):
        simulate_lowdose(mr, 0.25)


def test_info_and_simulation_agree_on_what_is_ct():
    # one HU test for both: a CT whose air reads -850 HU (e.g. a calibration offset) is CT to `info` and accepted here
    shifted = water_cylinder(96, 1)
    shifted = Volume((shifted.array.astype(np.float32) + 150).astype(np.int16), shifted.affine)
    assert looks_like(shifted) == "CT"
    simulate_lowdose(shifted, 0.5)
    scaled = Volume((shifted.array.astype(np.float32) * 0.5 + 1000).astype(np.int16), shifted.affine)  # no air left
    assert looks_like(scaled) != "CT"
    with pytest.raises(InputError, match="do not look like CT"):
        simulate_lowdose(scaled, 0.5, name="scaled.nii.gz")


@pytest.mark.slow
def test_simulate_lowdose_cli_writes_pairs_on_the_inputs_grid(tmp_path):
    ct = read_volume(SAMPLE / "mr2ct" / "sub-03" / "ct.nii.gz")
    inputs = tmp_path / "in"
    write_nifti(inputs / "c1_ct.nii.gz", ct.array[20:100, 20:100, 30:33], oblique_affine(spacing=(1.75, 1.75, 2.6)))
    write_nifti(
        inputs / "c2_ct.nii.gz", read_volume(SAMPLE / "mr2ct" / "sub-01" / "mr.nii.gz").array[:40, :40, :3], np.eye(4)
    )  # MR: fails
    result = cli(
        "simulate-lowdose", "--dose", "0.25", "--input", str(inputs), "--output", str(tmp_path / "out"), "--no-progress"
    )
    assert result.returncode == 1, result.stderr
    assert "1 done, 0 skipped, 1 failed" in result.stdout and "do not look like CT" in result.stdout
    ld, nd = read_volume(tmp_path / "out" / "c1_ld.nii.gz"), read_volume(tmp_path / "out" / "c1_nd.nii.gz")
    assert ld.shape == nd.shape == (80, 80, 3) and ld.array.dtype == np.int16
    np.testing.assert_allclose(ld.affine, oblique_affine(spacing=(1.75, 1.75, 2.6)), atol=1e-4)
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert [r["status"] for r in rows] == ["done", "failed"] and rows[0]["dose"] == "0.25"
    assert rows[0]["geometry"] == "fan"
    bad = cli("simulate-lowdose", "--dose", "2", "--input", str(inputs), "--output", str(tmp_path / "o2"))
    assert bad.returncode == 2 and "must be a finite number > 0 and <= 1" in bad.stderr


@pytest.mark.slow
def test_torchrun_ranks_simulate_what_one_process_simulates(tmp_path):
    ct = read_volume(SAMPLE / "mr2ct" / "sub-03" / "ct.nii.gz")
    inputs = tmp_path / "in"
    for i in range(3):
        write_nifti(inputs / f"c{i}_ct.nii.gz", ct.array[20:100, 20:100, 30 + i : 32 + i], ct.affine)
    args = ["simulate-lowdose", "--dose", "0.25", "--input", str(inputs), "--no-progress"]
    # in this process, on its threads: the simulation is the same to the bit on any thread count (tested above)
    one = cli(*args, "--output", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun_cli(*args, "--output", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    names = sorted(p.name for p in (tmp_path / "one").glob("*.nii.gz"))
    assert len(names) == 6
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    merged = list(csv.DictReader((tmp_path / "two" / "manifest.csv").open()))
    assert [r["case"] for r in merged] == ["c0", "c1", "c2"] and {r["status"] for r in merged} == {"done"}
    assert (tmp_path / "two" / "manifest.shard1of2.csv").exists()


@pytest.mark.parametrize(
    "option,value",
    [
        ("--photons", "nan"),
        ("--photons", "inf"),
        ("--photons", "1e30"),
        ("--photons", "0"),
        ("--dose", "nan"),
        ("--seed", "-3"),
        ("--geometry", "cone"),
        ("--device", "tpu"),
    ],
)
def test_every_numeric_option_is_checked_before_any_work(tmp_path, option, value):
    args = {"--dose": "0.25", "--photons": "1e5", "--seed": "0", "--geometry": "fan", option: value}
    result = cli(
        "simulate-lowdose",
        "--input",
        str(SAMPLE / "mr2ct" / "sub-01" / "ct.nii.gz"),
        "--output",
        str(tmp_path / "out"),
        *[x for kv in args.items() for x in kv],
    )
    assert result.returncode == 2 and option in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
