"""Translating scans and folders with a checkpoint: geometry round trip in every format, batch safety, bad input."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from medtranslate.core.errors import CheckpointError, InputError
from medtranslate.data.phantom import make_subject
from medtranslate.imaging.volume import Volume, affine_to_sitk
from medtranslate.inference.translate import translate_volume
from medtranslate.io.files import read_volume, write_dicom_series, write_nifti
from medtranslate.models.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint, save_checkpoint

from .conftest import cli, dciodvfy_errors, oblique_affine, torchrun_cli, translate_cli


def mr_volume(seed: int, shape=(40, 36, 14)) -> Volume:
    """A small MR phantom on an oblique, anisotropic, non-RAS grid."""
    s = make_subject(seed, shape=shape, spacing=(5.5, 6.1, 11.9))
    return Volume(s.mr.array, oblique_affine(spacing=(5.5, 6.1, 11.9)))


@pytest.mark.parametrize("fmt", ["nifti", "nrrd", "metaimage", "dicom"])
def test_output_has_exactly_the_inputs_grid_in_every_format(tmp_path, checkpoints, fmt):
    import SimpleITK as sitk

    vol = mr_volume(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    if fmt == "dicom":
        write_dicom_series(inputs / "case1", vol, modality="MR")
    else:
        suffix = {"nifti": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha"}[fmt]
        sitk.WriteImage(affine_to_sitk(vol.array, vol.affine), str(inputs / f"case1{suffix}"))
    result = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = read_volume(tmp_path / "out" / "case1_sct.nii.gz")
    source = read_volume(next(inputs.iterdir()))
    assert out.shape == source.shape == vol.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-4)
    assert out.array.dtype == np.int16 and out.array.min() >= -1024 and out.array.max() <= 3071
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert rows[0]["status"] == "done" and len(rows[0]["checkpoint_sha256"]) == 64
    assert rows[0]["precision"] in ("fp32", "bf16")  # --precision auto: what this machine runs faster
    default_batch = 8 if torch.cuda.is_available() else 4  # --batch-size not given: the device's default
    assert f"batches of {default_batch} slices" in result.stderr, result.stderr
    if fmt == "nifti":  # asked for explicitly, a precision is used and recorded
        forced = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(tmp_path / "fp32"), "--precision", "fp32")
        assert forced.returncode == 0, forced.stderr
        assert list(csv.DictReader((tmp_path / "fp32" / "manifest.csv").open()))[0]["precision"] == "fp32"


def test_translate_volume_api_odd_shapes_and_tta(checkpoints):
    ckpt = load_checkpoint(checkpoints["pix2pix"])
    net, spec = build_inference_net(ckpt, torch.device("cpu")), TranslatorSpec.from_dict(ckpt["spec"])
    vol = mr_volume(2, shape=(27, 33, 9))  # not divisible by the U-Net's 8: padded and cropped back
    out = translate_volume(net, vol, spec)
    assert out.shape == vol.shape and np.array_equal(out.affine, vol.affine)
    tta = translate_volume(net, vol, spec, tta=True)
    assert tta.shape == vol.shape and not np.allclose(tta.array, out.array)


def test_a_synthetic_ct_is_air_where_the_input_shows_no_body(checkpoints, monkeypatch):
    from scipy import ndimage

    from medtranslate.imaging import transforms
    from medtranslate.imaging.transforms import IntensityParams, body_mask
    from medtranslate.inference import translate
    from medtranslate.inference.translate import _predict, _preprocess, translate_with_uncertainty

    ckpt = load_checkpoint(checkpoints["pix2pix"])
    net, spec = build_inference_net(ckpt, torch.device("cpu")), TranslatorSpec.from_dict(ckpt["spec"])
    vol = mr_volume(3, shape=(40, 36, 14))
    vol.array[..., :4] = 0  # the lowest slices hold no body (air below the head)
    pre, data, image, outside = _preprocess(vol, spec)
    view = (False, 0, 0)
    raw = pre.invert(_predict(net, image, spec, torch.device("cpu"), 4, None, view), data["image"],
                     IntensityParams.from_dict(spec.target_intensity), vol).array  # fmt: skip
    body = body_mask(vol.array, "mr", vol.affine)
    far = ndimage.distance_transform_edt(~body, sampling=vol.spacing) > 5.0
    assert far[..., :3].all() and not far.all()
    np.testing.assert_array_equal(outside, far)
    assert (raw[far] > -900).any()  # the network alone leaves something there, so the masking has work to do
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return body_mask(*args, **kwargs)

    for module in (transforms, translate):
        monkeypatch.setattr(module, "body_mask", counted)
    out = translate_volume(net, vol, spec, batch_size=4).array
    assert len(calls) == 1  # one body mask serves the MR's intensity scaling and the air beyond its outline
    assert (out[far] == -1024).all()
    np.testing.assert_array_equal(out[~far], raw[~far])  # within 5 mm of the body: the network's own values
    mean, std = translate_with_uncertainty(net, vol, spec, "tta", batch_size=4, samples=2)
    assert (mean.array[far] == -1024).all() and (std.array[far] == 0).all() and (std.array[~far] > 0).any()


def test_uncertainty_maps_from_views_and_from_dropout(tmp_path, checkpoints):
    from medtranslate.core.config import RunConfig
    from medtranslate.inference.translate import translate_with_uncertainty
    from medtranslate.models.base import build_generator

    ckpt = load_checkpoint(checkpoints["pix2pix"])
    net, spec = build_inference_net(ckpt, torch.device("cpu")), TranslatorSpec.from_dict(ckpt["spec"])
    vol = mr_volume(2, shape=(27, 33, 9))
    mean, std = translate_with_uncertainty(net, vol, spec, "tta", samples=4)
    assert mean.shape == std.shape == vol.shape and np.array_equal(std.affine, vol.affine)
    assert std.array.min() >= 0 and std.array.max() > 0
    # the mean of the first two views is what --tta gives; the spread is that of the views, in HU
    two_mean, two_std = translate_with_uncertainty(net, vol, spec, "tta", samples=2)
    flip = translate_volume(net, vol, spec, tta=True)
    plain = translate_volume(net, vol, spec)
    np.testing.assert_allclose(two_mean.array, flip.array, atol=1e-3)
    np.testing.assert_allclose(two_std.array, np.abs(2 * (flip.array - plain.array)) / 2, atol=0.05)
    with pytest.raises(InputError, match="needs a network with dropout layers"):  # the tiny U-Net is too shallow
        translate_with_uncertainty(net, vol, spec, "mc")
    # Monte Carlo dropout: a U-Net deep enough to have dropout (untrained: only the mechanics are tested)
    cfg = RunConfig.from_dict(
        {"data": {"root": "x", "patch_size": 64}, "model": {"kind": "pix2pix", "ngf": 4, "num_downs": 6}}
    )
    deep = build_generator(cfg, 1).eval()
    deep_spec = TranslatorSpec.from_dict({**ckpt["spec"], "context": 0, "divisor": 64})
    a = translate_with_uncertainty(deep, vol, deep_spec, "mc", samples=3)
    b = translate_with_uncertainty(deep, vol, deep_spec, "mc", samples=3)
    assert a[1].array.max() > 0 and np.array_equal(a[1].array, b[1].array)  # seeded per sample: repeatable
    assert not any(m.training for m in deep.modules())  # and the network is left as it was, dropout off


def test_translate_writes_the_uncertainty_map_and_evaluate_scores_it(tmp_path, checkpoints, tiny_data):
    model = str(checkpoints["pix2pix"])
    out = tmp_path / "out"
    run = translate_cli(model, str(tiny_data / "s3" / "mr.nii.gz"), str(out), "--uncertainty", "tta")
    assert run.returncode == 0, run.stderr
    std = read_volume(out / "s3_sct_std.nii.gz")
    sct = read_volume(out / "s3_sct.nii.gz")
    assert std.shape == sct.shape and std.array.dtype == np.float32 and std.array.max() > 0
    np.testing.assert_allclose(std.affine, sct.affine, atol=1e-4)
    ev = cli(
        *("evaluate", "--pred", str(out), "--ref", str(tiny_data / "s3" / "ct.nii.gz"), "--out", str(tmp_path / "ev")),
        "--no-progress",
    )
    assert ev.returncode == 0, ev.stderr  # the map is not taken for a prediction of its own
    row = next(csv.DictReader((tmp_path / "ev" / "metrics.csv").open()))
    assert row["case"] == "s3" and -1 <= float(row["unc_spearman"]) <= 1 and float(row["unc_mean_std"]) > 0
    assert row["uncertainty"].endswith("s3_sct_std.nii.gz")
    assert "error against uncertainty" in (tmp_path / "ev" / "report.html").read_text()
    for bad, match in ((("--uncertainty", "mc"), "needs a network with dropout"), (("--uncertainty", "tta", "--tta"),
                       "already averages"), (("--uncertainty", "tta", "--samples", "9"), "--samples")):  # fmt: skip
        refused = translate_cli(model, str(tiny_data / "s3" / "mr.nii.gz"), str(tmp_path / "x"), *bad)
        assert refused.returncode == 2 and match in refused.stderr, refused.stderr


def test_an_ensemble_of_checkpoints_gives_their_spread(tmp_path, checkpoints, tiny_data):
    from medtranslate.core.config import load_config
    from medtranslate.training.train import Trainer

    from .conftest import write_config

    cfg = load_config(
        write_config(tmp_path / "c.yaml", tiny_data, **{"data.context": 1, "train.epochs": 1, "train.seed": 11})
    )
    Trainer(cfg, tmp_path / "other", progress=False).fit()  # the same settings, another seed
    other = tmp_path / "other" / "checkpoints" / "best.pt"
    # a member with an intensity calibration of its own (+100 HU) is welcome, and its samples go through it
    ckpt = load_checkpoint(other)
    ckpt["spec"]["calibration"] = {"kind": "quantile", "produced": [-3000.0, 5000.0], "reference": [-2900.0, 5100.0]}
    save_checkpoint(ckpt, other)
    model, mr = str(checkpoints["pix2pix"]), str(tiny_data / "s3" / "mr.nii.gz")
    run = translate_cli(
        model, mr, str(tmp_path / "out"), "--uncertainty", "ensemble", "--ensemble", str(other), "--precision", "fp32"
    )
    assert run.returncode == 0, run.stderr
    std = read_volume(tmp_path / "out" / "s3_sct_std.nii.gz").array
    mean = read_volume(tmp_path / "out" / "s3_sct.nii.gz").array
    a = read_volume(translate_cli_out(tmp_path / "a", model, mr)).array.astype(np.float64)
    b = read_volume(translate_cli_out(tmp_path / "b", str(other), mr)).array.astype(np.float64)
    # two members: the mean is their average and the spread half their difference (int16 rounding aside)
    assert np.abs(mean - (a + b) / 2).max() <= 1.0 and np.abs(std - np.abs(a - b) / 2).max() <= 1.0
    row = next(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert len(row["ensemble_sha256"]) == 64
    # tta over both models, pooled: the mean of their tta means; the variance their mean variance plus the variance of
    # their means (law of total variance), from each model's own tta run
    pooled = translate_cli(
        model, mr, str(tmp_path / "pool"), *TWO_VIEWS, "--ensemble", str(other), "--precision", "fp32"
    )
    assert pooled.returncode == 0, pooled.stderr
    (ma, sa), (mb, sb), (mp, sp) = (
        tuple(read_volume(d / f"s3_sct{x}.nii.gz").array.astype(np.float64) for x in ("", "_std"))
        for d in (
            translate_cli_out(tmp_path / "ta", model, mr, *TWO_VIEWS).parent,
            translate_cli_out(tmp_path / "tb", str(other), mr, *TWO_VIEWS).parent,
            tmp_path / "pool",
        )
    )
    assert np.abs(mp - (ma + mb) / 2).max() <= 1.0
    assert np.abs(sp - np.sqrt((sa**2 + sb**2) / 2 + ((ma - mb) / 2) ** 2)).max() <= 1.0
    assert np.abs(sp - sa).max() > 5  # the second model adds spread of its own
    for bad, match in (
        (("--ensemble", str(other)), "needs --uncertainty"),
        (("--uncertainty", "mc", "--ensemble", str(other)), "needs a network with dropout"),
        (("--uncertainty", "ensemble", "--ensemble", str(checkpoints["intensity_map"])), "translator spec differs"),
        (("--uncertainty", "ensemble", "--ensemble", model), "the same model as another member"),  # once accepted
        (("--uncertainty", "ensemble", "--ensemble", str(other), str(other)), "the same one twice adds no spread"),
    ):
        refused = translate_cli(model, mr, str(tmp_path / "x"), *bad)
        assert refused.returncode == 2 and match in refused.stderr, refused.stderr


TWO_VIEWS = ("--uncertainty", "tta", "--samples", "2")


def translate_cli_out(out, model, inputs, *options):
    """Translate with one model in fp32, as the ensemble above (auto may pick bf16 on one machine and not another);
    ``options``: more command-line options. Returns the output's path."""
    run = translate_cli(model, inputs, str(out), "--precision", "fp32", *options)
    assert run.returncode == 0, run.stderr
    return next(out.glob("*_sct.nii.gz"))


