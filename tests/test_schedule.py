"""The learning-rate schedule: constant then linear decay over train.epochs, and train.max_minutes as a cap."""

from __future__ import annotations

import pytest

from medtranslate.core.config import load_config
from medtranslate.core.errors import ConfigError
from medtranslate.training.schedule import Schedule, note_of

from .conftest import write_config


def test_constant_then_linear_decay():
    s = Schedule(epochs=6)
    assert [round(s.factor(e), 4) for e in range(6)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert Schedule(epochs=4, decay_epochs=0).factor(3) == 1.0


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
