"""Generators and discriminators for slice-wise translation (2D, channel-first, values in [-1, 1]).

- :class:`UNetGenerator`: the pix2pix U-Net (Isola et al. 2017): ``num_downs`` stride-2 4x4 convolutions with skip
  connections, dropout in the blocks next to the innermost, tanh output. ``num_downs=8`` is the 256 variant.
- :class:`ResnetGenerator`: the CycleGAN generator (Johnson et al. 2016; Zhu et al. 2017): reflection padding,
  two stride-2 downsamplings, ``n_blocks`` residual blocks (6 or 9), two upsamplings, tanh output.
- :class:`PatchDiscriminator`: the PatchGAN; ``n_layers`` 1, 2, 3 give 16x16, 34x34, 70x70 receptive fields. Returns
  logits.

``full_res=True`` adds 3x3 convolutions at full resolution before and after the U-Net (whose first layer otherwise
halves the resolution), as the original U-Net of Ronneberger et al. 2015 has; denoising needs them (config.py,
TASK_DEFAULTS). :class:`Rescaled` runs a network in other units and can make it residual (output = input + correction).

Both generators can upsample by resize-convolution (nearest x2, then a 3x3 convolution) instead of transposed
convolution, which avoids checkerboard artefacts (Odena et al. 2016); ``narrow`` halves the width by a 1x1
convolution before the resize, so the 3x3 convolution at the doubled size costs half. Weights are initialised
N(0, 0.02).
Networks know nothing of files: sizes in, sizes out.
"""

from __future__ import annotations

import torch
from torch import nn

from medtranslate.core.errors import ConfigError

__all__ = ["UNetGenerator", "ResnetGenerator", "PatchDiscriminator", "Rescaled", "init_weights", "norm_layer"]


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Batch norm (learned affine) or instance norm (no affine, no running stats), as in the reference code."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ConfigError(f"unknown norm '{kind}'; expected one of: batch, instance")


def _up(in_ch: int, out_ch: int, mode: str, kernel: int = 4, bias: bool = True) -> nn.Module:
    if mode == "transpose":
        if kernel == 4:
            return nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=bias)
        return nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=bias)
    if mode == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3, bias=bias)
        )
    if mode == "narrow":
        # resize-convolution with the width halved first, at the low resolution, by a 1x1 convolution: the 3x3 one at
        # four times the pixels then reads half the channels (an up-block's input is a skip concatenation or a
        # halving's, twice its output), and never fewer than that half, so the output layer keeps its features
        width = max(out_ch, in_ch // 2)
        return nn.Sequential(nn.Conv2d(in_ch, width, 1, bias=False), *_up(width, out_ch, "resize", bias=bias))
    raise ConfigError(f"unknown upsample '{mode}'; expected one of: resize, narrow, transpose")


def _in_fp32(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the output layers in float32 even under bf16/fp16 autocast: bf16 keeps 8 bits of mantissa, which at the
    output would round a synthetic CT to steps of 4-8 HU."""
    with torch.autocast(x.device.type, enabled=False):
        return layers(x.float())


class UNetGenerator(nn.Module):
    """The pix2pix U-Net.

    Args:
        in_channels: input channels (2k+1 for 2.5D input).
        out_channels: output channels.
        num_downs: number of stride-2 downsamplings; inputs must be divisible by 2**num_downs.
        ngf: filters of the outermost layer (doubling per level up to 8 * ngf).
        norm: batch | instance.
        dropout: dropout probability in the (num_downs - 5) up-blocks next to the innermost.
        upsample: transpose | resize | narrow.
        full_res: two 3x3 convolutions (ngf filters) at full resolution before the U, and two after it on the
            full-resolution features concatenated with the U's output; the output layer is then a 3x3 convolution.
        tanh: bound the output to [-1, 1] (off for a residual correction, which has no such bound).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        upsample: str = "transpose",
        full_res: bool = False,
        tanh: bool = True,
    ):
        super().__init__()
        if num_downs < 2:
            raise ConfigError(f"UNetGenerator needs num_downs >= 2, got {num_downs}")
        self.num_downs = num_downs
        use_bias = norm == "instance"  # batch norm has its own bias
        self.stem: nn.Module | None = None
        self.head: nn.Module | None = None
        if full_res:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, ngf, 3, padding=1, bias=True),
                nn.ReLU(inplace=True),
                nn.Conv2d(ngf, ngf, 3, padding=1, bias=use_bias),
                norm_layer(norm, ngf),
                nn.ReLU(inplace=True),
            )
            self.head = nn.Sequential(
                nn.ReLU(inplace=True),
                nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=use_bias),
                norm_layer(norm, ngf),
                nn.ReLU(inplace=True),
                nn.Conv2d(ngf, out_channels, 3, padding=1, bias=True),
                *([nn.Tanh()] if tanh else []),
            )
            in_channels, out_channels = ngf, ngf
        chans = [min(ngf * 2**i, ngf * 8) for i in range(num_downs)]
        self.downs = nn.ModuleList()
        for i in range(num_downs):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            layers.append(
                nn.Conv2d(in_channels if i == 0 else chans[i - 1], chans[i], 4, stride=2, padding=1, bias=use_bias)
            )
            if 0 < i < num_downs - 1:
                layers.append(norm_layer(norm, chans[i]))
            self.downs.append(nn.Sequential(*layers))
        n_dropout = max(num_downs - 5, 0)
        self.ups = nn.ModuleList()
        for i in range(num_downs):
            innermost, outermost = i == num_downs - 1, i == 0
            in_ch = chans[i] if innermost else 2 * chans[i]
            layers = [nn.ReLU(inplace=True)]
            if outermost:
                layers += [_up(in_ch, out_channels, upsample, bias=True)] + (
                    [nn.Tanh()] if tanh and not full_res else []
                )
            else:
                layers += [_up(in_ch, chans[i - 1], upsample, bias=use_bias), norm_layer(norm, chans[i - 1])]
                if dropout > 0 and num_downs - 1 - n_dropout <= i < num_downs - 1:
                    layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))

    @property
    def divisor(self) -> int:
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = full = self.stem(x)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        y = self.ups[-1](skips[-1])
        for i in range(self.num_downs - 2, 0, -1):
            y = self.ups[i](torch.cat([y, skips[i]], dim=1))
        if self.head is None:
            return _in_fp32(self.ups[0], torch.cat([y, skips[0]], dim=1))
        y = self.ups[0](torch.cat([y, skips[0]], dim=1))
        return _in_fp32(self.head, torch.cat([y, full], dim=1))


