"""classic_features: one row of hand-crafted measurements per cell, as CellProfiler would make them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from ..stains import NUCLEUS, PROTEIN, validate_stains
from .cell import cell_boxes, cut_cell
from .intensity import PROTEIN_EXTRA_NAMES, RADIAL_NAMES, channel_stats, protein_extras, radial_distribution, stat_names
from .shape import SHAPE_NAMES, shape_features
from .texture import TEXTURE_NAMES, texture_features

PROGRESS_EVERY = 64  # cells between progress reports and cancel checks (~0.3 s)


def feature_names(stains: Sequence[str]) -> list[str]:
    """The column names of classic_features for an image with these stains."""
    return [*stat_names(tuple(stains)), *PROTEIN_EXTRA_NAMES, *RADIAL_NAMES, *TEXTURE_NAMES, *SHAPE_NAMES]


def classic_features(image_data: np.ndarray, stains: Sequence[str], labels: np.ndarray, cell_labels: Sequence[int],
                     nuclei: np.ndarray | None = None, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> tuple[np.ndarray, list[str]]:
    """(N, F) float32 features of the listed cells, in that order, and their names.

    ``image_data``: (C, Y, X) in [0, 1]; ``labels``: (Y, X) cells; ``nuclei``: optional nucleus labels
    (otherwise each cell's nucleus is found from the nucleus stain by Otsu inside the cell). Cells
    without a nucleus get zeros for every nucleus-based feature and has_nucleus = 0."""
    data = np.asarray(image_data, dtype=np.float32)
    stains = validate_stains(stains, data.shape[0] if data.ndim == 3 else -1)
    labels = np.asarray(labels)
    if data.shape[1:] != labels.shape or (nuclei is not None and np.shape(nuclei) != labels.shape):
        raise DinolocError(f"The image ({data.shape[1:]}), cell labels ({labels.shape}) and nuclei "
                           f"({None if nuclei is None else np.shape(nuclei)}) must have the same Y, X size.")
    names = feature_names(stains)
    protein = stains.index(PROTEIN)
    nucleus_stain = stains.index(NUCLEUS) if NUCLEUS in stains else None
    cell_labels = [int(c) for c in cell_labels]
    rows = np.zeros((len(cell_labels), len(names)), dtype=np.float64)
    for i, (label, box) in enumerate(zip(cell_labels, cell_boxes(labels, cell_labels))):
        if i % PROGRESS_EVERY == 0:
            check_cancel(cancel)
            report(progress, i, len(cell_labels), "Measuring classic features")
        if box is None:
            raise DinolocError(f"Cell {label} is not in the label image: describe only cells that it contains.")
        patch = cut_cell(data, labels, label, box, nucleus_stain, nuclei)
        rows[i] = np.concatenate([
            channel_stats(patch), protein_extras(patch, protein, nucleus_stain), radial_distribution(patch, protein),
            texture_features(patch, protein), shape_features(patch),
        ])
    report(progress, len(cell_labels), len(cell_labels), "Measuring classic features")
    return np.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32), names
