"""Classification heads on cell embeddings: kNN, logistic regression and the DINO4Cells MLP.

``_base`` holds what every head shares (Predictions, input checks, the Head base class); ``_kinds``
the three heads; here the ``HEADS`` registry and the functions that make heads by name.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from .. import defaults
from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback
from ..registry import Registry
from ._familiarity import (
    MAX_REFERENCE, WARN_FRACTION, Familiarity, fit_familiarity, nearest_distances, unfamiliar_summary, unfamiliar_warning,
)
from ._base import MIN_CELLS_PER_CLASS, Head, Predictions, as_vectors, encode_classes, one_torch_thread
from ._kinds import KnnHead, LogisticHead, MlpHead

HEADS: Registry[type[Head]] = Registry("head", default=defaults.HEAD)
for _head in (KnnHead, LogisticHead, MlpHead):
    HEADS.register(_head.kind, _head)


def make_head(kind: str, class_names: Optional[Sequence[str]] = None, **params) -> Head:
    """An untrained head (checks its settings now, before any long work)."""
    return HEADS.lookup(kind)(class_names=class_names, **params)


def train_head(kind: str, vectors, classes: Sequence[str], progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None, class_names: Optional[Sequence[str]] = None, **params) -> Head:
    """Train a head of ``kind`` on (N, D) embeddings and one class name per cell."""
    return make_head(kind, class_names, **params).fit(vectors, classes, progress, cancel)


def head_from_state(tensors: Mapping[str, np.ndarray], config: Mapping) -> Head:
    kind = config.get("kind")
    if kind not in HEADS:
        raise DinolocError(f"The saved head is of an unknown kind {kind!r}: it may come from a newer napari-dinoloc; update the plugin.")
    return HEADS[kind].from_state(tensors, config)


__all__ = [
    "Familiarity", "MAX_REFERENCE", "WARN_FRACTION", "fit_familiarity", "nearest_distances", "unfamiliar_summary",
    "unfamiliar_warning",
    "HEADS", "MIN_CELLS_PER_CLASS", "Head", "KnnHead", "LogisticHead", "MlpHead", "Predictions", "as_vectors",
    "encode_classes", "head_from_state", "make_head", "one_torch_thread", "train_head",
]
