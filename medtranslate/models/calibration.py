"""Intensity calibration of an unpaired model's output: a monotone map from the HU its generator makes to the HU that
real CTs have, fitted by matching quantiles (the histogram matching that standardises MR intensity scales, Nyul and
Udupa 1999, Magnetic Resonance in Medicine 42(6)).

A CycleGAN learns the CT's intensities only through its discriminator, patch by patch; on the sample phantoms the
20-minute model makes soft tissue too spread and bone too dark (docs/results.md, "CycleGAN on a CPU"). After
training, the generator translates the training MRs; the quantiles of its HU inside their body masks are matched to
the quantiles of the training CTs inside theirs. Only the two distributions enter, never a voxel pair, so it needs
no registered or paired data: it assumes what the CycleGAN itself assumes, that both cohorts show the same anatomy.
The map is monotone: it changes intensities, never which voxel is brighter than which, so every edge stays where
the network put it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LEVELS", "fit_quantile_map", "apply_calibration", "check_calibration"]

LEVELS = 1001  # quantiles 0, 0.1 %, ..., 100 %: the top 5 % (dense bone) gets 50 points


def fit_quantile_map(produced: np.ndarray, reference: np.ndarray, levels: int = LEVELS) -> dict[str, Any]:
    """The map taking the quantiles of ``produced`` (model output, HU) to those of ``reference`` (real CT, HU).

    Returns ``{"kind": "quantile", "produced": [...], "reference": [...]}``: strictly increasing knots (output values
    that tie, e.g. a run of -1024 HU, become one knot at the mean of their targets), for :func:`apply_calibration`.

    Raises:
        ValueError: either sample is empty or not finite.
    """
    produced = np.asarray(produced, dtype=np.float64).ravel()
    reference = np.asarray(reference, dtype=np.float64).ravel()
    for name, values in (("model output", produced), ("reference", reference)):
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"cannot fit an intensity calibration: the {name} sample is empty or not finite")
    q = np.linspace(0.0, 1.0, levels)
    xs, ys = np.quantile(produced, q), np.quantile(reference, q)
    knots, group = np.unique(xs, return_inverse=True)
    targets = np.bincount(group, weights=ys) / np.bincount(group)
    return {"kind": "quantile", "produced": knots.tolist(), "reference": targets.tolist()}


def apply_calibration(array: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """``array`` (HU) through the map, piecewise linear between knots; beyond the end knots, the end values (a map
    with one knot, from a model that made one value only, gives its one value everywhere)."""
    return np.interp(array, calibration["produced"], calibration["reference"]).astype(np.float32)


def check_calibration(calibration: Any) -> dict[str, Any] | None:
    """``calibration`` as a checkpoint holds it (None: none), checked: equal-length finite knots, strictly increasing.

    Raises:
        ValueError: anything else (a damaged or foreign checkpoint).
    """
    if calibration is None:
        return None
    if not isinstance(calibration, dict) or calibration.get("kind") != "quantile":
        raise ValueError(f"unknown intensity calibration {str(calibration)[:80]}")
    xs = np.asarray(calibration.get("produced"), dtype=np.float64)
    ys = np.asarray(calibration.get("reference"), dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.size == 0:
        raise ValueError("intensity calibration knots of unequal or zero length")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()) or (np.diff(xs) <= 0).any() or (np.diff(ys) < 0).any():
        raise ValueError("intensity calibration knots not finite or not increasing")
    return {"kind": "quantile", "produced": xs.tolist(), "reference": ys.tolist()}
