"""Dose on sCT against dose on CT (medtranslate dose): pyRadPlan plans on a real phantom head, pymedphys gamma."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from medtranslate.core.errors import InputError
from medtranslate.data.phantom import make_subject
from medtranslate.evaluation.dose import DoseSettings, dvh_metrics, gamma_pass_rate, make_plan, recompute
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume, write_nifti

from .conftest import cli, dciodvfy_errors

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


def write_rtstruct(path, reference: Volume, masks: dict[str, np.ndarray], context: dict[str, str] | None = None):
    """An RT Structure Set as a planning system exports one: each mask's outline on every axial slice (k) of
    ``reference``, traced half-way between inside and outside voxel centres, in patient coordinates (LPS mm)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from skimage.measure import find_contours

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.PatientID = "RTSTRUCT", "h1"
    ds.FrameOfReferenceUID = (context or {}).get("0020|0052", generate_uid())
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, mask) in enumerate(masks.items(), start=1):
        roi = pydicom.Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        contours = []
        for k in range(mask.shape[2]):
            for line in find_contours(np.pad(mask[:, :, k].astype(float), 1), 0.5):
                ijk = np.c_[line - 1, np.full(len(line), k), np.ones(len(line))]
                ras = ijk @ reference.affine.T
                c = pydicom.Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(line)
                c.ContourData = [f"{v:.4f}" for v in np.c_[-ras[:, 0], -ras[:, 1], ras[:, 2]].ravel()]
                contours.append(c)
        item = pydicom.Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, contours
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def sphere(volume: Volume, centre_ijk, radius_mm: float) -> np.ndarray:
    ijk = np.indices(volume.shape, dtype=np.float64)
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    return sum(((ijk[a] - centre_ijk[a]) * spacing[a]) ** 2 for a in range(3)) <= radius_mm**2


