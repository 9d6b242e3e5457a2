"""Proton range QA: the water-equivalent path length through phantoms of known thickness and HU."""

from __future__ import annotations

import numpy as np
import pytest

from medtranslate.core.errors import InputError
from medtranslate.evaluation.wepl import read_calibration, wepl_maps, wepl_scores

# a test calibration: air 0, water 1, and 0.5 per 1000 HU above water (only its shape matters here)
TABLE = (np.array([-1000.0, 0.0, 1000.0]), np.array([0.0, 1.0, 1.5]))


def slab(hu: float, ap_mm: float = 100.0, lr_mm: float = 60.0, spacing=(1.0, 0.8, 3.0), flip=True):
    """A box of `hu` in air, `ap_mm` thick front to back and `lr_mm` side to side, on an LPS-like (flipped) grid."""
    shape = (160, 200, 6)
    x = (np.arange(shape[0]) - shape[0] / 2 + 0.5) * spacing[0]
    y = (np.arange(shape[1]) - shape[1] / 2 + 0.5) * spacing[1]
    inside = (np.abs(x)[:, None] < lr_mm / 2) & (np.abs(y)[None, :] < ap_mm / 2)
    volume = np.where(inside[:, :, None], hu, -1000.0) * np.ones(shape)
    affine = np.diag([-spacing[0] if flip else spacing[0], -spacing[1] if flip else spacing[1], spacing[2], 1.0])
    return volume, np.broadcast_to(inside[:, :, None], shape), affine


@pytest.mark.parametrize("hu,rsp", [(0.0, 1.0), (1000.0, 1.5), (-500.0, 0.5)])
def test_wepl_of_a_slab_is_its_thickness_times_its_stopping_power(hu, rsp):
    volume, body, affine = slab(hu)
    maps = wepl_maps(volume, body, affine, TABLE, angles=(0.0, 90.0, 180.0))
    # front to back through the 100 mm slab; side to side through its 60 mm; 180 deg: the same lines as 0 deg
    assert maps[0.0].max() == pytest.approx(100.0 * rsp, rel=0.02)
    assert maps[90.0].max() == pytest.approx(60.0 * rsp, rel=0.02)
    np.testing.assert_allclose(np.sort(maps[180.0].ravel())[-50:], np.sort(maps[0.0].ravel())[-50:], rtol=0.02)
    assert maps[0.0].shape[1] == volume.shape[2]  # one column per axial slice


def test_range_scores_of_a_known_hu_error():
    volume, body, affine = slab(0.0, flip=False)
    same, maps = wepl_scores(volume, volume, body, affine, TABLE)
    assert same["wepl_mae_mm"] == 0 and same["wepl_p95_pct"] == 0 and set(maps) == {0.0, 45.0, 90.0, 135.0}
    # +20 HU everywhere in the body: RSP + 0.01, so +1 % of every ray's WEPL (+1 mm through 100 mm)
    scores, maps = wepl_scores(volume + 20.0 * body, volume, body, affine, TABLE)
    assert scores["wepl_mean_mm"] > 0 and scores["wepl_mae_pct"] == pytest.approx(1.0, rel=0.05)
    assert np.nanmax(maps[0.0]) == pytest.approx(1.0, rel=0.05)
    assert np.isnan(maps[0.0]).any()  # rays outside the body are not scored


def test_calibration_files_are_checked(tmp_path):
    good = tmp_path / "cal.csv"
    good.write_text("HU,RSP\n-1000,0.001\n0,1.0\n# bone\n1500,1.8\n")
    hu, rsp = read_calibration(good)
    assert hu.tolist() == [-1000, 0, 1500] and rsp.tolist() == [0.001, 1.0, 1.8]
    for text, match in (
        ("0,1\n", "at least two"),
        ("0,1\n-10,0.9\n", "must increase"),
        ("-1000,0\n0,x\n", "line 2: expected two numbers"),
        ("-1000,-1\n0,1\n", r"RSP from 0 to 20 \(relative to water\), got -1000, -1"),
        ("-1000,0\n0,1e308\n", r"line 2: .*got 0, 1e\+308"),  # once overflowed the WEPL sums to inf
        ("-1000,0\n1e9,1\n", r"HU within \+-100000"),
        ("-1000,0\n0,nan\n", "got 0, nan"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(InputError, match=match):
            read_calibration(bad)
    # /dev/zero once ran out of memory; a folder or a scan given by mistake is refused before it is read
    with pytest.raises(InputError, match=r"/dev/zero: not a regular file; a HU-to-RSP calibration is a small CSV"):
        read_calibration("/dev/zero")
    big = tmp_path / "scan.nii"
    big.write_bytes(bytes(2 << 20))
    with pytest.raises(InputError, match=r"scan.nii: 2097152 bytes; a HU-to-RED calibration"):
        read_calibration(big, "RED")


def test_evaluate_reports_the_range_difference_with_a_calibration(tmp_path):
    import csv

    from medtranslate.io.files import read_volume, write_nifti

    from .conftest import SAMPLE, cli

    ref = SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz"
    ct = read_volume(ref)
    write_nifti(tmp_path / "pred" / "sub-07_sct.nii.gz", ct.array + 40, ct.affine, np.int16)  # +40 HU everywhere
    table = tmp_path / "hu_rsp.csv"
    table.write_text("HU,RSP\n-1000,0\n0,1\n1000,1.5\n3000,2.5\n")
    args = ("evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(ref), "--no-progress")
    red = tmp_path / "hu_red.csv"
    red.write_text("-1000,0\n0,1\n1500,1.8\n")
    run = cli(*args, "--out", str(tmp_path / "e"), "--hu-to-rsp", str(table), "--hu-to-red", str(red))
    assert run.returncode == 0, run.stderr
    row = next(csv.DictReader((tmp_path / "e" / "metrics.csv").open()))
    # +40 HU: RSP +0.04 below water, +0.02 above, so every ray lengthens by 2-4 % of its WEPL
    assert 1.5 < float(row["wepl_mae_pct"]) < 4.5 and float(row["wepl_mean_mm"]) > 0
    assert float(row["wepl_p95_mm"]) >= float(row["wepl_mae_mm"]) > 0
    assert 1.5 < float(row["rpl_mae_pct"]) < 4.5 and float(row["rpl_mean_mm"]) > 0  # the same beams in RED
    page = (tmp_path / "e" / "report.html").read_text()
    assert "proton range" in page and "hu_rsp.csv" in page
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1\n")
    refused = cli(*args, "--out", str(tmp_path / "e2"), "--hu-to-rsp", str(bad))
    assert refused.returncode == 2 and "bad.csv" in refused.stderr and "at least two" in refused.stderr


def test_shipped_calibrations_read_and_put_water_near_one():
    from medtranslate.evaluation.wepl import hu_to_rsp

    from .conftest import REPO

    rsp = read_calibration(REPO / "calibrations" / "matrad_default_protons_hu_rsp.csv")
    red = read_calibration(REPO / "calibrations" / "dkfz_siemens_flash_b40f_hu_red.csv", "RED")
    for table in (rsp, red):
        water, air, bone = hu_to_rsp(np.array([0.0, -1000.0, 1000.0]), table)
        assert abs(water - 1.0) < 0.01 and air < 0.05 and 1.4 < bone < 1.9
    # a slab of water, 100 mm front to back, through the published proton curve: 100 mm of water within 1 %
    hu, mask, affine = slab(0.0)
    maps = wepl_maps(hu, mask, affine, rsp, angles=(0.0,))
    assert abs(maps[0.0].max() - 100.0) < 1.0
