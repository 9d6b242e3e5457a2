"""pix2pix (Isola et al. 2017): a conditional GAN on co-registered pairs, the generator trained with L1 beside the
adversarial term, and an optional L1-only warm-up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medtranslate.core.config import RunConfig
from medtranslate.models.base import TranslationModel, build_discriminator, build_generator, floats

__all__ = ["Pix2Pix"]


class Pix2Pix(TranslationModel):
    """Conditional GAN on paired slices: U-Net generator, PatchGAN on (input, output), L1 weight 100."""

    kind = "pix2pix"

    def __init__(self, cfg: RunConfig, in_channels: int, device: torch.device, generator: torch.Generator):
        super().__init__(cfg, in_channels, device, generator)
        self.nets["G"] = build_generator(cfg, in_channels)
        self.nets["D"] = build_discriminator(cfg, in_channels + 1)
        self.adversarial = True  # off during model.l1_warmup_epochs (begin_epoch)
        self._finish()

    def begin_epoch(self, epoch: int) -> None:
        self.adversarial = epoch >= self.cfg.model.l1_warmup_epochs

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        real_a, real_b = self._prep(batch["source"]), self._prep(batch["target"])
        G, D = self._trained("G"), self.nets["D"]
        with self.autocast():
            fake_b = G(real_a)
        loss_l1 = F.l1_loss(fake_b.float(), real_b.float()) * self.cfg.model.lambda_l1
        if not self.adversarial:  # L1 warm-up: a regression step, the discriminator untouched
            self._step("G", loss_l1)
            return floats(loss_g_l1=loss_l1, loss_g=loss_l1)
        # discriminator: real pairs vs generated pairs, conditioned on the input
        self._requires_grad("D", True)
        real_ab, fake_ab = torch.cat([real_a, real_b], 1), torch.cat([real_a, fake_b.detach()], 1)
        for _ in range(self.cfg.train.d_steps):
            loss_d = self._d_update(self._trained("D"), real_ab, fake_ab)
            self._step("D", loss_d)
        # generator: fool D and stay close to the target in L1
        self._requires_grad("D", False)
        with self.autocast():
            loss_adv = self.gan.g_loss(D(torch.cat([real_a, fake_b], 1)))
        self._step("G", loss_adv + loss_l1)
        return floats(loss_d=loss_d, loss_g_adv=loss_adv, loss_g_l1=loss_l1, loss_g=loss_adv + loss_l1)
