"""A fine-tuning run: its settings, its result, and the entry points ``finetune`` / ``finetune_cells``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .. import defaults
from ..augment import AugmentSettings
from ..backbones import apply_finetuned, numpy_state
from ..embedding import EmbedSettings
from ..errors import DinolocError
from ..heads import MIN_CELLS_PER_CLASS, Head, as_vectors, make_head
from ..progress import CancelToken, ProgressCallback
from ._cells import CellSet, check_annotations, collect_annotated_cells, embed_cell_crops, stratified_split
from ._trainer import Trainer

LEVELS = ("head", "last-blocks", "full")
#: on_epoch(epoch, train_loss, val_f1): after every epoch, for a live plot.
EpochCallback = Callable[[int, float, float], None]


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


@dataclass
class FinetuneResult:
    level: str
    backbone_state: Optional[dict[str, np.ndarray]]  # full state dict; None for level "head"
    weights_hash: str  # of the fine-tuned weights (the base weights for level "head")
    head: Head  # fitted on the fine-tuned embeddings of all annotated cells
    history: list[dict]  # per epoch: epoch, train_loss, val_f1, val_loss (of the probe), seconds, micro_batch
    metrics: dict  # validation scores (Evaluation.to_dict()) + best_epoch, stopped_early, cells...
    class_names: tuple[str, ...]
    class_counts: dict[str, int]
    stains: tuple[str, ...]
    embed_settings: EmbedSettings  # resolved: crop and input sizes filled in
    settings: FinetuneSettings
    validation: object = None  # evaluation.Evaluation on the validation cells (format_table() for a report)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DinolocError(message)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------
def finetune(
    image_cells: Iterable[tuple[object, np.ndarray, Mapping[int, str]]],
    backbone,
    embed_settings: EmbedSettings = EmbedSettings(),
    settings: FinetuneSettings = FinetuneSettings(),
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    on_epoch: Optional[EpochCallback] = None,
) -> FinetuneResult:
    """Fine-tune ``backbone`` on the annotated cells of (CellImage, labels, {label: class}) triples.

    ``image_cells`` may be a generator: each image is cropped and dropped before the next is read.
    """
    settings = settings.checked()
    embed_settings = embed_settings.resolved(backbone)
    cells = collect_annotated_cells(image_cells, embed_settings, cancel)
    return finetune_cells(cells, backbone, embed_settings, settings, progress, cancel, on_epoch)


def finetune_cells(cells: CellSet, backbone, embed_settings: EmbedSettings, settings: FinetuneSettings,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   on_epoch: Optional[EpochCallback] = None, class_names: Optional[Sequence[str]] = None,
                   min_cells: int = MIN_CELLS_PER_CLASS) -> FinetuneResult:
    """``finetune`` on crops already collected (cross-validation reuses them across folds, with the
    full class list and ``min_cells=1``: a fold may hold a single cell of a rare class)."""
    settings = settings.checked()
    embed_settings = embed_settings.resolved(backbone)
    class_names, y = check_annotations(cells, class_names, min_cells)
    train, val = stratified_split(y, settings.val_fraction, settings.seed)
    state, history, training_metrics = None, [], {}
    if settings.level == "head" and backbone.is_finetuned:
        state = numpy_state(backbone.model)  # already fine-tuned: the bundle must carry these weights
    if settings.level != "head":
        trainer = Trainer(backbone, embed_settings, settings, cells, y, class_names)
        history, training_metrics = trainer.fit(train, val, progress, cancel, on_epoch)
        state = trainer.state_dict()
        del trainer  # the training copy of the model is no longer needed
    tuned = apply_finetuned(backbone, state)
    vectors = as_vectors(embed_cell_crops(tuned, embed_settings, cells, progress, cancel))
    validation = validate_head(vectors, y, class_names, train, val, settings)
    metrics = {**validation.to_dict(), "level": settings.level, "train_cells": int(len(train)),
               "val_cells": int(len(val)), "annotations_not_found": cells.not_found, **training_metrics}
    head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors, y, class_names)
    return FinetuneResult(
        level=settings.level, backbone_state=state,
        weights_hash=tuned.weights_hash, head=head, history=history, metrics=metrics, class_names=class_names,
        class_counts={name: int(np.sum(y == i)) for i, name in enumerate(class_names)},
        stains=cells.stains, embed_settings=embed_settings, settings=settings, validation=validation,
    )


def validate_head(vectors, y, class_names, train, val, settings: FinetuneSettings):
    """Evaluation on the held-out validation cells of a head fitted on the training cells only."""
    from ..evaluation import confusion_matrix, evaluation_from_confusion

    head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors[train], y[train], class_names)
    predicted = head.predict_proba(vectors[val]).argmax(axis=1)
    return evaluation_from_confusion(class_names, confusion_matrix(y[val], predicted, len(class_names)))
