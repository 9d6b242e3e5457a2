"""3D volumes -> 2D (or 2.5D) slice datasets for training, paired (pix2pix) and unpaired (CycleGAN).

Volumes are read and preprocessed once (:func:`prepare_case`: RAS grid, [-1, 1]) into the on-disk slice cache
(:func:`cached_case`, cache.py), and training items read their slices from there, so memory does not grow with the
number of cases; slices are cut along the axial axis (spatial dim 2 after RAS orientation). 2.5D input stacks the k
slices on each side as channels (replicated at the ends) and predicts the centre slice. Slices with less body than
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

from .cache import CachedCase, cache_key, cached_or_rebuilt
from .checks import show
from .config import RunConfig
from .describe import check_modality
from .errors import ConfigError, InputError
from .cases import Pair, find_cases, pair_cases
from .io import Volume, read_case
from .tasks import get_task
from .transforms import (
    BACKGROUND,
    IntensityParams,
    Preprocessor,
    body_mask,
    check_same_grid,
    ct_intensity,
    intensity_for,
)

__all__ = [
    "PreparedCase",
    "default_split_file",
    "load_split",
    "read_split",
    "discover_pairs",
    "prepare_case",
    "SliceDataset",
    "context_indices",
    "cached_case",
    "load_pair",
]

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


def default_split_file(root: str | Path) -> Path | None:
    """The split.json in data.root, else in its parent (as in sample_data/), else None."""
    root = Path(root)
    return next((p for p in (root / "split.json", root.parent / "split.json") if p.is_file()), None)


def load_split(cfg: RunConfig, ids: list[str]) -> dict[str, list[str]]:
    """train/val/test case ids: from data.split (or split.json in or above data.root), else a seeded random split."""
    root = Path(cfg.data.root)
    path = Path(cfg.data.split) if cfg.data.split else default_split_file(root)
    if path is not None:
        split = read_split(path)
        missing = sorted(set(split["train"] + split["val"]) - set(ids))
        if missing:
            raise InputError(
                f"{path}: cases {', '.join(missing)} are in the split but have no complete pair under {root}"
            )
        return {k: [i for i in split[k] if i in ids] for k in ("train", "val", "test")}
    rng = np.random.default_rng(cfg.train.seed)
    order = [str(i) for i in rng.permutation(sorted(ids))]  # plain str: numpy scalars would not load from a checkpoint
    n_val = max(1, int(round(cfg.data.val_fraction * len(order)))) if len(order) > 1 else 0
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val]), "test": []}


def read_split(path: str | Path) -> dict[str, list[str]]:
    """A split file: a JSON object with lists of case ids under train, val and test (each optional, disjoint)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found; fix data.split or remove it for a random split")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path}: not a JSON split file ({type(exc).__name__}); expected "
            f'{{"train": [...], "val": [...], "test": [...]}}'
        ) from exc
    if not isinstance(raw, dict) or set(raw) - {"train", "val", "test"}:
        raise InputError(f"{path}: a split file holds lists under train, val and test only, got {show(raw)}")
    split = {}
    for key in ("train", "val", "test"):
        ids = raw.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{path}: '{key}' must be a list of case ids (strings), got {show(ids)}")
        split[key] = ids
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(split[a]) & set(split[b]))
        if both:
            raise InputError(
                f"{path}: cases {', '.join(both[:5])} are in both {a} and {b}; a case belongs to one part only"
            )
    return split


def discover_pairs(cfg: RunConfig) -> dict[str, Pair]:
    """All complete source/target pairs under data.root; unmatched cases are reported by id."""
    src_role, tgt_role = cfg.model.roles
    pairs, unmatched = pair_cases(find_cases(cfg.data.root), src_role, tgt_role)
    for cid, reason in unmatched.items():
        logger.warning("case '%s' skipped: %s", cid, reason)
    if not pairs:
        raise InputError(
            f"{cfg.data.root}: no {src_role}/{tgt_role} pairs found; expected {src_role}/<id>.nii.gz + "
            f"{tgt_role}/<id>.nii.gz "
            f"or <id>/{src_role}.nii.gz + <id>/{tgt_role}.nii.gz"
            + (f" (unmatched: {', '.join(unmatched)})" if unmatched else "")
        )
    return {p.case_id: p for p in pairs}


