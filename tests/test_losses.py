"""Structure losses across modalities (MIND, gradient correlation), the body-outline, histogram and cycle losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtranslate.models.losses import (
    body_loss,
    cycle_loss,
    gradient_correlation_loss,
    histogram_loss,
    mind,
    mind_loss,
    structure_loss,
)


def _phantom(shift: int = 0) -> torch.Tensor:
    """A ring and a blob on a background, smooth enough to have edges of both polarities."""
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    r = ((yy - 24) ** 2 + (xx - 24 - shift) ** 2).sqrt()
    img = torch.where((r > 12) & (r < 16), 1.0, 0.2) + torch.where(
        ((yy - 20) ** 2 + (xx - 30 - shift) ** 2) < 9, 0.5, 0.0
    )
    return F.avg_pool2d(img[None, None], 3, stride=1, padding=1)


def test_mind_ignores_contrast_but_sees_structure():
    a = _phantom()
    for other in (-a, 3.0 * a + 1.0, 1.0 - a):  # inverted, rescaled: the same structure in another modality
        assert mind_loss(a, other) < 1e-5
    moved = mind_loss(a, _phantom(shift=3))
    assert moved > 0.05
    assert mind(a).shape == (1, 4, 48, 48) and float(mind(a).max()) == pytest.approx(1.0)
    # a 2.5D stack: only the centre channel counts
    stack = torch.cat([torch.rand_like(a), a, torch.rand_like(a)], 1)
    assert mind_loss(stack, a) < 1e-5


def test_gradient_correlation():
    a = _phantom()
    assert float(gradient_correlation_loss(a, 2.0 * a + 1.0)) == pytest.approx(0.0, abs=1e-5)
    # inverted edges: Hiasa's gradient correlation punishes them
    assert float(gradient_correlation_loss(a, -a)) == pytest.approx(2.0, abs=1e-5)
    noise = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    assert 0.8 < float(gradient_correlation_loss(a, noise)) < 1.2
    with pytest.raises(ValueError, match="unknown structure loss"):
        structure_loss("ssim", a, a)


def test_cycle_losses():
    a = _phantom() * 2 - 1
    noise = 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    moved = _phantom(shift=3) * 2 - 1
    for kind in ("l1", "l1_ssim", "lowpass"):
        assert float(cycle_loss(kind, a, a)) == pytest.approx(0.0, abs=1e-6)
        assert float(cycle_loss(kind, moved, a)) > 0.01  # a structure that moved is never a good reconstruction
    # the low-pass cycle barely sees pixel noise (what a denoiser removes) but sees a change of mean HU fully
    assert float(cycle_loss("lowpass", a + noise, a)) < 0.2 * float(cycle_loss("l1", a + noise, a))
    assert float(cycle_loss("lowpass", a + 0.1, a)) == pytest.approx(0.1, rel=1e-3)
    # L1 + SSIM weighs structure: noise costs more than under L1 alone, a uniform offset less
    assert float(cycle_loss("l1_ssim", a + noise, a)) > float(cycle_loss("l1", a + noise, a))
    assert float(cycle_loss("l1_ssim", a + 0.1, a)) < float(cycle_loss("l1", a + 0.1, a))
    with pytest.raises(ValueError, match="unknown cycle loss"):
        cycle_loss("l2", a, a)


def _hu(h: torch.Tensor) -> torch.Tensor:
    return (h + 1024.0) / 4095.0 * 2.0 - 1.0  # transforms.ct_intensity's scale


def test_body_loss_sees_the_outline_not_the_cavities():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt()
    mask = (r < 20).float()[None, None]
    ct = torch.where(r < 20, 40.0, -1000.0)  # soft tissue inside the outline, air outside
    assert float(body_loss(_hu(ct)[None, None], mask)) == 0.0
    # an air cavity 10 pixels inside the edge (a sinus) costs nothing: only a band of 5 pixels must be body
    sinus = torch.where(r < 6, -1000.0, ct)
    assert float(body_loss(_hu(sinus)[None, None], mask)) == pytest.approx(float(body_loss(_hu(ct)[None, None], mask)))
    # a body grown by 3 pixels, shrunk by 3 pixels, or shifted: all cost
    grown = torch.where(r < 23, 40.0, -1000.0)
    shrunk = torch.where(r < 17, 40.0, -1000.0)
    shifted = torch.where(((yy - 32) ** 2 + (xx - 36) ** 2).sqrt() < 20, 40.0, -1000.0)
    for wrong in (grown, shrunk, shifted):
        assert float(body_loss(_hu(wrong)[None, None], mask)) > 0.01
    # the gradient pulls a grown outline back: lowering HU outside the mask lowers the loss
    x = _hu(grown)[None, None].clone().requires_grad_(True)
    body_loss(x, mask).backward()
    ring = (r >= 20) & (r < 23)
    assert bool((x.grad[0, 0][ring] > 0).all()) and bool((x.grad[0, 0][r < 20] == 0).all())


def test_histogram_loss_compares_distributions_inside_the_bodies_not_places():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r = ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt()
    mask = (r < 20).float()[None, None]
    # a partner CT: a skull ring (1000 HU) around soft tissue (40 HU), air outside
    partner = _hu(torch.where(r < 16, 40.0, torch.where(r < 20, 1000.0, -1000.0)))[None, None]
    assert float(histogram_loss(partner, mask, partner)) == 0.0
    # the same values in other places (the bone in a band at the bottom of the body, not a ring) cost nothing
    moved = partner.clone()
    moved[mask > 0] = partner[mask > 0].sort().values
    assert not torch.equal(moved, partner)
    assert float(histogram_loss(moved, mask, partner)) == pytest.approx(0.0, abs=1e-6)
    # values outside the input's body do not count; the partner's air is not its body
    assert float(histogram_loss(torch.where(mask > 0, partner, _hu(torch.tensor(3000.0))), mask, partner)) == 0.0
    # a uniform shift costs the shift, and the output without its bone costs the bone's share of the distance
    shift = float(_hu(torch.tensor(100.0)) - _hu(torch.tensor(0.0)))
    assert float(histogram_loss(partner + shift, mask, partner)) == pytest.approx(shift, rel=1e-4)
    no_bone = _hu(torch.where(r < 20, 40.0, -1000.0))[None, None]
    share = float(((r >= 16) & (r < 20)).sum() / (r < 20).sum())
    gap = float(_hu(torch.tensor(1000.0)) - _hu(torch.tensor(40.0)))
    assert float(histogram_loss(no_bone, mask, partner)) == pytest.approx(share * gap, rel=0.02)
    # its gradient raises the output inside the body only, the brightest voxels (those holding the bone's quantiles)
    jitter = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    x = (no_bone - 0.001 * jitter).requires_grad_(True)
    histogram_loss(x, mask, partner).backward()
    assert bool((x.grad[mask > 0] <= 0).all()) and bool((x.grad[mask == 0] == 0).all())
    inside = x.detach()[mask > 0]
    assert float(x.grad[mask > 0][inside.argmax()]) < 0
    # an empty body adds nothing, in a batch of two: the mean is over the batch
    both = histogram_loss(
        torch.cat([partner + shift] * 2), torch.cat([mask, torch.zeros_like(mask)]), torch.cat([partner] * 2)
    )
    assert float(both) == pytest.approx(shift / 2, rel=1e-4)