def _batch(folder, n=6):
    for i in range(n):
        v = mr_volume(10 + i)
        write_nifti(folder / f"p{i:02d}.nii.gz", v.array, v.affine)


@pytest.mark.slow
def test_killed_batch_resumes_with_every_case_done_and_no_partial_file(tmp_path, checkpoints):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _batch(inputs, 8)
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    cmd = [
        sys.executable,
        "-m",
        "medtranslate",
        "translate",
        "--model",
        str(checkpoints["pix2pix"]),
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "manifest.csv").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = list(csv.DictReader((out / "manifest.csv").open())) if (out / "manifest.csv").exists() else []
    assert 1 <= len(first) < 8  # stopped halfway
    result = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["case"] for r in rows] == [f"p{i:02d}" for i in range(8)]
    # finished outputs are skipped: those in the manifest the kill left, and at most the one whose (atomic) output was
    # renamed into place before the kill came and its manifest row was written
    skipped = sum(r["status"] == "skipped" for r in rows)
    assert {r["status"] for r in rows} <= {"done", "skipped"} and len(first) <= skipped <= len(first) + 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    for i in range(8):
        assert read_volume(out / f"p{i:02d}_sct.nii.gz").shape == (40, 36, 14)
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_corrupt_case_fails_alone_and_shards_split_the_folder(tmp_path, checkpoints):
    inputs = tmp_path / "in"
    _batch(inputs, 3)
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    model = str(checkpoints["intensity_map"])
    result = translate_cli(model, str(inputs), str(tmp_path / "out"))
    assert result.returncode == 1
    assert "FAILED broken" in result.stdout and "3 done, 0 skipped, 1 failed" in result.stdout
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "out" / "manifest.csv").open())}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    for shard in ("0/2", "1/2"):
        r = translate_cli(model, str(inputs), str(tmp_path / "sharded"), "--shard", shard)
        assert r.returncode in (0, 1)
    done = sorted(p.name for p in (tmp_path / "sharded").glob("*_sct.nii.gz"))
    assert done == ["p00_sct.nii.gz", "p01_sct.nii.gz", "p02_sct.nii.gz"]
    assert (tmp_path / "sharded" / "manifest.shard0of2.csv").exists() and (
        tmp_path / "sharded" / "manifest.shard1of2.csv"
    ).exists()
    again = translate_cli(model, str(inputs), str(tmp_path / "out"))
    assert "0 done, 3 skipped, 1 failed" in again.stdout


