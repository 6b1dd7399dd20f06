"""The "Cell gallery" dock: thumbnails of the cells of one class, as CellProfiler Analyst's montage.

Shows the cells predicted or annotated as one class (or all, or those not annotated yet), sorted by
the classifier's score or by its uncertainty. Clicking a thumbnail centres the viewer on that cell
and selects it; keys 1–9 give the selected thumbnails a class (the same keys and the same
annotation store as step 3, so the annotation is saved and drawn in the viewer), Backspace clears
it. "Next cells to annotate" fetches the unannotated cells the classifier is least sure about.
Thumbnails are computed in a worker thread, a chunk at a time, and painted in a virtualised grid.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.gallery import (
    ALL, ANNOTATED, BATCH, ENTROPY, LABEL, MARGIN, NOT_ANNOTATED, PREDICTED, SCORE, GalleryCells, cells_to_annotate,
    choose_cells,
)
from ..core.thumbnails import COMPOSITE_VIEW, PROTEIN_VIEW, iter_thumbnails, thumbnail_window
from ._layers import LayerPresenter, centre_on_cell
from ._state import state_for_viewer
from ._workers import notify_info, report_error, reports_errors
from .thumbnail_grid import ThumbnailGrid

NEXT = "next:"  # the "Next cells to annotate" batch, shown in the Show list once fetched
NEXT_TEXT = "next to annotate"
PAGE = 200     # thumbnails per page
SORT_CHOICES = (("score", SCORE), ("uncertainty (margin)", MARGIN), ("uncertainty (entropy)", ENTROPY),
                ("cell number", LABEL))
VIEW_CHOICES = (("protein", PROTEIN_VIEW), ("all stains (composite)", COMPOSITE_VIEW))
SIZE_CHOICES = (("small", 64), ("medium", 96), ("large", 128))
HINT = ("Click a cell: the viewer centres on it. Keys 1–9 give the selected cells a class (as in step 3), "
        "Backspace clears it; Ctrl/Shift-click selects several.")


# ---- pure helpers ----------------------------------------------------------------------------------
def show_choices(predicted_classes, annotated_classes) -> list[tuple[str, str]]:
    """The Show list: (text, "kind:class name") for every choice the current cells allow."""
    choices = [("all cells", ALL + ":")]
    choices += [(f"predicted: {name}", f"{PREDICTED}:{name}") for name in predicted_classes]
    choices += [(f"annotated: {name}", f"{ANNOTATED}:{name}") for name in annotated_classes]
    choices.append(("not annotated", NOT_ANNOTATED + ":"))
    return choices


def parse_choice(data: Optional[str]) -> tuple[str, Optional[str]]:
    """"kind:class name" -> (kind, class name or None)."""
    kind, _, name = (data or ALL + ":").partition(":")
    return kind, name or None


def caption(label: int, value: float, measure: str) -> str:
    """The line under a thumbnail: the cell number and the number it was sorted by."""
    if np.isnan(value) or measure == LABEL:
        return f"{label}"
    symbol = {SCORE: "p", MARGIN: "Δ", ENTROPY: "H"}[measure]
    return f"{label} · {symbol} {value:.2f}"


def cell_tooltip(label: int, predictions=None, row: Optional[int] = None, annotated: Optional[str] = None) -> str:
    """What the classifier and the user said about a cell, for the thumbnail's tooltip."""
    lines = [f"cell {label}"]
    if predictions is not None and row is not None:
        probabilities = np.sort(predictions.probabilities[row])[::-1]
        second = probabilities[1] if len(probabilities) > 1 else 0.0
        lines.append(f"predicted: {predictions.predicted_names[row]} (p {probabilities[0]:.2f}, "
                     f"margin Δ {probabilities[0] - second:.2f})")
    lines.append(f"annotated: {annotated}" if annotated else "not annotated")
    return "\n".join(lines)


def cell_tooltips(labels, predictions, annotations) -> list[str]:
    rows = {int(label): row for row, label in enumerate(predictions.labels)} if predictions is not None else {}
    return [cell_tooltip(int(label), predictions, rows.get(int(label)), annotations.get(int(label))) for label in labels]


