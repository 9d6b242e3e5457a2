"""Pipelines and the demo, end to end through the CLI on the bundled sample data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from medtranslate.core.config import ModelConfig
from medtranslate.core.errors import ConfigError
from medtranslate.demo import demo_workers, minutes_left
from medtranslate.evaluation.report import warnings_of, worse_than_baseline
from medtranslate.io.files import read_volume
from medtranslate.models.checkpoint import load_checkpoint
from medtranslate.pipeline import baseline_config, find_pipeline, load_pipeline, shipped_pipelines

from .conftest import REPO, SAMPLE, cli

QUICK = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=3", "--set", "model.ngf=8", "--set", "model.ndf=8"]


@pytest.mark.slow
def test_run_pipeline_makes_every_output_and_skips_finished_stages(tmp_path):
    out = tmp_path / "run"
    result = cli(
        "run",
        str(REPO / "pipelines" / "mr2ct_pix2pix.yaml"),
        "--out",
        str(out),
        "--no-progress",
        *QUICK,
        "--set",
        f"data.root={SAMPLE / 'mr2ct'}",
    )
    assert result.returncode == 0, result.stderr
    assert "intensity_map (baseline)" in result.stdout
    for path in (
        "config.yaml",
        "split.json",
        "train/checkpoints/best.pt",
        "baseline/checkpoints/best.pt",
        "eval/metrics.csv",
        "eval/summary.json",
        "report.html",
    ):
        assert (out / path).exists(), path
    split = json.loads((out / "split.json").read_text())
    assert split["test"] == ["sub-07", "sub-08"]
    for cid in split["test"]:
        sct, mr = (
            read_volume(out / "translated" / f"{cid}_sct.nii.gz"),
            read_volume(SAMPLE / "mr2ct" / cid / "mr.nii.gz"),
        )
        assert sct.shape == mr.shape and np.allclose(sct.affine, mr.affine, atol=1e-4)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["baseline"]["kind"] == "intensity_map" and "mae" in summary["baseline"]["metrics"]
    page = (out / "report.html").read_text()
    assert "Model and baseline" in page and "intensity_map (baseline)" in page
    # where the numbers came from (another CPU, precision or thread count rounds otherwise): the table, summary, report
    (trained_on,) = load_checkpoint(out / "train" / "checkpoints" / "best.pt")["trained_on"]
    assert summary["trained_on"] == trained_on and f"\n  trained in {trained_on}\n" in result.stdout
    assert f"<p>Model trained in {trained_on}.</p>" in page
    assert load_checkpoint(out / "baseline" / "checkpoints" / "best.pt")["trained_on"] == []  # a fit, no network
    # a second run finds every stage complete and retrains nothing
    stamp = (out / "train" / "checkpoints" / "best.pt").stat().st_mtime_ns
    again = cli(
        "run",
        str(REPO / "pipelines" / "mr2ct_pix2pix.yaml"),
        "--out",
        str(out),
        "--no-progress",
        *QUICK,
        "--set",
        f"data.root={SAMPLE / 'mr2ct'}",
    )
    assert again.returncode == 0, again.stderr
    assert "stage train pix2pix: complete, skipped" in again.stderr
    assert (out / "train" / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp


def test_pipeline_section_is_validated(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("data: {root: x}\nmodel: {kind: pix2pix}\npipeline: {baseline: magic}\n")
    with pytest.raises(ConfigError, match="pipeline.baseline 'magic'"):
        load_pipeline(bad)
    cfg, section = load_pipeline(REPO / "pipelines" / "ldct_pix2pix.yaml")
    assert cfg.model.task == "ldct" and section["baseline"] == "classical"


def test_every_shipped_pipeline_and_the_demo_fix_their_length_in_epochs_not_time():
    """A time budget made a slower or busier machine train fewer steps and silently get a worse model."""
    import yaml

    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        if path.name == "demo.yaml":
            demo = yaml.safe_load(path.read_text())
            for sets in [e.get("set", {}) for e in demo["pipelines"]] + [demo["quick"]["set"]]:
                assert "train.epochs" in sets and "train.max_minutes" not in sets, (path.name, sets)
            continue
        cfg, _ = load_pipeline(path)
        assert cfg.train.max_minutes is None and "epochs:" in path.read_text(), path.name


def test_minutes_left_scales_the_reference_times_by_the_pace_of_the_stages_run():
    # one at a time, the stages' times add up; two at a time, each next stage starts on the worker free first
    assert minutes_left([3, 4, 2], {}, {}, 1) == "about 9 min left on the reference CPU (2 cores)"
    assert minutes_left([3, 4, 2], {}, {}, 2) == "about 5 min left on the reference CPU (2 cores)"
    assert minutes_left([3, 4, 2], {}, {}, 3) == "about 4 min left on the reference CPU (2 cores)"
    # the first stage took twice its reference time: the second, running for a minute, needs 8 - 1 more; the third 4
    assert minutes_left([3, 4, 2], {0: 6.0}, {1: 1.0}, 2).startswith("about 7.0 min left at this machine's pace (2.00x")
    assert minutes_left([3, 4, 2], {0: 6.0}, {1: 1.0}, 1).startswith("about 11.0 min left")
    # a stage found complete and skipped took no time and says nothing of the pace
    assert minutes_left([3, 4, 2], {0: 0.01}, {}, 1) == "about 6 min left on the reference CPU (2 cores)"
    assert minutes_left([3, 4, 2], {0: 0.01, 1: 8.0}, {}, 1).startswith("about 4.0 min left at this machine's pace")
    assert minutes_left([3, 4, 2], {0: 3, 1: 4, 2: 2}, {}, 2).startswith("about 0.0 min left")


def test_the_demo_runs_as_many_stages_at_once_as_the_process_may_use_cores_for_their_threads():
    import os

    cores = os.sched_getaffinity(0)
    assert demo_workers(3, 1) == min(3, len(cores))
    assert demo_workers(3, 2) == max(1, min(3, len(cores) // 2))
    # bound to one core (as a 1-core container is): one stage at a time, however many threads it has
    os.sched_setaffinity(0, {min(cores)})
    try:
        assert demo_workers(3, 1) == demo_workers(3, 2) == 1
    finally:
        os.sched_setaffinity(0, cores)


def test_every_shipped_pipeline_has_a_valid_baseline_config():
    # the baseline shares the experiment's data and task, never its model settings (GAN-only ones would make it invalid)
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        if path.name == "demo.yaml":
            continue
        cyclegan = ["model.lambda_body=1", "model.lambda_structure=1", "model.structure_decay=true"]
        kind = load_pipeline(path)[0].model.kind
        sets = {"cyclegan": cyclegan, "pix2pix": ["model.l1_warmup_epochs=3"]}.get(kind, [])
        cfg, section = load_pipeline(path, sets)
        if section["baseline"] not in ("none", None):
            bcfg = baseline_config(cfg, section["baseline"])
            # the baseline kind's own defaults: no setting of the experiment's model reaches it
            assert bcfg.model == ModelConfig(kind=section["baseline"], task=cfg.model.task)
            assert bcfg.data == cfg.data and bcfg.train.epochs == 1


@pytest.mark.slow
def test_quick_demo_writes_reports_with_baselines(tmp_path, monkeypatch):
    import os
    import re

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a user's setting: each of the demo's stages trains on 1 thread anyway
    t0 = time.perf_counter()
    result = cli("demo", "--quick", "--out", str(tmp_path / "demo"))
    seconds = time.perf_counter() - t0
    assert result.returncode == 0, result.stderr
    runs = (("mr2ct_pix2pix", "intensity_map"), ("mr2ct_cyclegan", "intensity_map"), ("ldct_pix2pix", "classical"))
    assert "report:" in result.stdout and all(name in result.stdout for name, _ in runs)
    # every stage is a process of its own, its lines marked with its name; as many run at once as there are cores
    workers = min(3, len(os.sched_getaffinity(0)))
    assert f"demo: 3 pipelines, {workers} at a time, each on 1 thread" in result.stderr
    log = result.stderr.splitlines()
    for name, _ in runs:
        assert any(line.startswith(f"[{name}] INFO medtranslate.training.train: epoch 2/2") for line in log), name
    started = [i for i, line in enumerate(log) if re.search(r"demo \d/3: \w+ started \(process \d+\)", line)]
    first_done = next(i for i, line in enumerate(log) if re.search(r"demo \d/3: \w+ done in", line))
    assert len(started) == 3 and sum(i < first_done for i in started) == workers
    # the time left of the whole demo: the reference CPU's at the start, this machine's pace once a stage has ended
    assert "each on 1 thread" in log[0] and "min left on the reference CPU" in log[0]
    assert "at this machine's pace" in log[first_done]
    for name, baseline in runs:
        run = tmp_path / "demo" / name
        assert (run / "report.html").exists() and (run / "eval" / "metrics.csv").exists()
        summary = json.loads((run / "eval" / "summary.json").read_text())
        assert summary["baseline"]["kind"] == baseline
        assert summary["trained_on"].endswith(", 1 thread"), (name, summary["trained_on"])
        suffix = "sct" if name.startswith("mr2ct") else "denoised"
        assert sorted(p.name for p in (run / "translated").glob(f"*_{suffix}.nii.gz")) == [
            f"sub-07_{suffix}.nii.gz",
            f"sub-08_{suffix}.nii.gz",
        ]
    # the demo's 5-epoch CycleGAN trains without the histogram term its pipeline file sets (demo.yaml turns it off)
    cyclegan_columns = (tmp_path / "demo" / "mr2ct_cyclegan" / "train" / "history.csv").read_text().splitlines()[0]
    assert "loss_g_struct" in cyclegan_columns and "loss_g_hist" not in cyclegan_columns
    assert load_pipeline(shipped_pipelines()["mr2ct_cyclegan.yaml"])[0].model.lambda_histogram > 0
    print(f"quick demo took {seconds:.0f} s")


@pytest.mark.slow
def test_a_demo_pipeline_that_fails_is_reported_and_the_others_finish(tmp_path):
    # --out/mr2ct_cyclegan is a user's file: that pipeline refuses it, unchanged; the other two run to their reports
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mr2ct_cyclegan").write_text("a user's notes\n")
    result = cli("demo", "--quick", "--out", str(tmp_path / "demo"))
    assert result.returncode == 2, result.stderr
    assert "[mr2ct_cyclegan] medtranslate run: error:" in result.stderr and "is a file" in result.stderr
    assert "demo 2/3: mr2ct_cyclegan FAILED (exit 2" in result.stderr
    assert "mr2ct_cyclegan: FAILED (exit 2): its error is in the log lines marked [mr2ct_cyclegan]" in result.stdout
    assert (tmp_path / "demo" / "mr2ct_cyclegan").read_text() == "a user's notes\n"
    for name in ("mr2ct_pix2pix", "ldct_pix2pix"):
        assert f"report: {tmp_path / 'demo' / name / 'report.html'}" in result.stdout
        assert (tmp_path / "demo" / name / "report.html").exists()


@pytest.mark.slow
def test_a_demo_whose_console_has_gone_still_finishes(tmp_path):
    """``medtranslate demo 2>&1 | head``: once the reader has gone every write to stderr fails; passing a stage's lines
    on must not stop reading them (the stage would block on its full pipe) nor lose its end (the demo waits for it)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.Popen(
        [sys.executable, "-m", "medtranslate", "demo", "--quick", "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=write_end,
        text=True,
    )
    os.close(write_end)
    out, _ = proc.communicate(timeout=600)  # a cap for a hang, not a time the test expects
    assert proc.returncode == 0 and out.count("report:") == 3, out


@pytest.mark.slow
def test_a_stopped_demo_stops_its_running_pipelines_and_leaves_none_behind(tmp_path):
    """SIGTERM to the demo alone (a scheduler, ``kill``): it passes the stop on to the pipelines it runs, waits for
    them to end (a training saves its last.pt first) and exits 130; no process of it trains on."""
    import os
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "medtranslate", "demo", "--quick", "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    logged, pids = [], []
    for line in proc.stderr:  # wait for the event: the CycleGAN's training has started
        logged.append(line)
        pids += [int(p) for p in re.findall(r"started \(process (\d+)\)", line)]
        if line.startswith("[mr2ct_cyclegan]") and "stage train cyclegan: running" in line:
            proc.send_signal(signal.SIGTERM)
            break
    logged += proc.stderr.readlines()
    assert proc.wait(timeout=600) == 130, "".join(logged)
    assert "demo: stopping the running pipelines" in "".join(logged)
    assert pids and "medtranslate demo: interrupted" in "".join(logged)
    for pid in pids:  # the demo waited for each: none is left running (or unreaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _tiny_pipeline(root, task: str, **sections) -> dict:
    """A pipeline file's contents for a tiny pix2pix on ``root``, with extra top-level ``sections``."""
    return {
        "data": {"root": str(root), "patch_size": 32},
        "model": {"kind": "pix2pix", "task": task, "ngf": 4, "ndf": 4, "num_downs": 3},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "channels_last": False},
        **sections,
    }


