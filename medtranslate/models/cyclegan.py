"""CycleGAN (Zhu et al. 2017): two generators and two discriminators learning from unpaired cohorts, with the cycle,
identity, structure and body-outline terms, and for low-dose CT an inverse made of measured noise."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medtranslate.core.config import RunConfig
from medtranslate.imaging.transforms import ct_intensity
from medtranslate.models.base import (
    ImagePool,
    TranslationModel,
    build_discriminator,
    build_generator,
    floats,
)
from medtranslate.models.losses import body_loss, cycle_loss, histogram_loss, structure_loss
from medtranslate.models.noise import NoiseModel

__all__ = ["CycleGAN"]


class CycleGAN(TranslationModel):
    """Unpaired translation: G (source -> target) and F (target -> source), discriminators D (target) and D_src.

    With ``model.inverse: noise`` (low-dose CT) there is no F and no D_src: the target -> source direction adds noise
    measured on the training scans (:mod:`medtranslate.models.noise`, given by :meth:`set_noise`).
    """

    kind = "cyclegan"

    def __init__(self, cfg: RunConfig, in_channels: int, device: torch.device, generator: torch.Generator):
        super().__init__(cfg, in_channels, device, generator)
        m = cfg.model
        self.nets["G"] = build_generator(cfg, in_channels)
        self.nets["D"] = build_discriminator(cfg, 1)
        self.pools = {"target": ImagePool(m.pool_size, generator)}
        # model.inverse noise: the target -> source direction adds measured noise (set_noise) instead of a network
        self.noise: NoiseModel | None = None
        if m.inverse == "network":
            self.nets["G_inv"] = build_generator(cfg, 1, in_channels)
            self.nets["D_src"] = build_discriminator(cfg, in_channels)
            self.pools["source"] = ImagePool(m.pool_size, generator)
        self._finish()

    def set_noise(self, noise: NoiseModel) -> None:
        """The noise the target -> source direction adds (model.inverse: noise; see noise.py)."""
        self.noise = noise

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.cfg.model.inverse == "noise":
            return self._noise_step(batch)
        m = self.cfg.model
        real_a, real_b = self._prep(batch["source"]), self._prep(batch["target"])
        G, Finv, D_b, D_a = self._trained("G"), self._trained("G_inv"), self.nets["D"], self.nets["D_src"]
        self._requires_grad("D", False)
        with self.autocast():
            fake_b, fake_a = G(real_a), Finv(real_b)
            rec_a, rec_b = Finv(fake_b), G(fake_a)
            loss_adv = self.gan.g_loss(D_b(fake_b)) + self.gan.g_loss(D_a(fake_a))
            loss_idt = torch.zeros((), device=self.device)
            if m.lambda_identity > 0:
                loss_idt = (
                    (F.l1_loss(G(real_b).float(), real_b.float()) + F.l1_loss(Finv(real_a).float(), real_a.float()))
                    * m.lambda_cycle
                    * m.lambda_identity
                )
        loss_cycle = (
            cycle_loss(m.cycle_loss, rec_a, real_a) + cycle_loss(m.cycle_loss, rec_b, real_b)
        ) * m.lambda_cycle
        losses = dict(loss_g_adv=loss_adv, loss_g_cycle=loss_cycle, loss_g_idt=loss_idt)
        losses.update(self._extra_terms(batch, real_b, (real_a, fake_b), (real_b, fake_a)))
        return self._update(losses, [("D", real_b, "target", fake_b), ("D_src", real_a, "source", fake_a)])

    def _noise_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step with measured noise as the inverse: G removes noise added to normal-dose slices (the normal-dose
        cycle, in the configured cycle loss) and makes of real low-dose slices what D takes for normal-dose ones.

        The low-dose cycle (low -> normal -> low) is left out: it would ask for the removed noise back.
        """
        m = self.cfg.model
        if self.noise is None:
            raise RuntimeError("CycleGAN with model.inverse noise: set_noise() was not called before training")
        real_a, real_b = self._prep(batch["source"]), self._prep(batch["target"])
        ct = ct_intensity()
        noise_hu = self.noise.sample(tuple(batch["target"].shape), self.rng)
        noisy_b = self._prep((batch["target"] + noise_hu * (2.0 / (ct.hi - ct.lo))).clamp(-1.0, 1.0))
        G, D_b = self._trained("G"), self.nets["D"]
        self._requires_grad("D", False)
        with self.autocast():
            fake_b, rec_b = G(real_a), G(noisy_b)
            loss_adv = self.gan.g_loss(D_b(fake_b))
            loss_idt = torch.zeros((), device=self.device)
            if m.lambda_identity > 0:
                loss_idt = F.l1_loss(G(real_b).float(), real_b.float()) * m.lambda_cycle * m.lambda_identity
        loss_cycle = cycle_loss(m.cycle_loss, rec_b, real_b) * m.lambda_cycle
        losses = dict(loss_g_adv=loss_adv, loss_g_cycle=loss_cycle, loss_g_idt=loss_idt)
        losses.update(self._extra_terms(batch, real_b, (real_a, fake_b)))
        return self._update(losses, [("D", real_b, "target", fake_b)])

    def _extra_terms(
        self, batch: dict[str, torch.Tensor], real_b: torch.Tensor, *input_output: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The configured structure, body and histogram terms of the generator loss; ``real_b``: the target slices
        of the step (on the device), ``input_output``: (input, output) of each generator, the source -> target one
        first."""
        m, terms = self.cfg.model, {}
        if m.structure_loss != "none" and m.lambda_structure > 0:
            # the output keeps the input's edges whatever their contrast: anatomy is neither moved nor invented
            total = sum(structure_loss(m.structure_loss, x, y) for x, y in input_output)
            terms["loss_g_struct"] = total * (m.lambda_structure * self.structure_scale)
        if m.lambda_body > 0:  # the CT output keeps the input's outline (every task's target is a CT)
            terms["loss_g_body"] = body_loss(input_output[0][1], batch["mask"].to(self.device)) * m.lambda_body
        if m.lambda_histogram > 0:  # the output's HU distribution, against that of the CT slices it meets
            fake = input_output[0][1]
            terms["loss_g_hist"] = histogram_loss(fake, batch["mask"].to(self.device), real_b) * m.lambda_histogram
        return terms

    def _update(
        self, losses: dict[str, torch.Tensor], judged: list[tuple[str, torch.Tensor, str, torch.Tensor]]
    ) -> dict[str, float]:
        """Step the generators on the sum of ``losses``, then each discriminator of ``judged`` (name, real images,
        pool, fakes) on its real images against pooled fakes, weighted 0.5 each as in the CycleGAN paper."""
        loss_g = sum(losses.values())
        self._step("G", loss_g)
        self._requires_grad("D", True)
        pooled = [(name, real, self.pools[pool].query(fake)) for name, real, pool, fake in judged]
        for _ in range(self.cfg.train.d_steps):
            loss_d = sum(self._d_update(self._trained(name), real, fake, 0.5) for name, real, fake in pooled)
            self._step("D", loss_d)
        return floats(loss_d=loss_d, **losses, loss_g=loss_g)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["pools"] = {k: p.state() for k, p in self.pools.items()}
        if self.noise is not None:
            state["noise"] = self.noise.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k, images in state.get("pools", {}).items():
            self.pools[k].load(images, self.device)
        if "noise" in state:
            self.noise = NoiseModel.from_state_dict(state["noise"])
