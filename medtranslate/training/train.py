"""The training loop: epochs of GAN updates on slices, whole-volume validation in HU, checkpoints, exact resume.

Every epoch reseeds its random streams from (seed, epoch), so a run resumed at an epoch boundary replays the same
batches, augmentations and dropout masks as one that never stopped. Ctrl-C does not cut a step in half: the first
one lets the current step finish, then ``last.pt`` is saved with the position in the epoch and the random states,
so ``--resume`` continues exactly as if nothing had happened; a second Ctrl-C stops at once and keeps the
``last.pt`` of the last epoch end.

Training cases are read once into the on-disk slice cache (cache.py) and items read their slices from there; the
validation cases are read one at a time when validated. Under ``torchrun`` every process trains on its share of each
batch and DistributedDataParallel averages the gradients, so N processes take the steps one process would take on the
whole batch; rank 0 alone validates and writes checkpoints, history and TensorBoard, and every agreement that must
hold across ranks (precision, the epoch plan, a stop request) is rank 0's or all ranks'.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtranslate.core.atomic import atomic_copy, atomic_write_csv, atomic_write_text, output_error
from medtranslate.core.config import RunConfig, config_differences
from medtranslate.core.errors import CheckpointError, ConfigError, InputError
from medtranslate.core.kinds import get_kind, model_class
from medtranslate.core.tasks import get_task
from medtranslate.data.cache import CachedCase
from medtranslate.data.slices import (
    SliceDataset,
    cached_case,
    cached_scan,
    discover_cohorts,
    discover_pairs,
    load_pair,
    load_scan,
    load_split,
    split_cohorts,
)
from medtranslate.evaluation.metrics import similarity_scores
from medtranslate.evaluation.pairfree import pair_free_scores, reference_sample, sample_values
from medtranslate.imaging.transforms import axial_axis, body_mask, ct_intensity
from medtranslate.inference.translate import translate_volume
from medtranslate.io.cases import Cohorts, Pair, Scan
from medtranslate.models.base import TranslationModel, build_model
from medtranslate.models.calibration import fit_quantile_map
from medtranslate.models.checkpoint import (
    CHECKPOINT_FORMAT,
    TranslatorSpec,
    build_inference_net,
    load_checkpoint,
    save_checkpoint,
)
from medtranslate.models.noise import NoiseModel, measure_noise
from medtranslate.runtime import distributed
from medtranslate.runtime.device import resolve_device, usable_cores
from medtranslate.runtime.precision import NO_NETWORK, PrecisionChoice, choose_precision, describe_machine
from medtranslate.training.schedule import Schedule

__all__ = ["Trainer", "train"]

logger = logging.getLogger(__name__)


# Settings that may change when a run is resumed: where and how fast it runs, and how long it may take.
RESUMABLE_CHANGES = (
    "train.device",
    "train.num_threads",
    "train.max_minutes",
    "train.precision_used",
    "train.workers",
    "data.cache",
)
CALIBRATION_VOXELS = 1_000_000  # body voxels per training case and side for model.calibration's quantiles


def _ignore_sigint(_worker_id: int) -> None:
    """Data-loader workers leave Ctrl-C and SIGTERM to the training process, which finishes its step and saves
    last.pt (a worker exits when its parent does)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Trainer:
    """Train one model from a :class:`RunConfig` into ``run_dir``.

    Args:
        cfg: the experiment.
        run_dir: output folder: config.yaml, split.json, checkpoints/, history.csv, tensorboard/, and cache/ (the
            slice cache, unless data.cache names another folder).
        resume: continue from ``run_dir/checkpoints/last.pt``.
        progress: show a tqdm bar.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.kind = get_kind(cfg.model.kind)
        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        ckpt = self._run_to_resume(last, resume)
        t = cfg.train
        self._set_up_runtime()

        # data: every training case read and preprocessed once into the slice cache (each rank makes its share)
        self._load_data(cfg)
        in_channels = 2 * cfg.data.context + 1
        task = get_task(cfg.model.task)

        # precision: as configured, or for auto what this hardware runs fastest (the resumed run's own choice);
        # under torchrun rank 0 decides for all
        choice = self._choose_precision(ckpt) if self.rank == 0 else None
        self.precision = distributed.from_rank0(choice)
        self.amp_dtype = self.precision.amp_dtype
        model_cfg = replace(cfg, train=replace(t, precision=self.precision.precision))

        divisor = self._build_model(model_cfg, in_channels, fresh=ckpt is None)
        self.spec = TranslatorSpec(
            task.name,
            task.source_kind,
            ct_intensity().to_dict(),
            cfg.data.context,
            divisor,
            cfg.data.spacing,
            tta=cfg.model.tta,
        )
        self.epoch, self.batch_in_epoch, self.step, self.best_mae = 0, 0, 0, math.inf
        self.schedule = Schedule.from_train_config(cfg.train)
        self.history: list[dict[str, float]] = []
        self.epoch_losses: dict[str, list[float]] = {}
        self._writer = None
        # a stop: only the signal handler writes this flag; each step reads it for the ranks' agreement (storing the
        # agreed answer back into it would lose a signal handled while the answer was computed)
        self._stop_signalled = False
        if ckpt is not None:
            self._load(ckpt, last)
        # what a network's numbers depend on besides the config: a GAN's few epochs amplify the rounding of another
        # CPU, precision or thread count (docs/results.md, "The demo in bf16"); a resumed run adds its own
        self.trained_on = [str(s) for s in ckpt.get("trained_on", [])] if ckpt is not None else []
        machine = describe_machine(self.device)  # reads /proc/cpuinfo: once, for the record and the log
        machine += f", {self.world} processes" if self.world > 1 else ""
        here = f"{self.precision.precision} on {machine}"
        if self.kind.network and self.trained_on[-1:] != [here]:
            if self.trained_on and self.rank == 0:
                logger.warning(
                    "%s: resumed in %s, after training in %s, which rounds otherwise: the model can end a few per "
                    "cent from an uninterrupted run's (docs/benchmarks.md); the earlier thread count (OMP_NUM_THREADS) "
                    "and precision on the same kind of CPU give the same arithmetic",
                    self.run_dir,
                    here,
                    self.trained_on[-1],
                )
            self.trained_on.append(here)
        if self.rank == 0:
            replace(cfg, train=replace(t, precision_used=self.precision.precision)).save(self.run_dir / "config.yaml")
            atomic_write_text(self.run_dir / "split.json", json.dumps(self.split, indent=2) + "\n")
            logger.log(
                logging.INFO if self.model is not None else logging.DEBUG,
                "precision %s (%s); %s",
                self.precision.precision,
                self.precision.reason,
                machine,
            )

    def _run_to_resume(self, last: Path, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (checked against this config), or None for a new run in an empty folder."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir}: is a file; choose a folder for --out")
        if resume and not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume; train without --resume first")
        if not resume and last.is_file():
            raise ConfigError(
                f"{self.run_dir}: already holds a run (checkpoints/last.pt); pass --resume to continue it or choose "
                "another --out"
            )
        ckpt = load_checkpoint(last) if resume else None
        if ckpt is not None:
            self._check_same_run(ckpt, last)
        return ckpt

    def _set_up_runtime(self) -> None:
        """Processes, threads, device and seeds."""
        t = self.cfg.train
        self.rank, self.world = distributed.world()
        if self.world > 1:
            self._check_distributable()
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
            if t.num_threads > (cores := usable_cores()) and self.rank == 0:
                logger.warning(
                    "train.num_threads %d: more than the %d core%s this process may use, so its threads wait on each "
                    "other (2 threads on one core took 1.6-21x the step of 1: benchmarks/bench_threads.py); set it "
                    "to %d unless you need the numbers of %d threads",
                    t.num_threads,
                    cores,
                    "s" * (cores != 1),
                    cores,
                    t.num_threads,
                )
        self.device = resolve_device(t.device)
        if self.world > 1 and self.device.type == "cuda":  # one GPU per process, as torchrun numbers them
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        distributed.setup(cuda=self.device.type == "cuda")
        self.gen = torch.Generator().manual_seed(t.seed)
        torch.manual_seed(t.seed)

    def _build_model(self, model_cfg: RunConfig, in_channels: int, fresh: bool) -> int:
        """The kind's model (a network with its optimisers and training slices, or a baseline to fit); returns the
        size the network's input must divide by. ``fresh``: a new run, not one resumed (which has its noise model)."""
        cfg, t = self.cfg, self.cfg.train
        kind = self.kind
        if not kind.network:  # a baseline, fitted in one pass
            self.model: TranslationModel | None = None
            self.lut = model_class(kind).from_config(cfg.model)
            self.net = self.lut
            return 1
        self.model = build_model(model_cfg, in_channels, self.device, self.gen)
        if cfg.model.inverse == "noise" and fresh:
            self.model.set_noise(self._measure_noise())
        if self.world > 1:
            self.model.distribute(sync_batchnorm=t.sync_batchnorm)
        self.net = self.model.inference_generator
        # a kind learning from pairs: each source slice with its own target; else with a slice of the target cohort
        targets = None if kind.learns_from == "pairs" else self.train_targets
        self.dataset = SliceDataset(self.train_cases, cfg, t.seed, targets=targets)
        if t.batch_size > len(self.dataset):
            raise ConfigError(
                f"train.batch_size {t.batch_size} is more than the {len(self.dataset)} training slices with enough "
                f"body; use at most {len(self.dataset)}, or add cases"
            )
        return getattr(self.net, "divisor", 1)

    def _load_data(self, cfg: RunConfig) -> None:
        """The split, the validation cases (checked now, so a bad file stops the run at once; read again when
        validated) and the training cases in the slice cache.

        pix2pix learns from pairs. CycleGAN learns from cohorts: every training source image and every training
        target image, of any subjects and grids, each preprocessed on its own (``train_cases`` the sources,
        ``train_targets`` the targets). The baselines learn from pairs when every training case is one, else from
        the cohorts (the intensity map by matching quantiles, non-local means by matching noise). Validation scores
        paired cases in HU; a cohort run without a paired validation case picks best.pt by a pair-free measure
        (``selected_by``).
        """
        src_role, tgt_role = cfg.model.roles
        cache = Path(cfg.data.cache) if cfg.data.cache else self.run_dir / "cache"
        self.cohorts: Cohorts | None = None
        self.val_sources: list[Scan] = []
        self._reference: np.ndarray | None = None  # the target cohort's HU sample, made at the first validation
        learns_from = self.kind.learns_from
        if learns_from != "pairs":
            cohorts = discover_cohorts(cfg)
            paired = cohorts.paired_ids
            self.split = split_cohorts(cfg, cohorts)
            if learns_from == "cohorts" or not set(self.split["train"]) <= set(paired):
                self.cohorts = cohorts
            else:  # a baseline of paired cases: as from discover_pairs
                pairs = {cid: cohorts.pair(cid) for cid in paired}
        else:
            pairs = discover_pairs(cfg)
            self.split = load_split(cfg, sorted(pairs))
        if not self.split["train"]:
            raise InputError(f"{cfg.data.root}: no training cases in the split; add cases or fix data.split")
        jobs = self._pair_jobs(pairs, cache) if self.cohorts is None else self._cohort_jobs(self.cohorts, cache)
        for pair in self.val_pairs:
            load_pair(pair, cfg)
        for scan in self.val_sources:
            load_scan(scan, "source", cfg)
        for job in jobs[self.rank :: self.world]:
            job()
        distributed.barrier()
        entries = [job() for job in jobs]
        n_sources = len(self.train_scans[0]) if self.cohorts is not None else len(entries)
        self.train_cases: list[CachedCase] = entries[:n_sources]
        self.train_targets: list[CachedCase] | None = entries[n_sources:] if self.cohorts is not None else None
        self.selected_by = "val_mae" if self.val_pairs or not self.val_sources else "val_w1"
        if self.rank == 0 and self.cohorts is not None and self.val_sources:
            logger.info(
                "best.pt: the epoch with the lowest %s%s",
                self.selected_by,
                " (HU error on the paired validation cases)"
                if self.val_pairs
                else f" (no paired validation case: the distance between the HU distribution of the translated "
                f"{src_role} validation scans and that of the training {tgt_role} cohort, inside the body)",
            )

    def _pair_jobs(self, pairs: dict[str, Pair], cache: Path) -> list[Any]:
        """Training and validation from pairs: the jobs that put each training pair in the slice cache."""
        cfg, (src_role, tgt_role) = self.cfg, self.cfg.model.roles
        self.val_pairs = [pairs[cid] for cid in self.split["val"]] if self.rank == 0 else []
        train = [pairs[cid] for cid in self.split["train"]]
        self.train_scans = (
            [Scan(p.case_id, src_role, p.source, p.mask) for p in train],
            [Scan(p.case_id, tgt_role, p.target, p.mask) for p in train],
        )
        return [(lambda p=p: cached_case(p, cfg, cache)) for p in train]

    def _cohort_jobs(self, c: Cohorts, cache: Path) -> list[Any]:
        """Training from the two cohorts, validation on the validation cases (paired or source-only): the jobs that
        put each training scan in the slice cache, sources first."""
        cfg, (src_role, tgt_role) = self.cfg, self.cfg.model.roles
        val = self.split["val"] if self.rank == 0 else []
        self.val_pairs = [c.pair(cid) for cid in val if cid in c.sources and cid in c.targets]
        self.val_sources = [c.sources[cid] for cid in val if cid in c.sources]
        unused = [cid for cid in val if cid not in c.sources]
        if unused:
            logger.warning(
                "validation cases %s hold no %s image: nothing to translate, not validated", ", ".join(unused), src_role
            )
        self.train_scans = (
            [c.sources[cid] for cid in self.split["train"] if cid in c.sources],
            [c.targets[cid] for cid in self.split["train"] if cid in c.targets],
        )
        for role, scans in zip((src_role, tgt_role), self.train_scans, strict=True):
            if not scans:
                raise InputError(
                    f"{cfg.data.root}: no {role} image among the training cases ({', '.join(self.split['train'])})"
                    f"; unpaired training needs both cohorts: add {role} scans or fix data.split"
                )
        return [
            (lambda s=s, slot=slot: cached_scan(s, slot, cfg, cache))
            for slot, scans in zip(("source", "target"), self.train_scans, strict=True)
            for s in scans
        ]

    @property
    def validates(self) -> bool:
        return bool(self.val_pairs or self.val_sources)

    def _check_distributable(self) -> None:
        """What torchrun cannot split: a model without a network, and a batch that does not divide by the ranks."""
        t = self.cfg.train
        if not self.kind.network:
            raise ConfigError(
                f"model.kind {self.cfg.model.kind} has no network to train in parallel; run it without torchrun"
            )
        if t.batch_size % self.world:
            raise ConfigError(
                f"train.batch_size {t.batch_size} does not split over {self.world} processes (each takes an equal "
                f"share of every batch); use a multiple of {self.world}"
            )

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self, until_epoch: int | None = None) -> dict[str, float]:
        """Train for train.epochs (or until train.max_minutes caps it, or ``until_epoch``); returns the last
        validation metrics.

        ``until_epoch`` stops early without changing the schedule, as an interruption at an epoch end would.
        """
        if self.model is None:
            return self._fit_baseline()
        t = self.cfg.train
        start = mark = time.perf_counter()
        val: dict[str, float] = {}
        try:
            with self._interrupt_after_step():
                while self.epoch < self._stop_epoch(until_epoch):
                    epoch_start = time.perf_counter()
                    losses = self._train_epoch()
                    is_last = self.epoch + 1 == self.schedule.epochs
                    validate = (self.epoch + 1) % t.val_every == 0 or is_last
                    val = self.validate() if validate and self.validates else {}
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    # the cap: the whole time from one epoch's end to the next (validation and checkpoints included)
                    # says whether another epoch fits; under torchrun rank 0 decides for all
                    now = time.perf_counter()
                    capped = self.schedule.reaches_cap(now - mark, now - start, self.epoch)
                    if self.world > 1:
                        capped = distributed.from_rank0(capped)
                        self.schedule.stopped_after = self.epoch if capped else None
                    mark = now
                    if capped and not val and self.validates:
                        val = self.validate()  # the run's last model gets its metrics, whatever val_every says
                    if self.rank == 0:
                        self._end_epoch(losses, val, now - epoch_start)
                    if capped:
                        self._told_under_trained()
                        break
                    # a request that came after the epoch's last step: all ranks stop, or none
                    self._stop_if(distributed.mean_and_any({}, self._stop_signalled)[1])
            ended = self.epoch >= self.schedule.epochs or self.schedule.stopped_after is not None
            if ended and self.rank == 0 and self.cfg.model.calibration != "none":
                self._calibrate()
        finally:
            self._close_writer()
        return val

    def _told_under_trained(self) -> None:
        """A run the cap stopped says so in the log and in best.pt too (last.pt, written after the stop, has it)."""
        if self.rank != 0:
            return
        logger.warning(
            "%s; the model is not the one train.epochs makes: raise train.max_minutes, or train on with --resume",
            self.schedule.note,
        )
        best = self.ckpt_dir / "best.pt"
        if not best.is_file():
            return
        ckpt = load_checkpoint(best)
        if ckpt["schedule"].get("stopped_after") is None:  # saved before the stop
            ckpt["schedule"] = {**ckpt["schedule"], "stopped_after": self.schedule.stopped_after}
            save_checkpoint(ckpt, best)

    def _stop_epoch(self, until_epoch: int | None) -> int:
        return self.schedule.epochs if until_epoch is None else min(until_epoch, self.schedule.epochs)

    def _close_writer(self) -> None:
        """Close TensorBoard's writer; a failed flush becomes an OutputError unless another error is on its way."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except OSError as exc:
            if sys.exc_info()[0] is None:
                raise output_error(self.run_dir / "tensorboard", exc) from exc

    @contextlib.contextmanager
    def _interrupt_after_step(self) -> Iterator[None]:
        """First Ctrl-C: a request honoured between steps (so ``last.pt`` is exact). Second Ctrl-C: stop at once.

        SIGTERM (a scheduler pre-empting the job, ``kill``) makes the same request, however often it comes: the hard
        stop is the scheduler's SIGKILL after its grace time. Under torchrun Ctrl-C does too, since torchrun passes
        the terminal's Ctrl-C on to processes that have already had it (and stops them with SIGKILL 30 s later).
        """
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield  # not ours to change (another thread, or a caller with its own handler)
            return
        previous_term = signal.getsignal(signal.SIGTERM)

        def request_stop(signum: int, frame: Any) -> None:
            first = not self._stop_signalled
            self._stop_signalled = True
            if signum == signal.SIGINT and self.world == 1:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                again = "Ctrl-C again to stop now, without saving"
            else:
                again = "SIGKILL to stop now, without saving"
            if first:
                logger.warning(
                    "%s: finishing the current step, then saving last.pt (%s)", signal.Signals(signum).name, again
                )

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous_term)

    def _stop_if(self, requested: bool) -> None:
        """Save last.pt and stop (KeyboardInterrupt) when ``requested``: a stop signal on any rank, as they agreed."""
        if requested:
            self._save("last.pt")
            if self.rank:
                raise KeyboardInterrupt
            logger.warning(
                "interrupted: saved %s at epoch %d, batch %d; continue with --resume",
                self.ckpt_dir / "last.pt",
                self.epoch,
                self.batch_in_epoch,
            )
            raise KeyboardInterrupt

    def _seed_epoch(self) -> torch.Tensor:
        seed = self.cfg.train.seed * 1_000_003 + self.epoch
        self.gen.manual_seed(seed)  # the same on every rank: the batch order and the image pools' draws
        torch.manual_seed(seed + 7_919 * self.rank)  # dropout: each rank its own masks for its own images
        return torch.randperm(len(self.dataset), generator=self.gen)

    def _loader(self, indices: torch.Tensor) -> torch.utils.data.DataLoader:
        """This rank's batches of the dataset's items in this order, made by ``train.workers`` processes (0: this one).

        The order is cut into whole batches of train.batch_size; under torchrun rank r takes the r-th equal part of
        each, so the ranks together see every batch that one process would (the sampling rule of PyTorch's
        DistributedSampler, applied batch by batch so an interrupted epoch resumes on any number of processes).
        """
        t = self.cfg.train
        share = t.batch_size // self.world
        batches = indices.view(-1, t.batch_size)
        mine = batches[:, self.rank * share : (self.rank + 1) * share].reshape(-1)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=share,
            sampler=mine.tolist(),
            num_workers=t.workers,
            worker_init_fn=_ignore_sigint if t.workers else None,
        )

    def _train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        t = self.cfg.train
        order = self._seed_epoch()
        if self.batch_in_epoch:  # resuming inside an epoch: same order, saved random states
            self.gen.set_state(self._saved_rng["gen"])
            torch.set_rng_state(self._saved_rng["torch"])
        else:
            self.epoch_losses = {}
        factor = self.schedule.factor(self.epoch)
        for name, opt in self.model.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.model.base_lr[name] * factor
        self.model.structure_scale = factor if self.cfg.model.structure_decay else 1.0
        self.model.begin_epoch(self.epoch)
        n_batches = len(order) // t.batch_size or 1
        if t.steps_per_epoch:
            n_batches = min(n_batches, t.steps_per_epoch)
        self.model.train(True)
        bar = tqdm(
            range(self.batch_in_epoch, n_batches),
            desc=f"epoch {self.epoch + 1}/{self.schedule.epochs}",
            disable=not self.progress or self.rank != 0,
            leave=False,
        )
        self.dataset.set_epoch(self.epoch)
        batches = iter(self._loader(order[self.batch_in_epoch * t.batch_size : n_batches * t.batch_size]))
        for b in bar:
            losses = self.model.train_step(next(batches))
            # the losses of the whole batch (the mean of the ranks' shares), and a stop request of any rank
            losses, stop = distributed.mean_and_any(losses, self._stop_signalled)
            self.batch_in_epoch, self.step = b + 1, self.step + 1
            for k, v in losses.items():
                self.epoch_losses.setdefault(k, []).append(v)
            bar.set_postfix(
                {k: f"{np.mean(v[-20:]):.3f}" for k, v in self.epoch_losses.items() if k in ("loss_d", "loss_g")}
            )
            if self.step % 10 == 0 and self.rank == 0:
                for k, v in losses.items():
                    self.writer.add_scalar(f"train/{k}", v, self.step)
            self._stop_if(stop)
        return {k: float(np.mean(v)) for k, v in self.epoch_losses.items()}

    def _end_epoch(self, losses: dict[str, float], val: dict[str, float], seconds: float) -> None:
        """History (with the schedule's note on the epoch the cap stopped the run after), TensorBoard, checkpoints and
        the epoch's log line."""
        # the generators' rate as used in this epoch
        lr = self.cfg.train.lr if self.model is None else self.model.optimizers["G"].param_groups[0]["lr"]
        row = {"epoch": self.epoch, "step": self.step, "seconds": round(seconds, 2), "lr": lr, **losses, **val}
        if val and self.cohorts is not None:
            row["selected_by"] = self.selected_by  # what picks best.pt, beside the numbers it picks by
        if self.schedule.stopped_after == self.epoch:
            row["note"] = self.schedule.note
        self.history.append(row)
        self._write_history()
        self.writer.add_scalar("train/lr", lr, self.epoch)
        for k, v in val.items():
            if isinstance(v, float):
                self.writer.add_scalar(f"val/{k.removeprefix('val_')}", v, self.epoch)
        improved = val.get(self.selected_by, math.inf) < self.best_mae
        if improved:
            self.best_mae = val[self.selected_by]
        last = self._save("last.pt")
        if improved and last is not None:  # the same state: linked, not written twice (a CycleGAN's is ~80 MB)
            atomic_copy(last, self.ckpt_dir / "best.pt")
        logger.info(
            "epoch %d/%s: %s%s",
            self.epoch,
            self.schedule.epochs,
            ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
            self._time_left(),
        )

    def _time_left(self) -> str:
        """The log's "; about N min left" for the epochs still to run, at the mean duration of the recent epochs."""
        left = self.schedule.epochs - self.epoch
        recent = [float(r["seconds"]) for r in self.history[-5:] if float(r.get("seconds") or 0) > 0]
        if left <= 0 or not recent or self.schedule.stopped_after is not None:
            return ""
        return f"; about {left * sum(recent) / len(recent) / 60:.1f} min left"

    def _measure_noise(self) -> NoiseModel:
        """model.inverse noise: the noise of the training low-dose scans beyond the normal-dose ones (noise.py),
        measured on the cached slices the steps see, each cohort on its own (no pairs used)."""
        start = time.perf_counter()
        ct = ct_intensity()
        # one case in memory at a time: the generators read each cached array when the measurement reaches it
        low = (ct.inverse(np.asarray(c.array("source"), dtype=np.float32)) for c in self.train_cases)
        normal = (
            ct.inverse(np.asarray(c.array("target"), dtype=np.float32))
            for c in (self.train_cases if self.train_targets is None else self.train_targets)
        )
        noise = measure_noise(low, normal, seed=self.cfg.train.seed)
        logger.info(
            "measured on %d low-dose and %d normal-dose training scans in %.1f s: %s",
            len(self.train_scans[0]),
            len(self.train_scans[1]),
            time.perf_counter() - start,
            noise.describe(),
        )
        return noise

    def _calibrate(self) -> None:
        """model.calibration: translate the training sources with best.pt's network, match the quantiles of its HU
        inside their body masks to the training targets' inside theirs (calibration.py), and write the map into
        best.pt, which translate then applies. Each side is masked by its own image, as unpaired data allows. The
        sources are translated as translate will (over the flip for a model.tta model): averaging two views narrows
        the HU distribution, and a map fitted on one view would then correct the wrong one."""
        start = time.perf_counter()
        path = self.ckpt_dir / "best.pt"
        path = path if path.exists() else self.ckpt_dir / "last.pt"
        ckpt = load_checkpoint(path)
        net = build_inference_net(ckpt, self.device, source=str(path))
        spec = replace(TranslatorSpec.from_dict(ckpt["spec"]), calibration=None)  # the network's own output
        task = get_task(self.cfg.model.task)
        rng, cap = np.random.default_rng(self.cfg.train.seed), CALIBRATION_VOXELS
        produced, reference = [], []
        for scan in self.train_scans[0]:
            src, _ = load_scan(scan, "source", self.cfg)
            out = translate_volume(net, src, spec, self.device, amp_dtype=self.amp_dtype, tta=spec.tta)
            produced.append(sample_values(out.array[body_mask(src.array, task.source_kind, src.affine)], rng, cap))
        for scan in self.train_scans[1]:
            tgt, _ = load_scan(scan, "target", self.cfg)
            reference.append(sample_values(tgt.array[body_mask(tgt.array, task.target_kind, tgt.affine)], rng, cap))
        produced_hu, reference_hu = np.concatenate(produced), np.concatenate(reference)
        calibration = fit_quantile_map(produced_hu, reference_hu)
        ckpt["spec"] = {**ckpt["spec"], "calibration": calibration}
        save_checkpoint(ckpt, path)  # a new file: a hard link from last.pt to best.pt is broken, last.pt unchanged
        p = np.array([0.05, 0.5, 0.95])
        logger.info(
            "intensity calibration fitted on %d training sources and %d training CTs in %.1f s and written to %s: "
            "output HU at 5/50/95 %% %s -> training CT %s",
            len(self.train_scans[0]),
            len(self.train_scans[1]),
            time.perf_counter() - start,
            path,
            np.round(np.quantile(produced_hu, p)).tolist(),
            np.round(np.quantile(reference_hu, p)).tolist(),
        )

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Translate each validation volume whole as translate does (over the flip for a model.tta model), back in HU
        on its own grid, and score it: a pair inside its body mask against its target (HU metrics); in a cohort run
        also without its target (:meth:`_pair_free_scores`), and a validation case holding only a source that way
        alone."""
        task = get_task(self.cfg.model.task)
        scores: list[dict[str, float]] = []
        free: list[dict[str, float]] = []
        paired = {p.case_id: p for p in self.val_pairs}
        if self.cohorts is None:
            cases = [(p.case_id, None) for p in self.val_pairs]
        else:  # every validation source, paired or not
            cases = [(s.case_id, s) for s in self.val_sources]
        for i, (cid, scan) in enumerate(cases):
            if cid in paired:  # the mask: the mask file (or the CT's body mask) on the original grid
                src, tgt, mask = load_pair(paired[cid], self.cfg)
            else:
                (src, _), tgt, mask = load_scan(scan, "source", self.cfg), None, None
            # as translate will (over the flip for a model.tta model): best.pt is chosen on the output users get;
            # in translate's batches too (on a CPU 4 slices: 1.15x faster than 16, docs/benchmarks.md; the same output)
            pred = translate_volume(self.net, src, self.spec, self.device, amp_dtype=self.amp_dtype, tta=self.spec.tta)
            if tgt is not None:  # scored as evaluate scores it (its default edition; head window for ldct)
                scores.append(similarity_scores(pred.array, tgt.array, mask, task.name, axial_axis(tgt.affine)))
            if self.cohorts is not None:
                free.append(self._pair_free_scores(src, pred))
            if i == 0:
                self._log_images(src, pred, tgt, mask)
        out = {
            f"val_{k}": float(np.mean([s[k] for s in scores]))
            for k in (scores[0] if scores else [])
            if k in ("mae", "psnr", "ssim", "ms_ssim", "rmse")
        }
        out.update({f"val_{k}": float(np.mean([s[k] for s in free])) for k in (free[0] if free else [])})
        return out

    def _pair_free_scores(self, src: Any, pred: Any) -> dict[str, float]:
        """The output judged without its target (pairfree.py): against the training target cohort's HU."""
        if self._reference is None:  # made once: the cohort's body HU from the slice cache
            ct = ct_intensity()
            values = (
                ct.inverse(np.asarray(c.array("target"))[np.asarray(c.array("mask")) > 0])
                for c in self.train_targets or []
            )
            self._reference = reference_sample(values, len(self.train_targets or []), self.cfg.train.seed)
        task = get_task(self.cfg.model.task)
        return pair_free_scores(src, task.source_kind, pred, self._reference, self.cfg.train.seed)

    def _log_images(self, src: Any, pred: Any, tgt: Any | None, mask: np.ndarray | None) -> None:
        axis = axial_axis(src.affine)
        if mask is None:  # a validation source without its target: its own body
            mask = body_mask(src.array, get_task(self.cfg.model.task).source_kind, src.affine)
        z = int(np.argwhere(mask).mean(axis=0)[axis])
        tiles = []
        shown = [(src.array, *np.percentile(src.array, (0.5, 99.5))), (pred.array, -1000, 1600)]
        for vol, lo, hi in shown + ([(tgt.array, -1000, 1600)] if tgt is not None else []):
            sl = np.take(np.asarray(vol, dtype=np.float32), z, axis=axis)
            tiles.append(np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1))
        self.writer.add_image("val/input_output_target", np.concatenate(tiles, axis=1)[None], self.epoch + 1)

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    # ------------------------------------------------------------------------------------------ baseline
    def _fit_baseline(self) -> dict[str, float]:
        self.lut.fit_cases(self.train_cases, self.train_targets, self.cfg.data.min_body_fraction)
        val = self.validate() if self.validates else {}
        self.epoch = self.schedule.epochs = 1
        self.best_mae = val.get(self.selected_by, math.inf)
        self._end_epoch({}, val, 0.0)
        self._save("best.pt")
        self._close_writer()
        return val

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        model_state = self.model.state_dict() if self.model is not None else {"nets": {"G": self.lut.state_dict()}}
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": self.cfg.model.kind,
            "config": self.cfg.to_dict(),
            "spec": self.spec.to_dict(),
            "in_channels": 2 * self.cfg.data.context + 1,
            "model": model_state,
            "schedule": self.schedule.to_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_mae": self.best_mae,  # the best value of selected_by (val_mae unless a cohort run has no pair)
            "selected_by": self.selected_by,
            "rng": {"gen": self.gen.get_state(), "torch": torch.get_rng_state()},
            "history": self.history,
            "epoch_losses": self.epoch_losses,
            "split": self.split,
            "precision": self.precision.precision,
            "precision_reason": self.precision.reason,
            "processes": self.world,
            "trained_on": self.trained_on,
        }

    def _choose_precision(self, ckpt: dict[str, Any] | None) -> PrecisionChoice:
        t = self.cfg.train
        if not self.kind.network:
            return NO_NETWORK
        if ckpt is not None and ckpt.get("precision") and t.precision == "auto":
            return PrecisionChoice(str(ckpt["precision"]), "as the run being resumed")
        return choose_precision(t.precision, self.device)  # fp16 off CUDA is refused by the model it is built for

    def _save(self, name: str) -> Path | None:
        """Write a checkpoint (rank 0 only: the ranks hold the same weights)."""
        return save_checkpoint(self._state(), self.ckpt_dir / name) if self.rank == 0 else None

    def _check_same_run(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse to resume a run with a config other than the one it was made with (bar RESUMABLE_CHANGES)."""
        if ckpt["kind"] != self.cfg.model.kind:
            raise CheckpointError(
                f"{path}: checkpoint is from a {ckpt['kind']} run but model.kind is {self.cfg.model.kind}; resume "
                "with the same model.kind or choose another --out"
            )
        try:
            saved = RunConfig.from_dict(ckpt["config"], source=f"{path} (its config)").to_dict()
        except ConfigError as exc:
            raise CheckpointError(
                f"{path}: the run's saved config is not valid today ({exc}); start a new run"
            ) from exc
        diffs = [d for d in config_differences(saved, self.cfg.to_dict()) if d.split(":")[0] not in RESUMABLE_CHANGES]
        if diffs:
            raise ConfigError(
                f"{self.run_dir}: --resume needs the config this run was made with; these differ: "
                f"{'; '.join(diffs[:8])}"
                + (f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else "")
                + "; use the same settings, or train into another --out"
            )

    def _load(self, ckpt: dict[str, Any], path: Path) -> None:
        ckpt = {**ckpt, "model": _to_device(ckpt["model"], self.device)}
        try:
            if self.model is not None:
                self.model.load_state_dict(ckpt["model"])
            else:
                self.lut.load_state_dict(ckpt["model"]["nets"]["G"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"{path}: networks do not match this config ({str(exc).splitlines()[0][:160]}); resume with the "
                "config the run was made with"
            ) from exc
        self.epoch, self.batch_in_epoch, self.step = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]), int(ckpt["step"])
        self.best_mae, self.history = float(ckpt["best_mae"]), list(ckpt["history"])
        self.epoch_losses = {k: list(v) for k, v in ckpt.get("epoch_losses", {}).items()}
        self._saved_rng = ckpt["rng"]
        self._write_history()

    def _write_history(self) -> None:
        if not self.history:
            return
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        atomic_write_csv(self.run_dir / "history.csv", self.history, columns)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, float]:
    """Train a model as configured; see :class:`Trainer`."""
    return Trainer(cfg, run_dir, resume=resume, progress=progress).fit()