class _ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str, use_bias: bool):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=use_bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=use_bias),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator; inputs must be divisible by 4."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        upsample: str = "transpose",
        tanh: bool = True,
    ):
        super().__init__()
        use_bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=use_bias),
            norm_layer(norm, ngf),
            nn.ReLU(inplace=True),
        ]
        for i in range(2):
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias),
                norm_layer(norm, 2 * c),
                nn.ReLU(inplace=True),
            ]
        layers += [_ResBlock(ngf * 4, norm, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [
                _up(c, c // 2, upsample, kernel=3, bias=use_bias),
                norm_layer(norm, c // 2),
                nn.ReLU(inplace=True),
            ]
        self.n_head = 3 if tanh else 2  # the output layers, run in float32
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7)] + ([nn.Tanh()] if tanh else [])
        self.model = nn.Sequential(*layers)

    divisor = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_fp32(self.model[-self.n_head :], self.model[: -self.n_head](x))


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator returning a map of logits (no sigmoid): one real/fake score per patch."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Rescaled(nn.Module):
    """Run ``net`` on ``(x - offset) * gain``; with ``residual``, return x's centre channel + net(...) / gain.

    A residual generator starts near the identity and only has to learn the correction, in units where that correction
    is of order 1 (for denoising: HU / 100 instead of the [-1, 1] CT scale, in which the noise is 0.02). The centre
    channel is the middle of a 2.5D stack; a one-channel input is added to every output channel.
    """

    def __init__(self, net: nn.Module, offset: float, gain: float, residual: bool = False):
        super().__init__()
        self.net, self.offset, self.gain, self.residual = net, float(offset), float(gain), residual

    @property
    def divisor(self) -> int:
        return getattr(self.net, "divisor", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net((x - self.offset) * self.gain)
        if not self.residual:
            return y
        c = x.shape[1] // 2
        return x[:, c : c + 1] + y / self.gain


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """N(0, gain) for convolutions, N(1, gain) for batch-norm scales, zero biases (pix2pix/CycleGAN)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net
