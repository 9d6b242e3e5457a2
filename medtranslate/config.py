"""Typed experiment configuration: frozen dataclasses, YAML in and out, validation with messages that list options.

A YAML file has the sections ``data``, ``model`` and ``train``; every key is optional except ``model.kind`` and
``data.root``. ``--set section.key=value`` overrides a key (the value is parsed as YAML). Defaults per model kind
follow the papers: pix2pix (Isola et al. 2017) and CycleGAN (Zhu et al. 2017), see ``MODEL_DEFAULTS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "RunConfig", "load_config", "apply_overrides", "MODEL_DEFAULTS", "TASK_DEFAULTS", "RESIDUAL_UNIT_HU"]

KINDS = ("pix2pix", "cyclegan", "intensity_map", "classical")
TASKS = {"mr2ct": ("mr", "ct"), "ldct": ("ld", "nd")}

# Paper defaults (DESIGN.md, "Reference points"): pix2pix: U-Net, batch norm, BCE-with-logits GAN loss, L1 weight 100;
# CycleGAN: ResNet with 9 blocks, instance norm, least-squares GAN, cycle weight 10, identity 0.5, image pool 50.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "pix2pix": {"generator": "unet", "norm": "batch", "gan_loss": "vanilla"},
    "cyclegan": {"generator": "resnet", "norm": "instance", "gan_loss": "lsgan"},
    "intensity_map": {"generator": "lut", "norm": "batch", "gan_loss": "vanilla"},
    "classical": {"generator": "nlmeans", "norm": "batch", "gan_loss": "vanilla"},
}

# Defaults per task, measured on the sample data (README, "Low-dose CT"). Denoising (ldct) differs from synthesis in
# three ways. Augmentation: rotation and scaling resample by bilinear interpolation, which averages neighbouring pixels
# and so removes part of the noise from the training input but not at test time; flips keep pixels as they are. Units:
# the noise the network must remove is ~40 HU, 0.02 of the [-1, 1] CT scale; a U-Net fed that scale stayed at the
# identity (PSNR of the input) for 15 epochs, the same U-Net fed HU / 100 (``residual``) learnt. Resolution: the
# pix2pix U-Net's first layer is a stride-2 convolution, so no layer works at full resolution, where the noise is;
# adding 3x3 convolutions there (``full_res``) raised validation PSNR from 20.4 to 23.7 dB in 3 minutes.
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "mr2ct": {"data": {"rotate_deg": 5.0, "scale": 0.05}, "model": {"full_res": False, "residual": False}},
    "ldct": {"data": {"rotate_deg": 0.0, "scale": 0.0}, "model": {"full_res": True, "residual": True}},
}
RESIDUAL_UNIT_HU = 100.0  # a residual generator sees and predicts HU / RESIDUAL_UNIT_HU (centred on water)


def _choice(section: str, key: str, value: Any, options: tuple[Any, ...]) -> None:
    if value not in options:
        raise ConfigError(f"unknown {section}.{key} {value!r}; expected one of: {', '.join(map(str, options))}")


def _positive(section: str, key: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{section}.{key} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the volumes are and how slices are made from them."""

    root: str = ""
    split: str | None = None  # JSON with train/val/test lists of case ids; default: <root>/split.json, else <root>/../split.json, else random
    val_fraction: float = 0.2  # used only without a split file
    context: int = 0  # 2.5D: k neighbouring slices on each side as extra input channels
    patch_size: int = 128  # training crops (pixels); whole slices at inference
    min_body_fraction: float = 0.05  # slices with less body than this are skipped in training
    spacing: tuple[float, float, float] | None = None  # resample to this spacing (mm); None keeps the input's
    augment: bool = True  # random flips and small affine, identical for both images of a pair
    rotate_deg: float | None = None  # default per task, TASK_DEFAULTS
    scale: float | None = None  # default per task, TASK_DEFAULTS

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("data.root is required: the folder with the training cases")
        if not isinstance(self.context, int) or self.context < 0:
            raise ConfigError(f"data.context must be a whole number >= 0, got {self.context!r}")
        _positive("data", "patch_size", self.patch_size)
        if not 0 <= self.min_body_fraction < 1:
            raise ConfigError(f"data.min_body_fraction must be in [0, 1), got {self.min_body_fraction!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for key in ("rotate_deg", "scale"):
            if getattr(self, key) is not None:
                _positive("data", key, getattr(self, key), allow_zero=True)
        if self.spacing is not None:
            if len(self.spacing) != 3:
                raise ConfigError(f"data.spacing must have 3 values (mm), got {self.spacing!r}")
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))


