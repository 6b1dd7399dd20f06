"""Hyper-parameters and results of a DINO pretraining run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DinolocError
from .views import ViewSettings

PRECISION_CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class PretrainSettings:
    """Defaults: DINO's recipe tuned for a few thousand cells on a CPU (METHODS.md §5 for the paper's values).

    Measured on the public cells here: with DINO's own values (65k/2k prototypes, teacher temperature
    warming to 0.07, momentum 0.996) the loss sat at ln(K), a uniform teacher, for the whole first hour;
    256 prototypes, a sharp teacher (0.04) from the start, momentum 0.99 and lr 1e-3 at batch 32 learned.
    """

    # head: small data needs far fewer prototypes than DINO's 65,536
    out_dim: int = 256
    hidden_dim: int = 1024
    bottleneck_dim: int = 256
    # budget: epochs fix the schedules; minutes stop this session early (resume continues the schedule)
    batch_size: int = 32
    epochs: float | None = 100
    minutes: float | None = None
    # optimiser (AdamW) and schedules
    lr: float = 1e-3  # peak, after the warm-up
    min_lr: float = 1e-6
    warmup_epochs: float = 0.5
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1
    drop_path_rate: float = 0.0
    # teacher
    momentum: float = 0.99  # -> 1 on a cosine (DINO: 0.996 for 100s of epochs; short runs need a faster teacher)
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.5
    student_temp: float = 0.1
    center_momentum: float = 0.9
    views: ViewSettings = field(default_factory=ViewSettings)
    # run
    seed: int = 0
    checkpoint_minutes: float = 10.0
    device: str = "auto"
    precision: str = "auto"  # "auto": measured on CPU, bf16 autocast on CUDA

    def __post_init__(self) -> None:
        if self.epochs is None and self.minutes is None:
            raise DinolocError("Give a pretraining budget: a number of epochs, minutes, or both.")
        if self.epochs is not None and self.epochs <= 0 or self.minutes is not None and self.minutes <= 0:
            raise DinolocError("The pretraining budget (epochs, minutes) must be positive.")
        if self.batch_size < 2:
            raise DinolocError("The pretraining batch must hold at least 2 cells (the teacher centres over the batch).")
        if self.precision not in PRECISION_CHOICES:
            raise DinolocError(f"Unknown precision {self.precision!r}: use one of {', '.join(PRECISION_CHOICES)}.")

    def as_plain_dict(self) -> dict:
        """Plain values only (stored in checkpoints, which are read without running pickled code)."""
        return asdict(self)


def settings_from_dict(values: dict) -> PretrainSettings:
    values = dict(values)
    view_values = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(values.pop("views", {})).items()}
    return PretrainSettings(views=ViewSettings(**view_values), **values)


@dataclass
class PretrainResult:
    losses: list[float]  # mean DINO loss of every step, from the first step of the run (resumed runs included)
    steps: int  # global steps done
    total_steps: int  # steps the schedules plan for
    epochs: float
    seconds: float  # this session's training time
    crops_per_second: float  # cells per second through the student (each with all its views)
    checkpoint: Path | None
    precision: str
    stopped: str  # "done" | "time"
