"""Structure losses that compare images of different modalities: they keep a generator from moving or inventing
anatomy while the adversarial loss decides the intensities.

- MIND (modality independent neighbourhood descriptor; Heinrich et al. 2012, Medical Image Analysis 16(7)): per pixel,
  how similar a small patch is to the patches one step away in 4 directions, normalised by the local variance, so
  an edge gives the same descriptor whether it is dark-to-bright in MR or bright-to-dark in CT. Used as an L1 loss
  between input and output of an unpaired MR -> CT CycleGAN by Yang et al. 2018 (structure-constrained CycleGAN,
  DLMIA, LNCS 11045).
- Gradient correlation (Hiasa et al. 2018, SASHIMI, LNCS 11037): the normalised cross-correlation of the horizontal and
  the vertical image gradients of input and output; the loss is 1 - its mean.

Both take (B, C, H, W) tensors (the centre channel of a 2.5D input is used) and return a scalar tensor.

Body-outline loss (``body_loss``), for a generator whose output is a CT: the output must stay below the SynthRAD
body-mask threshold (-500 HU) outside the input's body mask and above it in a band just inside the mask's edge (air
cavities deeper inside are left alone). A shape-consistency term in the spirit of Zhang et al. 2018 (CVPR,
"Translating and segmenting multimodal medical volumes with cycle- and shape-consistency GAN"), with the body mask
as the segmentation, so it needs no segmentation network.

Histogram loss (``histogram_loss``), for a generator whose output is a CT and is trained without pairs: the
1-Wasserstein distance between the output's values inside the input's body and the values of the CT slice it is
judged against (its partner, of a similar body area) inside that slice's body, read at evenly spaced quantiles. It
asks for the partner's share of bone, fat and soft tissue from the first step, where the discriminator learns to ask
for it only over many (the quantile calibration applies the same distribution after training, but a monotone map
cannot put back bone the generator left out); it says nothing about where, which the structure loss and the
discriminator decide. W1 on sorted samples is the distance ``val_w1`` reports (pairfree.py).

Cycle losses compare a CycleGAN's reconstruction with its input (``cycle_loss``):
- ``l1``: the paper's (Zhu et al. 2017).
- ``l1_ssim``: 0.16 L1 + 0.84 (1 - SSIM), the mix of Zhao et al. 2017 (IEEE TCI 3(1)) that ganslate uses for CT
  (its ``proportion_ssim`` 0.84); SSIM is MONAI's (11 x 11 Gaussian window, sigma 1.5) on the images shifted from
  [-1, 1] to [0, 2] (data range 2).
- ``lowpass``: L1 of the two images blurred by a Gaussian (sigma ``LOWPASS_SIGMA`` pixels). For denoising: the
  noise of a low-dose input cannot be predicted from a denoised image, so an L1 cycle on full images rewards keeping
  it (or hiding a code of it, Chu et al. 2017); compared below the noise's frequencies the cycle asks only that
  structure and mean HU come back.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

__all__ = [
    "mind",
    "mind_loss",
    "gradient_correlation_loss",
    "structure_loss",
    "body_loss",
    "histogram_loss",
    "cycle_loss",
    "CYCLE_LOSSES",
]

_SHIFTS = ((0, 2), (2, 0), (0, -2), (-2, 0))  # 4 directions, 2 pixels away
_PATCH = 3  # patch of the squared differences (3 x 3 box)
CYCLE_LOSSES = ("l1", "l1_ssim", "lowpass")
SSIM_PROPORTION = 0.84  # Zhao et al. 2017; ganslate's default proportion_ssim
LOWPASS_SIGMA = 2.0  # pixels
BODY_THRESHOLD = (-500.0 + 1024.0) / 4095.0 * 2.0 - 1.0  # -500 HU on the [-1024, 3071] -> [-1, 1] CT scale
BODY_MARGIN = 50.0 / 2047.5  # 50 HU in the same units
BODY_BAND = 5  # pixels inside the mask's edge where the output must be body too
HISTOGRAM_QUANTILES = 256  # 0.4 % of the body apart: a skull (10-20 % of a head slice's body) spans dozens


def _centre(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1] // 2
    return x[:, c : c + 1].float()


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) with edge replication, same size."""
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    padded = F.pad(x, pad, mode="replicate")
    h, w = x.shape[-2:]
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def mind(x: torch.Tensor) -> torch.Tensor:
    """MIND descriptor (B, 4, H, W) of the centre channel of ``x``: exp(-D_r / V) per shift r, scaled to max 1."""
    img = _centre(x)
    dist = torch.cat(
        [
            F.avg_pool2d(
                (img - _shift(img, dy, dx)) ** 2, _PATCH, stride=1, padding=_PATCH // 2, count_include_pad=False
            )
            for dy, dx in _SHIFTS
        ],
        dim=1,
    )
    variance = dist.mean(dim=1, keepdim=True)
    # keep the variance within a band around its image mean: flat regions would otherwise divide by ~0
    mean = variance.mean(dim=(2, 3), keepdim=True)
    variance = torch.minimum(torch.maximum(variance, 1e-3 * mean + 1e-8), 1e3 * mean + 1e-8)
    desc = torch.exp(-dist / variance)
    return desc / desc.amax(dim=1, keepdim=True).clamp_min(1e-8)


