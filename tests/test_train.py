"""The training loop end to end on tiny data: checkpoints, exact resume, Ctrl-C, and one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from medtranslate.core.config import load_config
from medtranslate.core.errors import ConfigError, GeometryMismatchError, InputError
from medtranslate.evaluation.evaluate import evaluate_folder
from medtranslate.imaging.transforms import body_mask
from medtranslate.inference.translate import translate_folder, translate_volume
from medtranslate.io.files import read_volume, write_nifti
from medtranslate.models.calibration import apply_calibration, fit_quantile_map
from medtranslate.models.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint
from medtranslate.training.schedule import note_of
from medtranslate.training.train import Trainer

from .conftest import SAMPLE, cli, torch_threads, write_config


def weights(run_dir):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ckpt["model"]["nets"], ckpt


@pytest.mark.slow
@pytest.mark.parametrize("kind,context,ema", [("pix2pix", 1, 0.0), ("cyclegan", 0, 0.0), ("pix2pix", 0, 0.9)])
def test_resume_continues_exactly(tmp_path, tiny_data, kind, context, ema):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, kind, **{"data.context": context, "train.ema": ema}))
    Trainer(cfg, tmp_path / "straight", progress=False).fit()
    Trainer(cfg, tmp_path / "resumed", progress=False).fit(until_epoch=1)
    assert weights(tmp_path / "resumed")[1]["epoch"] == 1
    Trainer(cfg, tmp_path / "resumed", resume=True, progress=False).fit()
    (a, ckpt_a), (b, ckpt_b) = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert ckpt_a["step"] == ckpt_b["step"] == 6
    if ema:  # the weight average goes on exactly too, and it is what translates
        a, b = {**a, "average": ckpt_a["model"]["average"]["G"]}, {**b, "average": ckpt_b["model"]["average"]["G"]}
        assert ckpt_a["model"]["average"]["updates"] == 6
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert [r["loss_g"] for r in ckpt_a["history"]] == [r["loss_g"] for r in ckpt_b["history"]]


@pytest.mark.slow
def test_cyclegan_with_measured_noise_trains_one_generator_and_resumes_exactly(tmp_path, ldct_data):
    # model.inverse noise: the normal -> low-dose direction is noise measured on the training scans (noise.py)
    extra = {"model.task": "ldct", "model.inverse": "noise", "model.generator": "unet", "model.lambda_identity": 0.0}
    cfg = load_config(write_config(tmp_path / "c.yaml", ldct_data, "cyclegan", **extra))
    Trainer(cfg, tmp_path / "straight", progress=False).fit()
    Trainer(cfg, tmp_path / "resumed", progress=False).fit(until_epoch=1)
    Trainer(cfg, tmp_path / "resumed", resume=True, progress=False).fit()
    (a, ckpt_a), (b, ckpt_b) = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert set(a) == {"G", "D"}  # no inverse network, no second discriminator
    # the low-dose cases carry 30 HU of white noise the normal-dose ones lack; measured without pairing them
    sigmas = ckpt_a["model"]["noise"]["sigmas"]
    assert float(sigmas.median()) == pytest.approx(30.0, rel=0.15)
    assert torch.equal(sigmas, ckpt_b["model"]["noise"]["sigmas"])
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert ckpt_a["history"][-1]["loss_g_cycle"] > 0


def test_data_loader_workers_and_a_resume_with_another_count_change_nothing(tmp_path, tiny_data):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, "cyclegan"))  # unpaired: partners drawn too
    with_workers = load_config(write_config(tmp_path / "w.yaml", tiny_data, "cyclegan", **{"train.workers": 2}))
    Trainer(cfg, tmp_path / "main", progress=False).fit()
    Trainer(with_workers, tmp_path / "workers", progress=False).fit(until_epoch=1)
    Trainer(cfg, tmp_path / "workers", resume=True, progress=False).fit()  # resumed in the main process
    (a, ckpt_a), (b, ckpt_b) = weights(tmp_path / "main"), weights(tmp_path / "workers")
    assert ckpt_a["step"] == ckpt_b["step"] == 6
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert [r["loss_g"] for r in ckpt_a["history"]] == [r["loss_g"] for r in ckpt_b["history"]]


@pytest.mark.slow
def test_train_cli_on_sample_data_writes_run_folder(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", SAMPLE / "mr2ct", **{"data.patch_size": 64, "train.epochs": 2})
    # no --no-progress: stderr is a pipe here, as a log file or CI is, so it gets one line per epoch and no bar
    result = cli("train", str(cfg), "--out", str(tmp_path / "run"), "--set", "train.steps_per_epoch=2")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr
    epochs = [line for line in result.stderr.splitlines() if "medtranslate.training.train: epoch " in line]
    assert len(epochs) == 2 and epochs[0].endswith("min left") and "left" not in epochs[1], epochs
    run = tmp_path / "run"
    assert {"config.yaml", "split.json", "history.csv", "checkpoints", "tensorboard"} <= {p.name for p in run.iterdir()}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        saved["train"]["steps_per_epoch"] == 2
        and saved["model"]["generator"] == "unet"
        and saved["model"]["gan_loss"] == "vanilla"
    )
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,step,seconds,lr,loss_d") and "val_mae" in history[0] and len(history) == 3
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["kind"] == "pix2pix" and ckpt["spec"]["divisor"] == 8 and np.isfinite(ckpt["best_mae"])
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    again = cli("train", str(cfg), "--out", str(run), "--no-progress")
    assert again.returncode == 2 and "--resume" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_leaves_a_loadable_last_checkpoint_and_resume_finishes(tmp_path, tiny_data, sig):
    """Ctrl-C, or SIGTERM as a scheduler (SLURM) sends before it kills a job: the step finishes and last.pt is saved."""
    # 500 epochs: the signal, sent once the second epoch is logged, lands long before the run could end (about 30 s
    # here; a lost signal trains on to the end and exits 0)
    cfg = write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 500, "train.steps_per_epoch": 4})
    run = tmp_path / "run"
    # restore the default SIGINT action in the child: a parent started in the background (as CI may be) leaves
    # SIGINT ignored, and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen(
        [sys.executable, "-m", "medtranslate", "train", str(cfg), "--out", str(run), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    logged = []
    for line in proc.stderr:  # wait for the event (the second epoch's log line, last.pt saved before it), not a time
        logged.append(line)
        if "epoch 2/500" in line:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = "".join(logged) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 2 <= ckpt["epoch"] < 500
    # the same config resumes; another one is refused with the keys that differ
    other = cli(
        "train",
        str(cfg),
        "--out",
        str(run),
        "--resume",
        "--no-progress",
        "--set",
        "train.epochs=600",
        "--set",
        "model.ngf=8",
    )
    assert other.returncode == 2 and "model.ngf: 4 -> 8" in other.stderr and "train.epochs: 500 -> 600" in other.stderr
    target = ckpt["epoch"] + 2
    Trainer(load_config(cfg), run, resume=True, progress=False).fit(until_epoch=target)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == target


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for one test, as in a terminal: tests started in the background by a shell without
    job control inherit SIGINT ignored, and the trainer rightly leaves an ignored SIGINT alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pix2pix", "cyclegan"])
def test_ctrl_c_in_the_middle_of_a_step_resumes_exactly(tmp_path, tiny_data, kind, python_ctrl_c):
    """A real SIGINT arriving between the discriminator's and the generator's update (the worst moment): the step
    finishes, last.pt is saved mid-epoch, and resuming gives the weights and optimiser states of a run never stopped."""
    cfg = load_config(
        write_config(tmp_path / "c.yaml", tiny_data, kind, **{"train.epochs": 2, "train.steps_per_epoch": 5})
    )
    Trainer(cfg, tmp_path / "straight", progress=False).fit()
    stopped = Trainer(cfg, tmp_path / "stopped", progress=False)
    original, calls = stopped.model._step, []

    def step_with_ctrl_c(name, loss):
        calls.append(name)
        if len(calls) == 13:  # epoch 2, step 2 (or 3), between two optimiser updates of one train_step
            signal.raise_signal(signal.SIGINT)
        return original(name, loss)

    stopped.model._step = step_with_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["batch_in_epoch"] < 5, (saved["epoch"], saved["batch_in_epoch"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    Trainer(cfg, tmp_path / "stopped", resume=True, progress=False).fit()
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "stopped"))
    assert a["step"] == b["step"] == 10
    for group in ("nets", "optimizers"):
        flat_a, flat_b = _tensors(a["model"][group]), _tensors(b["model"][group])
        assert flat_a.keys() == flat_b.keys()
        differ = [k for k in flat_a if not torch.equal(flat_a[k], flat_b[k])]
        assert not differ, f"{len(differ)} of {len(flat_a)} tensors differ, e.g. {differ[:3]}"
    assert [r["loss_g"] for r in a["history"]] == [r["loss_g"] for r in b["history"]]


@pytest.mark.slow
def test_a_signal_that_lands_after_the_step_read_the_stop_flag_is_not_lost(
    tmp_path, tiny_data, python_ctrl_c, monkeypatch
):
    """SIGTERM handled after the loop read the stop flag for the ranks' agreement and before it stored the answer (CI
    once hit that moment: the run logged the signal, trained on to its end and exited 0): the next step stops."""
    from medtranslate.runtime import distributed

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 3, "train.steps_per_epoch": 5}))
    original, calls = distributed.mean_and_any, []

    def signalled_in_between(values, flag):
        calls.append(flag)
        if len(calls) == 3:  # the third step: its flag already read (False), the signal handled now
            signal.raise_signal(signal.SIGTERM)
        return original(values, flag)

    monkeypatch.setattr(distributed, "mean_and_any", signalled_in_between)
    term = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "run", progress=False).fit()
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch_in_epoch"]) == (0, 4) and calls == [False, False, False, True]
    assert signal.getsignal(signal.SIGTERM) is term  # the handler is put back


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}.{k}"))
    return out


def test_the_time_cap_starts_no_epoch_that_would_overrun_it_and_says_the_run_is_under_trained(
    tmp_path, tiny_data, caplog
):
    capped = tmp_path / "capped.yaml"
    write_config(capped, tiny_data, **{"train.epochs": 3, "train.max_minutes": 1e-6})  # any epoch takes over 60 us
    with caplog.at_level(logging.WARNING, logger="medtranslate.training.train"):
        Trainer(load_config(capped), tmp_path / "short", progress=False).fit()
    note = "stopped by train.max_minutes (1e-06) after 1 of 3 epochs: under-trained"
    assert any(m.startswith(note) for m in caplog.messages), caplog.messages
    for name in ("last.pt", "best.pt"):  # best.pt was written before the stop, and is told too
        ckpt = load_checkpoint(tmp_path / "short" / "checkpoints" / name)
        assert ckpt["epoch"] == 1 and ckpt["schedule"]["stopped_after"] == 1 and ckpt["schedule"]["epochs"] == 3
    assert note_of(ckpt["schedule"]) == note
    history = list(csv.DictReader((tmp_path / "short" / "history.csv").open()))
    assert [row["note"] for row in history] == [note] and history[0]["val_mae"]
    # the same config with room: its 3 epochs, and no note anywhere
    write_config(capped, tiny_data, **{"train.epochs": 3, "train.max_minutes": 60.0})
    Trainer(load_config(capped), tmp_path / "long", progress=False).fit()
    ckpt = load_checkpoint(tmp_path / "long" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["schedule"]["stopped_after"] is None and note_of(ckpt["schedule"]) == ""
    assert "note" not in (tmp_path / "long" / "history.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_the_same_config_trains_the_same_model_at_1_and_2_threads_and_on_a_loaded_machine(tmp_path, tiny_data):
    """A run's length is its epochs, so neither the thread count nor a busy machine changes the model beyond the
    rounding of another order of summation. Threads split a convolution's sums differently (float32 rounding, 1e-7),
    which GAN training amplifies: 1 and 2 threads differ by 3e-9 of validation MAE after 12 steps here (Xeon with
    AMX, bf16), and by up to 1e-3 after 15-30 steps of a larger net (test_distributed), the bound used; a run cut short
    or lengthened by the machine's speed (the old time budget) differed by 10-50 %. The same thread count under load is
    the same arithmetic: equal to the last bit."""
    cfg = write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 3, "train.steps_per_epoch": 4})

    def val_maes(name: str, threads: int) -> list[float]:
        with torch_threads(threads):  # in this process: train.num_threads sets the process's, put back after
            result = cli("train", str(cfg), "--out", str(tmp_path / name), "--set", f"train.num_threads={threads}")
        assert result.returncode == 0, result.stderr[-2000:]
        # the checkpoint records what the numbers hold for, as the log named it: precision, CPU, thread count
        (trained_on,) = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["trained_on"]
        precision, machine = trained_on.split(" on ", 1)
        assert f"precision {precision} (" in result.stderr and f"; {machine}" in result.stderr
        assert machine.endswith(f", {threads} thread" + "s" * (threads > 1))
        return [float(r["val_mae"]) for r in csv.DictReader((tmp_path / name / "history.csv").open())]

    one, two = val_maes("one", 1), val_maes("two", 2)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]  # both cores busy
    try:
        loaded = val_maes("loaded", 2)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, rel=1e-3) and loaded == two


def test_each_epoch_line_names_the_total_its_progress_bar_showed(tmp_path, tiny_data, caplog):
    # under a time budget the total once changed after an epoch, and the epoch's log line showed the new one while its
    # progress bar had shown the old; the total is train.epochs now, whatever the cap does
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 3, "train.max_minutes": 1e-6}))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    shown = []
    fit_epoch = trainer._train_epoch

    def watched():  # the total the bar's "epoch e/N" is made from, as the epoch starts
        shown.append(trainer.schedule.epochs)
        return fit_epoch()

    trainer._train_epoch = watched
    with caplog.at_level(logging.INFO, logger="medtranslate.training.train"):
        trainer.fit()
    logged = [m.split(":")[0] for m in caplog.messages if m.startswith("epoch ")]
    assert shown == [3] and logged == ["epoch 1/3"]  # the cap (60 us) stopped the run after its first epoch


def test_the_structure_weight_follows_the_learning_rate_decay(tmp_path, tiny_data):
    extra = {"model.structure_loss": "mind", "model.lambda_structure": 2.0, "train.epochs": 4}
    weights = {}
    for decay in (False, True):
        cfg = load_config(write_config(tmp_path / f"{decay}.yaml", tiny_data, "cyclegan", **extra,
                                       **{"model.structure_decay": decay, "model.lambda_identity": 0.0}))  # fmt: skip
        trainer = Trainer(cfg, tmp_path / f"run{decay}", progress=False)
        scales = []
        fit_epoch = trainer._train_epoch

        def watched(fit_epoch=fit_epoch, trainer=trainer, scales=scales):  # the weight each epoch trained with
            out = fit_epoch()
            scales.append(trainer.model.structure_scale)
            return out

        trainer._train_epoch = watched
        trainer.fit()
        weights[decay] = scales
    assert weights[False] == [1.0] * 4  # 4 epochs: the rate is constant for 2, then 2/3, 1/3 of the base
    assert weights[True] == pytest.approx([trainer.schedule.factor(e) for e in range(4)]) == [1.0, 1.0, 2 / 3, 1 / 3]


def test_more_threads_than_the_process_may_use_cores_is_warned(tmp_path, tiny_data, caplog):
    """Threads beyond the cores wait on each other (2 on one core: up to 21x the step); the run says so, and trains."""
    import os

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data), ["train.num_threads=2"])
    cores = os.sched_getaffinity(0)
    with torch_threads(1), caplog.at_level(logging.WARNING, logger="medtranslate.training.train"):
        Trainer(cfg, tmp_path / "fits", progress=False)  # on the cores this process has (2 here, or more)
        fits = [m for m in caplog.messages if "train.num_threads 2" in m]
        os.sched_setaffinity(0, {min(cores)})  # one core, as a 1-core container has
        try:
            Trainer(cfg, tmp_path / "one_core", progress=False)
        finally:
            os.sched_setaffinity(0, cores)
    told = [m for m in caplog.messages if "train.num_threads 2" in m]
    assert fits == ([] if len(cores) >= 2 else told[:1])
    assert (
        told[-1].startswith("train.num_threads 2: more than the 1 core this process may use")
        and "set it to 1" in told[-1]
    )


def test_a_run_resumed_on_another_thread_count_records_both_and_says_so(tmp_path, tiny_data, caplog):
    # the time cap (60 us) stops each session after one epoch: epoch 1 on 1 thread, epochs 2 and 3 on 2
    capped = write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 3, "train.max_minutes": 1e-6})
    epochs, warned = [], []
    with torch_threads(2):  # train.num_threads sets this process's count; put back after
        for session, threads in enumerate((1, 2, 2)):
            cfg = load_config(capped, [f"train.num_threads={threads}"])
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="medtranslate.training.train"):
                Trainer(cfg, tmp_path / "run", resume=session > 0, progress=False).fit()
            warned.append([m for m in caplog.messages if "resumed in" in m])
            epochs.append(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert epochs == [1, 2, 3] and len(ckpt["trained_on"]) == 2  # the same machine again adds nothing
    assert ckpt["trained_on"][0].endswith(", 1 thread") and ckpt["trained_on"][1].endswith(", 2 threads")
    # the resume on another count is told, naming both; the one on the same count is not
    first, second = ckpt["trained_on"]
    assert [len(w) for w in warned] == [0, 1, 0]
    assert f"resumed in {second}, after training in {first}" in warned[1][0] and str(tmp_path / "run") in warned[1][0]


def test_best_is_the_lowest_validation_epoch_and_stays_when_last_moves_on(tmp_path, tiny_data):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 4, "train.lr": 2e-2}))
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    folder = tmp_path / "run" / "checkpoints"
    best, last = load_checkpoint(folder / "best.pt"), load_checkpoint(folder / "last.pt")
    maes = [row["val_mae"] for row in last["history"]]
    assert last["epoch"] == 4 and best["epoch"] == 1 + int(np.argmin(maes)) and best["best_mae"] == min(maes)
    assert best["epoch"] < 4  # (the high rate makes later epochs worse, so last.pt was written after best.pt)
    # best.pt is that epoch's whole state (it was last.pt then), untouched by the later epochs' writes of last.pt
    assert len(best["history"]) == best["epoch"] and best["history"] == last["history"][: best["epoch"]]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("tta", [False, True])
def test_calibration_is_fitted_into_best_and_translate_applies_it(tmp_path, tiny_data, tta):
    extra = {"model.calibration": "quantile", "model.tta": tta}
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, "cyclegan", **extra))
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    folder = tmp_path / "run" / "checkpoints"
    best, last = load_checkpoint(folder / "best.pt"), load_checkpoint(folder / "last.pt")
    calibration = best["spec"]["calibration"]
    assert calibration["kind"] == "quantile" and last["spec"].get("calibration") is None  # last.pt: to resume
    net, spec = build_inference_net(best, torch.device("cpu")), TranslatorSpec.from_dict(best["spec"])
    assert spec.tta is tta
    raw_spec = dataclasses.replace(spec, calibration=None)
    gaps, produced, reference = {"raw": [], "calibrated": []}, [], []
    for case in ("s0", "s1"):  # the training cases: the calibrated output's HU in the MR's body follow the CTs'
        mr, ct = read_volume(tiny_data / case / "mr.nii.gz"), read_volume(tiny_data / case / "ct.nii.gz")
        raw, out = translate_volume(net, mr, raw_spec, tta=tta), translate_volume(net, mr, spec, tta=tta)
        inside, ct_inside = body_mask(mr.array, "mr", mr.affine), body_mask(ct.array, "ct", ct.affine)
        # translate is the network's output through the map (air beyond the body's margin set after it)
        assert np.allclose(out.array[inside], apply_calibration(raw.array[inside], calibration), atol=1e-3)
        q = np.linspace(0.05, 0.95, 19)
        target = np.quantile(ct.array[ct_inside], q)
        for name, volume in (("raw", raw), ("calibrated", out)):
            gaps[name].append(np.abs(np.quantile(volume.array[inside], q) - target).mean())
        produced.append(raw.array[inside])
        reference.append(ct.array[ct_inside])
    assert np.mean(gaps["calibrated"]) < 0.5 * np.mean(gaps["raw"]), gaps
    # the map was fitted on the very output it corrects: one view, or the flip-averaged one of a model.tta model
    # (whose narrower HU distribution a map fitted on one view would leave too narrow)
    refit = fit_quantile_map(np.concatenate(produced), np.concatenate(reference))
    assert np.allclose(refit["produced"], calibration["produced"], atol=1e-3)
    assert np.allclose(refit["reference"], calibration["reference"], atol=1e-3)


def test_validation_scores_the_output_translate_gives_over_the_flip_for_a_tta_model(tmp_path, tiny_data):
    cfg = load_config(
        write_config(tmp_path / "c.yaml", tiny_data, **{"model.tta": True, "train.lr": 1e-2, "train.epochs": 3})
    )
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    val_mae = load_checkpoint(best)["history"][-1]["val_mae"]
    maes = {}
    for tta in (None, False):  # None: as the checkpoint says (over the flip), as a user's translate runs
        out = tmp_path / f"sct_{tta}"
        translate_folder(best, tiny_data / "s2" / "mr.nii.gz", out, tta=tta, progress=False)
        result = evaluate_folder(out, tiny_data / "s2" / "ct.nii.gz", tmp_path / f"eval_{tta}", figures=False)
        maes[tta] = result.rows[0]["mae"]
    # validation (which picks best.pt) measured the output translate gives by default, not the one-view output (6 HU
    # apart here); 0.05 HU: the files hold whole HU (int16), whose rounding moves the mean error by thousandths
    assert val_mae == pytest.approx(maes[None], abs=0.05) and abs(maes[False] - maes[None]) > 1.0, (val_mae, maes)


def test_intensity_map_baseline_trains_and_validates(tmp_path, tiny_data):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, "intensity_map"))
    val = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert 0 < val["val_mae"] < 1000
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert ckpt["kind"] == "intensity_map" and ckpt["model"]["nets"]["G"]["table"].shape == (256,)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"model.kindd": "pix2pix"}, r"unknown key model.kindd; valid keys of 'model': kind, task"),
        (
            {"model.kind": "pix2pixx"},
            r"unknown model.kind 'pix2pixx'; expected one of: pix2pix, cyclegan, intensity_map",
        ),
        ({"train.precision": "fp8"}, r"train.precision"),
        ({"train.precision": "fp16", "train.device": "cpu"}, r"fp16 needs a CUDA device; use bf16 or auto on the CPU"),
        ({"data.context": 9}, r"data.context 9 needs 19 slices but the volume has 16"),
        (
            {"model.residual": True},
            r"model.residual needs the same modality in and out \(task ldct\); task mr2ct translates mr to ct",
        ),
        ({"model.full_res": "yes"}, r"model.full_res must be true or false, got 'yes'"),
        ({"model.calibration": "quantile"}, r"model.calibration is for an unpaired CycleGAN \(model.kind pix2pix"),
        ({"model.calibration": "linear"}, r"unknown model.calibration 'linear'; expected one of: none, quantile"),
        (
            {"model.inverse": "noise"},
            r"model.inverse: noise is for an unpaired low-dose CT CycleGAN .* model.kind pix2pix with model.task mr2ct",
        ),
        ({"model.inverse": "sideways"}, r"unknown model.inverse 'sideways'; expected one of: network, noise"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, tiny_data, extra, match):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, **extra)
    with pytest.raises(ConfigError, match=match):
        Trainer(load_config(cfg), tmp_path / "run", progress=False)
    result = cli("train", str(cfg), "--out", str(tmp_path / "run2"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_no_pairs_and_wrong_kind_on_resume(tmp_path, tiny_data):
    empty = tmp_path / "empty"
    write_nifti(empty / "a" / "mr.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    result = cli("train", str(write_config(tmp_path / "c.yaml", empty)), "--out", str(tmp_path / "r"), "--no-progress")
    assert result.returncode == 2 and "no mr/ct pairs found" in result.stderr and "(unpaired: a);" in result.stderr
    # a run made by the intensity-mapping baseline cannot be resumed as pix2pix
    base = write_config(tmp_path / "b.yaml", tiny_data, "intensity_map")
    assert cli("train", str(base), "--out", str(tmp_path / "run"), "--no-progress").returncode == 0
    wrong = cli(
        "train",
        str(write_config(tmp_path / "p.yaml", tiny_data)),
        "--out",
        str(tmp_path / "run"),
        "--resume",
        "--no-progress",
    )
    assert wrong.returncode == 2 and "checkpoint is from a intensity_map run but model.kind is pix2pix" in wrong.stderr


def test_every_case_is_checked_at_load_time_naming_the_file(tmp_path, tiny_data):
    """A mask on another grid than its MR/CT was used silently (training) or failed after a whole epoch (validation)."""
    import shutil

    root = tmp_path / "cases"
    shutil.copytree(tiny_data, root)
    cfg = load_config(write_config(tmp_path / "c.yaml", root))
    for case in ("s0", "s2"):  # a training case, then a validation case
        write_nifti(root / case / "mask.nii.gz", np.ones((48, 48, 15), np.uint8), np.eye(4))
        with pytest.raises(
            GeometryMismatchError,
            match=rf"case '{case}': shape differs: mask .*{case}/mask.nii.gz \(48, 48, 15\) vs ct .*{case}/ct.nii.gz "
            r"\(48, 48, 16\)",
        ):
            Trainer(cfg, tmp_path / f"run_{case}", progress=False)
        assert not (tmp_path / f"run_{case}").exists()  # refused while loading: nothing written, no epoch run
        (root / case / "mask.nii.gz").unlink()
    mr = read_volume(root / "s1" / "mr.nii.gz")
    write_nifti(root / "s1" / "ct.nii.gz", mr.array, mr.affine, overwrite=True)  # an MR where the CT belongs
    with pytest.raises(InputError, match=r"s1/ct.nii.gz: values .* do not look like CT in HU"):
        Trainer(cfg, tmp_path / "run_mr_as_ct", progress=False)


@pytest.mark.parametrize("batch", [500, 100_000_000])
def test_batch_size_beyond_the_training_slices_is_refused(tmp_path, tiny_data, batch):
    """Refused before anything of that size is allocated (1e8 once tried to allocate 4.9 TB at start-up)."""
    cfg = load_config(
        write_config(tmp_path / "c.yaml", tiny_data, **{"train.batch_size": batch, "train.precision": "auto"})
    )
    with pytest.raises(ConfigError, match=rf"train.batch_size {batch} is more than the \d+ training slices"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_the_slice_cache_is_reused_and_rebuilt_when_a_file_or_setting_changes(tmp_path, tiny_data):
    import shutil

    root = tmp_path / "cases"
    shutil.copytree(tiny_data, root)
    cache = tmp_path / "cache"
    cfg = load_config(write_config(tmp_path / "c.yaml", root, **{"data.cache": str(cache)}))

    def folders() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}

    first = Trainer(cfg, tmp_path / "a", progress=False)
    made = folders()
    assert sorted(n.split("-")[0] for n in made) == ["s0", "s1"]  # the training cases; validation reads its own
    assert [c.folder.name for c in first.train_cases] == sorted(made)
    Trainer(cfg, tmp_path / "b", progress=False)  # another run, the same data and settings: nothing is rebuilt
    assert folders() == made
    Trainer(
        load_config(
            write_config(tmp_path / "d.yaml", root, **{"data.cache": str(cache), "data.spacing": [5.0, 5.0, 10.0]})
        ),
        tmp_path / "d",
        progress=False,
    )
    assert len(folders()) == 4  # another spacing, other slices
    ct = read_volume(root / "s0" / "ct.nii.gz")
    write_nifti(root / "s0" / "ct.nii.gz", ct.array + 1, ct.affine, overwrite=True)
    again = Trainer(cfg, tmp_path / "e", progress=False)
    assert len(folders()) == 5 and again.train_cases[0].folder.name not in made  # s0 changed: made anew
    assert again.train_cases[1].folder.name in made
    assert not (tmp_path / "a" / "cache").exists()  # data.cache, not the run folder


def test_the_slice_cache_is_keyed_on_content_not_on_size_and_time(tmp_path, tiny_data):
    """A file rewritten with its old size and its modification time restored (touch -r, as sync tools do) is read
    anew, never served from the old entry."""
    import os
    import shutil

    root = tmp_path / "cases"
    shutil.copytree(tiny_data, root)
    ct_path = root / "s0" / "ct.nii"  # uncompressed: other values, the very same size
    ct = read_volume(root / "s0" / "ct.nii.gz")
    (root / "s0" / "ct.nii.gz").unlink()
    write_nifti(ct_path, ct.array, ct.affine)
    cfg = load_config(write_config(tmp_path / "c.yaml", root, **{"data.cache": str(tmp_path / "cache")}))
    first = Trainer(cfg, tmp_path / "a", progress=False)
    stat = ct_path.stat()
    write_nifti(ct_path, ct.array + 50, ct.affine, overwrite=True)
    os.utime(ct_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ct_path.stat().st_size == stat.st_size and ct_path.stat().st_mtime_ns == stat.st_mtime_ns
    again = Trainer(cfg, tmp_path / "b", progress=False)
    assert again.train_cases[0].folder != first.train_cases[0].folder
    assert not torch.equal(again.train_cases[0].slices("target", [3]), first.train_cases[0].slices("target", [3]))


def test_a_damaged_cache_entry_is_reported_and_rebuilt(tmp_path, tiny_data, caplog):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, **{"data.cache": str(tmp_path / "cache")}))
    first = Trainer(cfg, tmp_path / "a", progress=False)
    deleted, truncated = first.train_cases[0], first.train_cases[1]
    expected = [c.slices("source", [2]) for c in (deleted, truncated)]
    (deleted.folder / "target.npy").unlink()  # as if removed while the run went on
    with pytest.raises(InputError, match=r"target.npy: this slice cache entry of case 's0' was damaged while"):
        deleted.slices("target", [2])
    data = (truncated.folder / "source.npy").read_bytes()
    (truncated.folder / "source.npy").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        again = Trainer(cfg, tmp_path / "b", progress=False)  # and every later run: rebuilt, not stuck
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 2 and "target.npy" in damaged[0] and "source.npy" in damaged[1]
    assert [c.folder for c in again.train_cases] == [deleted.folder, truncated.folder]
    assert all(torch.equal(c.slices("source", [2]), e) for c, e in zip(again.train_cases, expected, strict=True))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # nothing left aside


def test_l1_warm_up_trains_the_generator_alone_then_the_discriminator_joins(tmp_path, tiny_data):
    """model.l1_warmup_epochs: the first epochs are a regression (the discriminator's weights and optimiser untouched,
    no adversarial loss logged); from the next epoch on, both train."""
    cfg = write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 2, "model.l1_warmup_epochs": 1})
    trainer = Trainer(load_config(cfg), tmp_path / "run", progress=False)
    d_start = {k: v.clone() for k, v in trainer.model.nets["D"].state_dict().items()}
    g_start = {k: v.clone() for k, v in trainer.model.nets["G"].state_dict().items()}
    trainer.fit(until_epoch=1)
    d_after_warmup = trainer.model.nets["D"].state_dict()
    assert all(torch.equal(d_start[k], v) for k, v in d_after_warmup.items())
    assert not trainer.model.optimizers["D"].state
    assert any(not torch.equal(g_start[k], v) for k, v in trainer.model.nets["G"].state_dict().items())
    trainer.fit()
    assert any(not torch.equal(d_start[k], v) for k, v in trainer.model.nets["D"].state_dict().items())
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [bool(row["loss_d"]) for row in history] == [False, True]
    assert all(float(row["loss_g_l1"]) > 0 for row in history)


def test_cyclegan_trains_on_disjoint_cohorts_each_scan_on_its_own_grid(tmp_path, cohort_data):
    # mr/ holds MR-only subjects, ct/ CT-only ones on other grids and fields of view; s2 is a paired validation case
    cfg = load_config(write_config(tmp_path / "c.yaml", cohort_data, "cyclegan", **{"model.calibration": "quantile"}))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert [c.case_id for c in trainer.train_cases] == ["u0", "u1"]
    assert [c.case_id for c in trainer.train_targets] == ["u2", "u3"]
    # each scan preprocessed on its own: the head-only MRs keep their 11 slices, the CTs their 14, each with a mask
    assert [c.shape[0] for c in trainer.train_cases + trainer.train_targets] == [11, 11, 14, 14]
    assert trainer.train_cases[0].arrays == ("mask", "source") and trainer.train_targets[0].arrays == ("mask", "target")
    for c in trainer.train_cases:  # the MR's body mask is made from the MR itself (no CT on its grid)
        mr = read_volume(cohort_data / "mr" / f"{c.case_id}.nii.gz")
        assert c.body_fraction.sum() * c.shape[1] * c.shape[2] == pytest.approx(
            body_mask(mr.array, "mr", mr.affine).sum(), rel=0.02
        )
    val = trainer.fit()
    # the paired validation case is scored in HU, and every validation source also without its pair
    assert {"val_mae", "val_w1", "val_outline_dice", "val_artefact_index"} <= set(val)
    assert 0 < val["val_outline_dice"] <= 1 and val["val_w1"] > 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].endswith("selected_by") and all(row.endswith(",val_mae") for row in history[1:])
    # the calibration's reference is the CT cohort's HU inside the body, never a paired case's
    reference = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["spec"]["calibration"]["reference"]
    cohort = [read_volume(cohort_data / "ct" / f"u{n}.nii.gz") for n in (2, 3)]
    inside = np.concatenate([v.array[body_mask(v.array, "ct", v.affine)] for v in cohort])
    assert (reference[0], reference[-1]) == (pytest.approx(inside.min()), pytest.approx(inside.max()))


def test_cohorts_without_a_pair_pick_best_by_the_pair_free_distance(tmp_path, cohort_data, capsys):
    root = tmp_path / "unpaired"
    for role in ("mr", "ct"):
        shutil.copytree(cohort_data / role, root / role)
    from medtranslate.cli import main

    config = write_config(tmp_path / "c.yaml", root, "cyclegan", **{"train.epochs": 3})
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    # the command says what picked best.pt
    assert "best.pt (lowest val_w1), last.pt" in capsys.readouterr().out
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    # the random split drew its validation case from the MR-only cases and kept both cohorts in training
    assert len(best["split"]["val"]) == 1 and best["split"]["val"][0] in ("u0", "u1")
    w1 = [row["val_w1"] for row in last["history"]]
    assert all("val_mae" not in row and row["selected_by"] == "val_w1" for row in last["history"])
    assert best["selected_by"] == "val_w1" and best["epoch"] == 1 + int(np.argmin(w1)) and best["best_mae"] == min(w1)


def test_pix2pix_on_unpaired_scans_names_them_and_what_trains_on_them(tmp_path, cohort_data):
    root = tmp_path / "unpaired"
    for role in ("mr", "ct"):
        shutil.copytree(cohort_data / role, root / role)
    cfg = load_config(write_config(tmp_path / "c.yaml", root, "pix2pix"))
    with pytest.raises(InputError) as err:
        Trainer(cfg, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "unpaired: u0, u1, u2, u3" in message and "cyclegan" in message and "preprocess --register" in message


def test_low_dose_noise_is_measured_from_cohorts_with_no_subject_in_common(tmp_path, ldct_cohort_data):
    # low-dose scans of two subjects, normal-dose scans of two others (on another grid): measured all the same
    extra = {"model.task": "ldct", "model.inverse": "noise", "model.generator": "unet", "model.lambda_identity": 0.0}
    cfg = load_config(write_config(tmp_path / "c.yaml", ldct_cohort_data, "cyclegan", **extra))
    trainer = Trainer(cfg, tmp_path / "run")
    assert {c.case_id for c in trainer.train_targets} == {"n0", "n1"}
    assert float(np.median(trainer.model.noise.sigmas)) == pytest.approx(30.0, rel=0.15)
