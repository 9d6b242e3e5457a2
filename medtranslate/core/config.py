"""Typed experiment configuration: frozen dataclasses, YAML in and out, validation with messages that list options.

A YAML file has the sections ``data``, ``model`` and ``train``; every key is optional except ``model.kind`` and
``data.root``. ``--set section.key=value`` overrides a key (the value is parsed as YAML). Defaults per model kind
follow the papers: pix2pix (Isola et al. 2017) and CycleGAN (Zhu et al. 2017), see :mod:`medtranslate.core.kinds`;
defaults per task are in :mod:`medtranslate.core.tasks`.

Every value is checked for its type and range when the config is built, before any data is read, and an error shows
the bad value in bounded length. YAML is read with a size limit and refuses aliases that expand beyond it (a
"billion laughs" file), so no file can make medtranslate exhaust memory while reading or reporting a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medtranslate.core.checks import require_bool, require_choice, require_int, require_number, require_text, show
from medtranslate.core.errors import ConfigError
from medtranslate.core.kinds import MODEL_KINDS, get_kind
from medtranslate.core.tasks import get_task

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "read_yaml",
    "parse_yaml",
    "config_differences",
    "RESIDUAL_UNIT_HU",
]

DEFAULT_EPOCHS = 10  # train.epochs when not given
RESIDUAL_UNIT_HU = 100.0  # a residual generator sees and predicts HU / RESIDUAL_UNIT_HU (centred on water)

MAX_YAML_BYTES = 1 << 20  # an experiment file is a few hundred bytes
MAX_YAML_NODES = 100_000  # nodes after expanding aliases

# ----------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """Where the volumes are and how slices are made from them."""

    root: str = ""  # folder of cases (required; layouts: docs/data.md)
    # JSON with train/val/test lists of case ids; default: <root>/split.json, else <root>/../split.json, else random
    split: str | None = None
    val_fraction: float = 0.2  # used only without a split file
    context: int = 0  # 2.5D: k neighbouring slices on each side as extra input channels
    patch_size: int = 128  # training crops (pixels); whole slices at inference
    # where training crops lie: uniform (anywhere in the slice) | body (centred on a random body pixel)
    crop: str = "uniform"
    # unpaired only: which target slice meets a source slice: any (drawn from the whole target cohort) | area (from
    # the tenth of the cohort's slices nearest to it in body area; needs data.spacing)
    partner: str = "any"
    min_body_fraction: float = 0.05  # slices with less body than this are skipped in training
    spacing: tuple[float, float, float] | None = None  # resample to this spacing (mm); None keeps the input's
    augment: bool = True  # random flips and small affine, identical for both images of a pair
    rotate_deg: float | None = None  # default per task (tasks.py)
    scale: float | None = None  # default per task (tasks.py)
    # the on-disk slice cache (cache.py): each training case preprocessed once, keyed by its files and settings, so
    # runs that share this folder share their cases; default: <run>/cache
    cache: str | None = None

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("data.root is required: the folder with the training cases")
        require_text("data.root", self.root)
        require_text("data.split", self.split, allow_none=True)
        require_text("data.cache", self.cache, allow_none=True)
        require_number("data.val_fraction", self.val_fraction, above=0, below=1)
        require_int("data.context", self.context, 0, 16)
        require_int("data.patch_size", self.patch_size, 16, 4096)
        require_choice("data.crop", self.crop, ("uniform", "body"))
        require_choice("data.partner", self.partner, ("any", "area"))
        require_number("data.min_body_fraction", self.min_body_fraction, minimum=0, below=1)
        require_bool("data.augment", self.augment)
        if self.rotate_deg is not None:
            require_number("data.rotate_deg", self.rotate_deg, minimum=0, maximum=180)
        if self.scale is not None:
            require_number("data.scale", self.scale, minimum=0, below=1)
        if self.spacing is not None:
            if not isinstance(self.spacing, (list, tuple)) or len(self.spacing) != 3:
                raise ConfigError(
                    f"data.spacing must be 3 numbers in mm (e.g. [1.0, 1.0, 2.5]) or null, got {show(self.spacing)}"
                )
            spacing = tuple(require_number("data.spacing", s, above=0, maximum=100) for s in self.spacing)
            object.__setattr__(self, "spacing", spacing)
        elif self.partner == "area":
            raise ConfigError(
                "data.partner area compares body areas in pixels, so every scan needs one pixel size: set data.spacing "
                "(e.g. [1.0, 1.0, 2.5]), or use data.partner any"
            )


# the weights of the generator terms only a CycleGAN has
_CYCLEGAN_TERMS = ("lambda_structure", "lambda_body", "lambda_histogram")


@dataclass(frozen=True)
class ModelConfig:
    """Which model, its networks and losses. None means: the kind's paper default."""

    kind: str = ""  # pix2pix (paired) | cyclegan (unpaired) | intensity_map | classical (baselines); required
    task: str = "mr2ct"  # mr2ct (MR -> CT) | ldct (low-dose -> normal-dose CT); tasks.py
    generator: str | None = None  # unet | resnet
    ngf: int = 64  # generator filters in its first layer (the papers' 64)
    ndf: int = 64  # discriminator filters in its first layer (the papers' 64)
    num_downs: int | None = None  # U-Net depth; default log2(patch_size)
    n_blocks: int = 9  # ResNet generator blocks (6 or 9)
    norm: str | None = None  # batch | instance
    # resize (nearest 2x + 3x3 convolution; no checkerboard, Odena et al. 2016) | narrow (the same after a 1x1
    # convolution to half the width: the 3x3 costs half; docs/convergence.md, round 23) | transpose (the papers')
    upsample: str = "resize"
    dropout: float = 0.5  # U-Net: dropout in the up-blocks next to the innermost (pix2pix's noise)
    # U-Net only: 3x3 convolutions at full resolution before and after the U; default per task
    full_res: bool | None = None
    # CT -> CT only: predict a correction to the input in units of RESIDUAL_UNIT_HU; default per task
    residual: bool | None = None
    d_layers: int = 3  # 3: the 70x70 PatchGAN; 2: 34x34; 1: 16x16
    gan_loss: str | None = None  # vanilla | lsgan | hinge | wgangp
    gp_weight: float = 10.0  # WGAN-GP gradient penalty weight (Gulrajani et al. 2017)
    lambda_l1: float = 100.0  # pix2pix: weight of L1 beside the adversarial term (the paper's 100)
    # pix2pix: the first epochs train the generator on L1 alone (a regression: no discriminator, a cheaper step),
    # then the adversarial term joins
    l1_warmup_epochs: int = 0
    lambda_cycle: float = 10.0  # CycleGAN: weight of the cycle-consistency loss (the paper's 10)
    cycle_loss: str = "l1"  # l1 | l1_ssim (ganslate) | lowpass (losses.py)
    lambda_identity: float = 0.5  # CycleGAN: identity loss weight, as a fraction of lambda_cycle (the paper's 0.5)
    # CycleGAN: a modality-independent structure loss between each generator's input and output (losses.py)
    structure_loss: str = "none"  # none | mind (Yang et al. 2018) | gc (gradient correlation, Hiasa et al. 2018)
    lambda_structure: float = 0.0  # weight of structure_loss
    structure_decay: bool = False  # the structure weight follows the learning rate's linear decay (to 0 at the end)
    # CycleGAN: the CT output's body outline (-500 HU) must match the input's body mask (losses.body_loss)
    lambda_body: float = 0.0
    # CycleGAN, CT output: the output's HU distribution inside the input's body must match its partner CT slice's
    # (1-Wasserstein, losses.histogram_loss). It put back a bad draw's skull; over five seeds of the full MR -> CT
    # pipeline the mean test MAE 190.4 -> 186.5 HU and the worst 254.5 -> 228.4, winning three seeds of five, within
    # the draw's spread (docs/unpaired.md, "The full pipeline is a draw too"); mr2ct_cyclegan.yaml uses 2
    lambda_histogram: float = 0.0
    # CycleGAN: after training, match the output's HU distribution to the training CTs' (quantile; calibration.py)
    calibration: str = "none"  # none | quantile
    # translation averages each slice's prediction with that of its left-right mirror (test-time augmentation), and so
    # do validation and the calibration; the mirror is a plausible input for near-symmetric anatomy (head, pelvis):
    # measure it elsewhere. translate --tta / --no-tta overrides it
    tta: bool = False
    # CycleGAN, task ldct: the normal -> low-dose direction is a network (F, with its discriminator), or noise
    # measured on the two cohorts' training scans (noise.py), which G learns to remove
    inverse: str = "network"  # network | noise
    pool_size: int = 50  # CycleGAN: earlier generated images the discriminators also see (the paper's 50)
    bins: int = 256  # intensity_map look-up table size

    def __post_init__(self) -> None:
        if not self.kind:
            raise ConfigError(f"model.kind is required; expected one of: {', '.join(MODEL_KINDS)}")
        require_choice("model.kind", self.kind, tuple(MODEL_KINDS))
        kind, task = get_kind(self.kind), get_task(self.task)
        for key, value in kind.defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key, value in task.defaults["model"].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key in ("full_res", "residual"):
            require_bool(f"model.{key}", getattr(self, key))
        if self.residual and task.source_kind != task.target_kind:
            raise ConfigError(
                f"model.residual needs the same modality in and out (task ldct); task {self.task} translates "
                f"{self.roles[0]} to {self.roles[1]}"
            )
        if kind.network:
            require_choice("model.generator", self.generator, ("unet", "resnet"))
        require_choice("model.norm", self.norm, ("batch", "instance"))
        require_choice("model.upsample", self.upsample, ("transpose", "resize", "narrow"))
        require_choice("model.gan_loss", self.gan_loss, ("vanilla", "lsgan", "hinge", "wgangp"))
        require_choice("model.structure_loss", self.structure_loss, ("none", "mind", "gc"))
        require_choice("model.cycle_loss", self.cycle_loss, ("l1", "l1_ssim", "lowpass"))
        require_choice("model.calibration", self.calibration, ("none", "quantile"))
        if self.calibration != "none" and self.kind != "cyclegan":
            raise ConfigError(
                f"model.calibration is for an unpaired CycleGAN (model.kind {self.kind} learns its intensities from "
                "pairs or has none to learn): set it to none"
            )
        require_choice("model.inverse", self.inverse, ("network", "noise"))
        require_bool("model.tta", self.tta)
        if self.tta and not kind.network:
            raise ConfigError(f"model.tta averages a network's views; model.kind {self.kind} has none: set it to false")
        if self.inverse == "noise" and not (self.kind == "cyclegan" and self.task == "ldct"):
            raise ConfigError(
                f"model.inverse: noise is for an unpaired low-dose CT CycleGAN (model.kind cyclegan, model.task ldct), "
                f"not model.kind {self.kind} with model.task {self.task}: set it to network"
            )
        self._check_sizes_and_weights()

    def _check_sizes_and_weights(self) -> None:
        require_int("model.ngf", self.ngf, 1, 1024)
        require_int("model.ndf", self.ndf, 1, 1024)
        if self.num_downs is not None:
            require_int("model.num_downs", self.num_downs, 2, 12)
        require_int("model.n_blocks", self.n_blocks, 0, 64)
        require_int("model.d_layers", self.d_layers, 1, 6)
        require_int("model.bins", self.bins, 2, 65536)
        require_int("model.pool_size", self.pool_size, 0, 10000)
        require_int("model.l1_warmup_epochs", self.l1_warmup_epochs, 0, 100000)
        if self.l1_warmup_epochs and self.kind != "pix2pix":
            raise ConfigError(
                f"model.l1_warmup_epochs is a pix2pix schedule (L1 alone, then L1 and the adversarial term); "
                f"model.kind {self.kind} has no L1 term to warm up with: set it to 0"
            )
        require_number("model.dropout", self.dropout, minimum=0, below=1)
        for key in ("lambda_l1", "lambda_cycle", "lambda_identity", "gp_weight", *_CYCLEGAN_TERMS):
            require_number(f"model.{key}", getattr(self, key), minimum=0)
        for key in _CYCLEGAN_TERMS:  # refused elsewhere, not ignored
            if getattr(self, key) > 0 and self.kind != "cyclegan":
                raise ConfigError(f"model.{key} is a CycleGAN loss; model.kind {self.kind} has none: set it to 0")
        require_bool("model.structure_decay", self.structure_decay)
        if self.structure_decay and not (self.kind == "cyclegan" and self.lambda_structure > 0):
            raise ConfigError("model.structure_decay needs a CycleGAN with model.lambda_structure > 0; remove it")

    @property
    def roles(self) -> tuple[str, str]:
        """(source role, target role) of the task, e.g. ("mr", "ct")."""
        return get_task(self.task).roles


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to optimise."""

    # the run's length (and its learning-rate decay's): the same on every machine, whatever its speed
    epochs: int = DEFAULT_EPOCHS
    steps_per_epoch: int | None = None  # cap on generator updates per epoch
    batch_size: int = 4  # slices per step (under torchrun: of all processes together)
    lr: float = 2e-4  # Adam's learning rate (the papers'), constant, then decaying linearly (decay_epochs)
    lr_d: float | None = None  # the discriminators' learning rate; default: lr
    beta1: float = 0.5  # Adam's beta1 (the papers' 0.5)
    beta2: float = 0.999  # Adam's beta2
    decay_epochs: int | None = None  # epochs of linear decay to 0 at the end; default: half of epochs
    d_steps: int = 1  # discriminator updates per generator update
    seed: int = 0  # every random draw: weights, crops, augmentation, unpaired partners, dropout
    device: str = "auto"  # auto | cpu | cuda
    # auto (bf16 where the hardware runs it faster, decided by the CPU's or GPU's features; precision.py) | fp32 |
    # bf16 | fp16
    precision: str = "auto"
    precision_used: str | None = None  # written by train into config.yaml: what was computed in (read back: ignored)
    channels_last: bool = True  # channels-last memory layout for the networks (faster convolutions)
    # a cap on training time in minutes, never a plan: no epoch is started that is expected to end past it, and a run
    # it stops says it is under-trained (schedule.py)
    max_minutes: float | None = None
    val_every: int = 1  # validate every N epochs (and always after the last)
    num_threads: int | None = None  # torch CPU threads; default: torch's
    # data-loader worker processes that make the training batches (0: in the training process); any number gives
    # the same batches, since every item's random draws come from (seed, epoch, index)
    workers: int = 0
    # decay of an exponential moving average of the generator's weights (0: off), see gan.WeightAverage
    ema: float = 0.0
    # under torchrun: batch-norm statistics over the whole batch of all processes (PyTorch's SyncBatchNorm, CUDA only)
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_minutes is not None:  # a config of the days when the budget was a plan
            raise ConfigError(
                "train.epochs is not set: train.max_minutes is a cap on the training time, not its plan, so the "
                "run's length must be given (e.g. train.epochs=30); the same epochs give the same model on any machine"
            )
        if self.epochs is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS)
        require_int("train.epochs", self.epochs, 1)
        for key in ("batch_size", "d_steps", "val_every"):
            require_int(f"train.{key}", getattr(self, key), 1)
        if self.steps_per_epoch is not None:
            require_int("train.steps_per_epoch", self.steps_per_epoch, 1)
        require_number("train.lr", self.lr, above=0, maximum=1)
        if self.lr_d is not None:
            require_number("train.lr_d", self.lr_d, above=0, maximum=1)
        require_number("train.beta1", self.beta1, minimum=0, below=1)
        require_number("train.beta2", self.beta2, minimum=0, below=1)
        require_int("train.seed", self.seed, 0, 2**63 - 1)
        require_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        require_choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.precision_used is not None:
            require_choice("train.precision_used", self.precision_used, ("fp32", "bf16", "fp16"))
        require_bool("train.channels_last", self.channels_last)
        require_bool("train.sync_batchnorm", self.sync_batchnorm)
        if self.max_minutes is not None:
            require_number("train.max_minutes", self.max_minutes, above=0)
        if self.num_threads is not None:
            require_int("train.num_threads", self.num_threads, 1, 4096)
        require_int("train.workers", self.workers, 0, 256)
        if self.decay_epochs is not None:
            require_int("train.decay_epochs", self.decay_epochs, 0, self.epochs)
        require_number("train.ema", self.ema, minimum=0, below=1)


@dataclass(frozen=True)
class RunConfig:
    """One experiment: data, model, train."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for key, value in get_task(self.model.task).defaults["data"].items():
            if getattr(self.data, key) is None:
                object.__setattr__(self.data, key, value)
        m, patch = self.model, self.data.patch_size
        if m.kind == "cyclegan" and self.data.context:
            raise ConfigError(
                "data.context (2.5D) is supported for pix2pix only: CycleGAN's cycle maps images back to their own "
                "channels; set data.context: 0"
            )
        if self.data.partner != "any" and get_kind(m.kind).learns_from == "pairs":
            raise ConfigError(
                f"data.partner chooses the target slice an unpaired source slice meets; model.kind {m.kind} learns "
                "from pairs (each slice meets its own target): remove data.partner"
            )
        if not get_kind(m.kind).network:
            return
        # sizes the networks accept: the U-Net halves a patch num_downs times, the ResNet twice; the PatchGAN
        # discriminator shrinks it by 2**d_layers and two 4x4 convolutions, which must leave at least one patch
        divisor = 2 ** (m.num_downs or max(patch.bit_length() - 1, 2)) if m.generator == "unet" else 4
        if patch % divisor:
            if m.generator != "unet":
                what = "the ResNet generator's two downsamplings"
            else:
                what = "2**model.num_downs" if m.num_downs else "the U-Net's default depth, log2(patch_size)"
            raise ConfigError(
                f"data.patch_size {patch} must be a multiple of {divisor} ({what}); use "
                f"{max(divisor, patch // divisor * divisor)} or set model.num_downs"
            )
        smallest = 3 * 2**m.d_layers
        if patch < smallest:
            raise ConfigError(
                f"data.patch_size {patch} is too small for a PatchGAN with model.d_layers {m.d_layers}; use at least "
                f"{smallest} or fewer layers"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": _plain(dataclasses.asdict(self.data)),
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> RunConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with sections data, model, train; got {show(raw)}")
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(
                f"{source}: unknown section {', '.join(sorted(map(show, unknown)))}; expected: data, model, train"
            )
        built = {}
        try:
            for name, klass in sections.items():
                values = raw.get(name) or {}
                if not isinstance(values, dict):
                    raise ConfigError(f"section '{name}' must be a mapping of keys to values, got {show(values)}")
                valid = [f.name for f in fields(klass)]
                for key in values:
                    if key not in valid:
                        raise ConfigError(
                            f"unknown key {name}.{show(key).strip(chr(39))}; valid keys of '{name}': {', '.join(valid)}"
                        )
                built[name] = klass(**values)
            return cls(**built)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        from medtranslate.core.atomic import atomic_write_text

        return atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``section.key: old -> new`` for every key whose value differs between two nested mappings."""
    diffs = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name}: {show(a)} -> {show(b)}")
    return diffs


# ----------------------------------------------------------------------------------------------------- YAML


def _expanded_size(node: yaml.Node, sizes: dict[int, int], active: set[int]) -> int:
    """Number of nodes once aliases are expanded (memoised by node, so a billion laughs costs microseconds)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise ConfigError("a YAML alias refers to itself (a recursive structure)")
    active.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, active)
        if total > MAX_YAML_NODES:
            break
    active.discard(key)
    sizes[key] = total
    return total


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely: plain types only, and at most MAX_YAML_NODES values once aliases are expanded."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            try:
                size = _expanded_size(node, {}, set())
            except RecursionError:
                raise ConfigError("nesting too deep") from None
            if size > MAX_YAML_NODES:
                raise ConfigError(
                    f"expands to more than {MAX_YAML_NODES} values (YAML aliases); write the values out plainly"
                )
        return yaml.safe_load(text)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML ({show(problem).strip(chr(39))}{at}); fix the syntax") from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Read a YAML file given by the user: a size limit, UTF-8 text, :func:`parse_yaml`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(
                f"{path}: {size} bytes is too large for a {what} (at most {MAX_YAML_BYTES}); is it the right file?"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a {what} is YAML text, see pipelines/*.yaml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (holds NUL bytes); a {what} is YAML text, see pipelines/*.yaml")
    return parse_yaml(text, str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config mapping."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {show(item)}: expected section.key=value, e.g. train.epochs=5")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        current = raw.setdefault(section, {})
        if current is None:
            current = raw[section] = {}
        if not isinstance(current, dict):
            raise ConfigError(f"--set {show(item)}: section '{section}' is not a mapping in the config file")
        current[key] = parse_yaml(value, f"--set {dotted}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML experiment file, apply ``--set`` overrides, validate."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data, model, train; got {show(raw)}")
    try:
        return RunConfig.from_dict(apply_overrides(raw, overrides or []), source=str(path))
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
