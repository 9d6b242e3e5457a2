"""The learning-rate schedule: constant then linear decay, over epochs fixed up front or planned to fit a budget."""

from __future__ import annotations

import pytest

from medtranslate.checkpoint import load_checkpoint
from medtranslate.config import load_config
from medtranslate.schedule import Schedule
from medtranslate.train import Trainer

from .conftest import write_config


def test_constant_then_linear_decay():
    s = Schedule(epochs=6)
    assert [round(s.factor(e), 4) for e in range(6)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert Schedule(epochs=4, decay_epochs=0).factor(3) == 1.0
    assert Schedule(epochs=None).factor(5) == 1.0  # not planned yet: the base rate


@pytest.mark.parametrize(
    "epoch_s,elapsed_s,cap,expected",
    [(10.0, 10.0, None, 60), (10.0, 10.0, 12, 12), (10.0, 700.0, None, 1), (30.0, 30.0, None, 20)],
)
def test_a_budget_plan_fills_it_and_the_decay_ends_inside(epoch_s, elapsed_s, cap, expected):
    s = Schedule(epochs=None, cap=cap, max_minutes=10.0)
    s.plan(epoch_s, elapsed_s, epochs_done=1)
    assert s.epochs == expected and s.decay == expected // 2
    assert s.factor(expected - 1) == pytest.approx(1.0 / (s.decay + 1))  # the last epoch runs at the end of the decay


def test_a_plan_follows_the_measured_epochs(caplog):
    caplog.set_level("DEBUG", logger="medtranslate.schedule")
    s = Schedule(epochs=None, max_minutes=10.0)
    s.plan(30.0, 30.0, epochs_done=1)  # a slow first epoch (warm-up): 20 planned
    assert s.epochs == 20
    s.plan(10.0, 40.0, epochs_done=2)  # before the decay the plan grows to what the faster epochs fit
    assert s.epochs == 2 + 56
    s.plan(10.0, 50.0, epochs_done=3)  # on plan: unchanged
    assert s.epochs == 58
    for done in range(4, 40):  # in the decay, epochs become slower: the plan shrinks, never grows
        s.plan(14.0, 50.0 + 14.0 * (done - 3), epochs_done=done)
    assert 39 <= s.epochs < 58
    s.plan(30.0, 600.0, epochs_done=39)  # the budget is spent: the run ends here
    assert s.epochs == 39
    # the first plan and changes of more than 10 % are told; the epoch-by-epoch corrections only at debug level
    told = [r for r in caplog.records if r.levelname == "INFO"]
    assert [r.getMessage().split(" epochs")[0] for r in told][:2] == [
        "planned 20",
        "re-planned (epochs faster than planned) 58",
    ]
    assert len(told) < len([r for r in caplog.records if "planned" in r.getMessage()]), caplog.text
    assert Schedule(epochs=7).factor(6) == pytest.approx(1 / 4)  # without a budget plan() is never needed
    fixed = Schedule(epochs=7)
    fixed.plan(100.0, 1000.0, 1)
    assert fixed.epochs == 7


@pytest.mark.slow
def test_a_budget_run_without_epochs_plans_and_completes_its_decay(tmp_path, tiny_data):
    extra = {"train.epochs": None, "train.max_minutes": 0.12, "train.steps_per_epoch": 20}
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_data, **extra))
    assert cfg.train.epochs is None
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    planned = ckpt["schedule"]["epochs"]
    assert planned >= 2 and ckpt["epoch"] == planned  # every planned epoch ran inside the budget
    lrs = [row["lr"] for row in ckpt["history"]]
    assert lrs[0] == pytest.approx(2e-4)
    # the decay ran to its end (within one epoch of it when a late epoch was slower than the ones before)
    assert lrs[-1] <= 2e-4 * 2 / (planned // 2 + 1) + 1e-12
    assert sum(row["seconds"] for row in ckpt["history"]) < 0.12 * 60 * 1.5
