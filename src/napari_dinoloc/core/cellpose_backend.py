"""An optional Cellpose backend for the cell outlines (``--segmenter cellpose``).

Imported only when chosen; without the ``cellpose`` package one message says how to install it. The
model sees the user's cell stain and nucleus stain (never the protein), at the cell diameter in use.
Tests swap :func:`load_model` for a stand-in, so no weights are ever downloaded by them.
"""

from __future__ import annotations

import numpy as np

from .errors import DinolocError

#: Cellpose's general cytoplasm model.
MODEL_TYPE = "cyto3"
INSTALL = "pip install cellpose"


def load_model(model_type: str = MODEL_TYPE):
    """Cellpose's model (its first use downloads the weights into Cellpose's own cache)."""
    try:
        from cellpose import models
    except ImportError as exc:
        raise DinolocError(f"The Cellpose segmenter needs the cellpose package, which is not installed: run "
                           f"'{INSTALL}', or use the built-in segmenter (the default).") from exc
    try:
        return models.CellposeModel(model_type=model_type, gpu=False)
    except Exception as exc:  # weights not downloadable offline, a version without this model...
        raise DinolocError(f"Cellpose could not load its {model_type!r} model ({exc}); use the built-in segmenter "
                           "or give a label image made with Cellpose.") from exc


def cellpose_cells(cell_stain: np.ndarray | None, nucleus: np.ndarray, diameter: float, model=None) -> np.ndarray:
    """(Y, X) int32 cell labels from Cellpose on [cell stain, nucleus] (the nucleus alone without a cell stain)."""
    model = model if model is not None else load_model()
    if cell_stain is None:
        data, channels = nucleus, [0, 0]
    else:
        data, channels = np.stack([cell_stain, nucleus], axis=-1), [1, 2]
    result = model.eval(data, diameter=float(diameter), channels=channels)
    masks = np.asarray(result[0] if isinstance(result, (tuple, list)) else result)
    if masks.shape != nucleus.shape:
        raise DinolocError(f"Cellpose returned masks of shape {masks.shape} for an image of {nucleus.shape}: "
                           "update cellpose or use the built-in segmenter.")
    return masks.astype(np.int32)