@pytest.mark.slow
def test_torchrun_ranks_split_the_folder_and_write_what_one_process_writes(tmp_path, checkpoints):
    inputs = tmp_path / "in"
    _batch(inputs, 4)
    model = str(checkpoints["pix2pix"])
    env = dict(os.environ, OMP_NUM_THREADS="1")  # torchrun gives each rank one thread: the same arithmetic here
    one = translate_cli(model, str(inputs), str(tmp_path / "one"), "--precision", "fp32", env=env)
    assert one.returncode == 0, one.stderr
    two = torchrun_cli(
        *("translate", "--model", model, "--input", str(inputs), "--output", str(tmp_path / "two"), "--no-progress"),
        *("--precision", "fp32"),
        env=env,
    )
    assert two.returncode == 0, two.stderr
    names = sorted(p.name for p in (tmp_path / "one").glob("*_sct.nii.gz"))
    assert names == [f"p{i:02d}_sct.nii.gz" for i in range(4)]
    for name in names:  # byte for byte
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    shards = [list(csv.DictReader((tmp_path / "two" / f"manifest.shard{i}of2.csv").open())) for i in range(2)]
    assert sorted(r["case"] for r in shards[0]) == ["p00", "p02"] and sorted(r["case"] for r in shards[1]) == [
        "p01",
        "p03",
    ]
    merged = list(csv.DictReader((tmp_path / "two" / "manifest.csv").open()))
    assert [r["case"] for r in merged] == ["p00", "p01", "p02", "p03"] and {r["status"] for r in merged} == {"done"}