def test_rtstruct_contours_fill_the_voxels_they_were_drawn_around(tmp_path, head):
    """An RTSTRUCT traced from masks gives those masks back (a contour inside another is a hole); the planning target
    is the PTV, the body outline and nested target volumes are not organs; contours off the CT's planes are refused."""
    from medtranslate.io.structures import read_structures, split_structures

    ptv = sphere(head, (28, 28, 7), 16.0)
    ring = sphere(head, (18, 38, 7), 14.0) & ~sphere(head, (18, 38, 7), 7.0)  # traced as two contours per slice
    body = head.array > -500
    masks = {"PTV_60": ptv, "Ring organ": ring, "BODY": body, "CTV": sphere(head, (28, 28, 7), 10.0)}
    write_rtstruct(tmp_path / "s" / "h1" / "plan.dcm", head, masks)
    found = read_structures(tmp_path / "s", "h1", head)
    assert sorted(found) == sorted(masks)
    for name, mask in masks.items():
        assert np.array_equal(found[name].array > 0, mask), name
        assert np.array_equal(found[name].affine, head.affine)
    target, organs = split_structures(found, None, "h1")
    assert np.array_equal(target.array > 0, ptv) and list(organs) == ["Ring organ"]
    assert split_structures(found, "ring organ", "h1")[1] == {}  # a PTV is never an organ at risk
    with pytest.raises(InputError, match="no structure named 'Lens'"):
        split_structures(found, "Lens", "h1")
    # the CT's own slices beside the RTSTRUCT (an export folder holds both) are not structures; a broken file is named
    from medtranslate.io.dicom import write_series

    slices = write_series(tmp_path / "series", head, patient_id="h1")
    shutil.copy(slices[3], tmp_path / "s" / "h1" / "ct_slice.dcm")
    assert sorted(read_structures(tmp_path / "s", "h1", head)) == sorted(masks)
    (tmp_path / "s" / "h1" / "broken.dcm").write_bytes(b"not dicom")
    with pytest.raises(InputError, match="broken.dcm: not a readable DICOM file"):
        read_structures(tmp_path / "s", "h1", head)
    (tmp_path / "s" / "h1" / "broken.dcm").unlink()
    tilted = Volume(head.array, head.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.3, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(InputError, match="does not lie in a plane of the CT's voxel grid"):
        read_structures(tmp_path / "s", "h1", tilted)


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
    # local gamma judges a difference against the dose where it is: 0.5 Gy more everywhere is within 2 % of the 60 Gy
    # maximum (global) but not of a 12 Gy plateau (local), whose inside has no point within 2 mm with that dose
    two_levels = np.full((8, 12, 8), 12.0)
    two_levels[:, :6] = 60.0
    plus = two_levels + 0.5
    assert gamma_pass_rate(two_levels, plus, 1.0, 2.0, 2.0) == 100.0
    assert 40.0 < gamma_pass_rate(two_levels, plus, 1.0, 2.0, 2.0, local=True) < 55.0  # the 12 Gy half fails
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
    # a 2 mm shift fails points of the steep distal edges at 2 %/2 mm, none at 3 %/3 mm; 4 mm fails more
    two, four = (recompute(plan, shifted(head, mm)).metrics for mm in (2.0, 4.0))
    assert two["gamma_2pct_2mm"] < 100.0 and two["gamma_3pct_3mm"] == 100.0
    assert four["gamma_2pct_2mm"] < 99.0 and four["gamma_3pct_3mm"] > four["gamma_2pct_2mm"]


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
    """A DICOM reference CT with an RTSTRUCT (a PTV and an organ): doses as NIfTI and as RT Dose in the CT's frame of
    reference, organ columns, the report; a failed case reported; a second run resumes, other settings are refused."""
    from medtranslate.io.dicom import source_context, write_series

    ref, pred, structures = tmp_path / "ct", tmp_path / "sct", tmp_path / "structures"
    write_series(ref / "h1", head, patient_id="h1", derived=False)
    ct = read_volume(ref / "h1")  # the CT as the command reads it back from DICOM
    write_nifti(pred / "h1_sct.nii.gz", shifted(ct, 2.0).array, ct.affine)
    write_nifti(ref / "h2.nii.gz", head.array, head.affine)  # no sCT for h2: that case fails, h1 is done
    context = source_context(ref / "h1")
    organ = sphere(ct, (18, 30, 7), 10.0)  # beside the target, in the path of the lateral fields
    write_rtstruct(structures / "h1.dcm", ct, {"PTV": sphere(ct, (32, 28, 7), 14.0), "Parotid L": organ}, context)
    out = tmp_path / "dose"
    args = ["dose", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--grid-mm", str(GRID_MM)]
    args += ["--modality", "proton", "--structures", str(structures)]  # a proton plan costs a third of a photon one
    args += ["--proton-angles", "80,270"]
    result = cli(*args, "--no-progress")
    assert result.returncode == 1, result.stderr  # one case failed
    assert "FAILED h2" in result.stdout and "no synthetic CT" in result.stdout and "1 done" in result.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["h1", "h2"] and rows[1]["status"] == "failed"
    assert 0.0 <= float(rows[0]["proton_gamma_2pct_2mm"]) <= float(rows[0]["proton_gamma_3pct_3mm"]) <= 100.0
    # the organ is spared (kept below half the prescription where it can be) and reported
    assert 0.0 < float(rows[0]["proton_organ_parotid_l_dmean_ct"]) < 0.5 * 60.0
    page = (out / "report.html").read_text()
    assert "dose on the sCT against dose on the CT" in page and page.count("<img") >= 2  # h1's figure, the metrics
    assert (out / "h1" / "proton_dose.png").stat().st_size > 10_000
    dose = read_volume(out / "h1" / "proton_dose_ct.nii.gz")
    assert dose.array.max() > 10.0 and np.allclose(np.linalg.norm(dose.affine[:3, :3], axis=0), GRID_MM)
    # the RT Dose: valid, in the CT's study and frame of reference, the same dose on the same grid (to its 16 bits)
    import pydicom

    for on in ("ct", "sct"):
        rt = pydicom.dcmread(out / "h1" / f"proton_dose_{on}.dcm")
        assert dciodvfy_errors(out / "h1" / f"proton_dose_{on}.dcm", "RTDose") == []
        assert rt.FrameOfReferenceUID == context["0020|0052"] and rt.StudyInstanceUID == context["0020|000d"]
        nifti = read_volume(out / "h1" / f"proton_dose_{on}.nii.gz")
        dicom = read_volume(out / "h1" / f"proton_dose_{on}.dcm")
        assert np.allclose(dicom.affine, nifti.affine, atol=1e-4)
        scaling = float(rt.DoseGridScaling)
        assert np.abs(dicom.array * scaling - nifti.array).max() <= scaling
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_done"] == 1 and summary["n_failed"] == 1 and "proton_target_d95_diff" in summary["metrics"]
    assert "engine default" in summary["settings"]["hlut"] and summary["settings"]["proton_angles"] == [80.0, 270.0]
    # a second run skips the finished case; other settings are refused, not mixed in
    again = cli(*args, "--no-progress")
    assert "1 skipped" in again.stdout
    other = cli(*args, "--no-progress", "--prescription", "50")
    assert "refused" in other.stdout
    # so are doses planned on other structures (the same file in another folder is another set of contours)
    shutil.copytree(structures, tmp_path / "contours")
    elsewhere = [a if a != str(structures) else str(tmp_path / "contours") for a in args]
    assert "refused" in cli(*elsewhere, "--no-progress").stdout
    # h1's doses are of 60 Gy: not in a 50 Gy table
    assert [r["status"] for r in csv.DictReader((out / "metrics.csv").open())] == ["failed"]


def test_dose_arguments_are_checked(tmp_path, head):
    ref = tmp_path / "ct"
    write_nifti(ref / "h1.nii.gz", head.array, head.affine)
    bad = cli("dose", "--pred", str(ref), "--ref", str(ref), "--out", str(tmp_path / "o"), "--modality", "carbon")
    assert bad.returncode == 2 and "unknown dose modality 'carbon'" in bad.stderr
    tiny = cli("dose", "--pred", str(ref), "--ref", str(ref), "--out", str(tmp_path / "o"), "--grid-mm", "0.1")
    assert tiny.returncode == 2 and "dose grid_mm must be a finite number >= 1 and <= 10, got 0.1" in tiny.stderr
    pred = tmp_path / "sct"
    write_nifti(pred / "h1.nii.gz", head.array, head.affine)
    base = ["dose", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "o")]
    for angles, message in (
        ("90,90", "give 1 to 36 different gantry angles"),
        ("90,x", "expected gantry angles"),
        ("400", "proton_angles angle must be a finite number >= 0 and < 360, got 400"),
    ):
        bad = cli(*base, "--proton-angles", angles)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    both = cli(*base, "--target", str(ref), "--structures", str(ref))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    name = cli(*base, "--target-name", "PTV")
    assert name.returncode == 2 and "--target-name names a structure of --structures" in name.stderr
    into = cli("dose", "--pred", str(pred), "--ref", str(ref), "--out", str(pred / "dose"))
    assert into.returncode != 0 and "inside the input folder" in into.stderr and "--out outside it" in into.stderr
    assert sorted(p.name for p in pred.iterdir()) == ["h1.nii.gz"]  # nothing written into the sCT folder
    (tmp_path / "curve.csv").write_text("HU,RED\n0,1\n")
    curve = cli("dose", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "o"), "--hlut", "nope.csv")
    assert curve.returncode != 0 and "nope.csv" in curve.stderr and "check --hlut" in curve.stderr
    short = cli(
        "dose",
        "--pred",
        str(pred),
        "--ref",
        str(ref),
        "--out",
        str(tmp_path / "o"),
        "--hlut",
        str(tmp_path / "curve.csv"),
    )
    assert short.returncode != 0 and "at least two (HU, RED) points, found 1" in short.stderr


