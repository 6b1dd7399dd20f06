"""Step 1: which layers make the image, which channel is which stain, and the cells."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ..core.errors import DinolocError
from ..core.stains import NUCLEUS, OTHER, PROTEIN, STAINS, conventional_stains
from ..core.workflows.images import NOT_USED
from ._canvas import remove_layer_safely
from ._layers import CELLS, DERIVED_LAYERS
from .crops_input import choose_crop_stack, choose_crops
from ._reopen import image_from_inputs, segmentation_origin
from ._workers import notify_info, notify_warning, reports_errors

SEPARATE_LAYERS = "Separate layers, one per stain"
AUTO = "auto"
PREVIEW = "cells preview"
#: Words in a layer name that give away its stain (whole words, or word beginnings for the long ones).
STAIN_HINTS = (
    (NUCLEUS, ("nucle", "dapi", "hoechst", "dna", "blue", "draq", "h2b")),
    (PROTEIN, ("protein", "gfp", "green", "target", "antibody", "mneon", "poi")),
    ("microtubules", ("tubulin", "microtub", "red")),
    ("er", ("er", "calnexin", "yellow", "endoplasmic")),
)
SHORT_HINT = 4  # hints this short must match a whole word ("er", "red"), not a word beginning


# ---- pure helpers ----------------------------------------------------------------------------------
def guess_stain(name: str) -> Optional[str]:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    for stain, hints in STAIN_HINTS:
        for hint in hints:
            if any(w == hint or (len(hint) > SHORT_HINT and w.startswith(hint)) for w in words):
                return stain
    return None


def guess_stains(names: Sequence[str], fallback: str = OTHER) -> list[str]:
    """A stain per name, each stain at most once; unrecognised names get ``fallback``."""
    stains, used = [], set()
    for name in names:
        stain = guess_stain(name)
        stains.append(stain if stain and stain not in used else fallback)
        used.add(stain)
    return stains


def default_channel_stains(n_channels: int) -> list[str]:
    """Conventional orders: HPA (4 channels), RGB composites (3), nucleus + protein (2)."""
    return list(conventional_stains(n_channels))


def channel_axis_guess(layer) -> int:
    if getattr(layer, "rgb", False):
        return layer.data.ndim - 1
    return int(np.argmin(layer.data.shape))


def layer_image_name(layer) -> str:
    """The name for the CSV 'image' column: the sample's own name, the file stem, or the layer name."""
    metadata = getattr(layer, "metadata", {}) or {}
    if metadata.get("dinoloc_image_name"):
        return str(metadata["dinoloc_image_name"])
    path = getattr(getattr(layer, "source", None), "path", None)
    return Path(path).stem if path else layer.name


def stack_layers(layers: Sequence) -> np.ndarray:
    """2-D layers -> (C, Y, X); they must have the same size."""
    shapes = {tuple(layer.data.shape) for layer in layers}
    if len(shapes) > 1:
        sizes = ", ".join(f"{layer.name} {tuple(layer.data.shape)}" for layer in layers)
        raise DinolocError(f"The chosen layers differ in size ({sizes}): choose layers of the same field of view.")
    return np.stack([np.asarray(layer.data) for layer in layers])


def channels_first(layer, axis: int) -> np.ndarray:
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise DinolocError(
            f"{layer.name} has {data.ndim} dimensions {data.shape}; napari-dinoloc needs channels × Y × X. "
            "Keep one plane (e.g. layer context menu ▸ Split/Project), or open the channels as separate layers."
        )
    data = np.moveaxis(data, axis, 0)
    if getattr(layer, "rgb", False) and data.shape[0] == 4:
        data = data[:3]  # drop the alpha channel
    return data


# ---- the panel ---------------------------------------------------------------------------------
@dataclass
class ChannelRow:
    key: str        # remembers the user's choice across refreshes
    title: str
    guess: str


