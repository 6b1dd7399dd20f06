"""Reopening an image brings its cells and latest predictions back (``core.analysis_store``).

``AnalysisKeeper`` (one per viewer, made by the shared state) saves the current image's cells, how
they were found, and its predictions whenever they change. ``offer_restores(panel)`` (called by the
main dock once every panel listens to the state) checks the image panel's layers now and whenever
the image layers change (an image opened): when they make an image saved before, it becomes the
current image with its cells and predictions, and the panel says so instead of asking to segment.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from qtpy.QtCore import QObject

from ..core.errors import DinolocError
from ._layers import CELLS, find_layer
from ._workers import notify_info, notify_warning


class AnalysisKeeper(QObject):
    """Keeps the analysis store of the current image in step with the state."""

    def __init__(self, state):
        super().__init__(state)
        self.state = state
        self.store = None        # core.analysis_store.AnalysisStore of the current image
        self.quiet = False      # restoring: what is being set is what the store holds
        self._warned = False
        state.image_changed.connect(self.open_for_image)
        state.cells_changed.connect(self.save_cells)
        state.predictions_changed.connect(self.save_predictions)
        state.annotations_changed.connect(self._follow_project_folder)

    def expected_path(self) -> Optional[Path]:
        from ..core.analysis_store import analysis_path

        image = self.state.session.image
        if image is None:
            return None
        return analysis_path(image.content_hash, image.name, self.state.image_path, self.state.project_folder)

    def open_for_image(self) -> None:
        from ..core.analysis_store import AnalysisStore

        image = self.state.session.image
        self.store = None if image is None else AnalysisStore.open(self.expected_path(), image.content_hash,
                                                                   image.shape, image.name)

    @contextmanager
    def restoring(self):
        self.quiet = True
        try:
            yield
        finally:
            self.quiet = False

    def save_cells(self) -> None:
        session = self.state.session
        if self.quiet or self.store is None or session.labels is None:
            return
        self._guarded(self.store.save_cells, session.labels, self.state.cells_origin)

    def save_predictions(self) -> None:
        from ..core.analysis_store import prediction_signature

        session, store = self.state.session, self.store
        if self.quiet or store is None or session.labels is None:
            return
        predictions, signature = session.predictions, None
        if predictions is not None:
            embedding = session.embeddings.signature if session.embeddings is not None else {}
            annotations = self.state.annotations.annotations if self.state.annotations is not None else {}
            signature = prediction_signature(embedding, getattr(session.head, "kind", ""), annotations,
                                             self.state.prediction_source)
        self._guarded(store.save_predictions, predictions, signature)

    def _follow_project_folder(self) -> None:
        """A new project folder: the saved cells move there with the annotations."""
        if self.store is None or self.quiet:
            return
        path = self.expected_path()
        if path != self.store.path:
            self.store.path = path
            self._guarded(self.store.save)

    def _guarded(self, write, *args) -> None:
        try:
            write(*args)
        except (DinolocError, OSError) as exc:
            if not self._warned:  # once: the analysis goes on, only reopening it will need Segment again
                notify_warning(f"The cells could not be saved for reopening this image ({exc}); the analysis goes on.")
                self._warned = True


# ---- restoring -------------------------------------------------------------------------------------
def offer_restores(panel, name_of) -> str:
    """Restore what was saved for the image ``panel``'s layers make, now and each time image layers
    are added or removed; a note under the panel says what came back. Returns the first message."""
    from qtpy.QtWidgets import QLabel

    note = QLabel("")
    note.setWordWrap(True)
    note.setStyleSheet("color: gray;")
    note.hide()
    panel.layout().addWidget(note)
    panel.restored_note = note
    state = panel.state

    def hide_note() -> None:  # new cells found here replace the restored ones: the note no longer applies
        try:
            if not state.keeper.quiet:
                note.hide()
        except RuntimeError:  # the dock was closed; the state lives on with the viewer
            pass

    state.cells_changed.connect(hide_note)

    def offer(event=None) -> str:
        try:
            message = restore_saved_analysis(panel, name_of)
        except RuntimeError:  # the panel was closed
            return ""
        except DinolocError as exc:  # saved cells the engine refuses: say so, the user segments as before
            notify_warning(f"The saved cells of this image were not restored: {exc}")
            return ""
        if message:
            note.setText(message)
            note.show()
        return message

    events = panel.viewer.layers.events
    for event in (events.inserted, events.removed):
        event.connect(offer, position="last")  # after the panel has listed the new layers

    def forget(*_) -> None:
        try:
            for event in (events.inserted, events.removed):
                event.disconnect(offer)
            state.cells_changed.disconnect(hide_note)
        except (RuntimeError, TypeError):  # the viewer (and its state) went first
            pass

    panel.destroyed.connect(forget)
    return offer()


def segmentation_origin(params, found) -> dict:
    """How segmented cells were found, saved with them: the settings asked for and the sizes used."""
    from dataclasses import asdict

    return {"source": "segmentation", "requested": asdict(params) if params is not None else {},
            "used": asdict(found.params), "cell_stain": found.cell_stain}


def show_segmentation_settings(panel, settings) -> None:
    """Put the restored cells' segmentation settings back in the panel's controls (0 = auto)."""
    chosen = (settings or {}).get("requested") or {}
    if not chosen:
        return
    panel.nucleus_diameter.setValue(chosen.get("nucleus_diameter") or 0)
    panel.cell_diameter.setValue(chosen.get("cell_diameter") or 0)
    panel.cell_stain.setCurrentText(chosen.get("cytoplasm_stain") or "auto")
    panel.keep_border.setChecked(bool(chosen.get("keep_border_cells")))
    panel.segmenter.setCurrentText(chosen.get("segmenter") or "builtin")


def restore_saved_analysis(panel, name_of) -> str:
    """If the image ``panel``'s layers make was analysed before, make it current with its saved cells
    and predictions; returns what was restored ('' when nothing was). ``name_of(layer)``: the image
    name a layer gives (the store's file name holds it)."""
    from ..core.analysis_store import analysis_path, may_have_saved

    state = panel.state
    layers = panel._image_layers()
    key = (tuple(id(layer) for layer in layers), str(state.project_folder))
    if key == getattr(panel, "_restore_key", None) or not layers:
        return ""
    panel._restore_key = key  # one try per set of image layers: hashing a large image takes a moment
    if panel.runner.busy or not any(may_have_saved(name_of(layer), _source_path(layer), state.project_folder)
                                    for layer in layers):
        return ""
    try:
        built = panel.build_image()
    except DinolocError:
        return ""  # the layers do not make an image yet (a channel still loading, stains unclear)
    image, path = built[0], built[1]
    current = state.session
    if (current.image is not None and current.image.content_hash == image.content_hash and current.labels is not None
            and find_layer(panel.viewer, CELLS) is not None):
        return ""  # this image and its cells are on show already
    if not analysis_path(image.content_hash, image.name, path, state.project_folder).exists():
        return ""
    panel.apply_image(built)
    return _restore_cells_and_predictions(state, panel)


def _restore_cells_and_predictions(state, panel) -> str:
    keeper = state.keeper
    store = keeper.store
    for note in store.notes:
        notify_warning(note)
    if store.labels is None:
        return ""
    with keeper.restoring():
        state.use_labels(store.labels, origin=store.settings)
        if store.predictions is not None:
            state.restore_predictions(store.predictions.predictions)
    show_segmentation_settings(panel, store.settings)
    message = store.summary(state.annotations.annotations if state.annotations is not None else {})
    notify_info(message)
    return message


def _source_path(layer) -> Optional[str]:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None
