"""Annotating by clicking: while on, a click on a cell gives it the selected class, a right-click
clears it, and the annotate keys work (bound on the plugin's layers, so they win over napari's
Labels keys such as 2 = paint brush). Outside annotate mode a click selects a cell."""

from __future__ import annotations

from typing import Optional

import numpy as np
from app_model.types import KeyCode, KeyMod

from ._layers import ANNOTATIONS, CELLS, PREDICTED, find_layer
from ._workers import notify_info, report_error

CLICK_TOLERANCE = 4  # canvas pixels a press may move and still count as a click, not a pan
HELP = ("click a cell: give it the selected class, right-click: clear it, 1–9, 0: select the class, "
        "n: next cell, Ctrl+Z: undo, drag: pan")
# Ctrl (Cmd on macOS) as napari's own Labels undo, which these replace while annotating.
UNDO_KEY, REDO_KEY, NEXT_KEY = KeyMod.CtrlCmd | KeyCode.KeyZ, KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ, KeyCode.KeyN


class CellClicker:
    """While on: a click on a cell gives it the current class, a right-click clears it, the keys
    of ``keys`` ({key: callback()}, e.g. 1–9 and 0 pick the class) work. Drags still pan the view."""

    def __init__(self, state, current_class, keys):
        self.state = state
        self._current_class = current_class  # () -> class name or None
        self._keys = keys                    # {napari key: callback()}
        self.enabled = False

    @property
    def viewer(self):
        return self.state.viewer

    def enable(self) -> None:
        if self.enabled:
            return
        self.enabled = True
        self.viewer.mouse_drag_callbacks.append(self._on_press)
        for target in self._key_targets():  # our layers' bindings win over napari's Labels keys
            for key, callback in self._keys.items():
                target.bind_key(key, _ignore_provider(callback), overwrite=True)
        cells = find_layer(self.viewer, CELLS)
        if cells is not None:
            # Our layer active in pan/zoom mode: clicks never paint, and its 1–9 bindings win.
            self.viewer.layers.selection.active = cells
            cells.mode = "pan_zoom"
            cells.help = HELP

    def disable(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        viewer = self.viewer
        if viewer is None:
            return
        if self._on_press in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._on_press)
        for target in self._key_targets():
            for key in self._keys:
                target.bind_key(key, None)
        cells = find_layer(viewer, CELLS)
        if cells is not None and cells.help == HELP:
            cells.help = ""

    def _key_targets(self):
        layers = [find_layer(self.viewer, name) for name in (CELLS, ANNOTATIONS, PREDICTED)]
        return [self.viewer, *(layer for layer in layers if layer is not None)]

    def watch_selection(self, cells_layer) -> None:
        """Outside annotate mode a click on a cell selects it (shift-click: add or remove), so the
        UMAP dock can highlight it."""
        if self._on_select_press not in cells_layer.mouse_drag_callbacks:
            cells_layer.mouse_drag_callbacks.append(self._on_select_press)

    def _on_press(self, viewer, event):
        if event.button in (1, 2) and not event.modifiers:
            yield from _on_click(event, lambda position: self.click(position, erase=event.button == 2))

    def _on_select_press(self, layer, event):
        if not self.enabled and event.button == 1 and layer.mode == "pan_zoom":
            yield from _on_click(event, lambda position: self.select(position, add="Shift" in event.modifiers))

    def click(self, world_position, erase: bool = False) -> Optional[int]:
        """Annotate the cell at ``world_position``; returns its label (None on background)."""
        label = self.cell_at(world_position)
        if not label:
            return None
        name = None if erase else self._current_class()
        if name is None and not erase:
            notify_info("Add a class first (type its name and press Add), then click cells.")
            return None
        try:
            self.state.annotate(label, name)
        except Exception as error:  # noqa: BLE001 - a failed save is reported, the viewer keeps running
            report_error("Annotating", error)
            return None
        if label in self.state.selected:  # the white outline would hide the class colour
            self.state.select_cells([other for other in self.state.selected if other != label])
        return label

    def select(self, world_position, add: bool = False) -> None:
        label = self.cell_at(world_position)
        selected = list(self.state.selected) if add else []
        if label and label in selected:
            selected.remove(label)
        elif label:
            selected.append(label)
        self.state.select_cells(selected)

    def cell_at(self, world_position) -> int:
        session = self.state.session
        cells = find_layer(self.viewer, CELLS)
        if session.labels is None or cells is None:
            return 0
        y, x = np.round(cells.world_to_data(world_position)[-2:]).astype(int)
        height, width = session.labels.shape
        return int(session.labels[y, x]) if 0 <= y < height and 0 <= x < width else 0


def _ignore_provider(callback):
    def on_key(_layer_or_viewer):
        callback()

    return on_key


def _on_click(event, on_click):
    """Drive a napari drag callback: call ``on_click(position)`` on release unless the mouse moved
    (then it was a pan)."""
    position, start = tuple(event.position), np.asarray(event.pos, dtype=float)
    yield
    moved = False
    while event.type == "mouse_move":
        moved = moved or np.linalg.norm(np.asarray(event.pos, dtype=float) - start) > CLICK_TOLERANCE
        yield
    if not moved:
        on_click(position)
