"""Head-only fine-tuning's own curve: the held-out score of the head as it gets more training cells.

The head levels train no backbone, so there are no epochs to plot; kNN has no iterations at all.
What every head does have is a learning curve: fitted on growing, nested shares of the training
cells (every class kept), scored on the same validation cells as the run's result.
"""

from __future__ import annotations

import numpy as np

from ..heads import make_head
from ..progress import check_cancel

HEAD_CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def head_learning_curve(vectors: np.ndarray, y: np.ndarray, class_names, train: np.ndarray, val: np.ndarray,
                        settings, cancel=None) -> list[dict]:
    """One row per distinct training-set size: train_cells, val_f1, val_loss (log-loss of the true class).

    The last row uses every training cell: its val_f1 is the run's validation macro-F1."""
    from ..evaluation import macro_f1, nested_subsets

    rng = np.random.default_rng(settings.seed)
    rows, seen = [], set()
    for subset in nested_subsets(y[train], HEAD_CURVE_FRACTIONS, rng):
        if len(subset) in seen:  # nested: the same size is the same cells, not a new point
            continue
        seen.add(len(subset))
        check_cancel(cancel)
        rows_used = train[subset]
        head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(
            vectors[rows_used], y[rows_used], class_names)
        proba = head.predict_proba(vectors[val]).astype(np.float64)
        truth = y[val]
        loss = float(-np.mean(np.log(np.maximum(proba[np.arange(len(truth)), truth], 1e-12))))
        rows.append({"train_cells": int(len(subset)), "val_f1": macro_f1(truth, proba.argmax(axis=1), len(class_names)),
                     "val_loss": loss})
    return rows