def page_count(n_cells: int) -> int:
    return max(1, -(-n_cells // PAGE))


# ---- the dock -----------------------------------------------------------------------------------------
class GalleryWidget(QWidget):
    """Cell thumbnails of one class, sorted by score or uncertainty, linked with the viewer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for_viewer(napari_viewer)
        if getattr(self.state, "presenter", None) is None:  # the annotation layer follows the store
            self.state.presenter = LayerPresenter(self.state)
        self.cells = GalleryCells(np.zeros(0, np.int64), np.zeros(0), LABEL)
        self.page = 0
        self._worker = None
        self._generation = 0     # a new page makes the chunks of an older one stale
        self._echo = False       # True while the gallery itself changes the viewer's selection
        self._rng = np.random.default_rng(0)
        self._build()
        self._connect()
        self.refresh_choices()
        self.refill()

    # ---- building -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.show_combo = _shrinking(QComboBox())
        self.show_combo.setToolTip("Which cells: all, those predicted or annotated as a class, or those not annotated")
        self.sort_combo = _combo(SORT_CHOICES, "score: most probable first (p). Uncertainty: the cells the classifier is "
                                 "least sure about first: smallest gap between its two most likely classes (Δ), "
                                 "or highest entropy of its probabilities (H).")
        self.view_combo = _combo(VIEW_CHOICES, "The protein alone (grey), or all stains in colour")
        self.size_combo = _combo(SIZE_CHOICES, "Thumbnail size")
        self.size_combo.setCurrentIndex(1)
        self.next_button = QPushButton(f"Next {BATCH} cells to annotate")
        self.next_button.setToolTip("The unannotated cells the classifier is least sure about (smallest gap between "
                                    "its two most likely classes); before any prediction, random ones.")
        self.grid = ThumbnailGrid(self.size_combo.currentData())
        self.previous_button, self.following_button = QPushButton("◀"), QPushButton("▶")
        for button in (self.previous_button, self.following_button):
            button.setFixedWidth(32)
        self.status = QLabel()
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray;")

        show_row = QHBoxLayout()
        show_row.addWidget(QLabel("Show"))
        show_row.addWidget(self.show_combo, 1)
        show_row.addWidget(QLabel("sorted by"))
        show_row.addWidget(self.sort_combo, 1)
        view_row = QHBoxLayout()
        view_row.addWidget(self.view_combo, 1)
        view_row.addWidget(self.size_combo)
        page_row = QHBoxLayout()
        page_row.addWidget(self.status, 1)
        page_row.addWidget(self.previous_button)
        page_row.addWidget(self.following_button)
        column = QVBoxLayout(self)
        column.setContentsMargins(4, 4, 4, 4)
        column.addLayout(show_row)
        column.addLayout(view_row)
        column.addWidget(self.next_button)
        column.addWidget(self.grid, 1)
        column.addLayout(page_row)
        column.addWidget(hint)
        self.setMinimumWidth(400)  # three medium thumbnails a row

    def _connect(self) -> None:
        self.show_combo.currentIndexChanged.connect(lambda _: self.refill())
        self.sort_combo.currentIndexChanged.connect(lambda _: self.resort())
        self.view_combo.currentIndexChanged.connect(lambda _: self.show_page())
        self.size_combo.currentIndexChanged.connect(lambda _: self._resize())
        self.next_button.clicked.connect(lambda _=False: self.fetch_next_cells())
        self.previous_button.clicked.connect(lambda _=False: self.go_to_page(self.page - 1))
        self.following_button.clicked.connect(lambda _=False: self.go_to_page(self.page + 1))
        self.grid.cell_clicked.connect(self.on_cell_clicked)
        self.grid.key_pressed.connect(self.on_key)
        self.state.cells_changed.connect(self._on_cells_changed)
        self.state.predictions_changed.connect(self._on_predictions_changed)
        self.state.annotations_changed.connect(self._on_annotations_changed)
        self.state.selection_changed.connect(self._on_viewer_selection)
        self.destroyed.connect(lambda *_, stop=self._stop_worker: stop())

    # ---- what to show -----------------------------------------------------------------------------------
    def refresh_choices(self) -> None:
        """Rebuild the Show list from the current classes, keeping the current choice when it still exists."""
        predictions, store = self.state.session.predictions, self.state.annotations
        choices = show_choices(predictions.class_names if predictions is not None else (),
                               store.class_names if store is not None else ())
        current = self.show_combo.currentData()
        if current == NEXT:
            choices.append((NEXT_TEXT, NEXT))
        if [self.show_combo.itemData(i) for i in range(self.show_combo.count())] == [data for _, data in choices]:
            return
        self.show_combo.blockSignals(True)
        self.show_combo.clear()
        for text, data in choices:
            self.show_combo.addItem(text, data)
        found = self.show_combo.findData(current) if current is not None else -1
        self.show_combo.setCurrentIndex(max(found, 0))
        self.show_combo.blockSignals(False)

    def refill(self) -> None:
        """Choose the cells for the Show and Sort choices and show the first page."""
        session = self.state.session
        kind, name = parse_choice(self.show_combo.currentData())
        if session.table is None:
            self.cells = GalleryCells(np.zeros(0, np.int64), np.zeros(0), LABEL)
        elif self.show_combo.currentData() == NEXT:
            self.fetch_next_cells()
            return
        else:
            store = self.state.annotations
            self.cells = choose_cells(session.table.label, session.predictions, store.annotations if store else None,
                                      kind, name, self.sort_combo.currentData())
        self.page = 0
        self.show_page()

    def resort(self) -> None:
        """A new Sort choice: the fetched batch keeps its cells in the new order, any other choice is refilled."""
        if self.show_combo.currentData() != NEXT or self.state.session.table is None:
            self.refill()
            return
        store = self.state.annotations
        self.cells = choose_cells(self.cells.labels, self.state.session.predictions,
                                  store.annotations if store else None, ALL, None, self.sort_combo.currentData())
        self.page = 0
        self.show_page()

    @reports_errors("Fetching the next cells")
    def fetch_next_cells(self, count: int = BATCH) -> Optional[GalleryCells]:
        """Show the ``count`` most uncertain unannotated cells."""
        session = self.state.session
        session.require_cells()
        store = self.state.annotations
        self.cells = cells_to_annotate(session.table.label, store.annotations if store else (), session.predictions,
                                       count, self._rng)
        if len(self.cells) == 0:
            notify_info("Every cell is annotated.")
        self._choose_next_in_show_list()
        if self.cells.measure == MARGIN:  # the batch is in margin order: say so in the Sort list
            _set_quietly(self.sort_combo, self.sort_combo.findData(MARGIN))
        self.page = 0
        self.show_page()
        return self.cells

    def _choose_next_in_show_list(self) -> None:
        if self.show_combo.findData(NEXT) < 0:
            self.show_combo.addItem(NEXT_TEXT, NEXT)
        _set_quietly(self.show_combo, self.show_combo.findData(NEXT))

    def go_to_page(self, page: int) -> None:
        page = min(max(page, 0), page_count(len(self.cells)) - 1)
        if page != self.page:
            self.page = page
            self.show_page()

    # ---- showing --------------------------------------------------------------------------------------
    @property
    def shown_labels(self) -> list[int]:
        return list(self.grid.thumbnails.labels)

    @property
    def loaded(self) -> bool:
        """Every thumbnail of the page is painted (the worker is done)."""
        return self._worker is None and self.grid.thumbnails.complete

    def show_page(self) -> None:
        """Put the current page's cells in the grid and start computing their thumbnails."""
        start = self.page * PAGE
        labels = self.cells.labels[start:start + PAGE]
        values = self.cells.values[start:start + PAGE]
        captions = [caption(int(label), value, self.cells.measure) for label, value in zip(labels, values)]
        self.grid.thumbnails.set_cells(labels, captions, self._tooltips(labels))
        self._paint_frames()
        self._describe()
        self._start_thumbnails(labels)

    def _tooltips(self, labels) -> list[str]:
        store = self.state.annotations
        return cell_tooltips(labels, self.state.session.predictions, store.annotations if store is not None else {})

    def _describe(self) -> None:
        n, pages = len(self.cells), page_count(len(self.cells))
        if self.state.session.table is None:
            text = "No cells yet: segment the image (step 1)."
        elif n == 0:
            text = "No cells to show for this choice."
        else:
            text = f"{n} cell{'s' if n != 1 else ''}" + (f" · page {self.page + 1} of {pages}" if pages > 1 else "")
        self.status.setText(text)
        self.previous_button.setEnabled(self.page > 0)
        self.following_button.setEnabled(self.page < pages - 1)

    def _paint_frames(self) -> None:
        store = self.state.annotations
        annotations = store.annotations if store is not None else {}
        self.grid.thumbnails.set_frames({label: store.colour_of(annotations[label])
                                         for label in self.shown_labels if label in annotations})

    def _resize(self) -> None:
        self.grid.set_thumbnail_size(self.size_combo.currentData())
        self.show_page()

    def _start_thumbnails(self, labels) -> None:
        from napari.qt.threading import create_worker

        self._stop_worker()
        session = self.state.session
        if len(labels) == 0 or session.labels is None:
            return
        generation, image, cell_labels, table = self._generation, session.image, session.labels, session.table
        size, view, window = self.size_combo.currentData(), self.view_combo.currentData(), thumbnail_window(table)

        def chunks():
            yield from iter_thumbnails(image, cell_labels, table, labels, size, view, window)

        worker = self._worker = create_worker(chunks, _start_thread=False, _connect={
            "yielded": lambda chunk: self._on_chunk(generation, chunk),
            "errored": lambda error: report_error("Cell thumbnails", error),
            "finished": lambda: self._on_worker_finished(worker),
        })
        worker.start()

    def _on_chunk(self, generation: int, chunk) -> None:
        if generation == self._generation:  # else a chunk of a page no longer shown
            self.grid.thumbnails.set_pictures(*chunk)

    def _on_worker_finished(self, worker) -> None:
        if self._worker is worker:
            self._worker = None

    def _stop_worker(self) -> None:
        self._generation += 1  # chunks already queued for the main thread are dropped
        if self._worker is not None:
            self._worker.quit()  # stops at its next chunk; its results are ignored (old generation)
            self._worker = None

    # ---- linked with the viewer -------------------------------------------------------------------------
    @reports_errors("Showing the cell")
    def on_cell_clicked(self, label: int) -> None:
        """Centre the viewer on ``label`` and select the gallery's selected cells in the viewer."""
        table = self.state.session.table
        if table is None:
            return
        centre_on_cell(self.viewer, table, label)
        self._select_in_viewer(self.grid.selected_labels() or [label])

    def _select_in_viewer(self, labels) -> None:
        self._echo = True
        try:
            self.state.select_cells(labels)
        finally:
            self._echo = False

    def _on_viewer_selection(self, labels) -> None:
        if not self._echo and list(labels) != self.grid.selected_labels():
            self.grid.select_labels(labels)

    @reports_errors("Annotating")
    def on_key(self, key: str) -> None:
        """Keys 1–9: give the selected cells that class; "clear": remove their annotation."""
        labels, store = self.grid.selected_labels(), self.state.annotations
        if not labels or store is None:
            return
        name = None if key == "clear" else store.class_for_key(key)
        if name is None and key != "clear":
            notify_info(f"No class has the key {key}: add classes in step 3 (Annotate) first.")
            return
        for label in labels:
            self.state.annotate(label, name)
        if len(labels) == 1:
            self._advance(labels[0])

    def _advance(self, label: int) -> None:
        """After annotating one cell, the next thumbnail is selected: annotate a page with the keys alone."""
        row = self.grid.thumbnails.row_of(label)
        if row is not None and row + 1 < len(self.shown_labels):
            following = self.shown_labels[row + 1]
            self.grid.select_labels([following])
            self._select_in_viewer([following])

    # ---- the state changed ------------------------------------------------------------------------------
    def _on_cells_changed(self) -> None:
        self.refresh_choices()
        self.refill()

    def _on_predictions_changed(self) -> None:
        self.refresh_choices()
        self.refill()

    def _on_annotations_changed(self) -> None:
        # The grid keeps its cells (no jump under the user's keys); frames show the new classes.
        self.refresh_choices()
        self._paint_frames()
        self.grid.thumbnails.tooltips = self._tooltips(self.shown_labels)


def _combo(choices, tooltip: str) -> QComboBox:
    combo = _shrinking(QComboBox())
    for text, data in choices:
        combo.addItem(text, data)
    combo.setToolTip(tooltip)
    return combo


def _set_quietly(combo: QComboBox, index: int) -> None:
    combo.blockSignals(True)
    combo.setCurrentIndex(index)
    combo.blockSignals(False)


def _shrinking(combo: QComboBox) -> QComboBox:
    """A combo that may be narrower than its longest entry, so the buttons beside it are never cut."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(12)
    return combo
