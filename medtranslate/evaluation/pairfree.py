"""Judging a translation without its pair: what validation and evaluation of unpaired runs measure (docs/unpaired.md).

With no CT of the same subject there is no voxel error to take. What can be checked is what a CycleGAN is trained
to get right and what it can get wrong on its own:

- ``w1``: the 1-Wasserstein distance (HU) between the output's values inside the input's body and a reference CT
  cohort's values inside theirs; the mean HU shift that turns one distribution into the other (0: the cohort's);
- ``outline_dice``: the Dice overlap of the input's body outline and the output's (a CT body mask of the output),
  below 1 when tissue is painted where the input has none, or left out;
- ``artefact_index``: the output's power at the grid frequencies
  (:func:`~medtranslate.evaluation.qa.artefact_index`), about 1 for a real CT.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medtranslate.evaluation.qa import artefact_index, dice
from medtranslate.imaging.transforms import axial_axis, body_mask
from medtranslate.imaging.volume import Volume

__all__ = ["REFERENCE_VOXELS", "PAIR_FREE_DEFINITIONS", "sample_values", "reference_sample", "pair_free_scores"]

REFERENCE_VOXELS = 200_000  # body voxels of an output, and of a cohort in all, drawn for the distance

PAIR_FREE_DEFINITIONS = {
    "w1": "1-Wasserstein distance (HU) between the output's values inside the input's body mask and the reference CT "
    "cohort's values inside theirs (seeded samples of 200,000 voxels): the mean HU shift between the two "
    "distributions, 0 when the output has the cohort's",
    "outline_dice": "Dice overlap of the input's body mask and the output's (CT body mask: -500 HU, largest "
    "component, closing, hole filling); below 1 when tissue is painted outside the input's body, or left out",
    "artefact_index": "power at the period-2 and period-4 grid frequencies of the output's axial slices over that of "
    "their neighbouring frequencies; about 1 for a real CT",
}


def sample_values(values: np.ndarray, rng: np.random.Generator, cap: int) -> np.ndarray:
    """At most ``cap`` of ``values``, drawn without replacement (distributions and quantiles need no more; a cohort's
    voxels would not fit in memory)."""
    return values if values.size <= cap else rng.choice(values, cap, replace=False)


def reference_sample(body_values: Iterable[np.ndarray], n_volumes: int, seed: int) -> np.ndarray:
    """A seeded sample of a CT cohort's body HU: at most REFERENCE_VOXELS / ``n_volumes`` of each volume's values
    (``body_values`` yields each volume's values inside its body, one volume at a time)."""
    rng = np.random.default_rng(seed)
    per_volume = max(REFERENCE_VOXELS // max(n_volumes, 1), 1)
    parts = [sample_values(np.asarray(v, dtype=np.float32).ravel(), rng, per_volume) for v in body_values]
    if not parts or not sum(p.size for p in parts):
        raise ValueError("the reference cohort has no voxel inside a body")
    return np.concatenate(parts)


def pair_free_scores(
    source: Volume,
    source_kind: str,
    output: Volume,
    reference_hu: np.ndarray,
    seed: int = 0,
    body: np.ndarray | None = None,
) -> dict[str, float]:
    """The measures of the module's docstring for one translated volume (``output`` on ``source``'s grid, HU);
    ``body``: the source's body mask when the caller has it (else made here)."""
    from scipy.stats import wasserstein_distance

    if body is None:
        body = body_mask(source.array, source_kind, source.affine)
    values = sample_values(
        np.asarray(output.array, dtype=np.float32)[body], np.random.default_rng(seed), REFERENCE_VOXELS
    )
    return {
        "w1": float(wasserstein_distance(values, reference_hu)),
        "outline_dice": dice(body, body_mask(output.array, "ct", output.affine)),
        "artefact_index": artefact_index(output.array, axial_axis(source.affine)),
    }
