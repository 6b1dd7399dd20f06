"""Is a cell like the cells the head was trained on? "Unfamiliar" cells get a prediction with caution.

A head only knows the part of embedding space its training cells cover: a cell far from all of
them (another cell line, stain, microscope, an artefact) still gets a confident-looking class. We
keep reference embeddings of the training cells (all of them, or a seeded sample of
``MAX_REFERENCE`` when there are more) and a distance threshold learned from the training set
itself: the ``PERCENTILE``-th percentile of each training cell's Euclidean distance to its nearest
other training cell, in the head's input space (the embeddings as given to the head). A new cell
whose nearest reference cell lies farther than that is flagged unfamiliar; cells drawn like the
training cells are flagged about (100 - PERCENTILE) % of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ..errors import DinolocError

PERCENTILE = 99.0
MAX_REFERENCE = 1000  # reference cells kept (and saved in model bundles): 1000 x 768 float32 = 3 MB
TENSOR = "familiar_reference"  # the head tensor holding the reference embeddings
CONFIG = "familiarity"         # the head config entry holding the threshold
#: More than this fraction of an image's cells unfamiliar: the model was probably trained on other data.
WARN_FRACTION = 0.5
_CHUNK = 1024  # query rows per distance block: memory stays at chunk x reference cells


@dataclass(frozen=True, eq=False)
class Familiarity:
    reference: np.ndarray   # (M, D) float32 embeddings of training cells
    threshold: float        # farther than this from every reference cell: unfamiliar
    percentile: float = PERCENTILE
    training_cells: int = 0

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """(N,) distance of each vector to its nearest reference cell."""
        return nearest_distances(vectors, self.reference)

    def unfamiliar(self, vectors: np.ndarray) -> np.ndarray:
        """(N,) bool: True where a cell lies farther than the threshold from every training cell."""
        return self.distances(vectors) > self.threshold

    def config(self) -> dict:
        return {"threshold": float(self.threshold), "percentile": float(self.percentile),
                "training_cells": int(self.training_cells)}

    @classmethod
    def restore(cls, tensors: Mapping[str, np.ndarray], config: Mapping, input_dim: int) -> Optional["Familiarity"]:
        """From a saved head; None for heads saved before unfamiliar cells were flagged."""
        info = config.get(CONFIG)
        if info is None and TENSOR not in tensors:
            return None
        if not isinstance(info, Mapping) or TENSOR not in tensors:
            raise DinolocError("The saved head has half of its familiarity reference (threshold or reference cells "
                               "missing): the model file is damaged; train and save the model again.")
        reference = np.asarray(tensors[TENSOR], dtype=np.float32)
        threshold = info.get("threshold")
        if reference.ndim != 2 or reference.shape[1] != input_dim or not 1 <= len(reference) <= MAX_REFERENCE \
                or not isinstance(threshold, (int, float)) or not np.isfinite(threshold) or threshold < 0:
            raise DinolocError(f"The saved head's familiarity reference (shape {reference.shape}, threshold {threshold!r}) "
                               f"does not fit its {input_dim} inputs: the model file is damaged or crafted.")
        return cls(reference, float(threshold), float(info.get("percentile", PERCENTILE)),
                   int(info.get("training_cells", len(reference))))


def fit_familiarity(x: np.ndarray, seed: int = 0, percentile: float = PERCENTILE) -> Optional[Familiarity]:
    """The reference and threshold of training embeddings ``x``; None with fewer than 2 cells."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) < 2:
        return None
    if len(x) <= MAX_REFERENCE:
        reference, distances = x, nearest_distances(x, x, leave_one_out=True)
    else:  # the cells left out of the sample measure how far a new training-like cell lies from it
        keep = np.zeros(len(x), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(x), MAX_REFERENCE, replace=False)] = True
        reference, distances = x[keep], nearest_distances(x[~keep], x[keep])
    threshold = float(np.percentile(distances, percentile))
    return Familiarity(np.ascontiguousarray(reference), threshold, float(percentile), len(x))


def nearest_distances(queries: np.ndarray, reference: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """(N,) Euclidean distance of each query to its nearest reference row (skipping row i for query i
    when ``leave_one_out``: queries are the reference)."""
    queries = np.asarray(queries, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if len(queries) == 0:
        return np.zeros(0)
    squares = (reference ** 2).sum(axis=1)
    out = np.empty(len(queries))
    for start in range(0, len(queries), _CHUNK):
        block = queries[start:start + _CHUNK]
        # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r; clipped at 0 against rounding
        d2 = np.maximum((block ** 2).sum(axis=1)[:, None] + squares[None, :] - 2.0 * block @ reference.T, 0.0)
        if leave_one_out:
            rows = np.arange(len(block))
            d2[rows, start + rows] = np.inf
        out[start:start + len(block)] = np.sqrt(d2.min(axis=1))
    return out


# ---- what the user is told ------------------------------------------------------------------------
def unfamiliar_summary(predictions) -> str:
    """'N of M cells unfamiliar', or why the model cannot tell."""
    if not predictions.familiarity_known:
        return ("unfamiliar cells not flagged: this model was saved before napari-dinoloc flagged them "
                "(train and save it again to flag them)")
    return f"{int(np.count_nonzero(predictions.unfamiliar))} of {len(predictions.labels)} cells unfamiliar"


def unfamiliar_warning(predictions, image_name: str = "") -> Optional[str]:
    """A warning when most cells (> WARN_FRACTION) lie far from every training cell; None otherwise."""
    total = len(predictions.labels)
    count = int(np.count_nonzero(predictions.unfamiliar))
    if total == 0 or count <= WARN_FRACTION * total:
        return None
    where = f" in {image_name}" if image_name else ""
    return (f"{count} of {total} cells{where} are unfamiliar: this model was trained on other data (another cell "
            "line, stain, microscope or channel order), so its predictions here are guesses. Check the channels, "
            "or annotate some of these cells and train again.")