@pytest.mark.slow
def test_pipeline_simulates_low_dose_pairs_in_prepare(tmp_path, tiny_data):
    import yaml

    from medtranslate.imaging.transforms import axial_slab
    from medtranslate.io.files import write_nifti
    from medtranslate.pipeline import run_pipeline

    # the tiny CTs' middle 8 slices: one batch of the simulator each (its cost is the scanner's sinogram, per batch)
    root = tmp_path / "cases"
    for case in ("s0", "s1", "s2", "s3"):
        ct = axial_slab(read_volume(tiny_data / case / "ct.nii.gz"), 4, 12)
        write_nifti(root / case / "ct.nii.gz", ct.array, ct.affine)
    (root / "split.json").write_text((tiny_data / "split.json").read_text())
    spec = _tiny_pipeline(root, "ldct", pipeline={"simulate_dose": 0.25, "baseline": "none"})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run_pipeline(path, tmp_path / "run", progress=False)
    assert summary["n_done"] == 1 and summary["task"] == "ldct" and summary["baseline"] is None
    assert sorted(p.name for p in (tmp_path / "run" / "data").glob("s3_*.nii.gz")) == ["s3_ld.nii.gz", "s3_nd.nii.gz"]
    assert json.loads((tmp_path / "run" / "split.json").read_text())["test"] == ["s3"]  # the data set's own split
    assert (tmp_path / "run" / "translated" / "s3_denoised.nii.gz").exists()
    spec["model"]["task"] = "mr2ct"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="simulate_dose .* needs model.task: ldct"):
        load_pipeline(path)


