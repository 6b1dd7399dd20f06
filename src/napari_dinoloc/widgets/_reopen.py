"""Reopening an image brings its cells and latest predictions back (``core.analysis_store``).

``AnalysisKeeper`` (one per viewer, made by the shared state) saves the current image's cells, how
they were found, and its predictions whenever they change. ``offer_restores(panel)`` (called by the
main dock once every panel listens to the state) checks the image panel's layers soon after and whenever
the image layers change (an image opened): when they make an image saved before, it becomes the
current image with its cells and predictions, and the panel says so instead of asking to segment.
``Restorer`` does that in steps that keep the window responsive.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
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
        self.preloaded = None   # a store read already (in a worker) for the image about to be opened
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

        image, preloaded = self.state.session.image, self.preloaded
        if image is None:
            self.store = None
        elif (preloaded is not None and preloaded.content_hash == image.content_hash
              and preloaded.path == self.expected_path()):
            self.store = preloaded
        else:
            self.store = AnalysisStore.open(self.expected_path(), image.content_hash, image.shape, image.name)

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
def offer_restores(panel, name_of) -> None:
    """Restore what was saved for the image ``panel``'s layers make, soon after the dock opens and
    each time image layers are added or removed; a note under the panel says what came back.
    ``name_of(layer)``: the image name a layer gives (the store's file name holds it)."""
    from qtpy.QtWidgets import QLabel

    note = QLabel("")
    note.setWordWrap(True)
    note.setStyleSheet("color: gray;")
    note.hide()
    panel.layout().addWidget(note)
    panel.restored_note = note
    state = panel.state
    panel.restorer = restorer = Restorer(panel, name_of)

    def hide_note() -> None:  # new cells found here replace the restored ones: the note no longer applies
        try:
            if not state.keeper.quiet:
                note.hide()
        except RuntimeError:  # the dock was closed; the state lives on with the viewer
            pass

    state.cells_changed.connect(hide_note)
    events = panel.viewer.layers.events
    for event in (events.inserted, events.removed):
        event.connect(restorer.schedule, position="last")  # after the panel has listed the new layers

    def forget(*_) -> None:
        try:
            for event in (events.inserted, events.removed):
                event.disconnect(restorer.schedule)
            state.cells_changed.disconnect(hide_note)
        except (RuntimeError, TypeError):  # the viewer (and its state) went first
            pass

    panel.destroyed.connect(forget)
    restorer.schedule()


class Restorer(QObject):
    """Restores an image's saved cells and predictions without freezing the window: never inside
    napari's layer events (a timer starts it once the layers have settled), the image hashed and the
    store read in a worker thread, then on the main thread one step per event-loop turn (the image,
    each class layer, the cells, the predictions), since napari takes a while to make each layer."""

    def __init__(self, panel, name_of):
        from qtpy.QtCore import QTimer

        super().__init__(panel)
        self.panel, self.name_of = panel, name_of
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # after the event that added the layers, and the others of that turn
        self._timer.timeout.connect(self._look)
        self._step_timer = QTimer(self)
        self._step_timer.setSingleShot(True)
        self._step_timer.setInterval(0)
        self._step_timer.timeout.connect(self._step)
        self._attempt = 0       # each new set of image layers starts a new attempt; older ones stop
        self._reading = False   # the worker reads the store
        self._steps: tuple = (0, None, [])  # (attempt, image, steps left) of the restore under way

    @property
    def busy(self) -> bool:
        """A restore is due or under way (tests and the benchmark wait for it)."""
        return self._timer.isActive() or self._reading or bool(self._steps[2])

    def schedule(self, event=None) -> None:
        from napari.layers import Image

        layer = getattr(event, "value", None)
        if layer is None or isinstance(layer, Image):  # the plugin's own layers never start a restore
            self._timer.start()

    def _look(self) -> None:
        """Main thread: is there a store for these layers? Then read it in a worker thread."""
        try:
            inputs = self._image_inputs()
        except RuntimeError:  # the panel was closed
            return
        if inputs is None:
            return
        self._attempt += 1
        attempt, folder = self._attempt, self.panel.state.project_folder
        self._reading = self.panel.runner.run_in_background(
            read_saved_analysis, inputs, folder, on_done=lambda found: self._found(attempt, found))

    def _image_inputs(self):
        """What the layers make the image of, when they are new and may have been analysed before."""
        from ..core.analysis_store import may_have_saved

        panel, state = self.panel, self.panel.state
        layers = panel._image_layers()
        key = (tuple(id(layer) for layer in layers), str(state.project_folder))
        if key == getattr(panel, "_restore_key", None) or not layers:
            return None
        panel._restore_key = key  # one try per set of image layers: hashing a large image takes a moment
        if panel.runner.busy or not any(may_have_saved(self.name_of(layer), _source_path(layer), state.project_folder)
                                        for layer in layers):
            return None
        try:
            return panel.image_inputs()
        except DinolocError:
            return None  # the layers do not make an image yet (a channel still loading, stains unclear)

    def _current(self, attempt: int) -> bool:
        """Still the latest attempt, and the dock still open."""
        try:
            return attempt == self._attempt and not self.panel.runner.closed
        except RuntimeError:
            return False

    def _found(self, attempt: int, found) -> None:
        """Main thread, first turn: the image becomes current; the class layers follow, one per turn."""
        if attempt == self._attempt:
            self._reading = False
        if found is None or not self._current(attempt):
            return
        built, store = found
        panel, state = self.panel, self.panel.state
        image, current = built[0], state.session
        if (current.image is not None and current.image.content_hash == image.content_hash
                and current.labels is not None and find_layer(panel.viewer, CELLS) is not None):
            return  # this image and its cells are on show already
        try:
            state.keeper.preloaded = store  # read already: opening the image does not read it again
            panel.apply_image(built)
        except DinolocError as exc:
            notify_warning(f"The saved cells of this image were not restored: {exc}")
            return
        finally:
            state.keeper.preloaded = None
        image, store = state.session.image, state.keeper.store  # the image current before, when it is the same
        for note in store.notes:
            notify_warning(note)
        if store.labels is None:
            return
        from ._layers import ANNOTATIONS, PREDICTED

        shape = store.labels.shape
        # new cells clear the predictions (and their layer): that layer comes after the cells
        steps = [lambda: state.presenter.add_empty(CELLS, shape, np.int32),
                 lambda: state.presenter.add_empty(ANNOTATIONS, shape), lambda: self._restore_cells(store)]
        if store.predictions is not None:
            steps += [lambda: state.presenter.add_empty(PREDICTED, shape), lambda: self._restore_predictions(store)]
        steps.append(lambda: self._tell(store))
        self._steps = (attempt, image, steps)
        self._step_timer.start()

    def _step(self) -> None:
        """One step of the restore, then the next in the next event-loop turn."""
        attempt, image, steps = self._steps
        if not self._current(attempt) or self.panel.state.session.image is not image:
            self._steps = (0, None, [])  # other layers, another image, or the dock closed: stop here
            return
        try:
            steps.pop(0)()
        except DinolocError as exc:  # saved cells the engine refuses: say so, the user segments as before
            notify_warning(f"The saved cells of this image were not restored: {exc}")
            steps.clear()
        except Exception:
            steps.clear()  # stop here; napari reports the error as any other
            raise
        if steps:
            self._step_timer.start()

    def _restore_cells(self, store) -> None:
        state = self.panel.state
        with state.keeper.restoring():
            state.use_labels(store.labels, origin=store.settings)

    def _restore_predictions(self, store) -> None:
        state = self.panel.state
        with state.keeper.restoring():
            state.restore_predictions(store.predictions.predictions)

    def _tell(self, store) -> None:
        state, panel = self.panel.state, self.panel
        show_segmentation_settings(panel, store.settings)
        message = store.summary(state.annotations.annotations if state.annotations is not None else {})
        notify_info(message)
        panel.restored_note.setText(message)
        panel.restored_note.show()


def image_from_inputs(inputs: tuple):
    """(CellImage, file, layer names, default classes) from ``ImagePanel.image_inputs()``; no Qt here, so
    the restore's worker thread makes the image as the panel does."""
    from ..core.workflows.images import image_from_channels

    data, stains, name, path, layer_names, defaults = inputs
    return image_from_channels(data, stains, name), path, layer_names, defaults


def read_saved_analysis(inputs: tuple, project_folder):
    """Worker thread (no Qt, no napari): the image the layers make and its analysis store, or None
    when these layers do not make an image or it has no saved analysis."""
    from ..core.analysis_store import AnalysisStore, analysis_path

    try:
        built = image_from_inputs(inputs)  # inputs: ImagePanel.image_inputs()
    except DinolocError:
        return None  # the layers do not make an image yet (stains unclear)
    image, path = built[0], built[1]
    where = analysis_path(image.content_hash, image.name, path, project_folder)
    if not where.exists():
        return None
    return built, AnalysisStore.open(where, image.content_hash, image.shape, image.name)


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


def _source_path(layer) -> Optional[str]:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None
