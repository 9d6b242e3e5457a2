"""Non-learned baselines that every trained model must beat: an intensity mapping (MR -> CT) and a tuned
classical denoiser (low-dose CT).

:class:`IntensityMap` is the best one-dimensional mapping from source intensity to target intensity: a look-up
table holding, per source-intensity bin, the median target value of the training voxels inside the body (the
median minimises the absolute error, so no other 1D mapping has a lower training MAE per bin). It has no notion of
context: bone and air, both dark in T1 MR, get the same HU, which is what makes MR -> CT hard.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["IntensityMap", "ClassicalDenoiser"]


logger = logging.getLogger(__name__)


class IntensityMap(nn.Module):
    """Piecewise-linear look-up table on [-1, 1] -> [-1, 1]; uses the centre channel of a 2.5D input."""

    @classmethod
    def from_config(cls, model: Any) -> IntensityMap:
        """An unfitted map of ``model.bins`` bins (``model``: the ``model`` section of a config)."""
        return cls(model.bins)

    @classmethod
    def inference_net(cls, ckpt: dict[str, Any], source: str) -> IntensityMap:
        """An empty map of the checkpoint's size, for its table."""
        return cls(int(ckpt["model"]["nets"]["G"]["table"].numel()))

    def fit_cases(self, cases: list[Any], cohort: list[Any] | None, min_body_fraction: float) -> None:
        """Fit on the training cases' body voxels: on their voxel pairs, or, given the target ``cohort`` (cases of
        other subjects), by matching the two cohorts' quantiles."""
        if cohort is not None:
            sources = np.concatenate([c.array("source")[c.array("mask") > 0] for c in cases])
            targets = np.concatenate([c.array("target")[c.array("mask") > 0] for c in cohort])
            self.fit_quantiles(sources, targets)
            logger.info("intensity map fitted by matching quantiles: the training cases are not all pairs")
            return
        body = [c.array("mask") > 0 for c in cases]
        sources = np.concatenate([c.array("source")[m] for c, m in zip(cases, body, strict=True)])
        targets = np.concatenate([c.array("target")[m] for c, m in zip(cases, body, strict=True)])
        self.fit(sources, targets)

    def __init__(self, bins: int = 256):
        super().__init__()
        self.register_buffer("table", torch.linspace(-1.0, 1.0, bins))

    @property
    def bins(self) -> int:
        return int(self.table.numel())

    def fit(self, source: np.ndarray, target: np.ndarray) -> IntensityMap:
        """Fit on paired voxel values (both scaled to [-1, 1]): per bin the median target; empty bins interpolated."""
        source = np.clip(np.asarray(source, dtype=np.float64).ravel(), -1.0, 1.0)
        target = np.asarray(target, dtype=np.float64).ravel()
        idx = np.clip(np.rint((source + 1.0) / 2.0 * (self.bins - 1)).astype(np.int64), 0, self.bins - 1)
        order = np.argsort(idx, kind="stable")
        idx, target = idx[order], target[order]
        starts = np.searchsorted(idx, np.arange(self.bins), side="left")
        ends = np.searchsorted(idx, np.arange(self.bins), side="right")
        filled = ends > starts
        medians = np.array([np.median(target[s:e]) if e > s else np.nan for s, e in zip(starts, ends, strict=True)])
        centres = np.linspace(-1.0, 1.0, self.bins)
        table = np.interp(centres, centres[filled], medians[filled])
        self.table.copy_(torch.as_tensor(table, dtype=torch.float32))
        return self

    def fit_quantiles(self, source: np.ndarray, target: np.ndarray) -> IntensityMap:
        """Fit without pairs (both scaled to [-1, 1]): each bin to the target quantile at the source's cumulative
        fraction there, so the map takes the source's distribution to the target's (histogram matching)."""
        source = np.sort(np.clip(np.asarray(source, dtype=np.float64).ravel(), -1.0, 1.0))
        target = np.asarray(target, dtype=np.float64).ravel()
        if source.size == 0 or target.size == 0:
            raise ValueError("cannot fit an intensity map: no source or no target voxel inside the body")
        centres = np.linspace(-1.0, 1.0, self.bins)
        fraction = np.searchsorted(source, centres, side="right") / source.size
        self.table.copy_(torch.as_tensor(np.quantile(target, fraction), dtype=torch.float32))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1].float().clamp(-1.0, 1.0)
        pos = (centre + 1.0) / 2.0 * (self.bins - 1)
        lo = pos.floor().clamp(0, self.bins - 2).long()
        frac = pos - lo
        table = self.table.to(x.device)
        return table[lo] * (1 - frac) + table[lo + 1] * frac


