"""Dose on sCT against dose on CT (medtranslate dose): pyRadPlan plans on a real phantom head, pymedphys gamma."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medtranslate.data.phantom import make_subject
from medtranslate.evaluation.dose import DoseSettings, dvh_metrics, gamma_pass_rate, make_plan, recompute
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume, write_nifti

from .conftest import cli

# a small head on a coarse dose grid keeps a plan to seconds; the engine and gamma are the ones users run
GRID_MM = 5.0


@pytest.fixture(scope="module")
def head() -> Volume:
    return make_subject(7, shape=(56, 56, 14), spacing=(4.0, 4.0, 8.0), axcodes="RAS").ct


def shifted(volume: Volume, mm: float) -> Volume:
    """The same image with its anatomy moved ``mm`` along the first (left-right) axis, on the same grid."""
    from scipy import ndimage

    spacing = float(np.linalg.norm(volume.affine[:3, 0]))
    moved = ndimage.shift(volume.array.astype(np.float32), (mm / spacing, 0, 0), order=1, cval=-1024)
    return Volume(np.rint(moved).astype(np.int16), volume.affine)


def test_gamma_and_dvh_of_known_doses():
    """The metric functions on doses whose answer is known, without a plan: the same dose passes everywhere; a dose
    2.5 % higher fails 2 %/2 mm on its plateau (1.5 Gy of a 1.2 Gy criterion, and no point within 2 mm has the
    reference's dose) and passes 3 %/3 mm everywhere; D98 <= D50 <= D2, and the mean of a uniform dose is that dose."""
    from scipy import ndimage

    box = np.zeros((30, 30, 22))
    box[4:26, 4:26, 4:18] = 60.0
    dose = ndimage.gaussian_filter(box, 1.0)  # a plateau with a penumbra of a few 1 mm voxels
    assert gamma_pass_rate(dose, dose, 1.0, 2.0, 2.0) == 100.0
    hotter = dose * 1.025
    assert gamma_pass_rate(dose, hotter, 1.0, 2.0, 2.0) < 95.0 and gamma_pass_rate(dose, hotter, 1.0, 3.0, 3.0) == 100
    target = dose > 30.0
    d = dvh_metrics(dose, target, ~target)
    assert d["target_d98"] <= d["target_d95"] <= d["target_d50"] <= d["target_d2"] <= dose.max()
    assert dvh_metrics(np.full(dose.shape, 2.0), target, ~target)["target_dmean"] == pytest.approx(2.0)


@pytest.mark.slow
def test_the_same_ct_gives_the_same_dose_and_a_shift_lowers_the_pass_rate(head):
    settings = DoseSettings(modalities=("proton",), grid_mm=GRID_MM)
    plan = make_plan(head, settings, "proton")
    same = recompute(plan, head)
    m = same.metrics
    assert m["gamma_2pct_2mm"] == 100.0 and m["gamma_3pct_3mm"] == 100.0
    # the forward calculation on the sCT and the influence matrix on the CT are two paths through the engine: they
    # agree to float32 rounding of 60 Gy
    assert abs(m["target_d95_diff"]) < 1e-3 and abs(m["body_dmax_diff"]) < 1e-3
    # the plan delivers what it was asked: the target's median dose within 5 % of the prescription
    assert m["target_d50_ct"] == pytest.approx(settings.prescription_gy, rel=0.05)
    assert same.dose_ct.array.max() > 0 and np.allclose(same.dose_ct.array, same.dose_sct.array, atol=1e-3)
    moved = recompute(plan, shifted(head, 4.0)).metrics
    assert moved["gamma_2pct_2mm"] < 99.0 and moved["gamma_3pct_3mm"] > moved["gamma_2pct_2mm"]


@pytest.mark.slow
def test_denser_sct_shortens_the_proton_range(head):
    """HU raised so the engine's density rises about 3 % inside the body: the protons stop sooner, so the target's
    far edge gets less dose (D95 falls) while a photon plan barely changes."""
    body = head.array > -500
    denser = head.array.astype(np.float32)
    denser[body] = denser[body] * 1.03 + 30.0  # soft tissue (about 0 HU) to about 30 HU: 3 % more density
    sct = Volume(np.rint(denser).astype(np.int16), head.affine)
    # three photon fields instead of the default seven: the same engine path at less than half the cost
    settings = DoseSettings(modalities=("proton", "photon"), grid_mm=GRID_MM, photon_angles=(0.0, 120.0, 240.0))
    proton = recompute(make_plan(head, settings, "proton"), sct).metrics
    photon = recompute(make_plan(head, settings, "photon"), sct).metrics
    assert proton["target_d95_diff"] < -0.5  # Gy of 60: the distal edge moved into the target
    assert abs(photon["target_d95_diff"]) < abs(proton["target_d95_diff"])


@pytest.mark.slow
def test_dose_command_writes_doses_and_metrics_and_resumes(tmp_path, head):
    ref, pred = tmp_path / "ct", tmp_path / "sct"
    write_nifti(ref / "h1.nii.gz", head.array, head.affine)
    write_nifti(pred / "h1_sct.nii.gz", shifted(head, 2.0).array, head.affine)
    write_nifti(ref / "h2.nii.gz", head.array, head.affine)  # no sCT for h2: that case fails, h1 is done
    out = tmp_path / "dose"
    args = ["dose", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--grid-mm", str(GRID_MM)]
    args += ["--modality", "proton"]  # a proton plan costs a third of a photon one here; both paths are tested above
    result = cli(*args, "--no-progress")
    assert result.returncode == 1, result.stderr  # one case failed
    assert "FAILED h2" in result.stdout and "no synthetic CT" in result.stdout and "1 done" in result.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["h1", "h2"] and rows[1]["status"] == "failed"
    assert 0.0 <= float(rows[0]["proton_gamma_2pct_2mm"]) <= float(rows[0]["proton_gamma_3pct_3mm"]) <= 100.0
    page = (out / "report.html").read_text()
    assert "dose on the sCT against dose on the CT" in page and page.count("<img") >= 2  # h1's figure, the metrics
    assert (out / "h1" / "proton_dose.png").stat().st_size > 10_000
    dose = read_volume(out / "h1" / "proton_dose_ct.nii.gz")
    assert dose.array.max() > 10.0 and np.allclose(np.linalg.norm(dose.affine[:3, :3], axis=0), GRID_MM)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_done"] == 1 and summary["n_failed"] == 1 and "proton_target_d95_diff" in summary["metrics"]
    assert "engine default" in summary["settings"]["hlut"]
    # a second run skips the finished case; other settings are refused, not mixed in
    again = cli(*args, "--no-progress")
    assert "1 skipped" in again.stdout
    other = cli(*args, "--no-progress", "--prescription", "50")
    assert "refused" in other.stdout
    # h1's doses are of 60 Gy: not in a 50 Gy table
    assert [r["status"] for r in csv.DictReader((out / "metrics.csv").open())] == ["failed"]


def test_dose_arguments_are_checked(tmp_path, head):
    ref = tmp_path / "ct"
    write_nifti(ref / "h1.nii.gz", head.array, head.affine)
    bad = cli("dose", "--pred", str(ref), "--ref", str(ref), "--out", str(tmp_path / "o"), "--modality", "carbon")
    assert bad.returncode == 2 and "unknown dose modality 'carbon'" in bad.stderr
    tiny = cli("dose", "--pred", str(ref), "--ref", str(ref), "--out", str(tmp_path / "o"), "--grid-mm", "0.1")
    assert tiny.returncode == 2 and "dose grid_mm must be a finite number >= 1 and <= 10, got 0.1" in tiny.stderr


@pytest.mark.slow
def test_a_calibration_curve_reaches_the_engine(head):
    """--hlut's curve is the one the engine converts HU with: a curve that makes tissue 20 % denser changes the dose
    the same plan settings give (the engine's default curve otherwise)."""
    default = make_plan(head, DoseSettings(modalities=("proton",), grid_mm=GRID_MM), "proton").dose_ct
    denser = ((-1024.0, 0.001), (0.0, 1.2), (3000.0, 3.0))
    settings = DoseSettings(modalities=("proton",), grid_mm=GRID_MM, hlut=denser)
    assert np.abs(make_plan(head, settings, "proton").dose_ct - default).max() > 5.0  # Gy
