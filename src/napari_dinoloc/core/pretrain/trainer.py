"""The DINO training loop: student (backbone + head), EMA teacher, multi-crop views, checkpoints.

Every step draws its cells and augmentations from generators seeded by (seed, step), so a run resumed
from a checkpoint continues exactly as the uninterrupted run would (same batches, same views).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..devices import resolve_device
from ..errors import Cancelled, DinolocError
from ..progress import CancelToken, check_cancel, report
from .checkpoints import make_args, read_training_checkpoint, spec_from_plain, write_checkpoint
from .data import PretrainCells
from .head import build_head, build_multicrop, last_layer_parameters, parameter_groups
from .loss import make_dino_loss
from .precision import autocast_context, choose_precision, time_steps
from .schedules import Schedules, clip_gradients, set_optimizer_values
from .settings import PretrainResult, PretrainSettings, settings_from_dict
from .views import make_views, to_slots


@dataclass
class StepInfo:
    step: int  # global step just done (1-based count of steps done)
    total: int
    epoch: int
    loss: float
    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    last_layer_frozen: bool


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**62)


class DinoRun:
    """One training run's state; ``pretrain`` drives it."""

    def __init__(self, cells: PretrainCells, settings: PretrainSettings, spec, backbone, device) -> None:
        import torch

        self.cells, self.settings, self.spec, self.device = cells, settings, spec, device
        self.batch_size = min(settings.batch_size, len(cells))
        if self.batch_size < 2:
            raise DinolocError("Pretraining needs at least 2 cells.")
        self.steps_per_epoch = max(1, len(cells) // self.batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            head = build_head(int(backbone.embed_dim), settings.out_dim, settings.hidden_dim, settings.bottleneck_dim)
        self.student = build_multicrop(backbone, head).to(device).train()
        self.teacher = copy.deepcopy(self.student).eval()  # the teacher starts as the student (DINO)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.loss = make_dino_loss(settings.out_dim, settings.student_temp, settings.center_momentum).to(device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.student), lr=0.0, weight_decay=0.0)
        self.step, self.losses, self.precision = 0, [], "fp32"
        self.total_steps = self.steps_per_epoch  # set by plan()
        self.schedules: Schedules | None = None

    # --- planning -------------------------------------------------------------------------

    def plan(self, total_steps: int) -> None:
        s = self.settings
        self.total_steps = max(1, int(total_steps))
        planned_epochs = self.total_steps / self.steps_per_epoch
        self.schedules = Schedules(
            total=self.total_steps, steps_per_epoch=self.steps_per_epoch, lr=s.lr, min_lr=s.min_lr,
            warmup_epochs=min(s.warmup_epochs, 0.5 * planned_epochs), weight_decay=s.weight_decay,
            weight_decay_end=s.weight_decay_end, momentum=s.momentum, teacher_temp=s.teacher_temp,
            warmup_teacher_temp=s.warmup_teacher_temp,
            warmup_teacher_temp_epochs=min(s.warmup_teacher_temp_epochs, 0.5 * planned_epochs),
        )

    def args(self):
        return make_args(self.settings.as_plain_dict(), self.spec, self.total_steps, self.steps_per_epoch,
                         self.precision, len(self.cells))

    # --- one step -------------------------------------------------------------------------

    def views_for(self, step: int) -> list:
        import torch

        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.cells))
        rows = order[within * self.batch_size:(within + 1) * self.batch_size]
        crops = to_slots(self.cells.batch(np.sort(rows)), self.cells.stains, self.spec.slots)
        generator = torch.Generator().manual_seed(step_seed(self.settings.seed, step))
        return [v.to(self.device) for v in make_views(crops, self.spec, self.settings.views, generator)]

    def train_step(self) -> StepInfo:
        import torch

        step, sched = self.step, self.schedules
        epoch = step // self.steps_per_epoch
        lr, wd = sched.learning_rate(step), sched.weight_decay_at(step)
        momentum, temp = sched.teacher_momentum(step), sched.teacher_temperature(step)
        views = self.views_for(step)
        set_optimizer_values(self.optimizer, lr, wd)
        with torch.random.fork_rng(devices=[]):  # drop path draws from the global RNG: seed it per step
            torch.manual_seed(step_seed(self.settings.seed, step) + 1)
            with autocast_context(self.device, self.precision):
                with torch.no_grad():
                    teacher_out = self.teacher(views[:2])
                student_out = self.student(views)
            loss = self.loss(student_out, teacher_out, len(views), temp)
            if not torch.isfinite(loss):
                raise DinolocError(f"The DINO loss became {loss.item()} at step {step}: lower the learning rate "
                                   "(--lr) or raise the teacher momentum, and resume from the last checkpoint.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        clip_gradients(self.student.parameters(), self.settings.clip_grad)
        frozen = step < self.settings.freeze_last_layer_epochs * self.steps_per_epoch
        if frozen:  # DINO: the prototypes stay put while the rest settles
            for param in last_layer_parameters(self.student):
                param.grad = None
        self.optimizer.step()
        self.update_teacher(momentum)
        self.step += 1
        self.losses.append(float(loss.item()))
        return StepInfo(self.step, self.total_steps, epoch, self.losses[-1], lr, wd, momentum, temp, frozen)

    def update_teacher(self, momentum: float) -> None:
        import torch

        with torch.no_grad():
            for student, teacher in zip(self.student.parameters(), self.teacher.parameters()):
                teacher.mul_(momentum).add_(student.detach(), alpha=1.0 - momentum)

    def trial_seconds(self, precision: str) -> float:
        """Seconds of a forward + backward pass at ``precision``; leaves weights, centre and RNGs unchanged."""
        import torch

        views = self.views_for(0)

        def once() -> None:
            with torch.random.fork_rng(devices=[]), autocast_context(self.device, precision):
                with torch.no_grad():
                    self.teacher(views[:2])
                self.student(views).float().mean().backward()
            self.student.zero_grad(set_to_none=True)

        return time_steps(once)

    # --- checkpoints ----------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        return write_checkpoint(path, self.student, self.teacher, self.optimizer, self.loss, self.step,
                                self.step // self.steps_per_epoch, self.args(), self.losses)

    def restore(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["dino_loss"])
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self.precision = state["args"].precision
        self.plan(int(state["args"].total_steps))


def _start_run(cells, settings, start, weights, checkpoint_path, resume: bool) -> tuple[DinoRun, dict | None]:
    from .cell_model import build_vit, resolve_start

    device = resolve_device(settings.device)
    if resume:
        state = read_training_checkpoint(checkpoint_path)
        args = state["args"]
        settings = settings_from_dict({**args.settings, "minutes": settings.minutes, "device": settings.device,
                                       "checkpoint_minutes": settings.checkpoint_minutes})
        spec = spec_from_plain(args.spec)
        run = DinoRun(cells, settings, spec, build_vit(spec, settings.seed, settings.drop_path_rate), device)
        if run.steps_per_epoch != args.steps_per_epoch:
            raise DinolocError(f"The checkpoint was trained on {args.n_cells} cells, these are {len(cells)}: "
                               "resume with the same cells, or start a new run from the checkpoint's weights.")
        run.restore(state)
        return run, state
    spec, backbone = resolve_start(start, weights, settings.seed, settings.drop_path_rate)
    return DinoRun(cells, settings, spec, backbone, device), None


def pretrain(cells: PretrainCells, settings: PretrainSettings = PretrainSettings(), start=None, weights=None,
             checkpoint_path: str | Path | None = None, resume: bool = False, progress=None,
             cancel: CancelToken | None = None, on_step: Callable[[StepInfo], None] | None = None) -> PretrainResult:
    """Self-supervised DINO training on ``cells``; the teacher is the result (see ``export_teacher``).

    ``start``: None (the shipped cell architecture from scratch), a BackboneSpec, a registered backbone name,
    or a LoadedBackbone; ``weights``: a file for it. ``resume``: continue the run saved at
    ``checkpoint_path`` (its settings and schedules; ``settings.minutes`` bounds this session).
    Checkpoints go to ``checkpoint_path`` every ``settings.checkpoint_minutes``, at the end and on cancel;
    cancelling raises ``Cancelled`` after that checkpoint is written.
    """
    if resume and checkpoint_path is None:
        raise DinolocError("To resume, give the checkpoint file of the run.")
    run, state = _start_run(cells, settings, start, weights, checkpoint_path, resume)
    settings = run.settings
    if state is None:
        run.precision, measured = choose_precision(settings.precision, run.device, run.trial_seconds)
        run.plan(_planned_steps(settings, run, measured))
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    return _loop(run, settings, path, progress, cancel, on_step)


def _planned_steps(settings: PretrainSettings, run: DinoRun, measured: dict) -> int:
    if settings.epochs is not None:
        return int(round(settings.epochs * run.steps_per_epoch))
    seconds = measured.get(run.precision) or run.trial_seconds(run.precision)
    return int(settings.minutes * 60.0 / (1.15 * seconds))  # optimizer, EMA and views add ~15 %


def _loop(run: DinoRun, settings, path, progress, cancel, on_step) -> PretrainResult:
    start = last_save = time.perf_counter()
    first_step, stopped = run.step, "done"
    try:
        while run.step < run.total_steps:
            check_cancel(cancel)
            if settings.minutes is not None and time.perf_counter() - start >= settings.minutes * 60.0:
                stopped = "time"
                break
            info = run.train_step()
            report(progress, info.step, info.total, f"DINO step {info.step}/{info.total}, loss {info.loss:.4f}")
            if on_step is not None:
                on_step(info)
            if path is not None and time.perf_counter() - last_save >= settings.checkpoint_minutes * 60.0:
                run.save(path)
                last_save = time.perf_counter()
    except Cancelled:  # raised between two steps, where the state is whole: keep it
        if path is not None and run.step > first_step:
            run.save(path)  # atomic: the previous checkpoint survives a crash while writing
        raise
    seconds = time.perf_counter() - start
    if path is not None:
        run.save(path)
    done = run.step - first_step
    return PretrainResult(
        losses=list(run.losses), steps=run.step, total_steps=run.total_steps, epochs=run.step / run.steps_per_epoch,
        seconds=seconds, crops_per_second=done * run.batch_size / seconds if seconds > 0 else 0.0,
        checkpoint=path, precision=run.precision, stopped=stopped,
    )
