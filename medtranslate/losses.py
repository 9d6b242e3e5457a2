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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mind", "mind_loss", "gradient_correlation_loss", "structure_loss"]

_SHIFTS = ((0, 2), (2, 0), (0, -2), (-2, 0))  # 4 directions, 2 pixels away
_PATCH = 3  # patch of the squared differences (3 x 3 box)


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