@pytest.mark.slow
def test_a_calibration_curve_reaches_the_engine(head):
    """--hlut's curve is the one the engine converts HU with, in the dose and in the choice of spot energies: a curve
    that makes tissue 20 % denser changes the dose the same plan settings give, and needs energies that reach 20 %
    further (the engine's default curve otherwise)."""
    default = make_plan(head, DoseSettings(modalities=("proton",), grid_mm=GRID_MM), "proton")
    denser = ((-1024.0, 0.001), (0.0, 1.2), (3000.0, 3.0))
    settings = DoseSettings(modalities=("proton",), grid_mm=GRID_MM, hlut=denser)
    plan = make_plan(head, settings, "proton")
    assert np.abs(plan.dose_ct - default.dose_ct).max() > 5.0  # Gy

    def deepest(p) -> float:
        return max(b.energy for beam in p.engine["stf"].beams for ray in beam.rays for b in ray.beamlets)

    assert deepest(plan) > deepest(default) + 5.0  # MeV: a range about 20 % longer at 100-150 MeV


def r80(depth: np.ndarray, dose: np.ndarray) -> float:
    """The depth beyond the Bragg peak where the dose falls to 80 % of the peak (linear between samples): a proton
    beam's range as commissioning measures it."""
    peak = int(np.argmax(dose))
    after = peak + int(np.argmax(dose[peak:] < 0.8 * dose[peak]))
    d0, d1, y0, y1 = depth[after - 1], depth[after], dose[after - 1], dose[after]
    return float(d0 + (0.8 * dose[peak] - y0) * (d1 - d0) / (y1 - y0))


