"""The quantile calibration of an unpaired model's output: fitted from two unpaired samples, monotone, checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtranslate.core.errors import CheckpointError
from medtranslate.models.calibration import apply_calibration, check_calibration, fit_quantile_map
from medtranslate.models.checkpoint import TranslatorSpec, load_checkpoint


def _truth(hu: np.ndarray) -> np.ndarray:
    """A monotone, non-linear mistake to undo: the model makes bone too dark and soft tissue too spread."""
    return np.where(hu < 200, 40 + 1.3 * (hu - 40), 248 + 2.0 * (hu - 200))


def _output(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    air = np.full(n // 5, -1024.0)  # ties: a fifth of the voxels at exactly -1024
    soft = rng.normal(40, 30, n // 2)
    bone = rng.uniform(200, 700, n - n // 5 - n // 2)
    return np.concatenate([air, soft, bone])


def test_the_map_undoes_a_monotone_mistake_learned_from_unpaired_samples():
    produced = _output(200_000, seed=0)
    reference = _truth(_output(200_000, seed=1))  # other voxels: no voxel of one sample is paired with the other
    calibration = fit_quantile_map(produced, reference)
    assert check_calibration(calibration) == calibration  # strictly increasing knots although a fifth of them tie
    test = _output(20_000, seed=2)
    inside = test > -1000  # the tied air maps to one value (the mean of its targets), checked apart
    assert np.abs(apply_calibration(test, calibration)[inside] - _truth(test[inside])).mean() < 5.0
    assert np.abs(apply_calibration(np.array([-1024.0]), calibration) - _truth(np.array([-1024.0]))) < 5.0
    # beyond the knots: the end values, never an extrapolated HU
    assert apply_calibration(np.array([-5000.0, 5000.0]), calibration).tolist() == pytest.approx(
        [calibration["reference"][0], calibration["reference"][-1]]
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "linear", "produced": [0.0, 1.0], "reference": [0.0, 1.0]},
        {"kind": "quantile", "produced": [0.0, 1.0], "reference": [0.0]},
        {"kind": "quantile", "produced": [1.0, 0.0], "reference": [0.0, 1.0]},
        {"kind": "quantile", "produced": [0.0, 1.0], "reference": [1.0, 0.0]},
        {"kind": "quantile", "produced": [0.0, float("nan")], "reference": [0.0, 1.0]},
        [0.0, 1.0],
    ],
)
def test_a_damaged_calibration_makes_the_checkpoint_unloadable(tmp_path, bad):
    with pytest.raises(ValueError):
        check_calibration(bad)
    spec = TranslatorSpec("mr2ct", "mr", {"lo": -1024.0, "hi": 3071.0}).to_dict()
    path = tmp_path / "bad.pt"
    torch.save({"format": 1, "kind": "cyclegan", "spec": {**spec, "calibration": bad}}, path)
    with pytest.raises(CheckpointError, match="preprocessing record is incomplete"):
        load_checkpoint(path)
    torch.save({"format": 1, "kind": "cyclegan", "spec": {**spec, "calibration": None}}, path)
    assert load_checkpoint(path)["spec"]["calibration"] is None  # a checkpoint without one loads as before


def test_empty_or_not_finite_samples_are_refused():
    with pytest.raises(ValueError, match="model output sample is empty or not finite"):
        fit_quantile_map(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="reference sample is empty or not finite"):
        fit_quantile_map(np.array([1.0]), np.array([np.inf]))