class ImagePanel(QWidget):
    """Channels → stains, then segment or choose a label image; the result is the 'cells' layer."""

    def __init__(self, state, runner, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._choices: dict[str, str] = {}  # row key -> stain the user chose
        self._stain_boxes: list[tuple[str, QComboBox]] = []
        self._build()
        self._watch_layers()
        self.refresh()

    @property
    def viewer(self):
        return self.state.viewer

    # ---- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.source = QComboBox()
        self.source.setToolTip("Where the channels come from: separate image layers (one per stain) or "
                               "one multichannel layer.")
        self.axis = QSpinBox()
        self.axis.setToolTip("Which axis of the layer holds the channels.")
        self.axis_label = QLabel("Channel axis")
        self.channels = QFormLayout()
        self.channels.setContentsMargins(0, 0, 0, 0)
        self.nucleus_diameter = _spin(0.0, "Typical nucleus diameter in pixels (seeds one cell per nucleus); "
                                      "auto: measured from the nucleus stain ('Measure' shows it).")
        self.cell_diameter = _spin(0.0, "Largest cell diameter in pixels (how far cells grow from their nucleus); "
                                   "auto: twice the nucleus diameter.")
        self.cell_stain = QComboBox()
        self.cell_stain.addItems([AUTO, "microtubules", "er", OTHER, "all", "none"])
        self.cell_stain.setToolTip("Stain the cell outlines come from, never the protein. auto: microtubules, er, then "
                                   "another non-nucleus stain; all: every non-protein stain; none: a ring around each nucleus.")
        self.keep_border = QCheckBox("Keep cells cut by the border")
        self.segmenter = QComboBox()
        self.segmenter.addItems(["builtin", "cellpose"])
        self.segmenter.setToolTip("builtin: watershed from the nuclei; cellpose: Cellpose on the cell and nucleus stains "
                                  "(needs 'pip install cellpose').")
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Measure the nucleus diameter in the nucleus stain and fill the sizes.")
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("Segment a 512-px window at the centre of the view, quickly, with these settings.")
        self.segment_button = QPushButton("Segment cells")
        self.segment_button.setToolTip("Find nuclei, then grow each into its cell. Result: the 'cells' layer.")
        self.labels_source = QComboBox()
        self.labels_source.setToolTip("A label image you already have (0 = background, one id per cell).")
        self.use_labels_button = QPushButton("Use these cells")
        self.crops_button = QPushButton("Open a crop folder…")
        self.crops_button.setToolTip("A folder of crops (one cell per file; classes from sub-folder names) shown as a "
                                     "mosaic: each crop is one cell, annotated with its folder's class.")
        self.crop_stack_button = QPushButton("Open a crop stack…")
        self.crop_stack_button.setToolTip("A stack file of crops, (N, C, H, W) in .npy or .tif, shown as a mosaic: "
                                          "each crop is one cell.")

        form = QFormLayout()
        form.addRow("Image", self.source)
        form.addRow(self.axis_label, self.axis)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(_caption("Stain of each channel"))
        layout.addLayout(self.channels)
        sizes = QFormLayout()
        sizes.addRow("Nucleus diameter", self.nucleus_diameter)
        sizes.addRow("Cell diameter", self.cell_diameter)
        sizes.addRow("Cell stain", self.cell_stain)
        sizes.addRow("Segmenter", self.segmenter)
        sizes.addRow(self.keep_border)
        layout.addLayout(sizes)
        quick = QHBoxLayout()
        quick.addWidget(self.measure_button)
        quick.addWidget(self.preview_button)
        layout.addLayout(quick)
        layout.addWidget(self.segment_button)
        existing = QHBoxLayout()
        existing.addWidget(QLabel("or labels"))
        existing.addWidget(self.labels_source, 1)
        existing.addWidget(self.use_labels_button)
        layout.addLayout(existing)
        crops = QHBoxLayout()
        crops.addWidget(self.crops_button)
        crops.addWidget(self.crop_stack_button)
        layout.addLayout(crops)

        self.source.currentIndexChanged.connect(lambda _=None: self._on_source_changed())
        self.axis.valueChanged.connect(lambda _=None: self._rebuild_channels())
        self.segment_button.clicked.connect(lambda _=False: self.segment())
        self.measure_button.clicked.connect(lambda _=False: self.measure())
        self.preview_button.clicked.connect(lambda _=False: self.preview())
        self.use_labels_button.clicked.connect(lambda _=False: self.use_labels_layer())
        self.crops_button.clicked.connect(lambda _=False: choose_crops(self))
        self.crop_stack_button.clicked.connect(lambda _=False: choose_crop_stack(self))

    def _watch_layers(self) -> None:
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        self.refresh()

    # ---- reading the viewer -----------------------------------------------------------------------
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _plane_layers(self):
        return [layer for layer in self._image_layers() if layer.data.ndim == 2 and not layer.rgb]

    def _stack_layers(self):
        return [layer for layer in self._image_layers() if layer.data.ndim == 3]

    def _label_layers(self):
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers if isinstance(layer, Labels) and layer.name not in DERIVED_LAYERS]

    def _chosen_stack(self):
        name = self.source.currentText()
        return next((layer for layer in self._stack_layers() if layer.name == name), None)

    # ---- refreshing the controls --------------------------------------------------------------------
    def refresh(self) -> None:
        planes, stacks = self._plane_layers(), self._stack_layers()
        options = ([SEPARATE_LAYERS] if planes or not stacks else []) + [layer.name for layer in stacks]
        preferred = stacks[0].name if stacks and len(planes) < 2 else SEPARATE_LAYERS
        _set_items(self.source, options, keep=self.source.currentText() or preferred)
        cells = [layer.name for layer in self._label_layers()]
        _set_items(self.labels_source, cells, keep=self.labels_source.currentText() or _preferred_labels(cells))
        self.use_labels_button.setEnabled(bool(cells))
        self._on_source_changed()

    def _on_source_changed(self) -> None:
        stack = self._chosen_stack()
        self.axis.setVisible(stack is not None)
        self.axis_label.setVisible(stack is not None)
        if stack is not None:
            self.axis.blockSignals(True)
            self.axis.setRange(0, stack.data.ndim - 1)
            if self.axis.property("layer") != stack.name:
                self.axis.setValue(channel_axis_guess(stack))
                self.axis.setProperty("layer", stack.name)
            self.axis.blockSignals(False)
        self._rebuild_channels()

    def _rows(self) -> list[ChannelRow]:
        stack = self._chosen_stack()
        if stack is None:
            names = [layer.name for layer in self._plane_layers()]
            return [ChannelRow(f"layer:{n}", n, g) for n, g in zip(names, guess_stains(names, fallback=NOT_USED))]
        n_channels = stack.data.shape[self.axis.value()]
        names = (stack.metadata or {}).get("channel_names") or []
        guesses = guess_stains(names) if len(names) == n_channels else default_channel_stains(n_channels)
        return [ChannelRow(f"{stack.name}:{self.axis.value()}:{i}", f"channel {i}", g) for i, g in enumerate(guesses)]

    def _rebuild_channels(self) -> None:
        while self.channels.rowCount():
            self.channels.removeRow(0)
        self._stain_boxes = []
        rows = self._rows()
        if not rows:
            self.channels.addRow(_caption("No image layer yet: open an image or File ▸ Open Sample ▸ napari-dinoloc."))
        for row in rows:
            box = QComboBox()
            box.addItems([*STAINS, NOT_USED])
            box.setCurrentText(self._choices.get(row.key, row.guess))
            box.currentTextChanged.connect(lambda stain, key=row.key: self._choices.__setitem__(key, stain))
            self.channels.addRow(row.title, box)
            self._stain_boxes.append((row.key, box))

    # ---- the image ----------------------------------------------------------------------------------
    def stains(self) -> list[str]:
        return [box.currentText() for _, box in self._stain_boxes]

    def set_stains(self, stains: Sequence[str]) -> None:
        for (_, box), stain in zip(self._stain_boxes, stains):
            box.setCurrentText(stain)

    def build_image(self):
        """The CellImage the controls describe, plus its file and layers (main thread: it is quick)."""
        return image_from_inputs(self.image_inputs())

    def image_inputs(self) -> tuple:
        """The channels (C, Y, X) and stains, the image's name and file, the layers' names and default
        classes, read on the main thread: ``_reopen.image_from_inputs`` (a worker may run it) makes the image,
        the channels marked 'not used' dropped, the rest checked and scaled as the command line does."""
        stack = self._chosen_stack()
        layers = [stack] if stack is not None else self._plane_layers()
        if not layers:
            raise DinolocError("There is no image layer: open an image (File ▸ Open) or the sample "
                               "(File ▸ Open Sample ▸ napari-dinoloc), then say which channel is which stain.")
        stains = self.stains()
        if stack is not None:
            data, main = channels_first(stack, self.axis.value()), stack
        else:
            used = [layer for layer, stain in zip(layers, stains) if stain != NOT_USED]
            layers = used or layers
            data = stack_layers(layers)
            stains = [stain for stain in stains if stain != NOT_USED] or stains
            main = layers[stains.index(PROTEIN)] if PROTEIN in stains else layers[0]
        path = getattr(getattr(main, "source", None), "path", None)
        defaults = (main.metadata or {}).get("dinoloc_class_names", ())
        names = [layer.name for layer in layers]
        return data, stains, layer_image_name(main), (str(path) if path else None), names, list(defaults)

    def apply_image(self, built=None) -> None:  # built: what build_image gave already
        image, path, layer_names, defaults = built or self.build_image()
        if self.state.use_image(image, path, layer_names, defaults):
            store = self.state.annotations
            for note in image.notes:
                notify_info(note)
            if store is not None and store.notice:
                (notify_warning if store.notice_is_warning else notify_info)(store.notice)

    # ---- the cells ------------------------------------------------------------------------------------
    @reports_errors("Segmenting cells")
    def segment(self) -> None:
        if not self.runner.ensure_idle():
            return
        self.apply_image()
        params = self.segmentation_params()
        session, image = self.state.session, self.state.session.image
        self.runner.run(
            "Segmenting cells",
            lambda progress, cancel: session.find_cells(params, progress=progress, cancel=cancel),
            lambda found: self._segmented(image, found, params),
        )

    def segmentation_params(self):
        from ..core.segmentation import SegmentationParams

        stain = self.cell_stain.currentText()
        return SegmentationParams(nucleus_diameter=self.nucleus_diameter.value() or None,
                                  cell_diameter=self.cell_diameter.value() or None,
                                  cytoplasm_stain=None if stain == AUTO else stain,
                                  keep_border_cells=self.keep_border.isChecked(),
                                  segmenter=self.segmenter.currentText())

    @reports_errors("Measuring the nucleus size")
    def measure(self) -> None:
        """Fill the size fields with the nucleus diameter measured in the nucleus stain."""
        from ..core.segmentation import SegmentationParams

        self.apply_image()
        image = self.state.session.image
        params, notes = SegmentationParams().measured(image.channel(NUCLEUS))
        self.nucleus_diameter.setValue(round(params.nucleus_px))
        self.cell_diameter.setValue(round(params.cell_px))
        for note in notes:
            notify_info(note)

    @reports_errors("Previewing the cells")
    def preview(self) -> None:
        """Segment the window at the centre of the view; shown as the 'cells preview' layer."""
        from ..core.segmentation import segment_region

        self.apply_image()
        image = self.state.session.image
        centre = tuple(self.viewer.camera.center)[-2:]
        found, (top, left) = segment_region(image, self.segmentation_params(), centre)
        if PREVIEW in self.viewer.layers:
            remove_layer_safely(self.viewer, PREVIEW)
        self.viewer.add_labels(found.cells, name=PREVIEW, translate=(top, left), opacity=0.5)
        notify_info(f"Preview: {int(found.cells.max())} cells in the window. " + " ".join(found.notes))
        return found

    def _segmented(self, image, found, params=None) -> None:
        for note in found.notes:
            (notify_warning if note.startswith("warning:") else notify_info)(note)
        self._cells_found(image, found.cells, segmentation_origin(params, found))

    @reports_errors("Using the label image")
    def use_labels_layer(self) -> None:
        if not self.runner.ensure_idle():
            return
        name = self.labels_source.currentText()
        layer = next((layer for layer in self._label_layers() if layer.name == name), None)
        if layer is None:
            raise DinolocError("There is no label image to use: segment the cells or open a label image first.")
        labels = np.asarray(layer.data)  # read first: a new image removes the old 'cells' layer
        self.apply_image()
        self._cells_found(self.state.session.image, labels, {"source": "label image", "layer": name})

    def _cells_found(self, image, labels: np.ndarray, origin=None) -> None:
        if self.state.session.image is not image:
            notify_warning("The image changed while the cells were being found: segment again.")
            return
        report = self.state.use_labels(labels, origin)
        text = f"{len(self.state.session.table)} cells in {image.name}."
        if report is not None and (report.restored or report.lost or report.merged):
            text += " " + report.message()
        notify_info(text)


def _preferred_labels(names: Sequence[str]) -> str:
    return CELLS if CELLS in names else (names[0] if names else "")


def _set_items(box: QComboBox, items: Sequence[str], keep: str) -> None:
    box.blockSignals(True)
    box.clear()
    box.addItems(list(items))
    if keep in items:
        box.setCurrentText(keep)
    box.blockSignals(False)


def _spin(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 2000.0)
    spin.setSpecialValueText(AUTO)  # 0: measured from the image
    spin.setDecimals(0)
    spin.setSuffix(" px")
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _caption(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: gray;")
    return label
