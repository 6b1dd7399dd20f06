"""Sample data: a synthetic field of view (nucleus + protein) with its ground-truth cells."""

from __future__ import annotations

import numpy as np

SAMPLE_SEED = 0


def synthetic_field():
    """Two channel layers (nucleus, protein) and the 'ground truth cells' labels with each cell's class."""
    import pandas as pd

    from .core.synthetic import make_field

    field = make_field(seed=SAMPLE_SEED)
    name = f"synthetic-{SAMPLE_SEED}"
    metadata = {"dinoloc_image_name": name, "dinoloc_class_names": list(field.class_names)}
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
