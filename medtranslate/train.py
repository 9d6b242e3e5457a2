"""The training loop: epochs of GAN updates on slices, whole-volume validation in HU, checkpoints, exact resume.

Every epoch reseeds its random streams from (seed, epoch), so a run resumed at an epoch boundary replays the same
batches, augmentations and dropout masks as one that never stopped; an interrupted epoch also saves its position
and random states, so Ctrl-C leaves a loadable ``last.pt`` that resumes where it stopped.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .baselines import ClassicalDenoiser, IntensityMap
from .config import RunConfig
from .errors import CheckpointError, ConfigError, InputError
from .gan import TranslationModel, build_model
from .metrics import ldct_metrics, synthrad_metrics
from .slices import PreparedCase, SliceDataset, discover_pairs, load_split, prepare_case
from .io import atomic_write_text
from .transforms import axial_axis, ct_intensity
from .translate import CHECKPOINT_FORMAT, TranslatorSpec, load_checkpoint, resolve_device, translate_volume

__all__ = ["Trainer", "train"]

logger = logging.getLogger(__name__)


def _lr_factor(epoch: int, epochs: int, decay: int) -> float:
    """Constant, then linear decay over the last ``decay`` epochs (pix2pix/CycleGAN schedule)."""
    return 1.0 - max(0, epoch + 1 - (epochs - decay)) / float(decay + 1)


class Trainer:
    """Train one model from a :class:`RunConfig` into ``run_dir``.

    Args:
        cfg: the experiment.
        run_dir: output folder: config.yaml, split.json, checkpoints/, history.csv, tensorboard/.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        progress: show a tqdm bar.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume; train without --resume first")
        if not resume and last.is_file():
            raise ConfigError(f"{self.run_dir}: already holds a run (checkpoints/last.pt); pass --resume to continue it or choose another --out")
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.device = resolve_device(t.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.gen = torch.Generator().manual_seed(t.seed)
        torch.manual_seed(t.seed)

        # data: read and preprocess every volume once
        pairs = discover_pairs(cfg)
        self.split = load_split(cfg, sorted(pairs))
        if not self.split["train"]:
            raise InputError(f"{cfg.data.root}: no training cases in the split; add cases or fix data.split")
        self.train_cases: list[PreparedCase] = []
        for cid in self.split["train"]:
            self.train_cases.append(prepare_case(pairs[cid], cfg)[0])
        self.val_cases = []
        for cid in self.split["val"]:
            _, src, tgt, mask = prepare_case(pairs[cid], cfg)  # the mask file (or CT body mask) on the original grid
            self.val_cases.append((cid, src, tgt, mask))
        in_channels = 2 * cfg.data.context + 1
        src_kind = "mr" if cfg.model.roles[0] == "mr" else "ct"

        # model
        if cfg.model.kind in ("intensity_map", "classical"):
            self.model: TranslationModel | None = None
            self.lut = IntensityMap(cfg.model.bins) if cfg.model.kind == "intensity_map" else ClassicalDenoiser()
            self.net = self.lut
            divisor = 1
        else:
            self.model = build_model(cfg, in_channels, self.device, self.gen)
            self.net = self.model.generator
            divisor = getattr(self.net, "divisor", 1)
            self.dataset = SliceDataset(self.train_cases, cfg, self.gen, paired=cfg.model.kind == "pix2pix")
        self.spec = TranslatorSpec(cfg.model.task, src_kind, ct_intensity().to_dict(), cfg.data.context, divisor, cfg.data.spacing)
        self.epoch, self.batch_in_epoch, self.step, self.best_mae = 0, 0, 0, math.inf
        self.history: list[dict[str, float]] = []
        self.epoch_losses: dict[str, list[float]] = {}
        self._writer = None
        if resume:
            self._load(last)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(self.run_dir / "config.yaml")
        atomic_write_text(self.run_dir / "split.json", json.dumps(self.split, indent=2) + "\n")

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self, until_epoch: int | None = None) -> dict[str, float]:
        """Train until train.epochs (or train.max_minutes, or ``until_epoch``); returns the last validation metrics.

        ``until_epoch`` stops early without changing the schedule, as an interruption at an epoch end would.
        """
        if self.model is None:
            return self._fit_baseline()
        t = self.cfg.train
        stop = t.epochs if until_epoch is None else min(until_epoch, t.epochs)
        start = time.perf_counter()
        longest = 0.0
        val: dict[str, float] = {}
        try:
            while self.epoch < stop:
                epoch_start = time.perf_counter()
                losses = self._train_epoch()
                is_last = self.epoch + 1 == t.epochs
                val = self.validate() if ((self.epoch + 1) % t.val_every == 0 or is_last) and self.val_cases else {}
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self._end_epoch(losses, val, time.perf_counter() - epoch_start)
                longest = max(longest, time.perf_counter() - epoch_start)
                # a budget, not a target: an epoch that would end past it is not started
                if t.max_minutes and (time.perf_counter() - start + longest) / 60.0 > t.max_minutes and self.epoch < stop:
                    logger.info("stopping after epoch %d: another epoch would pass train.max_minutes %.1f", self.epoch, t.max_minutes)
                    break
        except KeyboardInterrupt:
            self._save("last.pt")
            logger.warning("interrupted: saved %s at epoch %d, batch %d", self.ckpt_dir / "last.pt", self.epoch, self.batch_in_epoch)
            raise
        finally:
            if self._writer is not None:
                self._writer.close()
        return val

    def _seed_epoch(self) -> torch.Tensor:
        seed = self.cfg.train.seed * 1_000_003 + self.epoch
        self.gen.manual_seed(seed)
        torch.manual_seed(seed)
        return torch.randperm(len(self.dataset), generator=self.gen)

    def _train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        t = self.cfg.train
        order = self._seed_epoch()
        if self.batch_in_epoch:  # resuming inside an epoch: same order, saved random states
            self.gen.set_state(self._saved_rng["gen"])
            torch.set_rng_state(self._saved_rng["torch"])
        else:
            self.epoch_losses = {}
        factor = _lr_factor(self.epoch, t.epochs, t.decay)
        for opt in self.model.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = t.lr * factor
        n_batches = len(order) // t.batch_size or 1
        if t.steps_per_epoch:
            n_batches = min(n_batches, t.steps_per_epoch)
        self.model.train(True)
        bar = tqdm(range(self.batch_in_epoch, n_batches), desc=f"epoch {self.epoch + 1}/{t.epochs}", disable=not self.progress, leave=False)
        for b in bar:
            items = [self.dataset[int(i)] for i in order[b * t.batch_size : (b + 1) * t.batch_size]]
            batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
            losses = self.model.train_step(batch)
            self.batch_in_epoch, self.step = b + 1, self.step + 1
            for k, v in losses.items():
                self.epoch_losses.setdefault(k, []).append(v)
            bar.set_postfix({k: f"{np.mean(v[-20:]):.3f}" for k, v in self.epoch_losses.items() if k in ("loss_d", "loss_g")})
            if self.step % 10 == 0:
                for k, v in losses.items():
                    self.writer.add_scalar(f"train/{k}", v, self.step)
        return {k: float(np.mean(v)) for k, v in self.epoch_losses.items()}

    def _end_epoch(self, losses: dict[str, float], val: dict[str, float], seconds: float) -> None:
        lr = self.cfg.train.lr * _lr_factor(self.epoch - 1, self.cfg.train.epochs, self.cfg.train.decay)
        row = {"epoch": self.epoch, "step": self.step, "seconds": round(seconds, 2), "lr": lr, **losses, **val}
        self.history.append(row)
        self._write_history()
        self.writer.add_scalar("train/lr", lr, self.epoch)
        for k, v in val.items():
            if isinstance(v, float):
                self.writer.add_scalar(f"val/{k.removeprefix('val_')}", v, self.epoch)
        if val.get("val_mae", math.inf) < self.best_mae:
            self.best_mae = val["val_mae"]
            self._save("best.pt")
        self._save("last.pt")
        logger.info("epoch %d/%d: %s", self.epoch, self.cfg.train.epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Translate each validation volume whole, back in HU on its own grid, and score it inside the body mask."""
        scores: list[dict[str, float]] = []
        for i, (_, src, tgt, mask) in enumerate(self.val_cases):
            pred = translate_volume(self.net, src, self.spec, self.device, batch_size=16, amp_dtype=self.amp_dtype)
            if self.cfg.model.task == "mr2ct":
                s = synthrad_metrics(pred.array, tgt.array, mask)
            else:
                s = ldct_metrics(pred.array, tgt.array, axial_axis=axial_axis(tgt.affine), mask=mask)
                s["mae"] = float(np.abs(pred.array - tgt.array)[mask].mean())
            scores.append(s)
            if i == 0:
                self._log_images(src, pred, tgt, mask)
        return {f"val_{k}": float(np.mean([s[k] for s in scores])) for k in scores[0] if k in ("mae", "psnr", "ssim", "ms_ssim", "rmse")}

    def _log_images(self, src: Any, pred: Any, tgt: Any, mask: np.ndarray) -> None:
        z = int(np.argwhere(mask).mean(axis=0)[axial_axis(tgt.affine)])
        axis = axial_axis(tgt.affine)
        tiles = []
        for vol, lo, hi in ((src.array, *np.percentile(src.array, (0.5, 99.5))), (pred.array, -1000, 1600), (tgt.array, -1000, 1600)):
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
        if isinstance(self.lut, IntensityMap):
            sources = np.concatenate([c.source[0][c.mask[0]].numpy() for c in self.train_cases])
            targets = np.concatenate([c.target[0][c.mask[0]].numpy() for c in self.train_cases])
            self.lut.fit(sources, targets)
        else:  # tune the denoiser on a few body slices of every training case
            pairs = []
            for c in self.train_cases:
                body = torch.nonzero(c.mask[0].float().mean(dim=(0, 1)) >= max(self.cfg.data.min_body_fraction, 0.2)).flatten()
                for z in body[:: max(len(body) // 4, 1)][:4].tolist():
                    pairs.append((c.source[0, :, :, z].numpy(), c.target[0, :, :, z].numpy()))
            self.lut.fit([p[0] for p in pairs], [p[1] for p in pairs])
        val = self.validate() if self.val_cases else {}
        self.epoch = self.cfg.train.epochs
        self.best_mae = val.get("val_mae", math.inf)
        self._end_epoch({}, val, 0.0)
        self._save("best.pt")
        if self._writer is not None:
            self._writer.close()
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
            "schedule": {"kind": "linear", "epochs": self.cfg.train.epochs, "decay": self.cfg.train.decay},
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_mae": self.best_mae,
            "rng": {"gen": self.gen.get_state(), "torch": torch.get_rng_state()},
            "history": self.history,
            "epoch_losses": self.epoch_losses,
            "split": self.split,
        }

    def _save(self, name: str) -> Path:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / name
        tmp = path.with_name(f".{name}.partial-{os.getpid()}")
        torch.save(self._state(), str(tmp))
        os.replace(tmp, path)
        return path

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt["kind"] != self.cfg.model.kind:
            raise CheckpointError(f"{path}: checkpoint is from a {ckpt['kind']} run but model.kind is {self.cfg.model.kind}; resume with the same model.kind or choose another --out")
        try:
            if self.model is not None:
                self.model.load_state_dict(ckpt["model"])
            else:
                self.lut.load_state_dict(ckpt["model"]["nets"]["G"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: networks do not match this config ({str(exc).splitlines()[0][:160]}); resume with the config the run was made with") from exc
        self.epoch, self.batch_in_epoch, self.step = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]), int(ckpt["step"])
        self.best_mae, self.history = float(ckpt["best_mae"]), list(ckpt["history"])
        self.epoch_losses = {k: list(v) for k, v in ckpt.get("epoch_losses", {}).items()}
        self._saved_rng = ckpt["rng"]
        self._write_history()

    def _write_history(self) -> None:
        if not self.history:
            return
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, float]:
    """Train a model as configured; see :class:`Trainer`."""
    return Trainer(cfg, run_dir, resume=resume, progress=progress).fit()