@pytest.mark.slow
def test_pipeline_preprocesses_the_cases_in_prepare(tmp_path, tiny_data):
    import yaml

    from medtranslate.pipeline import run_pipeline

    spec = _tiny_pipeline(
        tiny_data,
        "mr2ct",
        pipeline={"baseline": "none"},
        prepare={"register": "rigid", "mask": True, "spacing": [5, 5, 10]},
    )
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run_pipeline(path, tmp_path / "run", progress=False)
    assert summary["n_done"] == 1
    prepared = tmp_path / "run" / "prepared"
    for case in ("s0", "s1", "s2", "s3"):
        assert json.loads((prepared / case / "preprocess.json").read_text())["options"]["register"] == "rigid"
        assert read_volume(prepared / case / "ct.nii.gz").spacing == pytest.approx((5.0, 5.0, 10.0))
    # trained and tested on the prepared cases, with the data set's own split
    assert json.loads((tmp_path / "run" / "split.json").read_text())["test"] == ["s3"]
    sct = read_volume(tmp_path / "run" / "translated" / "s3_sct.nii.gz")
    assert sct.shape == read_volume(prepared / "s3" / "mr.nii.gz").shape
    spec["prepare"] = {"register": "elastic"}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="prepare: unknown --register 'elastic'"):
        load_pipeline(path)
    spec["prepare"] = {"n5": True}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="unknown key prepare.'n5'"):
        load_pipeline(path)