def test_shard_under_torchrun_is_refused(tmp_path, checkpoints, torchrun_rank0):
    _batch(tmp_path / "in", 1)
    both = translate_cli(checkpoints["pix2pix"], tmp_path / "in", tmp_path / "x", "--shard", "0/2")
    assert both.returncode == 2 and "leave out --shard" in both.stderr
    assert not (tmp_path / "x").exists()


# an MR series as a scanner would send it: a patient (with a name outside ASCII), a study, a frame of reference
MR_CONTEXT = {
    "0010|0010": "Müller^Jürgen",
    "0010|0020": "PID-0042",
    "0010|0030": "19600131",
    "0010|0040": "M",
    "0020|000d": "1.2.826.0.1.3680043.8.498.11",
    "0008|0020": "20260115",
    "0008|0030": "093000",
    "0008|0050": "ACC123",
    "0020|0010": "S42",
    "0020|0052": "1.2.826.0.1.3680043.8.498.12",
    "0018|5100": "HFS",
    "0020|0011": "3",
}


def test_dicom_in_dicom_out_keeps_the_patient_study_and_frame_of_reference(tmp_path, checkpoints):
    import pydicom

    vol = mr_volume(3)
    inputs = tmp_path / "in"
    mr_files = write_dicom_series(inputs / "pt42" / "mr", vol, modality="MR", context=MR_CONTEXT, derived=False)
    _batch(inputs, 1)  # and a NIfTI case beside it
    result = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(tmp_path / "out"), "--format", "dicom")
    assert result.returncode == 0, result.stderr
    mr = [pydicom.dcmread(f) for f in mr_files]
    files = sorted((tmp_path / "out" / "pt42_sct_dicom").iterdir())
    sct = [pydicom.dcmread(f) for f in files]
    assert len(sct) == len(mr) == vol.shape[2]
    for f in (files[0], files[-1]):
        assert dciodvfy_errors(f) == []
    first = sct[0]
    for word in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate"):
        assert first.get(word) == mr[0].get(word), word
    for word in ("AccessionNumber", "StudyID", "FrameOfReferenceUID", "PatientPosition"):
        assert first.get(word) == mr[0].get(word), word
    assert str(first.PatientName) == "Müller^Jürgen"
    assert first.SeriesInstanceUID != mr[0].SeriesInstanceUID and first.SeriesNumber == mr[0].SeriesNumber + 1000
    assert len({d.SeriesInstanceUID for d in sct}) == 1 and len({d.SOPInstanceUID for d in sct}) == len(sct)
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and first.Modality == "CT"
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"] and first.SeriesDescription.startswith("Synthetic CT")
    assert "medtranslate" in first.ImageComments and "not an acquired scan" in first.ImageComments
    assert load_checkpoint(checkpoints["intensity_map"]) and "checkpoint sha256" in first.ImageComments
    # the MR's geometry, slice by slice
    by_number = {int(d.InstanceNumber): d for d in sct}
    for m in mr:
        s = by_number[int(m.InstanceNumber)]
        np.testing.assert_allclose(
            [float(v) for v in s.ImagePositionPatient], [float(v) for v in m.ImagePositionPatient], atol=1e-4
        )
        np.testing.assert_allclose(
            [float(v) for v in s.ImageOrientationPatient], [float(v) for v in m.ImageOrientationPatient], atol=1e-6
        )
        assert [float(v) for v in s.PixelSpacing] == pytest.approx([float(v) for v in m.PixelSpacing])
        assert (s.Rows, s.Columns) == (m.Rows, m.Columns)
    # HU through the rescale, the same voxels as the NIfTI output
    np.testing.assert_array_equal(
        read_volume(tmp_path / "out" / "pt42_sct_dicom").array, read_volume(tmp_path / "out" / "pt42_sct.nii.gz").array
    )

    # a NIfTI case: a new, clearly labelled context of its own, still a valid CT series
    nifti = sorted((tmp_path / "out" / "p00_sct_dicom").iterdir())
    assert dciodvfy_errors(nifti[0]) == []
    ds = pydicom.dcmread(nifti[0])
    assert ds.PatientID == "p00" and "non-DICOM" in ds.StudyDescription
    assert ds.StudyInstanceUID != first.StudyInstanceUID and ds.FrameOfReferenceUID != first.FrameOfReferenceUID
    from_dicom, from_nifti = (
        read_volume(tmp_path / "out" / "p00_sct_dicom"),
        read_volume(tmp_path / "out" / "p00_sct.nii.gz"),
    )
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-3)


