"""The model-kind registry: the kinds it ships, and a new kind added with one registry entry and a class of its own
(a toy regression model here), which trains, checkpoints and translates through the same code as pix2pix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtranslate.core.config import load_config
from medtranslate.core.errors import ConfigError
from medtranslate.core.kinds import MODEL_KINDS, ModelKind, get_kind, model_class, register_kind
from medtranslate.inference.translate import translate_volume
from medtranslate.io.files import read_volume
from medtranslate.models.base import TranslationModel, build_generator, floats
from medtranslate.models.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint
from medtranslate.training.train import Trainer

from .conftest import write_config


class ToyRegression(TranslationModel):
    """The toy kind: the configured generator trained on L1 alone, no discriminator."""

    def __init__(self, cfg, in_channels, device, generator):
        super().__init__(cfg, in_channels, device, generator)
        self.nets["G"] = build_generator(cfg, in_channels)
        self._finish()

    def train_step(self, batch):
        real_a, real_b = self._prep(batch["source"]), self._prep(batch["target"])
        with self.autocast():
            fake_b = self._trained("G")(real_a)
        loss = F.l1_loss(fake_b.float(), real_b.float())
        self._step("G", loss)
        return floats(loss_g=loss)


TOY = ModelKind(
    name="toy_regression",
    summary="a generator on L1 alone (a test's example)",
    network=True,
    learns_from="pairs",
    model="tests.test_kinds:ToyRegression",
    defaults={"generator": "unet", "norm": "batch", "gan_loss": "vanilla"},
)


@pytest.fixture
def toy_kind():
    register_kind(TOY)
    yield TOY
    del MODEL_KINDS[TOY.name]


def test_every_shipped_kind_resolves_to_its_class():
    for kind in MODEL_KINDS.values():
        cls = model_class(kind)
        assert hasattr(cls, "inference_net"), kind.name
        assert issubclass(cls, TranslationModel) == kind.network, kind.name


def test_an_unknown_kind_is_refused_naming_the_kinds(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="toy_regression.*expected one of: pix2pix, cyclegan"):
        get_kind("toy_regression")
    with pytest.raises(ConfigError, match="model.kind"):
        load_config(write_config(tmp_path / "c.yaml", tiny_data, kind="toy_regression"))


def test_a_name_already_taken_is_refused():
    with pytest.raises(ConfigError, match="registered already"):
        register_kind(MODEL_KINDS["pix2pix"])


def test_a_new_kind_trains_checkpoints_and_translates(tmp_path, tiny_data, toy_kind):
    cfg = load_config(write_config(tmp_path / "toy.yaml", tiny_data, kind=toy_kind.name, **{"train.epochs": 2}))
    assert cfg.model.generator == "unet"  # the kind's defaults
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert isinstance(trainer.model, ToyRegression) and set(trainer.model.optimizers) == {"G"}
    before = {k: v.clone() for k, v in trainer.model.nets["G"].state_dict().items()}
    trainer.fit()
    after = trainer.model.nets["G"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert ckpt["kind"] == toy_kind.name
    net = build_inference_net(ckpt, torch.device("cpu"))
    mr = read_volume(tiny_data / "s3" / "mr.nii.gz")
    sct = translate_volume(net, mr, TranslatorSpec.from_dict(ckpt["spec"]))
    assert sct.shape == mr.shape and (sct.affine == mr.affine).all()
    assert -1024 <= sct.array.min() and sct.array.max() <= 3071 and sct.array.std() > 0
