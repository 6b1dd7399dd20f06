"""When fine-tuning diverges: the rule that stops a run whose training loss runs away.

A run has diverged when
- a training loss is not a finite number (NaN or infinite): it stops at once, before that step
  changes any weight; or
- the mean training loss of an epoch is more than ``DIVERGENCE_FACTOR`` times the first epoch's,
  ``DIVERGENCE_EPOCHS`` epochs in a row (one noisy epoch on a few cells is not enough).

An epoch whose loss breaks the rule is never kept as the best one, and a diverged run is never
offered for use: the front ends refuse it with ``message()``, which says what to change.
"""

from __future__ import annotations

import math
from typing import Optional

DIVERGENCE_FACTOR = 5.0  # above this times the first epoch's loss an epoch runs away (3x happens by chance on a few cells)
DIVERGENCE_EPOCHS = 2    # ... for this many epochs in a row


class DivergenceWatch:
    """Watches the training loss of every epoch; ``update`` says when to stop."""

    def __init__(self, factor: float = DIVERGENCE_FACTOR, epochs: int = DIVERGENCE_EPOCHS):
        self.factor, self.epochs = factor, epochs
        self.first: Optional[float] = None  # the first epoch's mean training loss: the reference
        self.run = 0                        # epochs in a row above factor x first
        self.epoch: Optional[int] = None    # the epoch at which the run was stopped (None: not diverged)
        self.loss = math.nan

    @property
    def diverged(self) -> bool:
        return self.epoch is not None

    def update(self, epoch: int, loss: float) -> bool:
        """Record an epoch's training loss; True when the run has diverged and must stop."""
        if math.isfinite(loss) and self.first is None:
            self.first = loss
            return False
        self.run = self.run + 1 if self.runs_away(loss) else 0
        if not math.isfinite(loss) or self.run >= self.epochs:
            self.epoch, self.loss = epoch, loss
            return True
        return False

    def runs_away(self, loss: float) -> bool:
        """Is this loss past the rule's line? Such an epoch is never kept as the best one."""
        if not math.isfinite(loss):
            return True
        return self.first is not None and loss > self.factor * self.first

    def message(self, lr: float) -> str:
        """What happened and what to do (empty when the run did not diverge)."""
        if not self.diverged:
            return ""
        if math.isfinite(self.loss):
            what = (f"the training loss rose from {self.first:.3g} (first epoch) to {self.loss:.3g}, more than "
                    f"{self.factor:g}x, for {self.epochs} epochs in a row")
        else:
            what = f"the training loss became {self.loss} (not a number)"
        return (f"Fine-tuning diverged at epoch {self.epoch}: {what}. It was stopped and its result must not be "
                f"used. Lower the learning rate (e.g. {lr / 10:g} instead of {lr:g}) or train fewer blocks, "
                "then fine-tune again.")
