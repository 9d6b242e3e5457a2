"""Noise measured from unpaired low-dose / normal-dose cohorts (noise.py) against noise whose spectrum is known."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from medtranslate.core.errors import InputError
from medtranslate.models.noise import NoiseModel, flat_regions, measure_noise

KERNEL = np.array([[0.0, -0.25, 0.0], [-0.25, 1.0, -0.25], [0.0, -0.25, 0.0]])  # a ramp-like (high-pass) colour


def _head(seed: int, noise_sd: float = 0.0, shape=(6, 96, 96)) -> np.ndarray:
    """A disk of soft tissue (40 HU) with a fine texture of its own (15 HU), in air, plus coloured noise."""
    rng = np.random.default_rng(seed)
    z, x, y = shape
    yy, xx = np.mgrid[:x, :y]
    disk = np.hypot(yy - x / 2, xx - y / 2) < 0.42 * x
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), (0, 1, 1))
    vol = np.where(disk, 40.0 + texture * (15.0 / texture.std()), -1000.0)
    if noise_sd:
        noise = ndimage.convolve(rng.normal(0, 1, shape), KERNEL[None], mode="wrap")
        vol = vol + noise * (noise_sd / noise.std())
    return vol


def _true_spectrum(size: int) -> np.ndarray:
    padded = np.zeros((size, size))
    padded[:3, :3] = KERNEL
    padded = np.roll(padded, (-1, -1), (0, 1))
    power = np.abs(np.fft.fft2(padded)) ** 2
    return power / power.mean()


def test_the_noise_of_unpaired_cohorts_is_measured_in_level_and_spectrum():
    low = [_head(s, noise_sd=20.0) for s in range(3)]
    normal = [_head(s) for s in range(10, 13)]  # other "patients": no voxel pairs exist
    model = measure_noise(low, normal)
    # the texture (15 HU) is in both cohorts and drops out; what is left is the 20 HU of noise
    assert np.median(model.sigmas) == pytest.approx(20.0, rel=0.1)
    assert model.variance == pytest.approx(400.0, rel=0.15)
    shape = model.nps / model.nps.mean()
    truth = _true_spectrum(model.nps.shape[0])
    inner = np.ones_like(truth, bool)
    inner[[0, 0, 1, -1], [0, 1, 0, 0]] = False  # the detrending removes the lowest frequencies
    assert np.corrcoef(shape[inner], truth[inner])[0, 1] > 0.9
    # without subtracting the normal-dose cohort the texture would count as noise
    assert float(flat_regions(low[0]).var(axis=(1, 2)).mean()) > 1.3 * 400.0


def test_sampled_noise_has_the_measured_level_and_colour():
    size = 16
    model = NoiseModel(nps=_true_spectrum(size) * 25.0**2, sigmas=np.array([10.0, 30.0]))
    noise = model.sample((64, 1, 48, 40), torch.Generator().manual_seed(0)).numpy()
    sd = noise.std(axis=(-2, -1)).ravel()
    assert set(np.round(sd / 10).astype(int)) == {1, 3}  # one of the levels per image
    # the kernel's neighbours weigh -0.25: lag-1 correlation -0.5 / 1.25 = -0.4 in both directions
    unit = noise / sd[:, None, None, None]
    for axis in (-2, -1):
        lag1 = (unit * np.roll(unit, 1, axis)).mean()
        assert lag1 == pytest.approx(-0.4, abs=0.03)
    again = model.sample((64, 1, 48, 40), torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(again, noise)  # the generator alone decides: a resumed run makes the same noise


def test_cohorts_without_flat_tissue_or_without_extra_noise_are_refused():
    air = [np.full((4, 64, 64), -1000.0)]
    with pytest.raises(InputError, match="flat soft tissue.*add cases, or use model.inverse: network"):
        measure_noise(air, [_head(1)])
    with pytest.raises(InputError, match="no noisier than the normal-dose ones.*low-dose role"):
        measure_noise([_head(1)], [_head(2, noise_sd=20.0)])


def test_a_scan_gives_at_most_the_limit_a_random_subset_of_its_regions():
    vol = _head(3, noise_sd=20.0)
    every = flat_regions(vol)
    some = flat_regions(vol, limit=7, rng=np.random.default_rng(1))
    assert len(every) > 7 and len(some) == 7
    for region in some:  # each one of the regions found without the limit
        assert np.abs(every - region).reshape(len(every), -1).max(1).min() == 0