@pytest.mark.slow
def test_proton_depth_dose_in_water_and_its_range_in_denser_water():
    """One spot of a proton plan made on a water tank: its depth dose is the machine's own curve; on water whose
    stopping power is 3 % higher (the same plan recomputed, as an sCT 3 % too dense) its range shortens by 3 %, as the
    project's WEPL module predicts from the same calibration curve."""
    from pyRadPlan.machines import load_from_name

    from medtranslate.evaluation.dose import forward_dose
    from medtranslate.evaluation.wepl import wepl_maps

    mm, first = 2.0, 5  # 2 mm voxels; 5 voxels of air before the tank along the beam (x)
    hu = np.full((80, 24, 24), -1024, np.int16)
    hu[first:75] = 0
    affine = np.diag([mm, mm, mm, 1.0])
    target = np.zeros(hu.shape, np.uint8)
    target[40:46, 10:14, 10:14] = 1  # 71-83 mm deep: the plan's spots then stop in the tank
    # stopping power 1 + HU / 1000 in tissue: HU 30 is water 3 % denser (in the engine and in the WEPL module alike)
    curve = ((-1024.0, 0.001), (-1000.0, 0.001), (0.0, 1.0), (3000.0, 4.0))
    settings = DoseSettings(modalities=("proton",), grid_mm=mm, proton_angles=(90.0,), hlut=curve, max_iter=5)
    plan = make_plan(Volume(hu, affine), settings, "proton", target=Volume(target, affine))
    beam = plan.engine["stf"].beams[0]
    spots = [(np.abs(ray.ray_pos_bev).max(), b.energy) for ray in beam.rays for b in ray.beamlets]
    central = [i for i, (off, _) in enumerate(spots) if off < 1e-6]
    spot = central[len(central) // 2]  # the central ray's middle energy
    weights = np.zeros(len(spots))
    weights[spot] = 1.0
    # gantry 90 sends the beam along -x of the engine's LPS grid; the tank's first face at RAS x = (first - 0.5) mm
    skin = -(first - 0.5) * mm
    depth = skin - (plan.grid.GetOrigin()[0] + mm * np.arange(hu.shape[0]))
    inside = depth > 0
    water = forward_dose(plan, Volume(hu, affine), weights).sum(axis=(0, 1))[inside]  # integrated over each plane
    depth = depth[inside]
    order = np.argsort(depth)
    depth, water = depth[order], water[order]

    machine = load_from_name("protons", "Generic")
    kernel = machine.get_kernel_by_energy(spots[spot][1])
    # the engine adds the water-equivalent thickness of the air between its nozzle and the skin (relative stopping
    # power 0.0011, pyRadPlan's air_offset_correction; about 1 mm here) to every depth
    iso_depth = skin - beam.iso_center[0]
    air = 0.0011 * (machine.bams_to_iso_dist - iso_depth - machine.fit_air_offset)
    expected = np.interp(depth + air, kernel.depths, kernel.idd)
    assert np.abs(water / water.max() - expected / expected.max()).max() < 0.01
    # the R80 of the machine's curve sampled every 2 mm moves by at most 0.12 mm with where the samples fall
    assert r80(depth, water) == pytest.approx(r80(kernel.depths, kernel.idd) - air, abs=0.25)

    dense = np.where(hu == 0, 30, hu).astype(np.int16)
    denser = forward_dose(plan, Volume(dense, affine), weights).sum(axis=(0, 1))[inside][order]
    table = (np.array(curve)[:, 0], np.array(curve)[:, 1])
    on_water, on_dense = (wepl_maps(h, hu > -500, affine, table, (90.0,))[90.0] for h in (hu, dense))
    through = on_water > 0
    ratio = float(np.median(on_dense[through] / on_water[through]))  # WEPL(sCT) / WEPL(CT) along the beam
    assert ratio == pytest.approx(1.03, abs=1e-3)
    # the same water-equivalent range is reached 1/ratio as deep (2.9 % shallower); two R80s off by up to 0.12 mm
    # each: 0.25 mm
    shortened = r80(depth, water) - r80(depth, denser)
    assert shortened == pytest.approx(r80(depth, water) * (1 - 1 / ratio), abs=0.25)
    assert 0.025 < shortened / r80(depth, water) < 0.033


@pytest.mark.slow
def test_evaluate_dose_adds_the_dose_tables_beside_the_image_metrics(tmp_path):
    head = make_subject(7, shape=(40, 40, 10), spacing=(3.0, 3.0, 6.0), axcodes="RAS").ct  # small on the 3 mm grid
    ref, pred, out = tmp_path / "ct", tmp_path / "sct", tmp_path / "eval"
    write_nifti(ref / "h1.nii.gz", head.array, head.affine)
    write_nifti(pred / "h1_sct.nii.gz", shifted(head, 2.0).array, head.affine)
    typo = cli("evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--dose", "protons")
    assert typo.returncode == 2 and "unknown dose modality 'protons'" in typo.stderr and not out.exists()
    result = cli("evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--dose", "proton")
    assert result.returncode == 0, result.stderr
    assert "proton: gamma pass rate 2/2 mm" in result.stdout and (out / "dose" / "report.html").is_file()
    image = list(csv.DictReader((out / "metrics.csv").open()))
    dose = list(csv.DictReader((out / "dose" / "metrics.csv").open()))
    assert float(image[0]["mae"]) > 0 and 90.0 < float(dose[0]["proton_gamma_3pct_3mm"]) <= 100.0
