"""What every network kind shares: adversarial losses on logits, the image pool, the weight average, the
generator and discriminator builders, and :class:`TranslationModel`, the base of a kind's update steps.

Losses (``GANLoss``): vanilla (BCE with logits; Goodfellow et al. 2014, as pix2pix uses it), least squares
(Mao et al. 2017; CycleGAN), hinge (Lim & Ye 2017), and Wasserstein with gradient penalty (Gulrajani et al. 2017),
the stabler objective when the discriminator wins too fast. Losses see raw logits: no activation is added.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtranslate.core.config import RESIDUAL_UNIT_HU, RunConfig
from medtranslate.core.errors import ConfigError
from medtranslate.core.kinds import MODEL_KINDS, get_kind, model_class
from medtranslate.imaging.transforms import ct_intensity
from medtranslate.models.nets import PatchDiscriminator, Rescaled, ResnetGenerator, UNetGenerator, init_weights
from medtranslate.runtime.precision import AMP_DTYPES

__all__ = [
    "WeightAverage",
    "GANLoss",
    "gradient_penalty",
    "ImagePool",
    "floats",
    "build_generator",
    "build_discriminator",
    "build_model",
    "TranslationModel",
]


class GANLoss:
    """Generator and discriminator losses computed from discriminator logits (float32)."""

    def __init__(self, mode: str):
        if mode not in ("vanilla", "lsgan", "hinge", "wgangp"):
            raise ConfigError(f"unknown gan_loss '{mode}'; expected one of: hinge, lsgan, vanilla, wgangp")
        self.mode = mode

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real, fake = real.float(), fake.float()
        if self.mode == "vanilla":
            return 0.5 * (
                F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            )
        if self.mode == "lsgan":
            return 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
        if self.mode == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return fake.mean() - real.mean()  # wgangp; the penalty is added by the caller

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        fake = fake.float()
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        if self.mode == "lsgan":
            return F.mse_loss(fake, torch.ones_like(fake))
        return -fake.mean()  # hinge and wgangp


def gradient_penalty(
    disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """WGAN-GP: mean of (||grad D(x_hat)|| - 1)^2 at random interpolates x_hat between real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device="cpu").to(real.device, real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = disc(x_hat).float()
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


class ImagePool:
    """A buffer of past fakes (Shrivastava et al. 2017; CycleGAN uses 50): the discriminator sees old and new ones."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = generator

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=self.generator).item() < 0.5:
                i = int(torch.randint(0, self.size, (1,), generator=self.generator).item())
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state(self) -> torch.Tensor:
        return torch.cat(self.images, 0).cpu() if self.images else torch.zeros(0)

    def load(self, images: torch.Tensor, device: torch.device) -> None:
        self.images = [img[None].to(device) for img in images] if images.numel() else []


class WeightAverage:
    """An exponential moving average of a network's weights (Yazici et al. 2019, "The unusual effectiveness of
    averaging in GAN training"): a GAN's generator moves from step to step as the discriminator does, and its average
    is steadier and often better than its last weights. Parameters are averaged; buffers (batch-norm statistics) are
    copied. The decay grows with the updates, min(decay, (1 + n) / (10 + n)), so a short run is not dominated by its
    random start (as TensorFlow's ExponentialMovingAverage does with num_updates).
    """

    def __init__(self, net: nn.Module, decay: float):
        import copy

        self.decay, self.updates = float(decay), 0
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for avg, p in zip(self.net.parameters(), net.parameters(), strict=True):
            avg.lerp_(p.detach(), 1.0 - d)
        for avg, b in zip(self.net.buffers(), net.buffers(), strict=True):
            avg.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.net.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["G"])
        self.updates = int(state["updates"])


def build_generator(cfg: RunConfig, in_channels: int, out_channels: int = 1) -> nn.Module:
    """The generator of ``cfg.model``; residual models wrap it in :class:`Rescaled` (HU / RESIDUAL_UNIT_HU units)."""
    m = cfg.model
    tanh = not m.residual
    if m.generator == "unet":
        num_downs = m.num_downs or max(int(cfg.data.patch_size).bit_length() - 1, 2)
        net: nn.Module = UNetGenerator(
            in_channels,
            out_channels,
            num_downs=num_downs,
            ngf=m.ngf,
            norm=m.norm,
            dropout=m.dropout,
            upsample=m.upsample,
            full_res=m.full_res,
            tanh=tanh,
        )
    else:
        net = ResnetGenerator(
            in_channels, out_channels, ngf=m.ngf, n_blocks=m.n_blocks, norm=m.norm, upsample=m.upsample, tanh=tanh
        )
    net = init_weights(net)
    return _in_residual_units(net, cfg, residual=True) if m.residual else net


def build_discriminator(cfg: RunConfig, in_channels: int) -> nn.Module:
    """A PatchGAN; for residual models it sees images in the generator's units, where the noise is visible."""
    m = cfg.model
    net = init_weights(PatchDiscriminator(in_channels, m.ndf, m.d_layers, m.norm))
    return _in_residual_units(net, cfg, residual=False) if m.residual else net


def _in_residual_units(net: nn.Module, cfg: RunConfig, residual: bool) -> nn.Module:
    ct = ct_intensity()
    offset = float(ct.forward(np.float64(0.0)))  # water
    gain = (ct.hi - ct.lo) / 2.0 / RESIDUAL_UNIT_HU
    return Rescaled(net, offset, gain, residual=residual)


class TranslationModel:
    """Networks, optimisers and the update step of one model kind; ``generator`` translates source -> target."""

    kind = ""

    def __init__(self, cfg: RunConfig, in_channels: int, device: torch.device, generator: torch.Generator):
        self.cfg, self.device, self.rng = cfg, device, generator
        self.in_channels = in_channels
        self.nets: dict[str, nn.Module] = {}
        self.parallel: dict[str, nn.Module] = {}  # DistributedDataParallel wrappers under torchrun (distribute)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.structure_scale = 1.0  # the trainer lowers it with the learning rate under model.structure_decay
        self.gan = GANLoss(cfg.model.gan_loss)
        precision = cfg.train.precision
        self.amp_dtype = AMP_DTYPES.get(precision)
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 or auto on the CPU")
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    @property
    def generator(self) -> nn.Module:
        return self.nets["G"]

    @property
    def inference_generator(self) -> nn.Module:
        """What translates after training: the weight average when there is one, else the generator itself."""
        return self.average.net if self.average is not None else self.nets["G"]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _finish(self) -> None:
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        for net in self.nets.values():
            net.to(self.device, memory_format=fmt)
        t = self.cfg.train
        # one Adam for all generators ("G", "G_inv") and one for all discriminators ("D", "D_src"); the fused kernel
        # halves the optimiser's step (benchmarks/bench_train.py)
        self.base_lr = {"G": t.lr, "D": t.lr if t.lr_d is None else t.lr_d}
        for group in ("G", "D"):
            params = [p for name, net in self.nets.items() if name.startswith(group) for p in net.parameters()]
            if not params:  # a kind without discriminators trains its generator alone
                continue
            self.optimizers[group] = torch.optim.Adam(
                params, lr=self.base_lr[group], betas=(t.beta1, t.beta2), fused=True
            )
        self.average = WeightAverage(self.nets["G"], t.ema) if t.ema > 0 else None

    def distribute(self, sync_batchnorm: bool = False) -> None:
        """Under torchrun: wrap every network in DistributedDataParallel, so each backward averages its gradients
        over the ranks (each rank holds its share of the batch; the result is one step on the whole batch).

        The update steps call a wrapper where its network's gradients are computed and the bare network where they
        are not (a discriminator judging the generator's output), so every wrapped forward is followed by its
        backward. ``sync_batchnorm``: batch-norm statistics over all ranks' images (PyTorch's SyncBatchNorm, which
        runs on CUDA only); without it each rank normalises by its own share of the batch.
        """
        from torch.nn.parallel import DistributedDataParallel

        if sync_batchnorm:
            if self.device.type != "cuda":
                raise ConfigError(
                    "train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); turn it off, or "
                    "use model.norm: instance, which has no batch statistics"
                )
            # the converted layers keep the same parameters, so the optimisers need not change
            self.nets = {k: nn.SyncBatchNorm.convert_sync_batchnorm(v) for k, v in self.nets.items()}
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.parallel = {k: DistributedDataParallel(v, device_ids=ids) for k, v in self.nets.items()}

    def _trained(self, name: str) -> nn.Module:
        """The network as called where its own gradients are computed: its DDP wrapper under torchrun."""
        return self.parallel.get(name, self.nets[name])

    def _step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()
        if name == "G" and self.average is not None:
            self.average.update(self.nets["G"])

    def _requires_grad(self, prefix: str, flag: bool) -> None:
        for name, net in self.nets.items():
            if name.startswith(prefix):
                for p in net.parameters():
                    p.requires_grad_(flag)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def _d_update(self, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        with self.autocast():
            loss = self.gan.d_loss(disc(real), disc(fake.detach()))
        if self.gan.mode == "wgangp":
            loss = loss + self.cfg.model.gp_weight * gradient_penalty(disc, real, fake, self.rng)
        return loss * weight

    def train(self, mode: bool = True) -> None:
        for net in self.nets.values():
            net.train(mode)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
        }
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state["nets"].items():
            self.nets[k].load_state_dict(v)
        for k, v in state.get("optimizers", {}).items():
            self.optimizers[k].load_state_dict(v)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.average is not None and state.get("average"):
            self.average.load_state_dict(state["average"])

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch's first step (0-based), for schedules of the kind's own."""

    @classmethod
    def inference_net(cls, ckpt: dict[str, Any], source: str) -> nn.Module:
        """An untrained copy of the checkpoint's source -> target generator, for its weights."""
        cfg = RunConfig.from_dict(ckpt["config"], source=f"{source} (its config)")
        return build_generator(cfg, int(ckpt["in_channels"]))


def floats(**losses: torch.Tensor) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items()}


def build_model(cfg: RunConfig, in_channels: int, device: torch.device, generator: torch.Generator) -> TranslationModel:
    """The model of ``cfg.model.kind`` (a network kind of :mod:`medtranslate.core.kinds`) with freshly initialised
    networks and optimisers."""
    kind = get_kind(cfg.model.kind)
    if not kind.network:
        networks = ", ".join(k.name for k in MODEL_KINDS.values() if k.network)
        raise ConfigError(f"model.kind '{kind.name}' has no network to train; expected one of: {networks}")
    return model_class(kind)(cfg, in_channels, device, generator)
