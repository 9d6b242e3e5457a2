"""3D volumes -> 2D (or 2.5D) slice datasets for training, paired (pix2pix) and unpaired (CycleGAN).

Volumes are read and preprocessed once per run (:func:`prepare_case`) and kept in memory as RAS tensors in
[-1, 1]; slices are cut along the axial axis (spatial dim 2 after RAS orientation). 2.5D input stacks the k slices
on each side as channels (replicated at the ends) and predicts the centre slice. Slices with less body than
``min_body_fraction`` are skipped. Training patches are random crops (padded with the background value when a
slice is smaller); augmentation (flip, small rotation and scaling) draws once per pair and moves both images alike.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import RunConfig
from .errors import ConfigError, InputError
from .io import Pair, Volume, find_cases, pair_cases, read_case
from .transforms import BACKGROUND, IntensityParams, Preprocessor, body_mask, check_same_grid, ct_intensity, intensity_for

__all__ = ["PreparedCase", "default_split_file", "load_split", "discover_pairs", "prepare_case", "SliceDataset", "context_slices"]

logger = logging.getLogger(__name__)


@dataclass
class PreparedCase:
    """One case, preprocessed once: source and target (1, X, Y, Z) in [-1, 1] on the RAS grid, and its body mask."""

    case_id: str
    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    pair: Pair
    source_intensity: IntensityParams


def _kind(role: str) -> str:
    return "mr" if role == "mr" else "ct"


def default_split_file(root: str | Path) -> Path | None:
    """The split.json in data.root, else in its parent (as in sample_data/), else None."""
    root = Path(root)
    return next((p for p in (root / "split.json", root.parent / "split.json") if p.is_file()), None)


def load_split(cfg: RunConfig, ids: list[str]) -> dict[str, list[str]]:
    """train/val/test case ids: from data.split (or split.json in or above data.root), else a seeded random split."""
    root = Path(cfg.data.root)
    path = Path(cfg.data.split) if cfg.data.split else default_split_file(root)
    if path is not None:
        if not path.is_file():
            raise InputError(f"{path}: split file not found; fix data.split or remove it for a random split")
        split = json.loads(path.read_text())
        missing = sorted(set(split.get("train", []) + split.get("val", [])) - set(ids))
        if missing:
            raise InputError(f"{path}: cases {', '.join(missing)} are in the split but have no complete pair under {root}")
        return {k: [i for i in split.get(k, []) if i in ids] for k in ("train", "val", "test")}
    rng = np.random.default_rng(cfg.train.seed)
    order = list(rng.permutation(sorted(ids)))
    n_val = max(1, int(round(cfg.data.val_fraction * len(order)))) if len(order) > 1 else 0
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val]), "test": []}


def discover_pairs(cfg: RunConfig) -> dict[str, Pair]:
    """All complete source/target pairs under data.root; unmatched cases are reported by id."""
    src_role, tgt_role = cfg.model.roles
    pairs, unmatched = pair_cases(find_cases(cfg.data.root), src_role, tgt_role)
    for cid, reason in unmatched.items():
        logger.warning("case '%s' skipped: %s", cid, reason)
    if not pairs:
        raise InputError(
            f"{cfg.data.root}: no {src_role}/{tgt_role} pairs found; expected {src_role}/<id>.nii.gz + {tgt_role}/<id>.nii.gz "
            f"or <id>/{src_role}.nii.gz + <id>/{tgt_role}.nii.gz" + (f" (unmatched: {', '.join(unmatched)})" if unmatched else "")
        )
    return {p.case_id: p for p in pairs}


def prepare_case(pair: Pair, cfg: RunConfig) -> tuple[PreparedCase, Volume, Volume, np.ndarray]:
    """Read and preprocess one pair; returns the prepared tensors, the original volumes and the body mask on their grid."""
    src_role, tgt_role = cfg.model.roles
    src, tgt = read_case(pair.source), read_case(pair.target)
    check_same_grid(src, tgt, names=(src_role, tgt_role), case=pair.case_id)
    mask = np.asarray(read_case(pair.mask).array) > 0 if pair.mask is not None else body_mask(tgt.array, "ct", tgt.affine)
    src_int = intensity_for(_kind(src_role), src.array, src.affine)
    pre = Preprocessor(spacing=cfg.data.spacing)
    a = pre(src, src_int, mask)
    b = pre(tgt, ct_intensity(), mask, keep_mask=False)  # the mask was carried through once, with the source
    if a["image"].shape[-1] < 2 * cfg.data.context + 1:
        raise ConfigError(
            f"case '{pair.case_id}': data.context {cfg.data.context} needs {2 * cfg.data.context + 1} slices but the volume has "
            f"{a['image'].shape[-1]} axial slices; lower data.context"
        )
    prepared = PreparedCase(pair.case_id, a["image"].as_tensor().float(), b["image"].as_tensor().float(), a["mask"].as_tensor() > 0.5, pair, src_int)
    return prepared, src, tgt, mask


def context_slices(volume: torch.Tensor, z: int | torch.Tensor, context: int) -> torch.Tensor:
    """Slices z-k..z+k of a (1, X, Y, Z) volume as channels (C, X, Y), replicated beyond the ends."""
    zs = torch.clamp(torch.arange(-context, context + 1) + int(z), 0, volume.shape[-1] - 1)
    return volume[0, :, :, zs].permute(2, 0, 1)


class SliceDataset(torch.utils.data.Dataset):
    """Training slices. Paired: source and target of the same slice. Unpaired: the target slice comes from another case.

    Randomness (crop, flips, affine, unpaired partner) is drawn from ``generator`` so a seed fixes a run.
    """

    def __init__(self, cases: list[PreparedCase], cfg: RunConfig, generator: torch.Generator, paired: bool = True):
        self.cases, self.cfg, self.rng, self.paired = cases, cfg, generator, paired
        self.index: list[tuple[int, int]] = []
        for ci, case in enumerate(cases):
            fraction = case.mask[0].float().mean(dim=(0, 1))
            self.index += [(ci, int(z)) for z in torch.nonzero(fraction >= cfg.data.min_body_fraction).flatten()]
        if not self.index:
            raise InputError(f"no training slice has at least {cfg.data.min_body_fraction:.0%} body; lower data.min_body_fraction or check the masks")
        if not paired and len(cases) < 2:
            raise InputError("unpaired training needs at least 2 training cases, so source and target slices come from different cases")

    def __len__(self) -> int:
        return len(self.index)

    def _draw(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.rng)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ci, z = self.index[i]
        case = self.cases[ci]
        source = context_slices(case.source, z, self.cfg.data.context)
        if self.paired:
            target = case.target[0, :, :, z][None]
            return dict(zip(("source", "target"), self._augment([source, target])))
        while True:  # a target slice from another case
            tj, tz = self.index[int(self._draw(1).item() * len(self.index)) % len(self.index)]
            if tj != ci:
                break
        target = self.cases[tj].target[0, :, :, tz][None]
        return {"source": self._augment([source])[0], "target": self._augment([target])[0]}

    def _augment(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crop to the patch size and, if enabled, flip/rotate/scale: one draw for all images given."""
        sizes = [im.shape[0] for im in images]
        x = torch.cat(images, 0)
        d = self.cfg.data
        p = d.patch_size
        x = _pad_to(x, p)
        u = self._draw(5)
        top = int(u[0].item() * (x.shape[1] - p + 1))
        left = int(u[1].item() * (x.shape[2] - p + 1))
        x = x[:, top : top + p, left : left + p]
        if d.augment:
            if u[2].item() < 0.5:
                x = torch.flip(x, dims=[1])  # first in-plane axis is left-right after RAS orientation
            angle = math.radians((2 * u[3].item() - 1) * d.rotate_deg)
            scale = 1.0 + (2 * u[4].item() - 1) * d.scale
            if angle or scale != 1.0:
                theta = torch.tensor([[math.cos(angle) / scale, -math.sin(angle) / scale, 0.0], [math.sin(angle) / scale, math.cos(angle) / scale, 0.0]])
                grid = F.affine_grid(theta[None], [1, x.shape[0], p, p], align_corners=False)
                # shift so the zero padding of grid_sample is the background value
                x = F.grid_sample((x - BACKGROUND)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + BACKGROUND
        return list(torch.split(x, sizes, 0))


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    ph, pw = max(size - x.shape[1], 0), max(size - x.shape[2], 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=BACKGROUND)
    return x
