"""Frozen backbone + head against fine-tuned backbone + head, cross-validated on the same folds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..backbones import apply_finetuned
from ..embedding import EmbedSettings
from ..evaluation import macro_f1
from ..heads import make_head
from ..progress import CancelToken, ProgressCallback, check_cancel
from ._cells import check_annotations, collect_annotated_cells, embed_cell_crops
from ._run import finetune_cells
from ._settings import FinetuneSettings, refuse_classic


@dataclass
class FinetuneComparison:
    frozen: object  # evaluation.Evaluation of the frozen backbone + head
    finetuned: object  # evaluation.Evaluation of the fine-tuned backbone + head
    level: str
    seconds: dict[str, float]

    @property
    def gain(self) -> float:
        return self.finetuned.macro_f1 - self.frozen.macro_f1

    def to_dict(self) -> dict:
        return {"frozen": self.frozen.to_dict(), "finetuned": self.finetuned.to_dict(), "level": self.level,
                "macro_f1_gain": self.gain, "seconds": dict(self.seconds)}

    def format_table(self) -> str:
        rows = [("frozen + head", self.frozen), (f"fine-tuned ({self.level}) + head", self.finetuned)]
        lines = [f"{'model':<32} {'macro F1':>9} {'± folds':>8} {'accuracy':>9}"]
        for name, ev in rows:
            spread = float(np.std(ev.fold_macro_f1)) if ev.fold_macro_f1 else 0.0
            lines.append(f"{name:<32} {ev.macro_f1:>9.3f} {spread:>8.3f} {ev.accuracy:>9.3f}")
        return "\n".join(lines + [f"gain from fine-tuning: {self.gain:+.3f} macro F1"])


def compare_frozen_vs_finetuned(
    image_cells, backbone, embed_settings: EmbedSettings = EmbedSettings(),
    settings: FinetuneSettings = FinetuneSettings(), folds: int = 5, seed: int = 0,
    progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
):
    """Stratified k-fold cross-validation over the annotated cells of the frozen backbone + head
    against fine-tuning (``settings.level``, normally the last blocks) + head.

    Both use the same folds as ``evaluation.cross_validate`` with this seed, the same head kind
    (``settings.head_kind``) and the same crops. Fine-tuning in each fold sees only that fold's
    training cells (its early stopping splits them again): the held-out fold stays unseen.
    """
    from ..evaluation import stratified_folds, usable_folds

    settings = settings.checked()
    refuse_classic(backbone)
    embed_settings = embed_settings.resolved(backbone)
    cells = collect_annotated_cells(image_cells, embed_settings, cancel)
    class_names, y = check_annotations(cells)
    n_folds, notes = usable_folds(folds, class_names, y)
    splits = stratified_folds(y, n_folds, seed)
    began = time.perf_counter()
    frozen = _frozen_out_of_fold(cells, backbone, embed_settings, settings, class_names, y, splits, progress, cancel)
    frozen_seconds, began = time.perf_counter() - began, time.perf_counter()
    tuned, diverged = np.empty(len(y), dtype=np.int64), []
    for fold, (train, test) in enumerate(splits):
        fold_progress = _fold_progress(progress, fold, len(splits))
        result = finetune_cells(cells.subset(train), backbone, embed_settings, settings, fold_progress, cancel,
                                class_names=class_names, min_cells=1)
        vectors = embed_cell_crops(apply_finetuned(backbone, result), embed_settings, cells.subset(test), cancel=cancel)
        tuned[test] = _class_index(result.head.predict_proba(vectors), result.class_names, class_names)
        diverged += [fold + 1] if result.diverged else []
    seconds = {"frozen": frozen_seconds, "finetuned": time.perf_counter() - began}
    return FinetuneComparison(_out_of_fold_evaluation(class_names, y, frozen, splits, notes),
                              _out_of_fold_evaluation(class_names, y, tuned, splits, notes + _diverged_note(diverged, settings)),
                              settings.level, seconds)


def _diverged_note(folds: list[int], settings: FinetuneSettings) -> list[str]:
    """Folds whose fine-tuning diverged are scored with their best epoch before it ran away: say so."""
    if not folds:
        return []
    return [f"Fine-tuning diverged in fold(s) {folds}: these scores come from the epochs before it ran away. "
            f"Lower the learning rate (e.g. {settings.lr / 10:g}) or train fewer blocks."]


def _frozen_out_of_fold(cells, backbone, embed_settings, settings, class_names, y, splits, progress, cancel) -> np.ndarray:
    vectors = embed_cell_crops(backbone, embed_settings, cells, progress, cancel)
    predicted = np.empty(len(y), dtype=np.int64)
    for train, test in splits:
        check_cancel(cancel)
        head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors[train], y[train], class_names)
        predicted[test] = head.predict_proba(vectors[test]).argmax(axis=1)
    return predicted


def _class_index(probabilities: np.ndarray, head_names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Predicted index into ``class_names`` (a fold's head lists the same classes, maybe in its own order)."""
    position = {name: i for i, name in enumerate(class_names)}
    return np.array([position[head_names[i]] for i in probabilities.argmax(axis=1)], dtype=np.int64)


def _out_of_fold_evaluation(class_names, y, predicted, splits, notes):
    from ..evaluation import confusion_matrix, evaluation_from_confusion

    fold_f1 = tuple(macro_f1(y[test], predicted[test], len(class_names)) for _, test in splits)
    return evaluation_from_confusion(class_names, confusion_matrix(y, predicted, len(class_names)), folds=len(splits),
                                     notes=notes, fold_macro_f1=fold_f1, out_of_fold=predicted)


def _fold_progress(progress, fold: int, folds: int):
    if progress is None:
        return None
    return lambda done, total, what: progress(done, total, f"Fold {fold + 1} of {folds}: {what}")