def load_pair(pair: Pair, cfg: RunConfig) -> tuple[Volume, Volume, np.ndarray]:
    """Read and check one pair: source and target volumes and the body mask on their grid (the mask file's or the CT's).

    Raises:
        InputError, GeometryMismatchError: a file that cannot be read, is not the modality its role says, or whose
            grid differs from its partner's; the message names the files.
    """
    task = get_task(cfg.model.task)
    src, tgt = read_case(pair.source), read_case(pair.target)
    purpose = f"the {task.source_role} image of a {task.name} pair"
    check_modality(src, task.source_kind, pair.source.label, purpose)
    check_modality(
        tgt, task.target_kind, pair.target.label, f"the {task.target_role} image of a {task.name} pair must be a CT"
    )
    check_same_grid(
        src,
        tgt,
        names=(f"{task.source_role} {pair.source.label}", f"{task.target_role} {pair.target.label}"),
        case=pair.case_id,
    )
    if pair.mask is not None:
        mvol = read_case(pair.mask)
        check_same_grid(
            mvol, tgt, names=(f"mask {pair.mask.label}", f"{task.target_role} {pair.target.label}"), case=pair.case_id
        )
        mask = np.asarray(mvol.array) > 0
        if not mask.any():
            raise InputError(
                f"{pair.mask.label}: the mask of case '{pair.case_id}' is empty; fix it or remove it (a body mask is "
                "then computed)"
            )
    else:
        mask = body_mask(tgt.array, "ct", tgt.affine)
        if not mask.any():
            raise InputError(
                f"{pair.target.label}: no body found in the CT of case '{pair.case_id}' (nothing above -500 HU); "
                "check the file"
            )
    return src, tgt, mask


def prepare_case(pair: Pair, cfg: RunConfig) -> PreparedCase:
    """Read, check and preprocess one pair (see :func:`load_pair`) into tensors on the RAS grid in [-1, 1]."""
    task = get_task(cfg.model.task)
    src, tgt, mask = load_pair(pair, cfg)
    src_int = intensity_for(task.source_kind, src.array, src.affine, source=pair.source.label)
    pre = Preprocessor(spacing=cfg.data.spacing)
    a = pre(src, src_int, mask)
    b = pre(tgt, ct_intensity(), mask, keep_mask=False)  # the mask was carried through once, with the source
    if a["image"].shape[-1] < 2 * cfg.data.context + 1:
        raise ConfigError(
            f"case '{pair.case_id}': data.context {cfg.data.context} needs {2 * cfg.data.context + 1} slices but the "
            "volume has "
            f"{a['image'].shape[-1]} axial slices; lower data.context"
        )
    prepared = PreparedCase(
        pair.case_id,
        a["image"].as_tensor().float(),
        b["image"].as_tensor().float(),
        a["mask"].as_tensor() > 0.5,
        pair,
        src_int,
    )
    return prepared


def cached_case(pair: Pair, cfg: RunConfig, cache_dir: str | Path) -> CachedCase:
    """The pair in the slice cache (see cache.py): read from ``cache_dir`` when there, else prepared and written."""
    return cached_or_rebuilt(Path(cache_dir) / cache_key(pair, cfg), lambda: prepare_case(pair, cfg))


def context_indices(z: int, context: int, depth: int) -> list[int]:
    """Slices z-k..z+k of a volume of ``depth`` axial slices, replicated beyond the ends (2.5D input channels)."""
    return [min(max(z + d, 0), depth - 1) for d in range(-context, context + 1)]