def test_a_ct_series_context_carries_its_tube_voltage_to_the_derived_series(tmp_path, ct_volume):
    """A denoised low-dose CT keeps the CT's series context, its kVp included (the same code as translate's)."""
    import pydicom

    from medtranslate.io.dicom import source_context

    ldct = write_dicom_series(tmp_path / "ld", ct_volume, context={**MR_CONTEXT, "0018|0060": "120"}, derived=False)
    context = source_context(tmp_path / "ld")
    assert context["0018|0060"] == "120" and context["0010|0020"] == "PID-0042" and context["0020|0011"] == "1003"
    out = write_dicom_series(tmp_path / "nd", ct_volume, context=context, series_description="Denoised CT")
    ds, src = pydicom.dcmread(out[0]), pydicom.dcmread(ldct[0])
    assert dciodvfy_errors(out[0]) == []
    assert float(ds.KVP) == 120 and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID


class Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


@pytest.mark.parametrize("content", ["foreign", "unsafe", "garbage"])
def test_foreign_or_unsafe_checkpoint_is_a_one_line_error(tmp_path, content):
    ckpt = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, str(ckpt))
    elif content == "unsafe":
        torch.save({"format": 1, "spec": Evil()}, str(ckpt))
    else:
        ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_checkpoint(ckpt)
    (tmp_path / "in").mkdir()
    result = translate_cli(str(ckpt), str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.returncode == 2 and "unpickled" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_output_folder_checks_happen_before_any_work(tmp_path, checkpoints):
    inputs = tmp_path / "in"
    _batch(inputs, 1)
    same = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(inputs))
    assert same.returncode == 2 and "input folder" in same.stderr
    (tmp_path / "afile").write_text("x")
    blocked = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(tmp_path / "afile" / "out"))
    assert blocked.returncode == 2 and "not writable" in blocked.stderr
    assert sorted(p.name for p in inputs.iterdir()) == ["p00.nii.gz"]


