"""Network shapes, parameter counts against the papers, and weight initialisation."""

from __future__ import annotations

import pytest
import torch

from medtranslate.nets import PatchDiscriminator, ResnetGenerator, UNetGenerator, init_weights


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("hw", [(32, 48), (40, 24), (16, 16)])
def test_unet_output_matches_input_size(hw, upsample):
    net = UNetGenerator(3, 1, num_downs=3, ngf=4, upsample=upsample)
    out = net(torch.rand(2, 3, *hw) * 2 - 1)
    assert out.shape == (2, 1, *hw) and net.divisor == 8
    assert out.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("hw", [(20, 36), (44, 28)])
def test_resnet_output_matches_input_size(hw, upsample):
    net = ResnetGenerator(1, 1, ngf=4, n_blocks=2, upsample=upsample)
    assert net(torch.rand(1, 1, *hw)).shape == (1, 1, *hw)


@pytest.mark.parametrize("hw,expected", [((64, 64), (6, 6)), ((65, 71), (6, 6)), ((66, 80), (6, 8)), ((37, 45), (2, 3))])
def test_patchgan_output_grid_for_odd_and_even_sizes(hw, expected):
    d = PatchDiscriminator(2, ndf=4, n_layers=3)
    assert d(torch.rand(1, 2, *hw)).shape == (1, 1, *expected)


def test_reference_architectures_have_the_papers_sizes():
    # pix2pix unet_256 has 54.4 M parameters and the 70x70 PatchGAN (on 6 input channels) 2.77 M
    unet = UNetGenerator(3, 3, num_downs=8, ngf=64)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(54.41e6, rel=1e-3)
    d = PatchDiscriminator(6, ndf=64, n_layers=3)
    assert sum(p.numel() for p in d.parameters()) == pytest.approx(2.769e6, rel=1e-3)
    # the innermost up-blocks carry dropout (3 of them in the 256 variant), the rest do not
    n_dropout = sum(isinstance(m, torch.nn.Dropout) for m in unet.modules())
    assert n_dropout == 3
    resnet = ResnetGenerator(3, 3, ngf=64, n_blocks=9)
    assert sum(p.numel() for p in resnet.parameters()) == pytest.approx(11.378e6, rel=1e-3)


def test_init_weights_normal_002():
    net = init_weights(UNetGenerator(1, 1, num_downs=4, ngf=16))
    weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.mean())) < 2e-3 and float(weights.std()) == pytest.approx(0.02, rel=0.05)
