"""Sample data: a synthetic field of view (nucleus + protein) with its ground-truth cells."""

from __future__ import annotations

from typing import Optional

import numpy as np

SAMPLE_SEED = 0


def synthetic_field():
    """Two channel layers (nucleus, protein) and the 'ground truth cells' labels with each cell's class."""
    return synthetic_layers(SAMPLE_SEED)


def synthetic_layers(seed: int, shape: tuple[int, int] = (512, 512), n_cells: Optional[int] = None) -> list:
    """Layer data tuples of a synthetic field (also used by the tests and screenshots, smaller)."""
    import pandas as pd

    from .core.synthetic import make_field

    field = make_field(seed=seed, shape=shape, n_cells=n_cells)
    metadata = {"dinoloc_image_name": f"synthetic-{seed}", "dinoloc_class_names": list(field.class_names)}
    labels = np.unique(field.labels[field.labels > 0])
    truth = pd.DataFrame({
        "index": labels,
        "label": labels,
        "true_class": [field.cell_class[int(label)] for label in labels],
    })
    image = (field.image, {
        "channel_axis": 0,
        "name": list(field.stains),
        "colormap": ["blue", "green"],
        "blending": "additive",
        "metadata": metadata,
    }, "image")
    cells = (field.labels, {"name": "ground truth cells", "features": truth, "visible": False}, "labels")
    return [image, cells]
