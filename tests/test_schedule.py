"""The learning-rate schedule: constant then linear decay over train.epochs, and train.max_minutes as a cap."""

from __future__ import annotations

import csv

import pytest

from medtranslate.core.config import load_config
from medtranslate.core.errors import ConfigError
from medtranslate.training.schedule import Schedule, note_of
from medtranslate.training.train import Trainer

from .conftest import write_config


def test_constant_then_linear_decay():
    s = Schedule(epochs=6)
    assert [round(s.factor(e), 4) for e in range(6)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert Schedule(epochs=4, decay_epochs=0).factor(3) == 1.0


def test_one_cycle_warms_up_over_the_first_30_percent_then_anneals_towards_zero():
    s = Schedule(epochs=90, kind="onecycle")
    f = [s.factor(e) for e in range(90)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0, abs=1e-3)
    assert all(a < b for a, b in zip(f[:27], f[1:28], strict=True))  # rising to epoch 27 (30 % of 90)
    assert all(a > b for a, b in zip(f[27:-1], f[28:], strict=True)) and 0 < f[-1] < 0.002
    assert s.to_dict()["kind"] == "onecycle"


def test_a_run_with_the_one_cycle_schedule_trains_at_its_rates_and_refuses_decay_epochs(tmp_path, tiny_data):
    path = write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": 4, "train.schedule": "onecycle"})
    cfg = load_config(path)
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    rates = [float(row["lr"]) for row in csv.DictReader((tmp_path / "run" / "history.csv").open())]
    expected = [cfg.train.lr * Schedule(epochs=4, kind="onecycle").factor(e) for e in range(4)]
    assert rates == pytest.approx(expected, rel=1e-3) and rates[0] < rates[1] > rates[2] > rates[3] > 0
    with pytest.raises(ConfigError, match="train.decay_epochs belongs to the linear schedule"):
        extra = {"train.schedule": "onecycle", "train.decay_epochs": 1}
        load_config(write_config(tmp_path / "d.yaml", tiny_data, **extra))


def test_the_cap_stops_before_an_epoch_expected_to_end_past_it_and_never_changes_the_plan():
    s = Schedule(epochs=30, max_minutes=1.0)
    assert not s.reaches_cap(20.0, 20.0, 1)  # a slow first epoch (warm-up) ...
    assert not s.reaches_cap(10.0, 30.0, 2)  # ... does not count once others are known: 30 s + 10 s fits in 60
    assert not s.reaches_cap(10.0, 40.0, 3)
    assert s.reaches_cap(10.0, 51.0, 4)  # 51 s + 10 s would end past 60 s
    assert s.epochs == 30 and s.factor(3) == 1.0 and s.stopped_after == 4
    assert s.note == "stopped by train.max_minutes (1) after 4 of 30 epochs: under-trained"
    assert note_of(s.to_dict()) == s.note and note_of(Schedule(epochs=30).to_dict()) == ""
    done = Schedule(epochs=2, max_minutes=1.0)
    assert not done.reaches_cap(100.0, 100.0, 2)  # over time, but every epoch ran: not under-trained
    assert done.stopped_after is None and done.note == ""
    assert not Schedule(epochs=3).reaches_cap(1e9, 1e9, 1)  # no cap


def test_a_config_that_gives_only_a_time_budget_is_refused_naming_the_fix(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"train.epochs is not set: train.max_minutes is a cap .* train.epochs=30"):
        load_config(write_config(tmp_path / "c.yaml", tiny_data, **{"train.epochs": None, "train.max_minutes": 5}))
    assert load_config(write_config(tmp_path / "d.yaml", tiny_data, **{"train.epochs": None})).train.epochs == 10
