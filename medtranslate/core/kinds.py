"""The model kinds medtranslate trains, in one registry: what each learns from, its defaults, and the class that is it.

A kind is one entry here and one module of its own under :mod:`medtranslate.models`. The entry names that module's
class as ``"module:Class"`` (resolved when a model is built, so this bottom layer imports nothing above it); the class
builds the networks and takes the update steps (a :class:`~medtranslate.models.base.TranslationModel` for a network),
or fits in one pass (a baseline). The trainer, translation and checkpoints ask the registry, never a kind's name.
docs/layout.md shows how a kind is added; tests/test_kinds.py adds a toy one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from medtranslate.core.checks import show
from medtranslate.core.errors import ConfigError

__all__ = ["ModelKind", "MODEL_KINDS", "get_kind", "register_kind", "model_class"]


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    Attributes:
        name: the value of ``model.kind``.
        summary: one line for messages and docs.
        network: a generator network trained by gradient steps (True), or a baseline fitted in one pass (False).
        learns_from: ``pairs`` (each source slice with its own co-registered target), ``cohorts`` (each source slice
            with a slice of the target cohort, of any subject) or ``either`` (pairs when the training cases are
            paired, else the cohorts).
        defaults: ``model.*`` values that a config leaving them unset (None) gets for this kind.
        model: ``"module:Class"``: the class that builds, trains and restores the kind.
    """

    name: str
    summary: str
    network: bool
    learns_from: str
    model: str
    defaults: dict[str, Any] = field(default_factory=dict)


MODEL_KINDS: dict[str, ModelKind] = {
    # Isola et al. 2017: U-Net, batch norm, BCE-with-logits GAN loss (its L1 weight 100 is model.lambda_l1's default)
    "pix2pix": ModelKind(
        name="pix2pix",
        summary="conditional GAN on co-registered pairs",
        network=True,
        learns_from="pairs",
        model="medtranslate.models.pix2pix:Pix2Pix",
        defaults={"generator": "unet", "norm": "batch", "gan_loss": "vanilla"},
    ),
    # Zhu et al. 2017: ResNet generator with 9 blocks, instance norm, least-squares GAN (cycle 10, identity 0.5 and
    # pool 50 are the defaults of model.lambda_cycle, lambda_identity and pool_size)
    "cyclegan": ModelKind(
        name="cyclegan",
        summary="cycle-consistent GAN on unpaired cohorts",
        network=True,
        learns_from="cohorts",
        model="medtranslate.models.cyclegan:CycleGAN",
        defaults={"generator": "resnet", "norm": "instance", "gan_loss": "lsgan"},
    ),
    "intensity_map": ModelKind(
        name="intensity_map",
        summary="baseline: median target value per source-intensity bin (pairs), or quantile matching (cohorts)",
        network=False,
        learns_from="either",
        model="medtranslate.models.baselines:IntensityMap",
        defaults={"generator": "lut", "norm": "batch", "gan_loss": "vanilla"},
    ),
    "classical": ModelKind(
        name="classical",
        summary="baseline: non-local means denoising with its strength tuned on the training pairs",
        network=False,
        learns_from="either",
        model="medtranslate.models.baselines:ClassicalDenoiser",
        defaults={"generator": "nlmeans", "norm": "batch", "gan_loss": "vanilla"},
    ),
}

LEARNS_FROM = ("pairs", "cohorts", "either")


def get_kind(name: object, where: str = "model.kind") -> ModelKind:
    """The registered kind called ``name``; a ConfigError listing the kinds otherwise."""
    if not isinstance(name, str) or name not in MODEL_KINDS:
        raise ConfigError(f"unknown {where} {show(name)}; expected one of: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def register_kind(kind: ModelKind) -> None:
    """Add a model kind (its class in a module of its own); a name already taken is refused."""
    if kind.name in MODEL_KINDS:
        raise ConfigError(f"model kind {kind.name!r} is registered already")
    if kind.learns_from not in LEARNS_FROM:
        raise ConfigError(f"model kind {kind.name!r}: learns_from must be one of {', '.join(LEARNS_FROM)}")
    MODEL_KINDS[kind.name] = kind


def model_class(kind: ModelKind) -> type:
    """The class behind a kind (imported on first use)."""
    module, _, attribute = kind.model.partition(":")
    return getattr(importlib.import_module(module), attribute)
