"""Correcting the cells by hand. The plugin's cells layer is locked (napari's paint, fill and erase
keys never change it) until the user turns "Edit cells" on; the painting goes into a copy, and
turning it off uses the edited cells as the new cells (annotations follow, embeddings are redone)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..core.errors import DinolocError
from ._layers import CELLS, find_layer


class CellEditor:
    def __init__(self, state):
        self.state = state
        self.editing = False

    def start(self) -> None:
        """Unlock the cells layer for napari's paint, fill and erase tools (paint a new cell first)."""
        session, viewer = self.state.session, self.state.viewer
        session.require_cells()
        cells = find_layer(viewer, CELLS)
        if cells is None:
            raise DinolocError(f"The '{CELLS}' layer is gone: segment the image or use a label image again.")
        cells.data = session.labels.copy()  # the cells in use change only when editing ends
        cells.editable = True
        viewer.layers.selection.active = cells
        cells.selected_label = int(session.labels.max()) + 1
        cells.mode = "paint"
        self.editing = True

    def finish(self) -> Optional[str]:
        """Lock the layer again; when the cells changed, use them. Returns what to tell the user."""
        if not self.editing:
            return None
        self.editing = False
        session, cells = self.state.session, find_layer(self.state.viewer, CELLS)
        if cells is None or session.labels is None:
            return None
        edited = np.asarray(cells.data)
        if edited.shape == session.labels.shape and np.array_equal(edited, session.labels):
            cells.data = session.labels
            cells.editable = False
            return None
        before = len(session.table)
        try:
            report = self.state.use_labels(edited.copy())
        except DinolocError:
            cells.data = session.labels  # the edits cannot be used: back to the cells in use
            cells.editable = False
            raise
        text = (f"Edited cells used: {len(session.table)} cells (were {before}). Embeddings and predictions "
                "were cleared: embed again.")
        return text + (f" {report.message()}" if report is not None and report.restored + report.lost else "")
