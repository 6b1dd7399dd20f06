"""Layers the plugin shows, kept in step with the shared state.

Cells are coloured by class through separate Labels layers that hold class ids (0 = background,
class i -> i + 1) with a small ``DirectLabelColormap``: recolouring thousands of cell labels one
by one is slow in napari (#6732). Per-cell numbers go to the cells layer's ``features`` (one row
per cell, an explicit ``label`` column and napari's ``index`` column), assigned as a whole table
so napari's events fire and hovering a cell shows its class and confidence in the status bar.
How predictions are drawn (rims or fill, by class or confidence, unfamiliar cells): ``_prediction_layers``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ._canvas import remove_layer_safely
from ._prediction_layers import (
    PredictionDisplay, edge_distance, outline_width, prediction_values, remove_unfamiliar, rim, show_unfamiliar,
)

CELLS = "cells"
ANNOTATIONS = "annotations"
PREDICTED = "predicted class"
SELECTED = "selected cells"
#: Layers the plugin makes: never offered as the user's own label image or channel.
DERIVED_LAYERS = (ANNOTATIONS, PREDICTED, SELECTED)

#: Where each class layer goes when first added (just below these layers) and how it looks then.
FIRST_LOOK = {CELLS: ((), {"opacity": 0.5}), ANNOTATIONS: ((CELLS,), {"opacity": 1.0}),
              PREDICTED: ((ANNOTATIONS, CELLS), {})}

FIRST_FEATURES = ("index", "label", "predicted_class", "confidence", "user_label")


# ---- pure helpers --------------------------------------------------------------------------------
def class_colormap(colours: Sequence[str]):
    """Class id i + 1 -> colours[i]; background and unknown ids transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    mapping = {0: "transparent", None: "transparent"}
    mapping.update({i + 1: colour for i, colour in enumerate(colours)})
    return DirectLabelColormap(color_dict=mapping)


