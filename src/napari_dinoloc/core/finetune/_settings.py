"""How a fine-tuning run is set up: the levels and FinetuneSettings (checked before any long work)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .. import defaults
from ..augment import AugmentSettings
from ..errors import DinolocError
from ..heads import make_head

LEVELS = ("head", "last-blocks", "full")


@dataclass(frozen=True)
class FinetuneSettings:
    level: str = defaults.FINETUNE_LEVEL  # one of LEVELS
    blocks: int = 2                 # "last-blocks": how many blocks from the top are trained
    epochs: int = 20                # at most; early stopping may end sooner
    lr: float = 1e-4                # learning rate of the (top of the) backbone
    head_lr: float = 1e-3           # learning rate of the classifier trained with it
    layer_decay: float = 0.75       # "full": rate factor per block below the top
    weight_decay: float = 0.05
    batch_size: int = 32            # cells per optimiser step
    max_batch: int = 32             # cells per forward pass; larger steps accumulate gradients
    val_fraction: float = 0.2       # stratified share of the annotated cells kept for validation
    patience: int = 5               # epochs without a better validation macro-F1 before stopping
    head_kind: str = defaults.HEAD  # head fitted on the fine-tuned embeddings (heads.HEADS)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 0
    device: Optional[str] = None    # None: the backbone's device; "auto", "cpu", "cuda", "mps"

    def checked(self) -> "FinetuneSettings":
        _require(self.level in LEVELS, f"Unknown fine-tuning level {self.level!r}: choose one of {', '.join(LEVELS)}.")
        _require(self.blocks >= 1, f"Fine-tune at least 1 block (got {self.blocks}).")
        _require(self.epochs >= 1, f"Fine-tune for at least 1 epoch (got {self.epochs}).")
        _require(self.lr > 0 and self.head_lr > 0, "Learning rates must be positive (e.g. --lr 1e-4).")
        _require(0 < self.layer_decay <= 1, f"The layer-wise decay must lie in (0, 1] (got {self.layer_decay}).")
        _require(self.weight_decay >= 0, "The weight decay cannot be negative.")
        _require(self.batch_size >= 1 and self.max_batch >= 1, "Batch sizes must be at least 1.")
        _require(0 < self.val_fraction < 1, f"The validation share must lie in (0, 1) (got {self.val_fraction}).")
        _require(self.patience >= 1, f"The early-stopping patience must be at least 1 epoch (got {self.patience}).")
        make_head(self.head_kind)  # an unknown head fails now, not after training
        return self


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DinolocError(message)


def refuse_classic(backbone) -> None:
    """Classic features have no weights to train: say what to fine-tune instead."""
    if getattr(backbone, "is_classic", False):
        from ..errors import DinolocError

        raise DinolocError(f"The {backbone.name!r} features cannot be fine-tuned (the classic part has no weights): "
                           "fine-tune a vision transformer (dinoloc-cells, the shipped cell model, works offline: choose it in step 2 "
                           "or give --backbone dinoloc-cells), or train a head on the classic features (Train and predict, dinoloc train).")
