"""The learning-rate schedule of pix2pix and CycleGAN, and how long it runs: a fixed number of epochs, or as many as
fit in a time budget.

The schedule is the papers' one (Isola et al. 2017; Zhu et al. 2017): the base rate for the first epochs, then a
linear decay to zero over the last ``decay`` epochs (half of them unless set). With ``train.max_minutes`` the number of
epochs is planned after the first one from its measured duration (training, validation and checkpoints), so the decay
ends inside the budget instead of being cut off by it; ``train.epochs``, when given, caps the plan. After every epoch
the plan is checked against the mean duration of the recent epochs (the first one carries the warm-up): it shrinks when
the remaining epochs no longer fit, and grows while the decay has not started, so one slow first epoch does not leave
the budget unused. No epoch is started that is expected to end past the budget. The plan is stored in every
checkpoint, so a resumed run follows the same schedule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Schedule"]

logger = logging.getLogger(__name__)


@dataclass
class Schedule:
    """Epochs and linear decay of one run.

    Attributes:
        epochs: total epochs; None until planned from the budget.
        decay_epochs: length of the decay; None: half the epochs.
        cap: the most epochs a budget plan may give (``train.epochs`` when set with a budget).
        max_minutes: the time budget, or None.
    """

    epochs: int | None
    decay_epochs: int | None = None
    cap: int | None = None
    max_minutes: float | None = None
    _seconds: list[float] = field(default_factory=list, repr=False)  # durations of the epochs seen by plan()
    _told: int | None = field(default=None, repr=False)  # the plan last logged at INFO level

    @property
    def decay(self) -> int:
        if self.epochs is None:
            return 0
        return self.epochs // 2 if self.decay_epochs is None else min(self.decay_epochs, self.epochs)

    def factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate in epoch ``epoch`` (0-based); 1 while the length is not planned yet."""
        if self.epochs is None:
            return 1.0
        decay = self.decay
        return 1.0 - max(0, epoch + 1 - (self.epochs - decay)) / float(decay + 1)

    @property
    def planned(self) -> bool:
        return self.epochs is not None

    def plan(self, epoch_seconds: float, elapsed_seconds: float, epochs_done: int) -> None:
        """After an epoch of ``epoch_seconds``: fix or correct the number of epochs so the rest fits the budget.

        The first call fixes the plan: the epochs done plus as many more as the budget still holds. Later calls
        shrink it when the remaining epochs no longer fit at the mean duration of the recent epochs, and grow it
        (up to the cap) while the decay has not started; the learning rates already used stay valid either way.
        """
        if self.max_minutes is None:
            return
        self._seconds.append(epoch_seconds)
        recent = self._seconds[1:][-5:] or self._seconds  # the first epoch carries the warm-up
        estimate = max(sum(recent) / len(recent), 1e-9)
        left = self.max_minutes * 60.0 - elapsed_seconds
        total = epochs_done + max(0, math.floor(left / estimate))
        if self.cap is not None:
            total = min(total, self.cap)
        total = max(total, epochs_done, 1)
        if not self.planned:
            self.epochs = total
            action = "planned"
        elif total < self.epochs:
            self.epochs = total
            action = "re-planned (epochs slower than planned)"
        elif total > self.epochs and epochs_done < self.epochs - self.decay:
            self.epochs = total
            action = "re-planned (epochs faster than planned)"
        else:
            return
        # the epoch lines show the plan (epoch 8/45); a change of a few epochs, as the estimate settles, is not news
        told = self._told
        news = told is None or abs(self.epochs - told) > max(2, 0.1 * told)
        if news:
            self._told = self.epochs
        logger.log(
            logging.INFO if news else logging.DEBUG,
            "%s %d epochs (%.1f s each) to fit train.max_minutes %.1f; the learning rate decays over the last %d",
            action,
            self.epochs,
            estimate,
            self.max_minutes,
            self.decay,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "linear",
            "epochs": self.epochs,
            "decay": self.decay,
            "decay_epochs": self.decay_epochs,
            "cap": self.cap,
            "max_minutes": self.max_minutes,
        }

    @classmethod
    def from_train_config(cls, train: Any) -> "Schedule":
        if train.max_minutes is None:
            return cls(epochs=train.epochs, decay_epochs=train.decay_epochs)
        return cls(epochs=None, decay_epochs=train.decay_epochs, cap=train.epochs, max_minutes=train.max_minutes)

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the planned length from a checkpoint's schedule (a resumed run keeps its plan)."""
        if saved.get("epochs") is not None:
            self.epochs = int(saved["epochs"])