class SliceDataset(torch.utils.data.Dataset):
    """Training slices. Paired: source and target of the same slice. Unpaired: the target slice comes from another case.

    Every random draw of an item (crop, flips, affine, unpaired partner) comes from a generator seeded by
    (seed, epoch, index) alone, so an item is the same whichever process or data-loader worker makes it, in whatever
    order: a run gives the same batches with 0 or N workers, and a resumed run the same as an uninterrupted one.
    ``set_epoch`` tells the dataset which epoch it serves.
    """

    def __init__(self, cases: list[CachedCase], cfg: RunConfig, seed: int, paired: bool = True):
        self.cases, self.cfg, self.seed, self.paired = cases, cfg, int(seed), paired
        self.epoch = 0
        self.index: list[tuple[int, int]] = []
        for ci, case in enumerate(cases):
            body = np.flatnonzero(case.body_fraction >= cfg.data.min_body_fraction)
            self.index += [(ci, int(z)) for z in body]
        if not self.index:
            raise InputError(
                f"no training slice has at least {cfg.data.min_body_fraction:.0%} body; lower data.min_body_fraction "
                "or check the masks"
            )
        if not paired and len(cases) < 2:
            raise InputError(
                "unpaired training needs at least 2 training cases, so source and target slices come from different "
                "cases"
            )

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def item_generator(self, i: int) -> torch.Generator:
        """The generator of item i in this epoch: seeded from (seed, epoch, i) through numpy's SeedSequence."""
        state = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = self.item_generator(i)
        ci, z = self.index[i]
        case = self.cases[ci]
        source = case.slices("source", context_indices(z, self.cfg.data.context, case.shape[0]))
        if self.paired:
            target = case.slices("target", [z])
            return dict(zip(("source", "target"), self._augment([source, target], rng)))
        while True:  # a target slice from another case
            tj, tz = self.index[int(torch.rand(1, generator=rng).item() * len(self.index)) % len(self.index)]
            if tj != ci:
                break
        target = self.cases[tj].slices("target", [tz])
        # the source's body mask rides along on the [-1, 1] scale, so augmentation pads it with background
        source, mask = self._augment([source, case.slices("mask", [z]) * 2 - 1], rng)
        return {"source": source, "target": self._augment([target], rng)[0], "mask": (mask + 1) / 2}

    def _augment(self, images: list[torch.Tensor], rng: torch.Generator) -> list[torch.Tensor]:
        """Crop to the patch size and, if enabled, flip/rotate/scale: one draw for all images given."""
        sizes = [im.shape[0] for im in images]
        x = torch.cat(images, 0)
        d = self.cfg.data
        p = d.patch_size
        x = _pad_to(x, p)
        u = torch.rand(5, generator=rng)
        top = int(u[0].item() * (x.shape[1] - p + 1))
        left = int(u[1].item() * (x.shape[2] - p + 1))
        x = x[:, top : top + p, left : left + p]
        if d.augment:
            if u[2].item() < 0.5:
                x = torch.flip(x, dims=[1])  # first in-plane axis is left-right after RAS orientation
            angle = math.radians((2 * u[3].item() - 1) * d.rotate_deg)
            scale = 1.0 + (2 * u[4].item() - 1) * d.scale
            if angle or scale != 1.0:
                theta = torch.tensor(
                    [
                        [math.cos(angle) / scale, -math.sin(angle) / scale, 0.0],
                        [math.sin(angle) / scale, math.cos(angle) / scale, 0.0],
                    ]
                )
                grid = F.affine_grid(theta[None], [1, x.shape[0], p, p], align_corners=False)
                # shift so the zero padding of grid_sample is the background value
                x = (
                    F.grid_sample(
                        (x - BACKGROUND)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
                    )[0]
                    + BACKGROUND
                )
        return list(torch.split(x, sizes, 0))


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    ph, pw = max(size - x.shape[1], 0), max(size - x.shape[2], 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=BACKGROUND)
    return x