@pytest.mark.parametrize("size", ["-1", "0", "1.5", "abc"])
def test_a_bad_batch_size_is_refused_before_any_work(tmp_path, checkpoints, size):
    inputs = tmp_path / "in"
    _batch(inputs, 1)
    result = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(tmp_path / "out"), "--batch-size", size)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--batch-size" in result.stderr, (
        result.stderr
    )
    assert not (tmp_path / "out").exists()  # -1 once wrote uninitialised memory as a finished sCT
    with pytest.raises(InputError, match="--batch-size"):
        ckpt = load_checkpoint(checkpoints["pix2pix"])
        translate_volume(
            build_inference_net(ckpt, torch.device("cpu")),
            mr_volume(1),
            TranslatorSpec.from_dict(ckpt["spec"]),
            batch_size=0,
        )


def test_inputs_the_model_was_not_made_for_are_refused_per_case(tmp_path, checkpoints):
    from .conftest import ct_like

    inputs = tmp_path / "in"
    _batch(inputs, 1)
    write_nifti(inputs / "zeros.nii.gz", np.zeros((20, 20, 8), np.int16), np.eye(4))
    write_nifti(inputs / "pt9.nii.gz", ct_like(shape=(20, 20, 8)), np.eye(4))  # a CT given to an MR -> CT model
    result = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 done, 0 skipped, 2 failed" in result.stdout
    assert "zeros.nii.gz: every voxel is 0.0; the image is empty or constant" in result.stdout
    assert (
        "pt9.nii.gz: this is a CT (values in HU, air near -1000), but this model translates mr images" in result.stdout
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["p00_sct.nii.gz"]


def test_outputs_of_another_checkpoint_keep_its_hash(tmp_path, checkpoints):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _batch(inputs, 2)
    first = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(out))
    assert first.returncode == 0, first.stderr
    made = {r["case"]: r["checkpoint_sha256"] for r in csv.DictReader((out / "manifest.csv").open())}
    again = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(out))
    assert again.returncode == 1 and "0 done, 0 skipped, 0 failed, 2 refused" in again.stdout
    assert "made with other settings (checkpoint_sha256" in again.stdout and "--overwrite" in again.stdout
    assert {r["case"]: r["checkpoint_sha256"] for r in csv.DictReader((out / "manifest.csv").open())} == made
    # options that change the voxels are recorded, and a re-run with other ones is refused, naming them
    tta = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(out), "--tta")
    assert tta.returncode == 1 and "2 refused" in tta.stdout and "options plain, not tta" in tta.stdout
    same = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(out))
    assert same.returncode == 0 and "0 done, 2 skipped" in same.stdout
    redo = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(out), "--tta", "--overwrite")
    assert redo.returncode == 0 and "2 done" in redo.stdout
    assert {r["options"] for r in csv.DictReader((out / "manifest.csv").open())} == {"tta"}


