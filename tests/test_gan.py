"""Adversarial losses, gradient penalty, image pool, and real optimisation steps of each model on a fixed batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtranslate.core.config import RunConfig
from medtranslate.models.base import GANLoss, ImagePool, build_model, gradient_penalty
from medtranslate.models.baselines import IntensityMap
from medtranslate.models.losses import body_loss, histogram_loss


def tiny_config(kind: str, **model) -> RunConfig:
    return RunConfig.from_dict(
        {
            "data": {"root": "unused", "patch_size": 32},
            "model": {"kind": kind, "ngf": 8, "ndf": 8, "n_blocks": 2, "num_downs": 3, **model},
            "train": {"batch_size": 2, "lr": 1e-3, "seed": 0, "channels_last": False},
        }
    )


def test_gan_losses_on_known_logits():
    big = torch.full((2, 1, 4, 4), 20.0)
    for mode in ("vanilla", "lsgan", "hinge"):
        loss = GANLoss(mode)
        good_d = loss.d_loss(
            real=big if mode != "lsgan" else torch.ones_like(big),
            fake=-big if mode != "lsgan" else torch.zeros_like(big),
        )
        bad_d = loss.d_loss(real=-big, fake=big)
        assert float(good_d) < 1e-6 < float(bad_d), mode
    assert float(GANLoss("vanilla").g_loss(big)) < 1e-6 and float(GANLoss("vanilla").g_loss(-big)) > 10
    w = GANLoss("wgangp")
    assert float(w.d_loss(real=torch.tensor([3.0]), fake=torch.tensor([1.0]))) == -2.0
    assert float(w.g_loss(torch.tensor([1.5]))) == -1.5
    with pytest.raises(Exception, match="gan_loss"):
        GANLoss("wasserstein")


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    torch.manual_seed(0)
    w = torch.randn(1, 3, 5, 5)
    w /= w.norm()
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731 - gradient is w everywhere, norm 1
    real, fake = torch.rand(4, 3, 5, 5), torch.rand(4, 3, 5, 5)
    assert float(gradient_penalty(critic, real, fake)) == pytest.approx(0.0, abs=1e-10)
    critic2 = lambda x: 3 * (x * w).flatten(1).sum(1)  # noqa: E731 - gradient norm 3: penalty (3-1)^2
    assert float(gradient_penalty(critic2, real, fake)) == pytest.approx(4.0, rel=1e-5)


def test_image_pool_fills_then_mixes_old_and_new():
    pool = ImagePool(3, torch.Generator().manual_seed(0))
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    new = torch.full((20, 1, 1, 1), 9.0)
    out = pool.query(new)
    assert out.shape == new.shape
    assert (out != 9.0).any() and (out == 9.0).any()  # some fakes are swapped for stored ones
    restored = ImagePool(3, torch.Generator())
    restored.load(pool.state(), torch.device("cpu"))
    assert torch.equal(torch.cat(restored.images), torch.cat(pool.images))


def _fixed_batch(paired: bool = True):
    g = torch.Generator().manual_seed(1)
    src = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    tgt = -src if paired else torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    return {"source": src, "target": tgt}


@pytest.mark.parametrize("gan_loss", ["vanilla", "lsgan", "hinge", "wgangp"])
def test_one_pix2pix_step_lowers_its_losses(gan_loss):
    torch.manual_seed(0)
    model = build_model(
        tiny_config("pix2pix", gan_loss=gan_loss, dropout=0.0), 1, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    batch = _fixed_batch()
    G, D = model.nets["G"], model.nets["D"]

    def l1():
        with torch.no_grad():
            return float(F.l1_loss(G(batch["source"]), batch["target"]))

    def d_loss():
        with torch.no_grad():
            fake = G(batch["source"])
            return float(
                model.gan.d_loss(
                    D(torch.cat([batch["source"], batch["target"]], 1)), D(torch.cat([batch["source"], fake], 1))
                )
            )

    before_l1, before_d = l1(), d_loss()
    losses = model.train_step(batch)
    assert set(losses) == {"loss_d", "loss_g_adv", "loss_g_l1", "loss_g"}
    assert l1() < before_l1
    assert d_loss() < before_d


def test_one_cyclegan_step_lowers_its_cycle_loss():
    torch.manual_seed(0)
    model = build_model(tiny_config("cyclegan"), 1, torch.device("cpu"), torch.Generator().manual_seed(0))
    batch = _fixed_batch(paired=False)
    G, Finv = model.nets["G"], model.nets["G_inv"]

    def cycle():
        with torch.no_grad():
            return float(
                F.l1_loss(Finv(G(batch["source"])), batch["source"])
                + F.l1_loss(G(Finv(batch["target"])), batch["target"])
            )

    before = cycle()
    losses = model.train_step(batch)
    assert set(losses) == {"loss_d", "loss_g_adv", "loss_g_cycle", "loss_g_idt", "loss_g"}
    assert cycle() < before
    assert len(model.pools["target"].images) == 2  # the fakes went into the pool


def test_residual_denoiser_starts_at_the_identity_and_learns_to_denoise():
    # ldct: the generator predicts a correction in HU / 100; 40 HU of noise on a smooth image, 30 steps on one batch
    torch.manual_seed(0)
    cfg = tiny_config("pix2pix", task="ldct", dropout=0.0)
    assert cfg.model.residual and cfg.model.full_res
    model = build_model(cfg, 1, torch.device("cpu"), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    clean = (
        F.avg_pool2d(torch.rand(2, 1, 40, 40, generator=g), 9, stride=1) * 0.05 - 0.48
    )  # soft-tissue-like, in [-1, 1] units
    noisy = clean + torch.randn(clean.shape, generator=g) * (40.0 / 2047.5)
    G = model.nets["G"]  # compared in training mode (batch statistics): 30 steps do not settle batch-norm running means
    with torch.no_grad():
        start = float(F.l1_loss(G(noisy), noisy))
    noise_l1 = float(F.l1_loss(noisy, clean))
    assert start < 0.5 * noise_l1  # the untrained correction is small beside the noise
    for _ in range(30):
        model.train_step({"source": noisy, "target": clean})
    with torch.no_grad():
        assert float(F.l1_loss(G(noisy), clean)) < 0.7 * noise_l1


def test_cyclegan_with_measured_noise_learns_to_remove_the_noise_it_adds():
    # model.inverse noise: no second generator; G sees normal-dose slices plus noise of the measured spectrum and level
    import numpy as np

    from medtranslate.models.noise import NoiseModel

    torch.manual_seed(0)
    cfg = tiny_config("cyclegan", task="ldct", inverse="noise", generator="unet", lambda_cycle=100, lambda_identity=0)
    model = build_model(cfg, 1, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert set(model.nets) == {"G", "D"}
    g = torch.Generator().manual_seed(2)
    clean = F.avg_pool2d(torch.rand(4, 1, 40, 40, generator=g), 9, stride=1) * 0.05 - 0.48  # soft tissue, [-1, 1]
    noisy = clean[:2] + torch.randn(clean[:2].shape, generator=g) * (40.0 / 2047.5)  # the "low-dose" slices
    batch = {"source": noisy, "target": clean[2:]}  # unpaired: the targets are other images
    with pytest.raises(RuntimeError, match="set_noise"):
        model.train_step(batch)
    model.set_noise(NoiseModel(nps=np.ones((16, 16)), sigmas=np.array([40.0])))  # white, 40 HU
    G = model.nets["G"]
    noise_l1 = float(F.l1_loss(noisy, clean[:2]))
    for _ in range(30):
        losses = model.train_step(batch)
    assert set(losses) == {"loss_d", "loss_g_adv", "loss_g_cycle", "loss_g_idt", "loss_g"}
    with torch.no_grad():  # the real noisy slices, never paired with their clean images in training, come out cleaner
        assert float(F.l1_loss(G(noisy), clean[:2])) < 0.7 * noise_l1
    assert model.state_dict()["noise"]["sigmas"].tolist() == [40.0]


def test_intensity_map_recovers_a_known_mapping():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(200_000, generator=rng) * 2 - 1
    y = torch.where(x < 0, 0.5 * x, x**2)  # non-linear, non-monotone pieces are fine for a look-up table
    lut = IntensityMap(bins=128).fit(x.numpy(), y.numpy())
    probe = torch.linspace(-0.99, 0.99, 50)
    out = lut(probe.view(1, 1, 50, 1))[0, 0, :, 0]
    expected = torch.where(probe < 0, 0.5 * probe, probe**2)
    assert float((out - expected).abs().max()) < 0.02
    # a 3-channel (2.5D) input uses its centre channel
    three = torch.stack([probe * 0, probe, probe * 0]).view(1, 3, 50, 1)
    assert torch.allclose(lut(three)[0, 0, :, 0], out)


def test_weight_average_follows_the_weights_with_a_growing_decay():
    from medtranslate.models.base import WeightAverage
    from medtranslate.models.checkpoint import build_inference_net

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    avg = WeightAverage(net, decay=0.99)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(3.0)
    avg.update(net)  # first update: decay min(0.99, 2/11), so the average moves most of the way
    assert torch.allclose(avg.net[0].weight, start + 1.0 - 2 / 11, atol=1e-6)
    assert torch.equal(avg.net[1].running_mean, net[1].running_mean)  # buffers are copied, not averaged
    for _ in range(2000):
        avg.update(net)
    assert torch.allclose(avg.net[0].weight, net[0].weight, atol=1e-4) and avg.updates == 2001
    assert not any(p.requires_grad for p in avg.net.parameters())
    # a checkpoint with an average translates with it
    raw = tiny_config("pix2pix").to_dict()
    raw["train"]["ema"] = 0.5
    cfg = RunConfig.from_dict(raw)
    model = build_model(cfg, 1, torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        next(model.average.net.parameters()).add_(5.0)
    ckpt = {"kind": "pix2pix", "config": cfg.to_dict(), "in_channels": 1, "model": model.state_dict()}
    net = build_inference_net(ckpt, torch.device("cpu"))
    assert torch.equal(next(net.parameters()), next(model.average.net.parameters()))


def test_cyclegan_structure_loss_and_discriminator_learning_rate():
    raw = tiny_config("cyclegan", structure_loss="mind", lambda_structure=5.0, lambda_identity=0.0).to_dict()
    raw["train"]["lr_d"] = 1e-4
    model = build_model(RunConfig.from_dict(raw), 1, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert [g["lr"] for g in model.optimizers["G"].param_groups] == [1e-3]
    assert [g["lr"] for g in model.optimizers["D"].param_groups] == [1e-4]
    g = torch.Generator().manual_seed(1)
    batch = {
        "source": torch.rand(2, 1, 32, 32, generator=g) * 2 - 1,
        "target": torch.rand(2, 1, 32, 32, generator=g) * 2 - 1,
    }
    losses = model.train_step(batch)
    assert losses["loss_g_struct"] > 0 and losses["loss_g_idt"] == 0.0
    total = losses["loss_g_adv"] + losses["loss_g_cycle"] + losses["loss_g_struct"]
    assert losses["loss_g"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize(
    "weight_key, term, measure",
    [
        # the body-outline loss: the CT output's outline follows the input's body mask
        ("lambda_body", "loss_g_body", lambda fake, batch: body_loss(fake, batch["mask"])),
        # the histogram loss: the output's HU distribution inside the body follows its partner's
        ("lambda_histogram", "loss_g_hist", lambda fake, batch: histogram_loss(fake, batch["mask"], batch["target"])),
    ],
)
def test_cyclegan_extra_terms_are_reported_and_train_what_they_measure(weight_key, term, measure):
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r = ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt()
    mask = (r < 12).float().expand(2, 1, 32, 32)
    # sources: a disc of noise; partners: a bright ring (bone) around soft tissue, air outside
    hu = torch.where(r < 9, 40.0, torch.where(r < 12, 1000.0, -1000.0))
    batch = {
        "source": mask * 2 - 1 + 0.05 * torch.randn(2, 1, 32, 32, generator=g),
        "target": ((hu + 1024.0) / 4095.0 * 2.0 - 1.0).expand(2, 1, 32, 32),
        "mask": mask,
    }
    measured = {}
    for weight in (0.0, 10.0):  # the same seeds and batches, with and without the term
        cfg = tiny_config("cyclegan", task="mr2ct", lambda_identity=0.0, **{weight_key: weight})
        torch.manual_seed(0)  # the networks' initial weights (the trainer seeds them so too)
        model = build_model(cfg, 1, torch.device("cpu"), torch.Generator().manual_seed(0))
        for _ in range(10):
            losses = model.train_step(batch)
        with torch.no_grad():
            measured[weight] = float(measure(model.nets["G"](batch["source"]), batch))
        if weight:
            total = losses["loss_g_adv"] + losses["loss_g_cycle"] + losses["loss_g_idt"] + losses[term]
            assert losses["loss_g"] == pytest.approx(total, rel=1e-5)
            assert losses[term] == pytest.approx(weight * measured[weight], rel=0.5)
        else:
            assert term not in losses
    assert measured[10.0] < 0.7 * measured[0.0]  # 0.35 (body) and 0.45 (histogram) here