class ClassicalDenoiser(nn.Module):
    """scikit-image non-local means (Buades et al. 2005) per slice, its strength tuned on the training cases.

    Works on slices scaled to [-1, 1] (the centre channel of a 2.5D input); ``h`` is stored as a buffer so it
    travels in the checkpoint like any network weight.
    """

    PATCH_SIZE, PATCH_DISTANCE = 5, 6

    @classmethod
    def from_config(cls, model: Any) -> ClassicalDenoiser:
        return cls()

    @classmethod
    def inference_net(cls, ckpt: dict[str, Any], source: str) -> ClassicalDenoiser:
        return cls()

    def fit_cases(self, cases: list[Any], cohort: list[Any] | None, min_body_fraction: float) -> None:
        """Tune on four body slices of every training case: against their own targets, or, given the target
        ``cohort`` (scans of other subjects), without pairs."""
        if cohort is not None:
            sources = [s for c in cases for s in c.slices("source", tuning_slices(c, min_body_fraction)).numpy()]
            targets = [s for c in cohort for s in c.slices("target", tuning_slices(c, min_body_fraction)).numpy()]
            self.fit_unpaired(sources, targets)
            logger.info("non-local means tuned without pairs: its output keeps the normal-dose cohort's noise")
            return
        pairs = []
        for c in cases:
            zs = tuning_slices(c, min_body_fraction)
            pairs += zip(c.slices("source", zs).numpy(), c.slices("target", zs).numpy(), strict=True)
        self.fit([p[0] for p in pairs], [p[1] for p in pairs])

    def __init__(self, h: float = 0.01):
        super().__init__()
        self.register_buffer("h", torch.tensor(float(h)))

    def _denoise(self, image: np.ndarray, h: float) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        return denoise_nl_means(
            image, h=h, patch_size=self.PATCH_SIZE, patch_distance=self.PATCH_DISTANCE, fast_mode=True
        )

    def fit(
        self,
        sources: list[np.ndarray],
        targets: list[np.ndarray],
        factors: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2),
    ) -> ClassicalDenoiser:
        """Pick h = factor x noise sigma (the std of source - target) with the lowest mean absolute error."""
        sigma = float(np.median([np.std(s - t) for s, t in zip(sources, targets, strict=True)]))
        errors = {}
        for f in factors:
            h = max(f * sigma, 1e-6)
            errors[h] = float(
                np.mean([np.abs(self._denoise(s, h) - t).mean() for s, t in zip(sources, targets, strict=True)])
            )
        self.h.fill_(min(errors, key=errors.get))
        return self

    def fit_unpaired(
        self,
        sources: list[np.ndarray],
        targets: list[np.ndarray],
        factors: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2),
    ) -> ClassicalDenoiser:
        """Fit without pairs (slices of two cohorts, in [-1, 1]): h = factor x the noise the sources have beyond the
        targets, the factor whose output keeps the noise the target cohort has in flat soft tissue (noise.py's
        regions), since without a pair no error can be measured.

        Raises:
            InputError: too little flat soft tissue in either cohort to measure its noise.
        """
        from medtranslate.core.errors import InputError
        from medtranslate.imaging.transforms import ct_intensity
        from medtranslate.models.noise import flat_regions

        ct = ct_intensity()

        def noise(slices: list[np.ndarray], name: str) -> float:
            regions = flat_regions(ct.inverse(np.stack(slices).astype(np.float32)))
            if len(regions) == 0:
                raise InputError(
                    f"the {name} slices hold no flat soft tissue to measure their noise, which tunes the non-local "
                    "means baseline without pairs; add cases or use pipeline.baseline: none"
                )
            return float(np.median(regions.std(axis=(1, 2))))

        wanted, noisy = noise(targets, "normal-dose"), noise(sources, "low-dose")
        excess = np.sqrt(max(noisy**2 - wanted**2, 1.0)) * 2.0 / (ct.hi - ct.lo)  # HU -> the [-1, 1] scale
        kept = {}
        for f in factors:
            h = max(f * excess, 1e-6)
            kept[h] = abs(noise([self._denoise(s, h) for s in sources], "denoised") - wanted)
        self.h.fill_(min(kept, key=kept.get))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2].float().cpu().numpy()
        out = np.stack([self._denoise(s, float(self.h)) for s in centre])[:, None]
        return torch.as_tensor(out, dtype=torch.float32, device=x.device)


def tuning_slices(case: Any, min_body_fraction: float) -> list[int]:
    """Four slices spread over the body of a cached case: what the non-local means baseline is tuned on."""
    body = np.flatnonzero(case.body_fraction >= max(min_body_fraction, 0.2))
    return body[:: max(len(body) // 4, 1)][:4].tolist()