def test_a_model_trained_with_tta_is_translated_over_the_flip_unless_told_not_to(tmp_path, tiny_data):
    """model.tta is stored with the checkpoint: translate averages over the left-right flip by default (as --tta
    does, to the voxel), --no-tta gives the one view, and the manifest records which."""
    from medtranslate.core.config import load_config
    from medtranslate.training.train import Trainer

    from .conftest import write_config

    cfg = load_config(
        write_config(tmp_path / "tta.yaml", tiny_data, "pix2pix", **{"train.epochs": 1, "model.tta": True})
    )
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    model = tmp_path / "run" / "checkpoints" / "best.pt"
    assert TranslatorSpec.from_dict(load_checkpoint(model)["spec"]).tta is True
    case = tiny_data / "s3" / "mr.nii.gz"
    runs = {name: translate_cli(model, case, tmp_path / name, *flags) for name, flags in
            (("default", ()), ("tta", ("--tta",)), ("plain", ("--no-tta",)))}  # fmt: skip
    for name, run in runs.items():
        assert run.returncode == 0, run.stderr
        assert [r["options"] for r in csv.DictReader((tmp_path / name / "manifest.csv").open())] == [
            "plain" if name == "plain" else "tta"
        ]
    voxels = {name: read_volume(tmp_path / name / "s3_sct.nii.gz").array for name in runs}
    assert np.array_equal(voxels["default"], voxels["tta"])
    assert not np.array_equal(voxels["default"], voxels["plain"])
    # --uncertainty tta's views include the flip: the model's setting does not clash with it
    spread = translate_cli(model, case, tmp_path / "spread", "--uncertainty", "tta", "--samples", "2")
    assert spread.returncode == 0, spread.stderr
    assert [r["options"] for r in csv.DictReader((tmp_path / "spread" / "manifest.csv").open())] == [
        "uncertainty=tta samples=2"
    ]


def test_a_shard_leaves_the_temporary_files_of_a_running_shard_alone(tmp_path, checkpoints):
    from medtranslate.core.atomic import partial_name

    inputs, out = tmp_path / "in", tmp_path / "out"
    _batch(inputs, 2)
    out.mkdir()
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"]
    )  # stands for shard 0/2, still writing
    try:
        theirs = out / partial_name(out / "p00_sct.nii.gz").name.replace(f"-{os.getpid()}.", f"-{other.pid}.")
        theirs.write_bytes(b"half of shard 0's output")
        result = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(out), "--shard", "1/2")
        assert result.returncode == 0, result.stderr
        assert theirs.exists() and (out / "p01_sct.nii.gz").exists()
    finally:
        other.kill()
        other.wait()


def test_translate_terminates_on_a_folder_of_symlink_loops(tmp_path, checkpoints):
    inputs = tmp_path / "in"
    _batch(inputs, 1)
    os.symlink(".", inputs / "loop1")
    os.symlink(".", inputs / "loop2")
    result = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(tmp_path / "out"), timeout=120)
    assert result.returncode == 0 and "1 done" in result.stdout, result.stderr