def outline_colormap(colour: str = "#ffffff"):
    """Every cell the same colour: for the cells layer's outlines."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={0: "transparent", None: colour})


def class_id_image(labels: np.ndarray, cell_labels: Sequence[int], class_ids: Sequence[int]) -> np.ndarray:
    """An image of class ids: every pixel of cell ``cell_labels[k]`` gets ``class_ids[k]``."""
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    cell_labels = np.asarray(cell_labels, dtype=np.int64)
    keep = cell_labels < len(lookup)
    lookup[cell_labels[keep]] = np.asarray(class_ids, dtype=np.uint8)[keep]
    return lookup[labels]


def cell_features(session, user_labels: Mapping[int, str]):
    """The per-cell table (docs/csv.md columns) as a DataFrame, most useful columns first."""
    import pandas as pd

    frame = pd.DataFrame(session.rows(user_labels))
    frame.insert(0, "index", frame["label"])  # napari maps label values to rows through 'index'
    first = [c for c in FIRST_FEATURES if c in frame.columns]
    probabilities = [c for c in frame.columns if c.startswith("prob_")]
    rest = [c for c in frame.columns if c not in first and c not in probabilities]
    return frame[first + probabilities + rest]


def colour_for(name: str, index: int, store) -> str:
    from ..core.palette import class_colour

    if store is not None and name in store.class_names:
        return store.colour_of(name)
    return class_colour(index)


def find_layer(viewer, name: str):
    """The Labels layer called ``name``, or None."""
    from napari.layers import Labels

    for layer in viewer.layers if viewer is not None else ():
        if layer.name == name and isinstance(layer, Labels):
            return layer
    return None


def show_labels(viewer, name: str, data: np.ndarray, like=None, below: Sequence[str] = (), colormap=None,
                **first_time):
    """Update the Labels layer ``name`` with ``data`` (one refresh), or add it just below the layers
    ``below``, aligned with the layer ``like``, with the properties ``first_time``."""
    layer = find_layer(viewer, name)
    if layer is None:
        placement = {}
        if like is not None:
            placement = {"scale": tuple(like.scale)[-2:], "translate": tuple(like.translate)[-2:]}
        layer = viewer.add_labels(data, name=name, **placement)
        _place_below(viewer, name, *below)
        for key, value in first_time.items():  # not all are constructor arguments (contour)
            setattr(layer, key, value)
        if colormap is not None:
            layer.colormap = colormap
        layer.editable = False  # napari's paint/fill keys never change the plugin's layers
        return layer
    if like is not None and tuple(layer.scale) != tuple(like.scale)[-2:]:
        layer.scale = tuple(like.scale)[-2:]
    if like is not None and tuple(layer.translate) != tuple(like.translate)[-2:]:
        layer.translate = tuple(like.translate)[-2:]
    if colormap is not None:
        layer.colormap = colormap
    layer.data = data
    layer.editable = False  # napari makes a Labels layer editable again on new data
    return layer


def centre_on_cell(viewer, table, label: int, zoom_in: bool = True) -> tuple:
    """Centre the camera on cell ``label``'s centroid (world coordinates of the cells layer) and, with
    ``zoom_in``, zoom so the cell and its neighbours fill a good part of the canvas; returns the centre."""
    row = table.index_of(label)
    cells = find_layer(viewer, CELLS)
    centre = (table.centroid_y[row], table.centroid_x[row])
    world = tuple(cells.data_to_world(centre) if cells is not None else centre)[-2:]
    camera = camera_of(viewer)
    camera.center = world
    if zoom_in:
        y0, x0, y1, x1 = table.bbox[row]
        extent = max(y1 - y0, x1 - x0, 1) * 4 * float(cells.scale[-1] if cells is not None else 1)
        size = min(viewer.window._qt_viewer.canvas.size) if hasattr(viewer.window, "_qt_viewer") else 600
        camera.zoom = max(camera.zoom, size / extent)
    return world


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def remove_layer(viewer, name: str) -> None:
    layer = find_layer(viewer, name)
    if layer is not None:
        remove_layer_safely(viewer, layer)


# ---- the presenter ---------------------------------------------------------------------------------
class LayerPresenter:
    """Keeps the cells, annotations, predicted class and selected cells layers in step with the state."""

    def __init__(self, state):
        self.state = state
        self._outline = None           # rims of the current cells (annotations, selection)
        self._distance = None          # each cell pixel's distance to its edge: the prediction rims
        self._width = 1                # rim width in pixels, from the image size
        self.display = PredictionDisplay()  # the dock's choices: rim or fill, colour by class or confidence
        self._colours: dict[str, tuple] = {}  # colours of each class layer's current colormap
        state.cells_changed.connect(self.show_cells)
        state.annotations_changed.connect(self.show_annotations)
        state.predictions_changed.connect(self.show_predictions)
        state.selection_changed.connect(self.show_selection)

    @property
    def viewer(self):
        return self.state.viewer

    def _like(self):
        """The image layer the cells come from: new layers copy its scale and translate."""
        names = self.state.image_layer_names
        for layer in self.viewer.layers if self.viewer is not None else ():
            if layer.name in names:
                return layer
        return None

    def add_empty(self, name: str, shape, dtype=np.uint8) -> None:
        """Add the layer ``name`` (``FIRST_LOOK``) empty, unless it is there: reopening adds one layer per
        event-loop turn (napari takes a while to make each), then fills them all at once."""
        if self.viewer is not None and find_layer(self.viewer, name) is None:
            below, look = FIRST_LOOK[name]
            # a direct colormap from the start, as when filled (swapping a drawn layer's colormap kind is slow)
            colormap = outline_colormap() if name == CELLS else class_colormap([])
            show_labels(self.viewer, name, np.zeros(shape, dtype), like=self._like(), below=below,
                        colormap=colormap, **look)

    def show_cells(self) -> None:
        session, viewer = self.state.session, self.viewer
        if viewer is None:
            return
        if session.labels is None:  # a new image: the old cells and everything on them go
            for name in (PREDICTED, ANNOTATIONS, SELECTED, CELLS):
                remove_layer(viewer, name)
            remove_unfamiliar(viewer)
            return
        self._width = outline_width(session.labels.shape)
        self._distance = edge_distance(session.labels)
        self._outline = rim(session.labels, self._distance, 0, 2 * self._width)
        self._colours = {}
        # Thin neutral outlines: class colours (annotations, predictions) stay the only colours.
        cells = show_labels(viewer, CELLS, session.labels, like=self._like(), colormap=outline_colormap(),
                            contour=self._width, **FIRST_LOOK[CELLS][1])
        if cells.contour != self._width:  # the same layer, a new image size
            cells.contour = self._width
        self.show_annotations()
        viewer.layers.selection.active = cells  # hovering shows the cell's numbers; no paint tool armed

    def show_annotations(self) -> None:
        session, store, viewer = self.state.session, self.state.annotations, self.viewer
        if viewer is None or session.labels is None or store is None:
            return
        names, cells = store.class_names, store.annotations
        image = class_id_image(session.labels, list(cells), [names.index(name) + 1 for name in cells.values()])
        image[~self._outline] = 0  # class-coloured rims: the protein inside stays visible
        colormap = self._colormap_if_changed(ANNOTATIONS, [c.colour for c in store.classes])
        layer = show_labels(viewer, ANNOTATIONS, image, like=self._like(), below=FIRST_LOOK[ANNOTATIONS][0],
                            colormap=colormap, **FIRST_LOOK[ANNOTATIONS][1])
        layer.features = _class_features(names)
        self._refresh_cell_features()

    def show_predictions(self) -> None:
        session, viewer = self.state.session, self.viewer
        if viewer is None:
            return
        predictions = session.predictions
        if predictions is None or session.labels is None:
            remove_layer(viewer, PREDICTED)
            remove_unfamiliar(viewer)
            self._refresh_cell_features()
            return
        values, colours, names = prediction_values(predictions, self.display.colour_by)
        colours = colours or [colour_for(name, i, self.state.annotations) for i, name in enumerate(names)]
        image = class_id_image(session.labels, predictions.labels, values)
        if not self.display.fill:  # a rim inside the annotation rim: the protein stays visible
            image[~rim(session.labels, self._distance, 2 * self._width, 4 * self._width)] = 0
        layer = show_labels(viewer, PREDICTED, image, like=self._like(), below=FIRST_LOOK[PREDICTED][0],
                            colormap=self._colormap_if_changed(PREDICTED, colours))
        layer.opacity = self.display.layer_opacity
        layer.features = _class_features(names)
        show_unfamiliar(viewer, session, like=self._like())
        self._refresh_cell_features()
        cells = find_layer(viewer, CELLS)
        if cells is not None:
            viewer.layers.selection.active = cells  # hovering a cell now shows its class and confidence

    def show_selection(self, labels: list) -> None:
        session, viewer = self.state.session, self.viewer
        if viewer is None or session.labels is None:
            return
        if not labels and find_layer(viewer, SELECTED) is None:
            return
        active = viewer.layers.selection.active
        rims = class_id_image(session.labels, labels, [1] * len(labels))
        rims[~self._outline] = 0
        show_labels(viewer, SELECTED, rims, like=self._like(), colormap=self._colormap_if_changed(SELECTED, ["#ffffff"]),
                    opacity=1.0)
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active  # a new layer takes the selection: give it back

    def set_display(self, **changes) -> None:
        """Change how predictions are drawn (``PredictionDisplay`` fields) and redraw them."""
        for key, value in changes.items():
            setattr(self.display, key, value)
        if self.state.session.predictions is not None:
            self.show_predictions()

    def _colormap_if_changed(self, name: str, colours: Sequence[str]):
        """A new colormap only when the colours changed (each colormap change redraws the layer)."""
        if self._colours.get(name) == tuple(colours) and find_layer(self.viewer, name) is not None:
            return None
        self._colours[name] = tuple(colours)
        return class_colormap(colours)

    def _refresh_cell_features(self) -> None:
        layer = find_layer(self.viewer, CELLS)
        if layer is not None and self.state.session.labels is not None and self.state.annotations is not None:
            layer.features = cell_features(self.state.session, self.state.annotations.annotations)


def _class_features(names: Sequence[str]):
    """Features of a class-id layer, so hovering it names the class."""
    import pandas as pd

    return pd.DataFrame({"index": range(len(names) + 1), "class": ["", *names]})


def _place_below(viewer, name: str, *above: str) -> None:
    """Move layer ``name`` just below the lowest of the ``above`` layers present."""
    layer = find_layer(viewer, name)
    targets = [viewer.layers.index(other) for other in (find_layer(viewer, n) for n in above) if other is not None]
    if layer is None or not targets:
        return
    index, target = viewer.layers.index(layer), min(targets)
    if index > target:
        viewer.layers.move(index, target)

