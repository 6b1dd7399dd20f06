"""Per-step schedules of a DINO run: learning rate, weight decay, teacher momentum, teacher temperature.

Every schedule is a plain function of the global step, so a resumed run reads the same values as an
uninterrupted one without storing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0, ``end`` at step ``total`` (and after), half a cosine in between."""
    if total <= 0 or step >= total:
        return float(end)
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / total)))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, end: float) -> float:
    """Linear from 0 to ``peak`` over ``warmup`` steps, then cosine from ``peak`` to ``end``."""
    warmup = min(warmup, total)
    if step < warmup:
        return float(peak * step / warmup)
    return cosine(step - warmup, total - warmup, peak, end)


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` steps, then ``end``."""
    if warmup <= 0 or step >= warmup:
        return float(end)
    return float(start + (end - start) * step / warmup)


@dataclass(frozen=True)
class Schedules:
    """DINO's schedules for a run of ``total`` steps of ``steps_per_epoch`` each (epochs may be fractional)."""

    total: int
    steps_per_epoch: int
    lr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    weight_decay_end: float
    momentum: float
    teacher_temp: float
    warmup_teacher_temp: float
    warmup_teacher_temp_epochs: float

    def _epochs_to_steps(self, epochs: float) -> int:
        return int(round(epochs * self.steps_per_epoch))

    def learning_rate(self, step: int) -> float:
        return warmup_cosine(step, self.total, self._epochs_to_steps(self.warmup_epochs), self.lr, self.min_lr)

    def weight_decay_at(self, step: int) -> float:
        return cosine(step, self.total, self.weight_decay, self.weight_decay_end)

    def teacher_momentum(self, step: int) -> float:
        """EMA momentum of the teacher: ``momentum`` -> 1 on a cosine over the run (DINO: 0.996 -> 1)."""
        return cosine(step, self.total, self.momentum, 1.0)

    def teacher_temperature(self, step: int) -> float:
        warmup = self._epochs_to_steps(self.warmup_teacher_temp_epochs)
        return linear_warmup(step, warmup, self.warmup_teacher_temp, self.teacher_temp)


def clip_gradients(parameters, max_norm: float) -> float:
    """Clip the global gradient norm (DINO clips per parameter; one global norm is the common simpler choice)."""
    import torch

    if max_norm <= 0:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], max_norm))


def set_optimizer_values(optimizer, lr: float, weight_decay: float) -> None:
    """Write this step's lr and weight decay; groups marked ``no_decay`` (biases, norms, tokens) keep 0."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = 0.0 if group.get("no_decay") else weight_decay