def test_dicom_output_into_a_non_ascii_folder(tmp_path, checkpoints):
    inputs, out = tmp_path / "in", tmp_path / "Résultats_Ørsted"
    _batch(inputs, 2)
    result = translate_cli(str(checkpoints["intensity_map"]), str(inputs), str(out), "--format", "dicom")
    assert result.returncode == 0 and "2 done" in result.stdout, result.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rows = list(csv.DictReader((out / "manifest.csv").open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["done", "done"] and "Ørsted" in rows[0]["output"]
    assert read_volume(out / "p01_sct_dicom").shape == read_volume(out / "p01_sct.nii.gz").shape


def test_every_written_attribute_fits_its_value_representation(tmp_path, ct_volume):
    """Case ids over 64 characters overflowed PatientName and PatientID, a backslash made them multi-valued, a study
    description was cut by characters not bytes, and a source's multi-valued or 200-character name was copied."""
    import warnings

    import pydicom

    from medtranslate.io.dicom import source_context

    long_id = "pt\\" + "x" * 80
    mine = write_dicom_series(
        tmp_path / "nifti_case", ct_volume, patient_id=long_id, context={"0008|1030": "Zoe 山田 " * 12}
    )
    source = write_dicom_series(tmp_path / "src", ct_volume, context=MR_CONTEXT, derived=False)
    for path in source:  # a source series as another program may write it (pydicom warns: it is invalid)
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds.PatientName = ["Evil", "Name^X"]
            ds.ReferringPhysicianName = "R" * 200
            ds.AccessionNumber = "A" * 40
            ds.save_as(path)
    with warnings.catch_warnings():  # pydicom warns again when it reads those values
        warnings.simplefilter("ignore", UserWarning)
        context = source_context(tmp_path / "src")
    derived = write_dicom_series(tmp_path / "derived", ct_volume, context=context, patient_id=long_id)
    for path in (mine[0], derived[0]):
        assert dciodvfy_errors(path) == [], path
    a, b = pydicom.dcmread(mine[0]), pydicom.dcmread(derived[0])
    assert "\\" not in str(a.PatientID) and len(str(a.PatientID).encode()) <= 64 and a.PatientID.startswith("pt-xxx")
    assert len(a.StudyDescription.encode("utf-8")) <= 64 and a.StudyDescription.startswith("Zoe 山田")
    assert str(b.PatientName) == "Evil" and len(str(b.ReferringPhysicianName)) <= 64 and len(b.AccessionNumber) <= 16


def test_one_slice_is_a_volume_of_depth_one_in_info_convert_and_translate(tmp_path, checkpoints, tiny_data, capsys):
    """A single-slice NIfTI or DICOM series was refused as 'not a 3D volume'; for a slice-wise tool it is a volume of
    depth 1. A single sagittal slice is refused, naming why."""
    import nibabel as nib

    from medtranslate.cli import main

    mr = read_volume(tiny_data / "s0" / "mr.nii.gz")
    one = mr.array[:, :, 8]
    nib.save(nib.Nifti1Image(one, mr.affine), str(tmp_path / "flat.nii.gz"))  # a 2D file
    write_nifti(tmp_path / "in" / "pt_mr.nii.gz", one[:, :, None], mr.affine)
    dicom = write_dicom_series(tmp_path / "in" / "dcm" / "mr", Volume(one[:, :, None], mr.affine), modality="MR")[0]
    assert main(["info", str(tmp_path / "flat.nii.gz")]) == 0
    assert "48x48x1" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "in" / "dcm" / "mr"), str(tmp_path / "conv.nii.gz")]) == 0
    assert np.array_equal(read_volume(tmp_path / "conv.nii.gz").array, one[:, :, None])
    run = translate_cli(checkpoints["pix2pix"], tmp_path / "in", tmp_path / "out", "--precision", "fp32")
    assert run.returncode == 0, run.stdout + run.stderr
    for name, source in (("pt_sct.nii.gz", tmp_path / "in" / "pt_mr.nii.gz"), ("dcm_sct.nii.gz", dicom.parent)):
        out, given = read_volume(tmp_path / "out" / name), read_volume(source)
        assert out.shape == (48, 48, 1) and np.allclose(out.affine, given.affine, atol=1e-3)
    # a lone DICOM slice keeps its thickness (the normal's direction is the slice's own: one slice does not say)
    assert np.allclose(read_volume(dicom.parent).spacing, mr.spacing, atol=1e-3)
    sagittal = mr.array[20:21]
    write_nifti(tmp_path / "sag" / "pt_mr.nii.gz", sagittal, mr.affine)
    run = translate_cli(checkpoints["pix2pix"], tmp_path / "sag", tmp_path / "out2")
    assert run.returncode == 1 and "sagittal or coronal slice" in run.stdout
