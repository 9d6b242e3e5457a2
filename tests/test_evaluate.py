"""Folder-vs-folder evaluation through the real CLI: tables, summary, report, and bad cases that do not stop a batch."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest

from medtranslate.evaluation.evaluate import evaluate_folder
from medtranslate.evaluation.metrics import synthrad_metrics
from medtranslate.io.files import read_volume, write_nifti

from .conftest import SAMPLE, cli, torchrun_cli

CASES = ["sub-07", "sub-08"]


def fake_predictions(folder, cases=CASES, seed=0):
    """Noisy, biased copies of the reference CTs, named as translate names them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for cid in cases:
        ref = read_volume(SAMPLE / "mr2ct" / cid / "ct.nii.gz")
        pred = ref.array + rng.normal(0, 40, ref.shape) + 15
        write_nifti(folder / f"{cid}_sct.nii.gz", pred, ref.affine, np.int16)


def refs(tmp_path, cases=CASES):
    """A reference folder with only some subjects of the sample data (role folders per subject)."""
    for cid in cases:
        shutil.copytree(SAMPLE / "mr2ct" / cid, tmp_path / "refs" / cid)
    return tmp_path / "refs"


@pytest.mark.slow
def test_evaluate_cli_writes_table_summary_and_self_contained_report(tmp_path):
    fake_predictions(tmp_path / "pred")
    ref = refs(tmp_path)
    out = tmp_path / "eval"
    result = cli(
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(ref),
        "--input",
        str(ref),
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "sub-07" in result.stdout and "mean" in result.stdout and "report.html" in result.stdout

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == CASES
    assert list(rows[0])[:9] == [
        "case",
        "mae",
        "psnr",
        "ssim",
        "ms_ssim",
        "artefact_index",
        "slice_consistency",
        "bone_dice",
        "body_dice",
    ]
    # noisy copies of the references: no grid, bone where the reference has it, the body where the input has it
    assert all(
        float(r["artefact_index"]) < 1.5 and float(r["bone_dice"]) > 0.9 and float(r["body_dice"]) > 0.95 for r in rows
    )
    assert all(r["status"] == "done" and r["error"] == "" for r in rows)
    # the numbers are those of the metrics module, inside the saved (computed) mask
    pred = read_volume(tmp_path / "pred" / "sub-07_sct.nii.gz").array
    ct = read_volume(ref / "sub-07" / "ct.nii.gz").array
    mask = read_volume(out / "masks" / "sub-07_mask.nii.gz").array > 0
    expected = synthrad_metrics(pred, ct, mask)
    for key in ("mae", "psnr", "ssim", "ms_ssim"):
        assert float(rows[0][key]) == pytest.approx(expected[key], rel=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["n_done"] == 2 and summary["edition"] == 2023
    assert "computed from the reference CT" in summary["mask_source"]
    maes = [float(r["mae"]) for r in rows]
    assert summary["metrics"]["mae"]["mean"] == pytest.approx(np.mean(maes), rel=1e-5)
    assert set(summary["metrics"]["mae"]) == {"mean", "std", "median", "min", "max", "n"}

    page = (out / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # two cases + the metric plot
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "SynthRAD 2023" in page


@pytest.mark.slow
def test_bad_cases_are_recorded_and_the_rest_scored(tmp_path):
    cases = ["sub-04", "sub-05", "sub-06", "sub-07", "sub-08"]
    fake_predictions(tmp_path / "pred", cases=["sub-04", "sub-05", "sub-06", "sub-07"])  # sub-08: no prediction
    ref = refs(tmp_path, cases)
    # sub-05: prediction on another grid (two slices cropped away, same world positions)
    p5 = read_volume(tmp_path / "pred" / "sub-05_sct.nii.gz")
    shift = np.eye(4)
    shift[2, 3] = 2
    write_nifti(
        tmp_path / "pred" / "sub-05_sct.nii.gz", p5.array[:, :, 2:], p5.affine @ shift, np.int16, overwrite=True
    )
    # sub-06: NaN voxels in the prediction
    p6 = read_volume(tmp_path / "pred" / "sub-06_sct.nii.gz").array.astype(np.float32)
    p6[60, 60, 30] = np.nan
    write_nifti(tmp_path / "pred" / "sub-06_sct.nii.gz", p6, p5.affine, np.float32, overwrite=True)
    # sub-07: an empty mask given explicitly
    masks = tmp_path / "masks"
    for cid in cases:
        m = read_volume(ref / cid / "mask.nii.gz")
        write_nifti(masks / f"{cid}.nii.gz", m.array * (cid != "sub-07"), m.affine, np.uint8)

    out = tmp_path / "eval"
    result = cli(
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(ref),
        "--mask",
        str(masks),
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 1, result.stderr
    rows = {r["case"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert rows["sub-05"]["status"] == "failed" and "shape differs" in rows["sub-05"]["error"]
    assert rows["sub-06"]["status"] == "failed" and "NaN" in rows["sub-06"]["error"]
    assert rows["sub-07"]["status"] == "failed" and "mask is empty" in rows["sub-07"]["error"]
    assert rows["sub-08"]["status"] == "failed" and "no prediction" in rows["sub-08"]["error"]
    assert rows["sub-04"]["status"] == "done" and float(rows["sub-04"]["mae"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_failed"] == 4 and summary["n_done"] == 1 and summary["mask_source"] == "given (--mask)"
    assert "FAILED: case 'sub-05': shape differs" in result.stdout

    # with --resample-to-ref the cropped prediction is resampled onto the reference grid and scored
    result = evaluate_folder(
        tmp_path / "pred", ref, tmp_path / "eval2", mask=masks, resample_to_ref=True, figures=False, progress=False
    )
    by_case = {r["case"]: r for r in result.rows}
    assert by_case["sub-05"]["status"] == "done"
    assert by_case["sub-05"]["mae"] < by_case["sub-04"]["mae"] + 40  # aligned; only the two missing slices add error


def test_nothing_readable_exits_1_with_each_case_recorded_and_bad_input_exits_2(tmp_path):
    """Every case failing once exited 2 (which promises nothing was written) with report.html written."""
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "x_sct.nii.gz").write_bytes(b"not a nifti")
    result = cli(
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(SAMPLE / "mr2ct" / "sub-01"),
        "--out",
        str(tmp_path / "e"),
        "--no-progress",
    )
    assert result.returncode == 1 and "FAILED" in result.stdout
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["n_done"] == 0 and summary["n_failed"] == 2  # the unreadable prediction, the unmatched reference
    missing = cli("evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(SAMPLE), "--out", str(tmp_path / "e2"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_ldct_task_scores_prediction_and_input(tmp_path):
    ref = read_volume(SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz")
    rng = np.random.default_rng(2)
    write_nifti(tmp_path / "nd" / "c1.nii.gz", ref.array, ref.affine)
    write_nifti(tmp_path / "ld" / "c1.nii.gz", ref.array + rng.normal(0, 40, ref.shape), ref.affine, np.int16)
    write_nifti(
        tmp_path / "pred" / "c1_denoised.nii.gz", ref.array + rng.normal(0, 10, ref.shape), ref.affine, np.int16
    )
    result = evaluate_folder(
        tmp_path / "pred",
        tmp_path / "nd",
        tmp_path / "e",
        input=tmp_path / "ld",
        task="ldct",
        figures=False,
        progress=False,
    )
    row = result.rows[0]
    assert row["status"] == "done"
    assert row["psnr"] > row["input_psnr"] + 5 and row["ssim"] > row["input_ssim"] and row["rmse"] < row["input_rmse"]
    assert result.summary["window"] == "head" and result.summary["edition"] is None  # chosen from the anatomy
    assert row["window"] == "head" and "head window" in result.summary["definitions"]["ssim"]


def test_ldct_window_comes_from_the_anatomy_or_is_asked_for(tmp_path):
    from .test_qa import _body

    rng = np.random.default_rng(3)
    for cid, width, lungs in (("chest", 340, True), ("neck", 250, False)):
        hu, _, affine = _body(width, lungs, depth=12)
        write_nifti(tmp_path / "nd" / f"{cid}.nii.gz", hu, affine, np.int16)
        write_nifti(tmp_path / "pred" / f"{cid}_denoised.nii.gz", hu + rng.normal(0, 10, hu.shape), affine, np.int16)
    result = evaluate_folder(tmp_path / "pred", tmp_path / "nd", tmp_path / "e", task="ldct", progress=False)
    rows = {r["case"]: r for r in result.rows}
    assert rows["chest"]["status"] == "done" and rows["chest"]["window"] == "chest"
    assert rows["neck"]["status"] == "failed" and "pass --window head, abdomen or chest" in rows["neck"]["error"]
    assert result.summary["window"] == "chest"
    told = evaluate_folder(tmp_path / "pred", tmp_path / "nd", tmp_path / "e2", task="ldct", window="abdomen")
    assert all(r["status"] == "done" and r["window"] == "abdomen" for r in told.rows)
    page = (tmp_path / "e" / "report.html").read_text()
    assert "chest" in page


def test_a_volume_too_thin_for_ssim_fails_with_the_reason_never_done(tmp_path):
    ref = read_volume(SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz")
    thin = ref.array[:, :, 30:35]  # 5 slices: the 7x7x7 SSIM window does not fit
    write_nifti(tmp_path / "ref" / "t1_ct.nii.gz", thin, ref.affine)
    write_nifti(tmp_path / "pred" / "t1_sct.nii.gz", thin + 10, ref.affine, np.int16)
    result = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", figures=False, progress=False)
    assert result.rows[0]["status"] == "failed" and "too few slices to score" in result.rows[0]["error"]
    assert result.summary["n_done"] == 0


def test_two_files_given_explicitly_are_paired_whatever_their_names(tmp_path):
    fake_predictions(tmp_path / "pred", ["sub-07"])
    pred = tmp_path / "pred" / "sub-07_sct.nii.gz"
    renamed = tmp_path / "synthetic_final_v2.nii.gz"
    shutil.copy(pred, renamed)
    result = cli(
        "evaluate",
        "--pred",
        str(renamed),
        "--ref",
        str(SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz"),
        "--mask",
        str(SAMPLE / "mr2ct" / "sub-07" / "mask.nii.gz"),
        "--out",
        str(tmp_path / "e"),
        "--no-progress",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader((tmp_path / "e" / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["status"] == "done" and float(rows[0]["mae"]) > 0


def test_grid_mismatch_names_both_files_and_the_option_that_resamples(tmp_path):
    ref = read_volume(SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz")
    moved = ref.affine.copy()
    moved[:3, 3] += 3.0
    write_nifti(tmp_path / "pred" / "sub-07_sct.nii.gz", ref.array, moved, np.int16)
    result = evaluate_folder(
        tmp_path / "pred", refs(tmp_path, ["sub-07"]), tmp_path / "e", figures=False, progress=False
    )
    error = result.rows[0]["error"]
    assert "pred/sub-07_sct.nii.gz" in error and "refs/sub-07/ct.nii.gz" in error and "--resample-to-ref" in error


def test_out_that_is_a_file_is_a_one_line_error(tmp_path):
    fake_predictions(tmp_path / "pred", ["sub-07"])
    (tmp_path / "taken").write_text("my notes")
    result = cli(
        "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(SAMPLE / "mr2ct"), "--out", str(tmp_path / "taken")
    )
    assert (
        result.returncode == 2
        and "is a file; choose a folder for --out" in result.stderr
        and "Traceback" not in result.stderr
    )
    assert (tmp_path / "taken").read_text() == "my notes"


@pytest.mark.slow
def test_torchrun_ranks_split_the_cases_and_rank_0_writes_what_one_process_writes(tmp_path):
    fake_predictions(tmp_path / "pred")
    ref = refs(tmp_path)
    (tmp_path / "pred" / "sub-99_sct.nii.gz").write_bytes(b"not a volume")  # a failed case is gathered too
    args = ("evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(ref), "--input", str(ref), "--no-progress")
    one = cli(*args, "--out", str(tmp_path / "one"))
    two = torchrun_cli(*args, "--out", str(tmp_path / "two"))
    assert one.returncode == two.returncode == 1, two.stderr[-2000:]
    assert two.stdout.count("report.html") == 1  # rank 0 speaks for all

    def table(run: str) -> list[dict]:
        rows = csv.DictReader((tmp_path / run / "metrics.csv").open())
        return [{k: v.replace(str(tmp_path / run), "OUT") for k, v in r.items() if k != "seconds"} for r in rows]

    assert [r["case"] for r in table("two")] == [*CASES, "sub-99"]
    assert table("two") == table("one")
    assert all((tmp_path / "two" / "masks" / f"{cid}_mask.nii.gz").is_file() for cid in CASES)  # from both ranks
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two")]
    assert summaries[1]["metrics"] == summaries[0]["metrics"] and summaries[1]["n_failed"] == 1
    page = (tmp_path / "two" / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # both ranks' case figures + the metric plot


def test_a_cohort_report_links_its_case_figures_and_summarises_in_histograms(tmp_path, monkeypatch):
    """2000 cases made a 75 MB report (every figure embedded) and a metrics figure with 2000 tick labels, whose
    drawing grew faster than the cohort. Beyond report.EMBEDDED_CASES the report links to the figure files, beyond
    LABELLED_CASES the metrics figure is a histogram (both limits lowered here, so four cases are a cohort)."""
    import re

    from medtranslate.evaluation import report

    cases = ["sub-01", "sub-02", "sub-03", "sub-04"]
    fake_predictions(tmp_path / "pred", cases)
    ref = refs(tmp_path, cases)
    small = evaluate_folder(tmp_path / "pred", ref, tmp_path / "small", progress=False)
    embedded = (tmp_path / "small" / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', embedded)) == len(cases) + 1  # cases and metrics
    monkeypatch.setattr(report, "EMBEDDED_CASES", 2)
    monkeypatch.setattr(report, "LABELLED_CASES", 2)
    big = evaluate_folder(tmp_path / "pred", ref, tmp_path / "big", progress=False)
    page = (tmp_path / "big" / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 1  # the metrics figure alone
    links = re.findall(r'<a href="(figures/[^"]+\.png)">', page)
    assert len(links) == len(cases) and all((tmp_path / "big" / link).is_file() for link in links)
    assert len(page) < len(embedded) / 3
    assert big.summary["metrics"]["mae"]["mean"] == pytest.approx(small.summary["metrics"]["mae"]["mean"])


def test_without_pairs_outputs_are_judged_against_a_cohort_and_their_inputs(tmp_path, cohort_data, capsys):
    # a CT cohort of other subjects (u2, u3), MRs of s2 and s3, and three kinds of "translation" of each MR:
    # its own CT (what a perfect model would make), tissue painted outside the head, and one flat value
    from scipy import ndimage

    from medtranslate.cli import main
    from medtranslate.imaging.transforms import body_mask

    preds, inputs = tmp_path / "pred", tmp_path / "inputs"
    for cid in ("s2", "s3"):
        mr, ct = read_volume(cohort_data / cid / "mr.nii.gz"), read_volume(cohort_data / cid / "ct.nii.gz")
        write_nifti(inputs / f"{cid}_mr.nii.gz", mr.array, mr.affine)
        body = body_mask(ct.array, "ct", ct.affine)
        painted = np.where(ndimage.binary_dilation(body, iterations=3) & ~body, 40, ct.array)
        flat = np.where(body, 300, -1000)
        for kind, array in (("good", ct.array), ("painted", painted), ("flat", flat)):
            write_nifti(preds / kind / f"{cid}_sct.nii.gz", array.astype(np.int16), ct.affine)
    scores = {}
    for kind in ("good", "painted", "flat"):
        args = ["--pred", str(preds / kind), "--input", str(inputs), "--cohort", str(cohort_data / "ct")]
        assert main(["evaluate", *args, "--out", str(tmp_path / kind), "--no-progress"]) == 0
        summary = json.loads((tmp_path / kind / "summary.json").read_text())
        assert summary["evaluation"] == "without pairs" and summary["n_done"] == 2
        assert len(summary["reference_cohort"]) == 2
        scores[kind] = {k: v["mean"] for k, v in summary["metrics"].items()}
    # (measured: outline Dice 0.99 / 0.77, w1 32 / 321 HU)
    assert scores["good"]["outline_dice"] > 0.98 and scores["painted"]["outline_dice"] < 0.9
    assert scores["good"]["w1"] < 0.2 * scores["flat"]["w1"]
    page = (tmp_path / "good" / "report.html").read_text()
    assert "judged without pairs" in page and page.count("<img") >= 3  # two cases and the metrics figure
    header = (tmp_path / "good" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["case", "w1", "outline_dice", "artefact_index"] and "input" in header
    # --cohort and --ref together, or --cohort without --input: one-line errors
    both = ["--pred", str(preds / "good"), "--ref", str(inputs), "--cohort", str(inputs), "--out", str(tmp_path / "x")]
    assert main(["evaluate", *both]) == 2 and "not both" in capsys.readouterr().err
    alone = ["--pred", str(preds / "good"), "--cohort", str(inputs), "--out", str(tmp_path / "x")]
    assert main(["evaluate", *alone]) == 2 and "give --input too" in capsys.readouterr().err


def test_without_pairs_a_defect_in_one_case_fails_that_case_only(tmp_path, cohort_data, monkeypatch):
    """A scoring defect (not bad input) on one case is that case's failed row; the batch scores the others, as the
    paired evaluation does."""
    from medtranslate.evaluation import evaluate, pairfree

    preds, inputs = tmp_path / "pred", tmp_path / "inputs"
    for cid in ("s2", "s3"):
        mr, ct = read_volume(cohort_data / cid / "mr.nii.gz"), read_volume(cohort_data / cid / "ct.nii.gz")
        write_nifti(inputs / f"{cid}_mr.nii.gz", mr.array, mr.affine)
        write_nifti(preds / f"{cid}_sct.nii.gz", ct.array, ct.affine)
    real, calls = pairfree.pair_free_scores, []

    def broken_on_the_second_case(*args, **kwargs):  # cases are scored in order: s2, then s3
        calls.append(1)
        if len(calls) == 2:
            raise ZeroDivisionError("division by zero")
        return real(*args, **kwargs)

    monkeypatch.setattr(pairfree, "pair_free_scores", broken_on_the_second_case)
    result = evaluate.evaluate_without_pairs(preds, inputs, cohort_data / "ct", tmp_path / "out", progress=False)
    rows = {row["case"]: row for row in result.rows}
    assert rows["s2"]["status"] == "done" and rows["s3"]["status"] == "failed"
    assert "unexpected ZeroDivisionError (division by zero)" in rows["s3"]["error"]
    assert result.summary["n_done"] == 1 and (tmp_path / "out" / "report.html").is_file()