def mind_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the MIND descriptors of two images."""
    return (mind(a) - mind(b)).abs().mean()


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=(1, 2, 3), keepdim=True)
    b = b - b.mean(dim=(1, 2, 3), keepdim=True)
    norms = ((a * a).sum(dim=(1, 2, 3)) * (b * b).sum(dim=(1, 2, 3))).sqrt()
    return (a * b).sum(dim=(1, 2, 3)) / norms.clamp_min(1e-8)


def gradient_correlation_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - mean normalised cross-correlation of the x and y gradients of two images (per sample, then averaged)."""
    a, b = _centre(a), _centre(b)
    gx = _ncc(a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1])
    gy = _ncc(a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :])
    return 1.0 - 0.5 * (gx + gy).mean()


def structure_loss(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The structure loss ``kind`` ("mind" or "gc") between two images."""
    if kind == "mind":
        return mind_loss(a, b)
    if kind == "gc":
        return gradient_correlation_loss(a, b)
    raise ValueError(f"unknown structure loss {kind!r}")


def body_loss(fake_ct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hinge on the body threshold: outside ``mask`` the output must lie below -550 HU, within BODY_BAND pixels
    inside its edge above -450 HU; the mean over those pixels of how far it misses, on the [-1, 1] CT scale.

    A hinge rather than a soft threshold: a sigmoid saturates, so tissue painted far outside the body (hundreds of HU
    above the threshold) would get no gradient at all.

    Args:
        fake_ct: (B, 1, H, W) generated CT on the [-1, 1] scale of ``transforms.ct_intensity``.
        mask: (B, 1, H, W) the input case's body mask (its mask file's or its CT's, on the input's grid) in [0, 1]
            (soft after interpolating augmentation).
    """
    fake = fake_ct.float()
    eroded = -F.max_pool2d(-mask, 2 * BODY_BAND + 1, stride=1, padding=BODY_BAND)  # 1 deeper than the band
    band = mask - eroded
    outside = 1.0 - mask
    miss = outside * F.relu(fake - (BODY_THRESHOLD - BODY_MARGIN)) + band * F.relu(BODY_THRESHOLD + BODY_MARGIN - fake)
    return miss.sum() / (outside + band).sum().clamp_min(1.0)


def histogram_loss(fake_ct: torch.Tensor, mask: torch.Tensor, real_ct: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the 1-Wasserstein distance, on the [-1, 1] CT scale, between ``fake_ct``'s values where
    ``mask`` > 0.5 and the centre channel of ``real_ct`` where it is body (above the -500 HU threshold), both read at
    HISTOGRAM_QUANTILES evenly spaced quantiles of their sorted values. A sample whose mask or partner has no body
    adds 0. Sorting passes the gradient to the voxels that hold each quantile.

    Args:
        fake_ct: (B, 1, H, W) generated CT.
        mask: (B, 1, H, W) the input's body mask in [0, 1].
        real_ct: (B, C, H, W) the real CT slices (partners) the output is judged against.
    """
    fake, real = fake_ct.float(), _centre(real_ct)
    q = torch.linspace(0.0, 1.0, HISTOGRAM_QUANTILES, device=fake.device)
    total = fake.new_zeros(())
    for f, m, r in zip(fake, mask, real, strict=True):
        a, b = f[m > 0.5], r[r > BODY_THRESHOLD]
        if a.numel() == 0 or b.numel() == 0:
            continue
        a_q = a.sort().values[(q * (a.numel() - 1)).round().long()]
        b_q = b.sort().values[(q * (b.numel() - 1)).round().long()]
        total = total + (a_q - b_q).abs().mean()
    return total / fake.shape[0]


@functools.cache
def _ssim_loss() -> SSIMLoss:
    return SSIMLoss(spatial_dims=2, data_range=2.0)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def cycle_loss(kind: str, rec: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The cycle loss ``kind`` (one of CYCLE_LOSSES) between a reconstruction and the image it came from."""
    rec, real = rec.float(), real.float()
    if kind == "l1":
        return F.l1_loss(rec, real)
    if kind == "l1_ssim":
        # SSIM's luminance term assumes intensities >= 0: compare the images shifted from [-1, 1] to [0, 2]
        ssim = sum(_ssim_loss()(rec[:, i : i + 1] + 1, real[:, i : i + 1] + 1) for i in range(rec.shape[1]))
        ssim = ssim / rec.shape[1]
        return (1 - SSIM_PROPORTION) * F.l1_loss(rec, real) + SSIM_PROPORTION * ssim
    if kind == "lowpass":
        return F.l1_loss(_gaussian_blur(rec, LOWPASS_SIGMA), _gaussian_blur(real, LOWPASS_SIGMA))
    raise ValueError(f"unknown cycle loss {kind!r}")
