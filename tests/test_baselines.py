"""Non-learned baselines: the intensity map is the best 1D mapping; the denoiser's strength is tuned to the noise."""

from __future__ import annotations

import numpy as np
import torch

from medtranslate.models.baselines import ClassicalDenoiser, IntensityMap


def test_intensity_map_learns_the_median_per_bin_and_fills_empty_bins():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 0.2, 20000)  # nothing above 0.2: those bins are empty
    y = np.where(x < -0.5, -0.8, 0.4) + rng.laplace(0, 0.05, x.shape)  # a step, with noise whose median is 0
    lut = IntensityMap(bins=64).fit(x, y)
    out = lut(torch.tensor([[-0.9, -0.7, 0.0, 0.1]]).view(1, 1, 1, 4)).flatten()
    np.testing.assert_allclose(out.numpy(), [-0.8, -0.8, 0.4, 0.4], atol=0.03)
    high = lut(torch.tensor([0.9]).view(1, 1, 1, 1)).item()
    assert abs(high - 0.4) < 0.03  # empty bins take the nearest filled value
    # 2.5D input: only the centre channel counts
    stacked = torch.stack([torch.full((1, 4), 0.9), torch.full((1, 4), -0.9), torch.full((1, 4), 0.9)])[None]
    assert torch.allclose(lut(stacked), torch.full((1, 1, 1, 4), -0.8), atol=0.03)


def test_classical_denoiser_picks_a_strength_that_lowers_the_error():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    clean = [np.where((yy - 24) ** 2 + (xx - 20 - k) ** 2 < 200, 0.3, -0.5).astype(np.float64) for k in range(3)]
    noisy = [c + rng.normal(0, 0.05, c.shape) for c in clean]
    den = ClassicalDenoiser().fit(noisy, clean)
    assert 0.005 < float(den.h) < 0.2
    out = den(torch.tensor(np.stack(noisy)[:, None], dtype=torch.float32)).numpy()[:, 0]
    before = np.mean([np.abs(n - c).mean() for n, c in zip(noisy, clean, strict=True)])
    after = np.mean([np.abs(o - c).mean() for o, c in zip(out, clean, strict=True)])
    assert after < 0.6 * before
    assert ClassicalDenoiser(h=float(den.h)).state_dict()["h"] == den.h  # h travels in the checkpoint


def test_intensity_map_without_pairs_matches_the_target_distribution():
    # two cohorts, no voxel pairs: the map takes the source's distribution to the target's, keeping the order
    rng = np.random.default_rng(0)
    source = rng.uniform(-0.9, 0.1, 50_000)
    target = np.clip(rng.normal(0.3, 0.1, 30_000), -1, 1)
    lut = IntensityMap(256).fit_quantiles(source, target)
    mapped = lut(torch.as_tensor(source, dtype=torch.float32).view(1, 1, -1, 1)).numpy().ravel()
    q = np.linspace(0.02, 0.98, 25)
    assert np.abs(np.quantile(mapped, q) - np.quantile(target, q)).max() < 0.02
    assert (np.diff(lut.table.numpy()) >= 0).all()


def test_classical_denoiser_without_pairs_keeps_the_normal_dose_cohorts_noise():
    # low-dose slices of some subjects, normal-dose slices of others: the strength is tuned by noise, not by error
    from medtranslate.imaging.transforms import ct_intensity
    from medtranslate.models.noise import flat_regions

    ct, rng = ct_intensity(), np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 28**2).astype(np.float32)

    def slices(sigma: float, n: int) -> list[np.ndarray]:
        hu = [np.where(disc > 0, 40.0, -1000.0) + rng.normal(0, sigma, disc.shape) * disc for _ in range(n)]
        return [ct.forward(h).astype(np.float32) for h in hu]

    low, normal = slices(40.0, 3), slices(8.0, 3)
    model = ClassicalDenoiser().fit_unpaired(low, normal)
    out = [model._denoise(s, float(model.h)) for s in low]
    left = float(np.median(flat_regions(ct.inverse(np.stack(out))).std(axis=(1, 2))))
    assert 4.0 < left < 16.0  # about the normal-dose cohort's 8 HU, from the low-dose cohort's 40
