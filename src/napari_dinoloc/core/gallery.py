"""Which cells the gallery shows and in what order: one class (predicted or annotated) or all cells,
by the classifier's score or by its uncertainty, and the batch of cells worth annotating next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from .errors import DinolocError

# What to show: every cell, the cells predicted or annotated as one class, the cells not annotated.
ALL, PREDICTED, ANNOTATED, NOT_ANNOTATED = "all", "predicted", "annotated", "not annotated"
SHOW_KINDS = (ALL, PREDICTED, ANNOTATED, NOT_ANNOTATED)
# How to sort: most probable first, smallest margin first, highest entropy first, cell number.
SCORE, MARGIN, ENTROPY, LABEL = "score", "margin", "entropy", "label"
SORTS = (SCORE, MARGIN, ENTROPY, LABEL)
BATCH = 24  # cells fetched by "Next cells to annotate"


@dataclass(frozen=True)
class GalleryCells:
    """The cells to show, in order, and the number each was sorted by (NaN: not predicted)."""

    labels: np.ndarray   # (N,) int64
    values: np.ndarray   # (N,) float64: score, margin or entropy of each cell
    measure: str         # the sort used (SORTS)

    def __len__(self) -> int:
        return int(len(self.labels))


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """(N,) Shannon entropy (nats) of each row: high when the classifier spreads its belief."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def choose_cells(cell_labels: Sequence[int], predictions=None, annotations: Optional[Mapping[int, str]] = None,
                 show: str = ALL, class_name: Optional[str] = None, sort: str = SCORE) -> GalleryCells:
    """The cells of ``cell_labels`` that ``show`` / ``class_name`` select, sorted by ``sort``.

    Cells the classifier did not score (or all, before any prediction) go last, by cell number."""
    if show not in SHOW_KINDS:
        raise DinolocError(f"Unknown gallery choice {show!r}: choose one of {', '.join(SHOW_KINDS)}.")
    if sort not in SORTS:
        raise DinolocError(f"Unknown gallery order {sort!r}: choose one of {', '.join(SORTS)}.")
    annotations = dict(annotations or {})
    labels = np.sort(np.asarray(cell_labels, dtype=np.int64))
    rows = _prediction_rows(labels, predictions)
    keep = _selected(labels, rows, predictions, annotations, show, class_name)
    labels, rows = labels[keep], rows[keep]
    values = _values(rows, predictions, sort, class_name if show in (PREDICTED, ANNOTATED) else None)
    key = {SCORE: -values, MARGIN: values, ENTROPY: -values, LABEL: np.zeros(len(values))}[sort]
    key = np.where(np.isnan(key), np.inf, key)  # unscored cells last
    order = np.lexsort((labels, key))
    return GalleryCells(labels[order], values[order], sort)


def cells_to_annotate(cell_labels: Sequence[int], annotated: Iterable[int], predictions=None, count: int = BATCH,
                      rng: Optional[np.random.Generator] = None) -> GalleryCells:
    """The ``count`` unannotated cells the classifier is least sure about (smallest gap between its two
    most likely classes), as ``annotations.next_cell_to_annotate`` picks one; before any prediction,
    ``count`` random unannotated cells."""
    done = {int(label) for label in annotated}
    remaining = np.array([int(label) for label in cell_labels if int(label) not in done], dtype=np.int64)
    if predictions is not None and len(predictions.labels):
        chosen = choose_cells(remaining, predictions, show=ALL, sort=MARGIN)
        scored = ~np.isnan(chosen.values)
        return GalleryCells(chosen.labels[scored][:count], chosen.values[scored][:count], MARGIN)
    rng = rng or np.random.default_rng()
    picked = rng.permutation(remaining)[:count] if len(remaining) else remaining
    return GalleryCells(picked, np.full(len(picked), np.nan), LABEL)


def _prediction_rows(labels: np.ndarray, predictions) -> np.ndarray:
    """Row of each cell in ``predictions`` (-1: not predicted)."""
    rows = np.full(len(labels), -1, dtype=np.int64)
    if predictions is None or len(predictions.labels) == 0:
        return rows
    predicted = np.asarray(predictions.labels, dtype=np.int64)
    order = np.argsort(predicted, kind="stable")
    at = np.clip(np.searchsorted(predicted[order], labels), 0, len(predicted) - 1)
    found = predicted[order][at] == labels
    rows[found] = order[at][found]
    return rows


def _selected(labels, rows, predictions, annotations: Mapping[int, str], show: str, class_name) -> np.ndarray:
    if show == ALL:
        return np.ones(len(labels), dtype=bool)
    if show == NOT_ANNOTATED:
        return np.array([int(label) not in annotations for label in labels], dtype=bool)
    if show == ANNOTATED:
        return np.array([annotations.get(int(label)) == class_name for label in labels], dtype=bool)
    if predictions is None:
        return np.zeros(len(labels), dtype=bool)
    names = np.asarray(predictions.predicted_names)
    return (rows >= 0) & (names[np.maximum(rows, 0)] == class_name)


def _values(rows: np.ndarray, predictions, sort: str, class_name: Optional[str]) -> np.ndarray:
    values = np.full(len(rows), np.nan)
    if predictions is None or len(predictions.labels) == 0 or sort == LABEL:
        return values
    scored = rows >= 0
    probabilities = np.asarray(predictions.probabilities, dtype=np.float64)[rows[scored]]
    if sort == MARGIN:
        top2 = np.sort(probabilities, axis=1)[:, -2:]
        values[scored] = top2[:, -1] - (top2[:, 0] if probabilities.shape[1] > 1 else 0.0)
    elif sort == ENTROPY:
        values[scored] = entropy(probabilities)
    elif class_name in predictions.class_names:  # the score of the class shown
        values[scored] = probabilities[:, list(predictions.class_names).index(class_name)]
    else:
        values[scored] = probabilities.max(axis=1)
    return values
