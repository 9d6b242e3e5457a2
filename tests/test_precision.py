"""Automatic precision: the choice by capability (stable for a machine), float32 outputs, and the records."""

from __future__ import annotations

import pytest
import torch
import yaml

from medtranslate.core.config import load_config
from medtranslate.models.checkpoint import load_checkpoint
from medtranslate.models.nets import ResnetGenerator, UNetGenerator
from medtranslate.runtime.precision import PrecisionChoice, choose_precision, describe_machine
from medtranslate.training.train import Trainer

from .conftest import write_config

CPU = torch.device("cpu")


def test_the_choice_follows_the_hardware_alone_and_is_the_same_every_time():
    """A choice measured by timing flipped between identical runs (1.086 against a 1.1 threshold) and outputs
    differed by 1 HU; the choice is now a function of the CPU's flags, so a machine always makes the same one."""
    for requested in ("fp32", "bf16"):
        choice = choose_precision(requested, CPU, flags={"amx_bf16"})
        assert choice.precision == requested and choice.reason == "as requested"
    assert choose_precision("auto", CPU, flags={"avx512f", "amx_bf16", "avx512_bf16"}).precision == "bf16"
    choice = choose_precision("auto", CPU, flags={"avx512f"})
    assert choice.precision == "fp32" and "no bf16" in choice.reason  # emulated bf16 is slower
    choices = {choose_precision("auto", CPU, flags={"avx512f", "avx512_bf16"}) for _ in range(5)}
    assert choices == {PrecisionChoice("bf16", "auto: the CPU has AVX512-BF16 instructions")}
    assert choose_precision("auto", CPU, flags={"amx_bf16"}).amp_dtype == torch.bfloat16
    assert "CPU" in describe_machine(CPU)
    mine = {choose_precision("auto", CPU) for _ in range(3)}  # this machine's flags: one answer
    assert len(mine) == 1


@pytest.mark.parametrize("net", [UNetGenerator(1, 1, num_downs=3, ngf=8), ResnetGenerator(1, 1, ngf=8, n_blocks=1)])
def test_outputs_are_float32_under_bf16_autocast(net):
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.float32
    # not rounded to bf16's 8-bit mantissa (which at the output would be steps of 4-8 HU)
    assert (y != y.bfloat16().float()).float().mean() > 0.5


def test_training_records_what_auto_chose_and_a_resume_keeps_it(tmp_path, tiny_data):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, **{"train.precision": "auto", "train.epochs": 2}))
    Trainer(cfg, tmp_path / "run", progress=False).fit(until_epoch=1)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["train"]["precision"] == "auto" and saved["train"]["precision_used"] in ("fp32", "bf16")
    assert ckpt["precision"] == saved["train"]["precision_used"] and ckpt["precision_reason"].startswith("auto")
    Trainer(cfg, tmp_path / "run", resume=True, progress=False).fit()
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["precision"] == ckpt["precision"]
    assert resumed["precision_reason"] == "as the run being resumed"
