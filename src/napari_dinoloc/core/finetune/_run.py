"""A fine-tuning run: its result, and the entry points ``finetune`` / ``finetune_cells``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..backbones import apply_finetuned, numpy_state
from ..embedding import EmbedSettings
from ..heads import MIN_CELLS_PER_CLASS, Head, as_vectors, make_head
from ..progress import CancelToken, ProgressCallback
from ._cells import CellSet, check_annotations, collect_annotated_cells, embed_cell_crops, stratified_split
from ._head_curve import head_learning_curve
from ._settings import FinetuneSettings, refuse_classic
from ._trainer import Trainer

#: on_epoch(epoch, train_loss, val_f1): after every epoch, for a live plot.
EpochCallback = Callable[[int, float, float], None]

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
    diverged: bool = False  # the training loss ran away (_divergence.py): never use nor save this result
    divergence: str = ""    # what happened and what to do, when diverged
    head_curve: list[dict] = field(default_factory=list)  # level "head": head_learning_curve() rows

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
    refuse_classic(backbone)
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
    state, history, training_metrics, head_curve = None, [], {}, []
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
    if settings.level == "head":
        head_curve = head_learning_curve(vectors, y, class_names, train, val, settings, cancel)
    metrics = {**validation.to_dict(), "level": settings.level, "train_cells": int(len(train)),
               "val_cells": int(len(val)), "annotations_not_found": cells.not_found, **training_metrics}
    head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors, y, class_names)
    return FinetuneResult(
        level=settings.level, backbone_state=state,
        weights_hash=tuned.weights_hash, head=head, history=history, metrics=metrics, class_names=class_names,
        class_counts={name: int(np.sum(y == i)) for i, name in enumerate(class_names)},
        stains=cells.stains, embed_settings=embed_settings, settings=settings, validation=validation,
        diverged=bool(training_metrics.get("diverged")), divergence=training_metrics.get("divergence", ""),
        head_curve=head_curve,
    )

def validate_head(vectors, y, class_names, train, val, settings: FinetuneSettings):
    """Evaluation on the held-out validation cells of a head fitted on the training cells only."""
    from ..evaluation import confusion_matrix, evaluation_from_confusion

    head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors[train], y[train], class_names)
    predicted = head.predict_proba(vectors[val]).argmax(axis=1)
    return evaluation_from_confusion(class_names, confusion_matrix(y[val], predicted, len(class_names)))