@pytest.mark.slow
def test_a_run_folder_refuses_other_settings_unless_overwrite(tmp_path, tiny_data):
    import yaml

    from medtranslate.models.checkpoint import load_checkpoint

    spec = {
        "data": {"root": str(tiny_data), "patch_size": 32},
        "model": {"kind": "pix2pix", "ngf": 4, "ndf": 4, "num_downs": 3},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "channels_last": False},
        "pipeline": {"baseline": "none"},
    }
    path, out = tmp_path / "p.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(spec))
    assert cli("run", str(path), "--out", str(out), "--no-progress").returncode == 0
    saved = (out / "config.yaml").read_text()
    changed = cli(
        "run",
        str(path),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "model.ngf=8",
        "--set",
        "pipeline.baseline=intensity_map",
    )
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert (
        "holds a run made with other settings (model.ngf: 4 -> 8; pipeline.baseline: 'none' -> 'intensity_map')"
        in changed.stderr
    )
    assert "--overwrite" in changed.stderr and (out / "config.yaml").read_text() == saved  # nothing rewritten
    redone = cli("run", str(path), "--out", str(out), "--no-progress", "--set", "model.ngf=8", "--overwrite")
    assert redone.returncode == 0, redone.stderr
    assert load_checkpoint(out / "train" / "checkpoints" / "best.pt")["config"]["model"]["ngf"] == 8
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["ngf"] == 8


