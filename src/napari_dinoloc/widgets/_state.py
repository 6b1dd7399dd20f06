"""The state shared by every napari-dinoloc dock widget of one viewer.

Widgets never talk to each other directly: they change the state through its methods and
listen to its signals. Everything here runs on the main thread.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QObject, Signal

from ..core.pipeline import Session


class DinolocState(QObject):
    image_changed = Signal()          # session.image set (cells cleared)
    cells_changed = Signal()          # session.labels / session.table set
    embeddings_changed = Signal()     # session.embeddings set (or cleared)
    predictions_changed = Signal()    # session.predictions set (or cleared)
    annotations_changed = Signal()    # annotations or the class list changed
    selection_changed = Signal(list)  # labels of the selected cells

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self._viewer_ref = weakref.ref(viewer)
        self.session = Session()
        self.annotations = None       # core.annotations.AnnotationStore, once an image is chosen
        self.selected: list[int] = []

    @property
    def viewer(self):
        return self._viewer_ref()

    def select_cells(self, labels) -> None:
        self.selected = [int(label) for label in labels]
        self.selection_changed.emit(list(self.selected))


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def state_for_viewer(viewer) -> DinolocState:
    """One state per viewer, created by whichever dock widget opens first."""
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = DinolocState(viewer)
    return state
