"""How predictions are drawn: rims that leave the protein visible, sized for the image, and marks on
unfamiliar cells.

Each cell gets rims measured inward from its edge in steps of ``outline_width`` (about 1 pixel per
600 pixels of image side, so rims stay visible when a 2000 px field is shown whole): the cells
layer's white outline (0 to w), the annotation rim (0 to 2w) and the predicted class (2w to 4w),
so an annotated cell shows your class outside and the model's inside. The distance to the edge is
computed once per segmentation (one distance transform), so redrawing on every change is a lookup.
Filled, the predicted class covers the whole cell at the chosen opacity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._canvas import remove_layer_safely

UNFAMILIAR = "unfamiliar cells"
CLASS, CONFIDENCE = "class", "confidence"
FILL_OPACITY = 0.45


@dataclass
class PredictionDisplay:
    """The dock's choices for the predicted-class layer."""

    fill: bool = False             # False: a rim inside each cell, the protein stays visible
    opacity: float = FILL_OPACITY  # of the fill
    colour_by: str = CLASS         # or CONFIDENCE

    @property
    def layer_opacity(self) -> float:
        return self.opacity if self.fill else 1.0


def outline_width(shape) -> int:
    """Rim width in pixels: visible at full view of a large image, 1 pixel on small ones."""
    return max(1, int(round(max(shape[-2:]) / 600)))


def edge_distance(labels: np.ndarray) -> np.ndarray:
    """(Y, X) float32: each cell pixel's distance to its cell's edge (0 on the edge)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(labels, mode="inner")
    return ndi.distance_transform_edt(~edges).astype(np.float32)


def rim(labels: np.ndarray, distance: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """True on cell pixels from ``inner`` to ``outer`` pixels inside the cell's edge."""
    return (labels > 0) & (distance >= inner) & (distance < outer)


def prediction_values(predictions, colour_by: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(value 1..n of each cell, the n colours, the n names shown on hover) for class or confidence."""
    from ..core import palette

    if colour_by == CONFIDENCE:
        legend = palette.confidence_legend()
        return (palette.confidence_bins(predictions.confidence),
                [colour for _, colour in legend], [f"confidence {text}" for text, _ in legend])
    return predictions.predicted + 1, [], list(predictions.class_names)


def unfamiliar_points(session) -> np.ndarray:
    """(n, 2) centroids (y, x) of the unfamiliar cells."""
    predictions, table = session.predictions, session.table
    flagged = {int(label) for label, flag in zip(predictions.labels, predictions.unfamiliar) if flag}
    rows = [i for i, label in enumerate(table.label) if int(label) in flagged]
    return np.column_stack([table.centroid_y[rows], table.centroid_x[rows]]).reshape(-1, 2)


def marker_size(session) -> float:
    """A third of the median cell diameter: seen at full view, small beside the cell."""
    areas = np.asarray(session.table.area, dtype=np.float64)
    return float(max(6.0, np.sqrt(np.median(areas)) / 3)) if len(areas) else 6.0


def find_points(viewer, name: str):
    from napari.layers import Points

    for layer in viewer.layers if viewer is not None else ():
        if layer.name == name and isinstance(layer, Points):
            return layer
    return None


def show_unfamiliar(viewer, session, like=None) -> None:
    """A white x on every unfamiliar cell (no layer when there is none)."""
    from ..core.palette import UNFAMILIAR_COLOUR

    points = unfamiliar_points(session) if session.predictions is not None else np.zeros((0, 2))
    layer = find_points(viewer, UNFAMILIAR)
    if len(points) == 0:
        if layer is not None:
            remove_layer_safely(viewer, layer)
        return
    if layer is not None:
        layer.data = points
        return
    placement = {} if like is None else {"scale": tuple(like.scale)[-2:], "translate": tuple(like.translate)[-2:]}
    layer = viewer.add_points(points, name=UNFAMILIAR, symbol="x", size=marker_size(session), face_color=UNFAMILIAR_COLOUR,
                              border_width=0, opacity=0.9, **placement)
    layer.editable = False  # marks, not something to edit


def remove_unfamiliar(viewer) -> None:
    layer = find_points(viewer, UNFAMILIAR)
    if layer is not None:
        remove_layer_safely(viewer, layer)
