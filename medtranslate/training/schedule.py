"""The learning-rate schedule of pix2pix and CycleGAN, and how long it runs: a fixed number of epochs.

The schedule is the papers' one (Isola et al. 2017; Zhu et al. 2017): the base rate for the first epochs, then a
linear decay to zero over the last ``decay`` epochs (half of them unless set). Its length is ``train.epochs``, so the
same config trains the same model on a laptop, a busy server or a GPU; only the time differs.

``train.max_minutes`` is a cap, not a plan: no epoch is started that is expected to end past it (the mean of the
recent epochs says how long one takes; the first carries the warm-up). A run it stops is under-trained, and says so:
``stopped_after`` is kept in every checkpoint written after it, and :meth:`Schedule.note` is the sentence the log,
``history.csv``, the pipeline's table and its report show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Schedule", "note_of"]

RECENT_EPOCHS = 5  # epochs whose mean duration predicts the next one's


@dataclass
class Schedule:
    """Epochs and linear decay of one run.

    Attributes:
        epochs: total epochs (the plan; never changed by time).
        decay_epochs: length of the decay; None: half the epochs.
        max_minutes: the cap on one process's training time, or None.
        stopped_after: the epochs done when the cap stopped the run; None while it has not.
    """

    epochs: int
    decay_epochs: int | None = None
    max_minutes: float | None = None
    stopped_after: int | None = None
    _seconds: list[float] = field(default_factory=list, repr=False)  # durations of the epochs seen by reaches_cap()

    @property
    def decay(self) -> int:
        return self.epochs // 2 if self.decay_epochs is None else min(self.decay_epochs, self.epochs)

    def factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate in epoch ``epoch`` (0-based)."""
        decay = self.decay
        return 1.0 - max(0, epoch + 1 - (self.epochs - decay)) / float(decay + 1)

    def reaches_cap(self, epoch_seconds: float, elapsed_seconds: float, epochs_done: int) -> bool:
        """After an epoch of ``epoch_seconds``, ``elapsed_seconds`` into this process's training: True when another
        epoch is expected to end past ``max_minutes`` (and epochs are left to run), which ends the run here."""
        if self.max_minutes is None:
            return False
        self._seconds.append(epoch_seconds)
        recent = self._seconds[1:][-RECENT_EPOCHS:] or self._seconds
        expected = sum(recent) / len(recent)
        if epochs_done >= self.epochs or elapsed_seconds + expected <= self.max_minutes * 60.0:
            return False
        self.stopped_after = epochs_done
        return True

    @property
    def note(self) -> str:
        """The sentence "stopped by train.max_minutes ... under-trained" for a run the cap stopped; "" otherwise."""
        if self.stopped_after is None:
            return ""
        return (
            f"stopped by train.max_minutes ({self.max_minutes:g}) after {self.stopped_after} of {self.epochs} epochs: "
            "under-trained"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "linear",
            "epochs": self.epochs,
            "decay": self.decay,
            "decay_epochs": self.decay_epochs,
            "max_minutes": self.max_minutes,
            "stopped_after": self.stopped_after,
        }

    @classmethod
    def from_train_config(cls, train: Any) -> Schedule:
        return cls(epochs=train.epochs, decay_epochs=train.decay_epochs, max_minutes=train.max_minutes)


def note_of(saved: dict[str, Any] | None) -> str:
    """:attr:`Schedule.note` of a checkpoint's ``schedule`` entry ("" for a run that ran its epochs, or an old one)."""
    saved = saved or {}
    if saved.get("stopped_after") is None or saved.get("epochs") is None:
        return ""
    schedule = Schedule(int(saved["epochs"]), max_minutes=saved.get("max_minutes"))
    schedule.stopped_after = int(saved["stopped_after"])
    return schedule.note