@dataclass(frozen=True)
class ModelConfig:
    """Which model, its networks and losses. None means: the kind's paper default."""

    kind: str = ""
    task: str = "mr2ct"
    generator: str | None = None  # unet | resnet
    ngf: int = 64
    ndf: int = 64
    num_downs: int | None = None  # U-Net depth; default log2(patch_size)
    n_blocks: int = 9  # ResNet generator blocks (6 or 9)
    norm: str | None = None  # batch | instance
    upsample: str = "transpose"  # transpose | resize (resize-convolution avoids checkerboard artefacts)
    dropout: float = 0.5
    full_res: bool | None = None  # U-Net only: 3x3 convolutions at full resolution before and after the U; default per task
    residual: bool | None = None  # CT -> CT only: predict a correction to the input in units of RESIDUAL_UNIT_HU; default per task
    d_layers: int = 3  # 3: the 70x70 PatchGAN
    gan_loss: str | None = None  # vanilla | lsgan | hinge | wgangp
    gp_weight: float = 10.0  # WGAN-GP gradient penalty weight (Gulrajani et al. 2017)
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    bins: int = 256  # intensity_map look-up table size

    def __post_init__(self) -> None:
        if not self.kind:
            raise ConfigError(f"model.kind is required; expected one of: {', '.join(KINDS)}")
        _choice("model", "kind", self.kind, KINDS)
        _choice("model", "task", self.task, tuple(TASKS))
        for key, value in MODEL_DEFAULTS[self.kind].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key, value in TASK_DEFAULTS[self.task]["model"].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key in ("full_res", "residual"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if self.residual and self.task != "ldct":
            raise ConfigError(f"model.residual needs the same modality in and out (task ldct); task {self.task} translates {self.roles[0]} to {self.roles[1]}")
        if self.kind in ("pix2pix", "cyclegan"):
            _choice("model", "generator", self.generator, ("unet", "resnet"))
        _choice("model", "norm", self.norm, ("batch", "instance"))
        _choice("model", "upsample", self.upsample, ("transpose", "resize"))
        _choice("model", "gan_loss", self.gan_loss, ("vanilla", "lsgan", "hinge", "wgangp"))
        for key in ("ngf", "ndf", "n_blocks", "d_layers", "bins"):
            _positive("model", key, getattr(self, key))
        for key in ("lambda_l1", "lambda_cycle", "lambda_identity", "gp_weight", "pool_size", "dropout"):
            _positive("model", key, getattr(self, key), allow_zero=True)

    @property
    def roles(self) -> tuple[str, str]:
        """(source role, target role) of the task, e.g. ("mr", "ct")."""
        return TASKS[self.task]


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to optimise."""

    epochs: int = 10
    steps_per_epoch: int | None = None  # cap on generator updates per epoch
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_epochs: int | None = None  # epochs of linear decay to 0 at the end; default: half of epochs
    d_steps: int = 1  # discriminator updates per generator update
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = True
    max_minutes: float | None = None  # time budget: no epoch is started that would end past it (judged by the longest so far)
    val_every: int = 1
    num_threads: int | None = None  # torch CPU threads; default: torch's

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "d_steps", "val_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be a whole number >= 1, got {getattr(self, key)!r}")
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1):
            raise ConfigError(f"train.steps_per_epoch must be a whole number >= 1 or null, got {self.steps_per_epoch!r}")
        _positive("train", "lr", self.lr)
        _choice("train", "device", self.device, ("auto", "cpu", "cuda"))
        _choice("train", "precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.decay_epochs is not None and not 0 <= self.decay_epochs <= self.epochs:
            raise ConfigError(f"train.decay_epochs must be between 0 and train.epochs ({self.epochs}), got {self.decay_epochs!r}")

    @property
    def decay(self) -> int:
        return self.epochs // 2 if self.decay_epochs is None else self.decay_epochs


@dataclass(frozen=True)
class RunConfig:
    """One experiment: data, model, train."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for key, value in TASK_DEFAULTS[self.model.task]["data"].items():
            if getattr(self.data, key) is None:
                object.__setattr__(self.data, key, value)
        if self.model.kind == "cyclegan" and self.data.context:
            raise ConfigError("data.context (2.5D) is supported for pix2pix only: CycleGAN's cycle maps images back to their own channels; set data.context: 0")
        if self.model.generator == "unet" and self.model.num_downs is not None and 2**self.model.num_downs > self.data.patch_size:
            raise ConfigError(f"model.num_downs {self.model.num_downs} needs data.patch_size >= {2**self.model.num_downs}, got {self.data.patch_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"data": _plain(dataclasses.asdict(self.data)), "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with sections data, model, train")
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section {', '.join(sorted(map(str, unknown)))}; expected: data, model, train")
        built = {}
        try:
            for name, klass in sections.items():
                values = raw.get(name) or {}
                if not isinstance(values, dict):
                    raise ConfigError(f"section '{name}' must be a mapping of keys to values")
                valid = [f.name for f in fields(klass)]
                for key in values:
                    if key not in valid:
                        raise ConfigError(f"unknown key {name}.{key}; valid keys of '{name}': {', '.join(valid)}")
                built[name] = klass(**values)
            return cls(**built)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        from .io import atomic_write_text

        return atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config mapping."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML experiment file, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data, model, train")
    try:
        return RunConfig.from_dict(apply_overrides(raw, overrides or []), source=str(path))
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
