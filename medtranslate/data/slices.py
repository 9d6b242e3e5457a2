"""3D volumes -> 2D (or 2.5D) slice datasets for training, paired (pix2pix) and unpaired (CycleGAN).

Paired training reads pairs (:func:`discover_pairs`): a source and a target of one subject on one grid. Unpaired
training reads cohorts (:func:`discover_cohorts`): every source image and every target image, of any subjects, each
on its own grid with a body mask made from itself (:func:`prepare_scan`). Volumes are read and preprocessed once
(:func:`prepare_case`, :func:`prepare_scan`: RAS grid, [-1, 1]) into the on-disk slice cache
(:func:`cached_case`, cache.py), and training items read their slices from there, so memory does not grow with the
number of cases; slices are cut along the axial axis (spatial dim 2 after RAS orientation). 2.5D input stacks the k
slices on each side as channels (replicated at the ends) and predicts the centre slice. Slices with less body than
``min_body_fraction`` are skipped. Training patches are random crops, anywhere in the slice or, with ``data.crop``
body, centred on a body pixel (padded with the background value when a slice is smaller); augmentation (flip, small
rotation and scaling) draws once per pair and moves both images alike. An unpaired source slice meets a target slice
drawn from the whole target cohort or, with ``data.partner`` area, from the target slices nearest to it in body area.
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

from medtranslate.core.checks import show
from medtranslate.core.config import RunConfig
from medtranslate.core.errors import ConfigError, GeometryMismatchError, InputError
from medtranslate.core.tasks import get_task
from medtranslate.data.cache import CachedCase, cache_key, cached_or_rebuilt, scan_key
from medtranslate.imaging.preprocessor import Preprocessor
from medtranslate.imaging.transforms import (
    BACKGROUND,
    IntensityParams,
    body_mask,
    check_same_grid,
    ct_intensity,
    intensity_for,
)
from medtranslate.imaging.volume import Volume
from medtranslate.io.cases import Case, Cohorts, Pair, Scan, cohort_cases, find_cases, pair_cases
from medtranslate.io.describe import check_modality
from medtranslate.io.files import read_case

__all__ = [
    "PreparedCase",
    "PreparedScan",
    "discover_cohorts",
    "load_scan",
    "prepare_scan",
    "cached_scan",
    "default_split_file",
    "load_split",
    "read_split",
    "split_cohorts",
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

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"source": self.source, "target": self.target, "mask": self.mask}


@dataclass
class PreparedScan:
    """One cohort scan, preprocessed once: its image (1, X, Y, Z) in [-1, 1] on the RAS grid, in the slot of its role
    ("source" or "target"), and the body mask made from it (or its case's mask file)."""

    case_id: str
    slot: str
    image: torch.Tensor
    mask: torch.Tensor

    def arrays(self) -> dict[str, torch.Tensor]:
        return {self.slot: self.image, "mask": self.mask}


def default_split_file(root: str | Path) -> Path | None:
    """The split.json in data.root, else in its parent (as in sample_data/), else None."""
    root = Path(root)
    return next((p for p in (root / "split.json", root.parent / "split.json") if p.is_file()), None)


def split_file(cfg: RunConfig) -> Path | None:
    """The run's split file: data.split, else the split.json in or above data.root; None for a random split."""
    return Path(cfg.data.split) if cfg.data.split else default_split_file(cfg.data.root)


def load_split(cfg: RunConfig, ids: list[str], val_pool: list[str] | None = None) -> dict[str, list[str]]:
    """train/val/test case ids: from data.split (or split.json in or above data.root), else a seeded random split.

    ``val_pool``: the ids a random split may draw validation cases from (default: all of ``ids``); the rest train.
    """
    root = Path(cfg.data.root)
    path = split_file(cfg)
    if path is not None:
        split = read_split(path)
        missing = sorted(set(split["train"] + split["val"]) - set(ids))
        if missing:
            what = "no complete pair" if val_pool is None else "no usable image"
            raise InputError(f"{path}: cases {', '.join(missing)} are in the split but have {what} under {root}")
        return {k: [i for i in split[k] if i in ids] for k in ("train", "val", "test")}
    rng = np.random.default_rng(cfg.train.seed)
    pool = sorted(ids if val_pool is None else val_pool)
    order = [str(i) for i in rng.permutation(pool)]  # plain str: numpy scalars would not load from a checkpoint
    n_val = max(1, int(round(cfg.data.val_fraction * len(order)))) if len(order) > 1 else 0
    val = sorted(order[:n_val])
    return {"train": sorted(set(ids) - set(val)), "val": val, "test": []}


def split_cohorts(cfg: RunConfig, cohorts: Cohorts) -> dict[str, list[str]]:
    """:func:`load_split` for unpaired training: a random split draws its validation cases from the paired cases
    (scored in HU), or, when there is none, from the cases holding only a source (scored without pairs); the rest,
    of both cohorts, train."""
    paired = cohorts.paired_ids
    pool = paired or sorted(set(cohorts.sources) - set(cohorts.targets))
    split = load_split(cfg, cohorts.ids, val_pool=pool)
    if split_file(cfg) is None and split["val"]:
        src_role = cfg.model.roles[0]
        kind = "paired" if paired else f"{src_role}-only"
        logger.info("random split: validation cases %s drawn from the %s cases", ", ".join(split["val"]), kind)
    return split


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


def _split_names_none(cfg: RunConfig, ids: set[str]) -> bool:
    """True when the run's split file exists and lists none of ``ids``."""
    path = split_file(cfg)
    try:
        split = read_split(path) if path is not None else None
    except InputError:  # load_split reports a bad split file, naming it
        return False
    return split is not None and not ids & {cid for part in split.values() for cid in part}


def discover_pairs(cfg: RunConfig) -> dict[str, Pair]:
    """All complete source/target pairs under data.root; unmatched cases are reported by id.

    Raises:
        InputError: no pair at all; the message names the unpaired cases and what trains on them.
    """
    src_role, tgt_role = cfg.model.roles
    pairs, unmatched = pair_cases(find_cases(cfg.data.root), src_role, tgt_role)
    unpaired_help = (
        f"{cfg.model.kind} learns from pairs (a {src_role} and a {tgt_role} of one subject on one grid); for "
        "scans without partners use model.kind cyclegan (e.g. pipelines/"
        f"{cfg.model.task}_cyclegan.yaml), or register each {src_role} to its {tgt_role} with "
        "'medtranslate preprocess --register'"
    )
    if unmatched and pairs:  # one line: a folder may hold whole cohorts beside its pairs
        reasons = "; ".join(f"{cid}: {why}" for cid, why in list(unmatched.items())[:3])
        more = f"; and {len(unmatched) - 3} more" if len(unmatched) > 3 else ""
        # a split file that names none of them: they are another run's data (the cohorts beside the sample pairs)
        level = logging.INFO if _split_names_none(cfg, set(unmatched)) else logging.WARNING
        logger.log(level, "%d cases without a pair left out (%s%s): %s", len(unmatched), reasons, more, unpaired_help)
    if not pairs:
        raise InputError(
            f"{cfg.data.root}: no {src_role}/{tgt_role} pairs found; expected {src_role}/<id>.nii.gz + "
            f"{tgt_role}/<id>.nii.gz "
            f"or <id>/{src_role}.nii.gz + <id>/{tgt_role}.nii.gz"
            + (f" (unpaired: {', '.join(unmatched)}); {unpaired_help}" if unmatched else "")
        )
    return {p.case_id: p for p in pairs}


def discover_cohorts(cfg: RunConfig) -> Cohorts:
    """Every source-role and every target-role image under data.root, paired or not (for unpaired training).

    Raises:
        InputError: either cohort is empty; the message says what was found.
    """
    src_role, tgt_role = cfg.model.roles
    cohorts, unused = cohort_cases(find_cases(cfg.data.root), src_role, tgt_role)
    for cid, reason in unused.items():
        logger.warning("case '%s' skipped: %s", cid, reason)
    for role, cohort in ((src_role, cohorts.sources), (tgt_role, cohorts.targets)):
        if not cohort:
            raise InputError(
                f"{cfg.data.root}: no {role} image found; unpaired training needs a {src_role} cohort and a "
                f"{tgt_role} cohort, e.g. {src_role}/<id>.nii.gz and {tgt_role}/<other id>.nii.gz"
            )
    return cohorts


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
        mask = _mask_in(mvol, pair.mask, pair.case_id)
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


def _mask_in(mvol: Volume, mask: Case, case_id: str) -> np.ndarray:
    """A mask file's voxels as a boolean mask; an empty one is an error naming the file."""
    values = np.asarray(mvol.array) > 0
    if not values.any():
        raise InputError(
            f"{mask.label}: the mask of case '{case_id}' is empty; fix it or remove it (a body mask is then computed)"
        )
    return values


def load_scan(scan: Scan, slot: str, cfg: RunConfig) -> tuple[Volume, np.ndarray]:
    """Read and check one cohort scan: its volume and its body mask (its case's mask file when that lies on its grid,
    else made from the image itself, as the image's modality needs).

    Raises:
        InputError: a file that cannot be read, is not the modality its role says, or an empty mask or body.
    """
    task = get_task(cfg.model.task)
    kind = task.source_kind if slot == "source" else task.target_kind
    vol = read_case(scan.image)
    check_modality(vol, kind, scan.image.label, f"a {scan.role} image of the {task.name} task's {slot} cohort")
    if scan.mask is not None:
        mvol = read_case(scan.mask)
        try:
            check_same_grid(mvol, vol, names=(f"mask {scan.mask.label}", f"{scan.role} {scan.image.label}"))
        except GeometryMismatchError as exc:
            logger.info(
                "case '%s': its mask is not on the %s's grid (%s); the body mask is made from the image",
                scan.case_id,
                scan.role,
                exc,
            )
        else:
            return vol, _mask_in(mvol, scan.mask, scan.case_id)
    mask = body_mask(vol.array, kind, vol.affine)
    if not mask.any():
        raise InputError(
            f"{scan.image.label}: no body found in the {scan.role} image of case '{scan.case_id}'; check the file"
        )
    return vol, mask


def prepare_scan(scan: Scan, slot: str, cfg: RunConfig) -> PreparedScan:
    """Read, check and preprocess one cohort scan (see :func:`load_scan`) into tensors on the RAS grid in [-1, 1]."""
    task = get_task(cfg.model.task)
    vol, mask = load_scan(scan, slot, cfg)
    if slot == "source":
        # as translate scales it: percentiles inside the body mask made from the image (not a mask file)
        intensity = intensity_for(task.source_kind, vol.array, vol.affine, source=scan.image.label)
    else:
        intensity = ct_intensity()
    out = Preprocessor(spacing=cfg.data.spacing)(vol, intensity, mask)
    if slot == "source" and out["image"].shape[-1] < 2 * cfg.data.context + 1:
        raise ConfigError(
            f"case '{scan.case_id}': data.context {cfg.data.context} needs {2 * cfg.data.context + 1} slices but "
            f"{scan.image.label} has {out['image'].shape[-1]} axial slices; lower data.context"
        )
    return PreparedScan(scan.case_id, slot, out["image"].as_tensor().float(), out["mask"].as_tensor() > 0.5)


def cached_scan(scan: Scan, slot: str, cfg: RunConfig, cache_dir: str | Path) -> CachedCase:
    """The cohort scan in the slice cache, filling ``slot`` (source or target): read from there, else written."""
    return cached_or_rebuilt(Path(cache_dir) / scan_key(scan, slot, cfg), lambda: prepare_scan(scan, slot, cfg))


def cached_case(pair: Pair, cfg: RunConfig, cache_dir: str | Path) -> CachedCase:
    """The pair in the slice cache (see cache.py): read from ``cache_dir`` when there, else prepared and written."""
    return cached_or_rebuilt(Path(cache_dir) / cache_key(pair, cfg), lambda: prepare_case(pair, cfg))


def context_indices(z: int, context: int, depth: int) -> list[int]:
    """Slices z-k..z+k of a volume of ``depth`` axial slices, replicated beyond the ends (2.5D input channels)."""
    return [min(max(z + d, 0), depth - 1) for d in range(-context, context + 1)]


# data.partner area: a source slice meets one of the tenth of the target cohort's slices nearest to it in body area:
# dozens of partners each on the sample CT cohort (about 290 slices), and the MR cohort's wide mid-head slices no
# longer meet the CT cohort's narrow neck (the top of the head and the neck, alike in area, still meet).
PARTNER_SHARE = 0.1


class SliceDataset(torch.utils.data.Dataset):
    """Training slices. Paired: source and target of the same slice. Unpaired (``targets`` given): each source slice
    meets a target slice drawn from the target cohort (data.partner any) or from its slices nearest in body area
    (data.partner area), of another subject whenever the cohort has one.

    Every random draw of an item (crop, flips, affine, unpaired partner) comes from a generator seeded by
    (seed, epoch, index) alone, so an item is the same whichever process or data-loader worker makes it, in whatever
    order: a run gives the same batches with 0 or N workers, and a resumed run the same as an uninterrupted one.
    ``set_epoch`` tells the dataset which epoch it serves.

    Args:
        cases: entries holding the source (pairs, or source scans when unpaired) and its body mask.
        targets: unpaired: the target cohort's entries; None: paired, each case's own target.
    """

    def __init__(self, cases: list[CachedCase], cfg: RunConfig, seed: int, targets: list[CachedCase] | None = None):
        self.cases, self.cfg, self.seed, self.paired = cases, cfg, int(seed), targets is None
        self.targets = targets if targets is not None else cases
        self.epoch = 0
        self.index = self._body_slices(cases)
        if not self.index:
            raise InputError(
                f"no training slice has at least {cfg.data.min_body_fraction:.0%} body; lower data.min_body_fraction "
                "or check the masks"
            )
        if self.paired:
            return
        self.target_index = self._body_slices(self.targets)
        if not self.target_index:
            raise InputError(
                f"no slice of the target cohort has at least {cfg.data.min_body_fraction:.0%} body; lower "
                "data.min_body_fraction or check the target images"
            )
        self._target_ids = {c.case_id for c in self.targets}
        if len({c.case_id for c in cases} | self._target_ids) < 2:
            raise InputError(
                "unpaired training needs scans of at least 2 subjects, so source and target slices come from different "
                "subjects"
            )
        if cfg.data.partner == "area":  # each target slice's body area (pixels) and subject, for _nearest_in_area
            self._target_area = np.array(
                [self.targets[tj].body_fraction[tz] * _pixels(self.targets[tj]) for tj, tz in self.target_index]
            )
            self._target_case = np.array([self.targets[tj].case_id for tj, _ in self.target_index])

    def _nearest_in_area(self, i: int) -> np.ndarray:
        """data.partner area: the target slices (positions in target_index) source item i may meet: the
        PARTNER_SHARE of the target cohort's slices nearest to it in body area, of other subjects whenever the
        cohort holds another. Areas are in pixels, which data.spacing makes one size for all scans. Made per item
        (a sort of the target cohort's areas) rather than stored: a table for every source slice would grow with the
        product of the two cohorts' sizes."""
        ci, z = self.index[i]
        case = self.cases[ci]
        others = np.flatnonzero(self._target_case != case.case_id)
        pool = others if len(others) else np.arange(len(self._target_case))
        gap = np.abs(self._target_area[pool] - case.body_fraction[z] * _pixels(case))
        k = max(1, math.ceil(PARTNER_SHARE * len(self.target_index)))
        return pool[np.argsort(gap, kind="stable")[: min(k, len(pool))]]

    def _body_slices(self, cases: list[CachedCase]) -> list[tuple[int, int]]:
        index = []
        for ci, case in enumerate(cases):
            index += [(ci, int(z)) for z in np.flatnonzero(case.body_fraction >= self.cfg.data.min_body_fraction)]
        return index

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
            source, target = self._augment([source, case.slices("target", [z])], rng, self._crop_mask(case, z))
            return {"source": source, "target": target}
        tj, tz = self._partner(i, rng)
        partner = self.targets[tj]
        # the source's body mask rides along on the [-1, 1] scale, so augmentation pads it with background
        mask = case.slices("mask", [z])
        source, mask = self._augment([source, mask * 2 - 1], rng, mask if self.cfg.data.crop == "body" else None)
        target = self._augment([partner.slices("target", [tz])], rng, self._crop_mask(partner, tz))[0]
        return {"source": source, "target": target, "mask": (mask + 1) / 2}

    def _partner(self, i: int, rng: torch.Generator) -> tuple[int, int]:
        """The target slice (case, z) that source item i meets: one of its nearest in area (data.partner area), or
        any of the cohort, of another subject when the cohort has one."""
        if self.cfg.data.partner == "area":
            near = self._nearest_in_area(i)
            return self.target_index[int(near[int(torch.rand(1, generator=rng).item() * len(near)) % len(near)])]
        own = self.cases[self.index[i][0]].case_id
        others = bool(self._target_ids - {own})
        n = len(self.target_index)
        while True:
            tj, tz = self.target_index[int(torch.rand(1, generator=rng).item() * n) % n]
            if not others or self.targets[tj].case_id != own:
                return tj, tz

    def _crop_mask(self, case: CachedCase, z: int) -> torch.Tensor | None:
        """The body mask of slice z, which only data.crop body reads (uniform crops need none)."""
        return case.slices("mask", [z]) if self.cfg.data.crop == "body" else None

    def _augment(
        self, images: list[torch.Tensor], rng: torch.Generator, mask: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """Crop to the patch size and, if enabled, flip/rotate/scale: one draw for all images given. ``mask``: the
        body mask of their slice (1, H, W) to centre the crop on (data.crop body); None: a crop anywhere."""
        sizes = [im.shape[0] for im in images]
        d = self.cfg.data
        p = d.patch_size
        x = _pad_to(torch.cat(images if mask is None else [*images, mask], 0), p)
        if mask is not None:
            x, mask = x[:-1], x[-1]
        u = torch.rand(5, generator=rng)
        top, left = _crop_origin(mask, x.shape[1], x.shape[2], p, float(u[0].item()), float(u[1].item()))
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


def _crop_origin(mask: torch.Tensor | None, h: int, w: int, p: int, u0: float, u1: float) -> tuple[int, int]:
    """Top-left corner of a p x p crop of an h x w slice: anywhere (no mask), or centred on a body pixel drawn
    uniformly from the (h, w) mask (a slice without body falls back to anywhere), kept inside the slice."""
    if mask is not None:
        rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
        if len(rows):
            k = min(int(u0 * len(rows)), len(rows) - 1)
            top = min(max(int(rows[k]) - p // 2, 0), h - p)
            return top, min(max(int(cols[k]) - p // 2, 0), w - p)
    return int(u0 * (h - p + 1)), int(u1 * (w - p + 1))


def _pixels(case: CachedCase) -> int:
    """The number of pixels in one axial slice of a cached case."""
    return int(case.shape[1] * case.shape[2])


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    ph, pw = max(size - x.shape[1], 0), max(size - x.shape[2], 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=BACKGROUND)
    return x
