"""The state shared by every napari-dinoloc dock widget of one viewer.

Widgets never talk to each other directly: they change the state through its methods and
listen to its signals. Everything here runs on the main thread.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Optional, Sequence

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
        self.session = Session(cache=_embedding_cache())
        self.annotations = None       # core.annotations.AnnotationStore, once an image is chosen
        self.selected: list[int] = []
        self.image_path: Optional[str] = None    # the image's file, when it has one
        self.project_folder: Optional[Path] = None  # where annotations go instead of next to the image
        self.image_layer_names: tuple[str, ...] = ()  # the layers the image was made of (for scale/translate)
        self.presenter = None         # _layers.LayerPresenter, made by the first main dock
        self.cells_origin: dict = {}          # how the current cells were found (saved with them)
        self.prediction_source: dict = {}     # where the current classifier came from (a model file)
        from ._reopen import AnalysisKeeper

        self.keeper = AnalysisKeeper(self)    # saves cells and predictions as they change, for reopening

    @property
    def viewer(self):
        return self._viewer_ref()

    def select_cells(self, labels) -> None:
        self.selected = [int(label) for label in labels]
        self.selection_changed.emit(list(self.selected))

    # ---- steps: each applies a result computed elsewhere and tells every dock -----------------
    def use_image(self, image, image_path: Optional[str] = None, layer_names: Sequence[str] = (),
                  default_classes: Sequence[str] = ()) -> bool:
        """Make ``image`` (a CellImage) current; False when it is the current one already."""
        current = self.session.image
        if current is not None and current.content_hash == image.content_hash and current.stains == image.stains:
            return False
        self.session.set_image(image)
        self.image_path = image_path
        self.image_layer_names = tuple(layer_names)
        self._open_annotations(default_classes)
        self.selected = []
        for signal in (self.image_changed, self.cells_changed, self.embeddings_changed,
                       self.predictions_changed, self.annotations_changed):
            signal.emit()
        return True

    def use_labels(self, labels, origin: Optional[dict] = None):
        """New cells: everything downstream is cleared; saved annotations are mapped onto them.
        ``origin``: how they were found (segmentation settings, a label layer), saved with them."""
        self.session.set_labels(labels)
        self.cells_origin = dict(origin or {})
        report = self.annotations.restore_onto(self.session.labels) if self.annotations is not None else None
        self.selected = []
        for signal in (self.cells_changed, self.embeddings_changed, self.predictions_changed, self.annotations_changed):
            signal.emit()
        return report

    def use_embeddings(self, backbone, embeddings) -> None:
        had_predictions = self.session.predictions is not None
        self.session.set_backbone(backbone)
        self.session.set_embeddings(embeddings)
        self.embeddings_changed.emit()
        if had_predictions or self.session.predictions is not None:
            self.predictions_changed.emit()

    def use_head(self, head, source: Optional[dict] = None) -> None:
        """``source``: where the classifier came from when not trained here (``{"bundle": path}``)."""
        self.session.set_head(head)
        self.prediction_source = dict(source or {})
        self.predictions_changed.emit()

    def restore_predictions(self, predictions) -> None:
        """Show predictions saved in an earlier session (no classifier or embeddings come with them)."""
        self.session.predictions = predictions
        self.predictions_changed.emit()

    # ---- annotations ----------------------------------------------------------------------------
    def annotate(self, label: int, class_name: Optional[str]) -> None:
        """Give cell ``label`` the class ``class_name`` (None clears it)."""
        from ..core.annotations import point_inside

        store, table = self.annotations, self.session.table
        if class_name is None:
            changed = store.clear(label)
        else:
            row = table.index_of(int(label))
            centroid = (float(table.centroid_y[row]), float(table.centroid_x[row]))
            store.annotate(label, class_name, centroid, point_inside(self.session.labels, label, centroid, table.bbox[row]))
            changed = True
        if changed:
            self.annotations_changed.emit()

    def edit_classes(self, change, *args):
        """Run a class-list change (e.g. ``store.add_class``) and tell every dock."""
        result = change(*args)
        self.annotations_changed.emit()
        return result

    def set_project_folder(self, folder: Optional[str | Path]) -> None:
        """Keep annotations in ``folder`` (None: next to the image); the current ones move along."""
        self.project_folder = Path(folder) if folder else None
        if self.session.image is not None:
            self._open_annotations(carry_over=True)
            self.annotations_changed.emit()

    def _open_annotations(self, default_classes: Sequence[str] = (), carry_over: bool = False) -> None:
        from ..core.annotations import AnnotationStore, store_path

        image, previous = self.session.image, self.annotations
        # A new image starts with the classes in use (a series is annotated with one class list).
        defaults = previous.class_names if previous is not None and previous.classes else list(default_classes)
        path = store_path(image.content_hash, image.name, self.image_path, self.project_folder)
        store = AnnotationStore.open(path, image.content_hash, image.name, defaults)
        if carry_over and previous is not None and previous.cells and not store.cells:
            previous.path = path
            previous.save()
            store = previous
        self.annotations = store


def _embedding_cache():
    """The on-disk embedding cache, so a second run on the same image and settings is instant."""
    try:
        from ..core.cache import EmbeddingCache
    except ImportError:  # the engine's cache is optional for the widgets
        return None
    return EmbeddingCache()


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def state_for_viewer(viewer) -> DinolocState:
    """One state per viewer, created by whichever dock widget opens first."""
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = DinolocState(viewer)
    return state
