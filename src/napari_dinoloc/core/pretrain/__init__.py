"""Self-supervised DINO pretraining on single cells (no Qt, no napari; torch imported lazily)."""

from .cell_model import CELL_MODEL_NAME, CELL_MODEL_SPEC, build_vit, resolve_start
from .checkpoints import export_checkpoint_teacher, export_teacher, read_training_checkpoint, write_checkpoint
from .data import ImageSource, PretrainCells, cell_crops
from .schedules import Schedules, cosine, linear_warmup, warmup_cosine
from .settings import PretrainResult, PretrainSettings
from .trainer import DinoRun, StepInfo, pretrain
from .views import ViewSettings, make_views, to_slots

__all__ = [
    "CELL_MODEL_NAME", "CELL_MODEL_SPEC", "DinoRun", "ImageSource", "PretrainCells", "PretrainResult",
    "PretrainSettings", "Schedules", "StepInfo", "ViewSettings", "build_vit", "cell_crops", "cosine",
    "export_checkpoint_teacher", "export_teacher", "linear_warmup", "make_views", "pretrain", "read_training_checkpoint",
    "resolve_start", "to_slots", "warmup_cosine", "write_checkpoint",
]
