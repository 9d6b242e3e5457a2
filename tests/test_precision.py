"""Automatic precision: the choice by capability and measurement, the probe, float32 outputs, and the records."""

from __future__ import annotations

import pytest
import torch
import yaml

from medtranslate.checkpoint import load_checkpoint
from medtranslate.config import load_config
from medtranslate.nets import ResnetGenerator, UNetGenerator
from medtranslate.precision import choose_precision, describe_machine, probe_network
from medtranslate.train import Trainer

from .conftest import write_config

CPU = torch.device("cpu")


def _probe(fp32: float, bf16: float):
    calls = []

    def probe(precision: str) -> float:
        calls.append(precision)
        return {"fp32": fp32, "bf16": bf16}[precision]

    return probe, calls


def test_the_choice_follows_the_hardware_and_measures_only_where_unsure():
    for requested in ("fp32", "bf16"):
        assert choose_precision(requested, CPU, flags={"amx_bf16"}).precision == requested
    assert choose_precision("auto", CPU, flags={"avx512f", "amx_bf16", "avx512_bf16"}).precision == "bf16"
    probe, calls = _probe(1.0, 0.4)
    choice = choose_precision("auto", CPU, probe, flags={"avx512f"})
    assert choice.precision == "fp32" and "no bf16" in choice.reason and calls == []  # emulated bf16: not measured
    choice = choose_precision("auto", CPU, probe, flags={"avx512f", "avx512_bf16"})
    assert (
        choice.precision == "bf16" and calls == ["fp32", "bf16"] and "measured 1000 ms in fp32, 400 ms" in choice.reason
    )
    probe, _ = _probe(1.0, 1.05)  # a loss within the probe's noise: bf16 is kept, so runs choose alike
    assert choose_precision("auto", CPU, probe, flags={"avx512_bf16"}).precision == "bf16"
    probe, _ = _probe(1.0, 2.5)  # clearly slower (as emulated bf16 is): float32
    choice = choose_precision("auto", CPU, probe, flags={"avx512_bf16"})
    assert choice.precision == "fp32" and "but measured" in choice.reason
    assert choose_precision("auto", CPU, None, flags={"avx512_bf16"}).precision == "bf16"
    assert choose_precision("auto", CPU, probe, flags={"amx_bf16"}).amp_dtype == torch.bfloat16
    assert "CPU" in describe_machine(CPU)


def test_the_probe_leaves_the_network_and_the_random_streams_alone():
    net = UNetGenerator(1, 1, num_downs=3, ngf=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    probe = probe_network(net, (2, 1, 32, 32), CPU, backward=True, repeats=2)
    assert probe("fp32") > 0 and probe("bf16") > 0
    assert torch.equal(torch.rand(3), expected)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics included


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