def test_a_run_the_time_cap_stopped_says_it_is_under_trained_in_the_table_summary_and_report(tmp_path, tiny_data):
    import yaml

    spec = _tiny_pipeline(tiny_data, "mr2ct", pipeline={"baseline": "intensity_map"})
    spec["train"].update(epochs=3, max_minutes=1e-6)  # any epoch takes longer than 60 us: stopped after the first
    path, out = tmp_path / "p.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(spec))
    result = cli("run", str(path), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    note = "stopped by train.max_minutes (1e-06) after 1 of 3 epochs: under-trained"
    assert f"WARNING: pix2pix: {note}" in result.stdout and note in result.stderr  # the table, and the log
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["training"] == note and summary["baseline"]["training"] == ""  # the baseline's one epoch ran
    assert f"Warning:</b> pix2pix: {note}" in (out / "report.html").read_text()
    # the table marks exactly the metrics on which the summary says the model is worse than its baseline
    marked = [line.split()[0] for line in result.stdout.splitlines() if line.endswith("worse than the baseline")]
    assert marked == worse_than_baseline(summary)
    assert ("is worse than its baseline (intensity_map)" in result.stdout) == bool(marked)


def test_worse_than_the_baseline_follows_each_metrics_direction():
    def summary(model: dict, base: dict) -> dict:
        as_means = lambda d: {k: {"mean": v} for k, v in d.items()}  # noqa: E731
        return {"model": "pix2pix", "metrics": as_means(model), "baseline": {"kind": "map", "metrics": as_means(base)}}

    assert worse_than_baseline(summary({"mae": 90.0, "psnr": 25.0}, {"mae": 100.0, "psnr": 24.0})) == []
    assert worse_than_baseline(summary({"mae": 110.0, "psnr": 23.0}, {"mae": 100.0, "psnr": 24.0})) == ["mae", "psnr"]
    assert worse_than_baseline(summary({"ssim": 0.7, "artefact_index": 9.0}, {"ssim": 0.8, "artefact_index": 1.0})) == [
        "ssim"
    ]  # only metrics with a known better direction are judged
    assert warnings_of(summary({"mae": 110.0}, {"mae": 100.0})) == ["pix2pix is worse than its baseline (map) on mae"]


def test_overwrite_never_removes_what_the_pipeline_did_not_write(tmp_path, tiny_data):
    import shutil

    import yaml

    from medtranslate.pipeline import run_pipeline

    # a folder whose config.yaml is the user's own file is not a run folder, --overwrite or not
    mine = tmp_path / "project"
    (mine / "eval").mkdir(parents=True)
    (mine / "eval" / "notes.txt").write_text("my notes")
    (mine / "config.yaml").write_text("scanner: {kv: 120}\n")
    spec = {"data": {"root": str(tiny_data)}, "model": {"kind": "intensity_map"}, "pipeline": {"baseline": "none"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="was not written by 'medtranslate run'"):
        run_pipeline(path, mine, progress=False, overwrite=True)
    assert (mine / "eval" / "notes.txt").read_text() == "my notes" and (mine / "config.yaml").read_text().startswith(
        "scanner"
    )
    # a run folder that holds the run's own data in data/: the earlier run did not make data/ (no simulate_dose), so
    # --overwrite discards the run's results and keeps it
    out = tmp_path / "run"
    shutil.copytree(tiny_data, out / "data")
    spec["data"]["root"] = str(out / "data")
    path.write_text(yaml.safe_dump(spec))
    cfg, section = load_pipeline(path)
    (out / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "pipeline": {"baseline": "intensity_map"}}))
    (out / "eval").mkdir()
    (out / "eval" / "summary.json").write_text("{}")
    run_pipeline(path, out, progress=False, overwrite=True)
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(p.name for p in tiny_data.iterdir())
    assert json.loads((out / "eval" / "summary.json").read_text())["n_done"] > 0  # the run's own results, made anew
    assert "precision_used" not in yaml.safe_load((out / "config.yaml").read_text())["train"]  # was recorded as null
    assert yaml.safe_load((out / "train" / "config.yaml").read_text())["train"]["precision_used"] == "fp32"
    # one whose earlier run simulated data/ but whose data.root is inside it: refused, naming it
    (out / "config.yaml").write_text(
        yaml.safe_dump({**cfg.to_dict(), "pipeline": {"baseline": "intensity_map", "simulate_dose": 0.25}})
    )
    with pytest.raises(ConfigError, match=r"its data/ holds .*data, an input of that run or this one") as err:
        run_pipeline(path, out, progress=False, overwrite=True)
    assert "pass --overwrite" not in str(err.value)
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(p.name for p in tiny_data.iterdir())


