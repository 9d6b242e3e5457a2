"""Network shapes, parameter counts against the papers, and weight initialisation."""

from __future__ import annotations

import pytest
import torch

from medtranslate.models.nets import PatchDiscriminator, Rescaled, ResnetGenerator, UNetGenerator, _up, init_weights


@pytest.mark.parametrize("upsample", ["transpose", "resize", "narrow"])
@pytest.mark.parametrize("hw", [(32, 48), (40, 24), (16, 16)])
def test_unet_output_matches_input_size(hw, upsample):
    net = UNetGenerator(3, 1, num_downs=3, ngf=4, upsample=upsample)
    out = net(torch.rand(2, 3, *hw) * 2 - 1)
    assert out.shape == (2, 1, *hw) and net.divisor == 8
    assert out.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize("upsample", ["transpose", "resize", "narrow"])
@pytest.mark.parametrize("hw", [(20, 36), (44, 28)])
def test_resnet_output_matches_input_size(hw, upsample):
    net = ResnetGenerator(1, 1, ngf=4, n_blocks=2, upsample=upsample)
    assert net(torch.rand(1, 1, *hw)).shape == (1, 1, *hw)


def test_resize_upsamplings_turn_a_flat_map_into_a_flat_map_and_narrow_costs_half():
    # the checkerboard of a transposed convolution (Odena et al. 2016) shows on a constant input: its kernel's taps
    # overlap unevenly, so the output repeats every 2 pixels; a resize (nearest, then a convolution) cannot do that
    flat = torch.ones(1, 16, 8, 8)
    for mode in ("resize", "narrow", "transpose"):
        up = _up(16, 8, mode, bias=False)
        init_weights(up)
        centre = up(flat)[..., 2:-2, 2:-2]  # away from the borders' padding
        if mode == "transpose":
            assert (centre[..., 0::2, :] - centre[..., 1::2, :]).abs().max() > 1e-3
        else:
            assert torch.allclose(centre, centre[..., :1, :1].expand_as(centre), atol=1e-6), mode
    # the 3x3 convolution at the doubled size reads half the channels: half the multiply-adds there, plus a 1x1 at a
    # quarter of the pixels
    weights = {m: sum(p.numel() for p in _up(64, 32, m, bias=False).parameters()) for m in ("resize", "narrow")}
    assert weights == {"resize": 64 * 32 * 9, "narrow": 64 * 32 + 32 * 32 * 9}
    narrow_unet = UNetGenerator(1, 1, num_downs=3, ngf=8, upsample="narrow")
    assert narrow_unet.ups[0][1][0].out_channels == 8  # the output layer keeps ngf features, not 1


@pytest.mark.parametrize(
    "hw,expected", [((64, 64), (6, 6)), ((65, 71), (6, 6)), ((66, 80), (6, 8)), ((37, 45), (2, 3))]
)
def test_patchgan_output_grid_for_odd_and_even_sizes(hw, expected):
    d = PatchDiscriminator(2, ndf=4, n_layers=3)
    assert d(torch.rand(1, 2, *hw)).shape == (1, 1, *expected)


@pytest.mark.parametrize("n_layers,field", [(1, 16), (2, 34), (3, 70)])
def test_patchgan_receptive_field(n_layers, field):
    # the input pixels one output logit depends on: 16, 34 and 70 pixels across, as in the pix2pix paper's
    # comparison of discriminators (the shipped mr2ct_cyclegan.yaml picks the 16x16 one by this size)
    d = PatchDiscriminator(1, ndf=4, n_layers=n_layers).eval()  # running statistics: no coupling across the image
    x = torch.rand(1, 1, 128, 128, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (field, field)


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


@pytest.mark.parametrize("hw", [(32, 48), (24, 40)])
def test_full_res_unet_has_full_resolution_layers_and_optional_tanh(hw):
    net = UNetGenerator(3, 1, num_downs=3, ngf=4, full_res=True, tanh=False)
    x = torch.rand(2, 3, *hw) * 2 - 1
    assert net(x).shape == (2, 1, *hw)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.stride == (1, 1) and first.in_channels == 3  # the plain U-Net starts with a stride-2 convolution
    assert not any(isinstance(m, torch.nn.Tanh) for m in net.modules())
    with torch.no_grad():
        net.head[-1].bias.fill_(5.0)
    assert net(x).min() > 1.0  # no tanh bound on a correction
    bounded = UNetGenerator(3, 1, num_downs=3, ngf=4, full_res=True)
    assert sum(isinstance(m, torch.nn.Tanh) for m in bounded.modules()) == 1


def test_rescaled_runs_the_net_in_its_units_and_adds_the_centre_channel():
    pick = torch.nn.Conv2d(3, 1, 1, bias=False)  # returns its input's first channel
    with torch.no_grad():
        pick.weight.zero_()
        pick.weight[0, 0] = 1.0
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    plain = Rescaled(pick, offset=-0.5, gain=20.0)
    assert torch.allclose(plain(x), (x[:, :1] + 0.5) * 20.0)
    residual = Rescaled(pick, offset=-0.5, gain=20.0, residual=True)
    assert torch.allclose(residual(x), x[:, 1:2] + (x[:, :1] + 0.5), atol=1e-6)  # centre channel + correction / gain
    zero = torch.nn.Conv2d(1, 3, 1)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    one = torch.rand(2, 1, 8, 8)
    assert torch.equal(
        Rescaled(zero, 0.0, 5.0, residual=True)(one), one.expand(2, 3, 8, 8)
    )  # one channel in: added to every output