@pytest.mark.slow
def test_cyclegan_pipeline_on_disjoint_cohorts_trains_translates_and_scores_the_paired_test_case(
    tmp_path, cohort_data, ldct_cohort_data
):
    import shutil

    import yaml

    from medtranslate.pipeline import run_pipeline

    # low-dose: low-dose scans of s0, s1 and normal-dose ones of n0, n1; the baseline tuned without pairs too
    spec = _tiny_pipeline(ldct_cohort_data, "ldct", pipeline={"baseline": "classical"})
    spec["model"] = {"kind": "cyclegan", "task": "ldct", "inverse": "noise", "generator": "unet", "ngf": 4, "ndf": 4}
    path = tmp_path / "ldct.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run_pipeline(path, tmp_path / "ldct", progress=False)
    assert summary["n_done"] == 1 and summary["baseline"]["kind"] == "classical" and "psnr" in summary["metrics"]
    assert (tmp_path / "ldct" / "report.html").exists() and (
        tmp_path / "ldct" / "translated" / "s3_denoised.nii.gz"
    ).exists()
    best = load_checkpoint(tmp_path / "ldct" / "train" / "checkpoints" / "best.pt")
    assert best["split"]["train"] == ["s0", "s1", "n0", "n1"]  # the split file's
    # MR -> CT
    spec = _tiny_pipeline(cohort_data, "mr2ct", pipeline={"baseline": "intensity_map"})
    spec["model"] = {"kind": "cyclegan", "task": "mr2ct", "ngf": 4, "ndf": 4, "n_blocks": 1, "calibration": "quantile"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run_pipeline(path, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert summary["n_done"] == 1 and summary["baseline"]["kind"] == "intensity_map" and (run / "report.html").exists()
    sct, mr = read_volume(run / "translated" / "s3_sct.nii.gz"), read_volume(cohort_data / "s3" / "mr.nii.gz")
    assert sct.shape == mr.shape and np.allclose(sct.affine, mr.affine, atol=1e-4)
    # trained on the cohorts (the MRs of u0, u1, the CTs of u2, u3), validated on the pair s2
    best = load_checkpoint(run / "train" / "checkpoints" / "best.pt")
    assert best["split"]["train"] == ["u0", "u1", "u2", "u3"] and "val_mae" in best["history"][-1]
    # no pair anywhere: the random split validates and tests on an MR-only case, judged without pairs against the
    # training CT cohort, the baseline beside it
    root = tmp_path / "no-pairs"
    for role in ("mr", "ct"):
        shutil.copytree(cohort_data / role, root / role)
    spec["data"]["root"] = str(root)
    path.write_text(yaml.safe_dump(spec))
    summary = run_pipeline(path, tmp_path / "run2", progress=False)
    assert summary["evaluation"] == "without pairs" and summary["n_done"] == 1
    assert {"w1", "outline_dice", "artefact_index"} == set(summary["metrics"]) == set(summary["baseline"]["metrics"])
    assert [Path(p).name for p in summary["reference_cohort"]] == ["u2.nii.gz", "u3.nii.gz"]
    assert "judged without pairs" in (tmp_path / "run2" / "report.html").read_text()


@pytest.mark.slow
def test_a_pipeline_without_test_cases_tests_on_the_validation_cases(tmp_path, tiny_data):
    import shutil

    import yaml

    from medtranslate.pipeline import run_pipeline

    root = tmp_path / "cases"
    for case in ("s0", "s1", "s2"):  # no split.json: a random split, which has no test part
        shutil.copytree(tiny_data / case, root / case)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_tiny_pipeline(root, "mr2ct", pipeline={"baseline": "none"})))
    summary = run_pipeline(path, tmp_path / "run", progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test"] == [] and len(split["val"]) == 1  # the file keeps its parts disjoint
    assert summary["n_done"] == 1 and (tmp_path / "run" / "translated" / f"{split['val'][0]}_sct.nii.gz").exists()


def test_a_shipped_pipeline_is_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pipelines/ folder here
    for name in ("mr2ct_pix2pix", "mr2ct_pix2pix.yaml"):
        found = find_pipeline(name)
        assert found.read_text() == (REPO / "pipelines" / "mr2ct_pix2pix.yaml").read_text()
    assert set(shipped_pipelines()) == {p.name for p in (REPO / "pipelines").glob("*.yaml")}
    (tmp_path / "mr2ct_pix2pix.yaml").write_text("model: {kind: pix2pix}\n")  # a file of the user's wins
    assert find_pipeline("mr2ct_pix2pix.yaml") == Path("mr2ct_pix2pix.yaml")
    with pytest.raises(ConfigError, match="no such file.*shipped one: .*mr2ct_cyclegan"):
        find_pipeline("mr2ct_pix2px")
    with pytest.raises(ConfigError, match="elsewhere/mr2ct_pix2pix.yaml: no such file"):
        find_pipeline("elsewhere/mr2ct_pix2pix.yaml")  # a path is a path, never a name


@pytest.mark.slow
def test_the_wheel_carries_the_shipped_pipelines(tmp_path):
    import subprocess
    import sys
    import zipfile

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("medtranslate-*.whl"))).namelist()
    assert {f"medtranslate/pipelines/{p.name}" for p in (REPO / "pipelines").glob("*.yaml")} <= set(names)
    assert "medtranslate/core/kinds.py" in names and not any(n.startswith(("tests/", "sample_data/")) for n in names)
