"""Step 4: a classifier (trained on the annotations or loaded from a model bundle), the
predicted class of every cell with a legend, and the exports."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QGridLayout, QHeaderView, QLabel,
    QLineEdit, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..core.errors import DinolocError
from ..core.workflows.cell_outputs import export_anndata
from ..core.heads import unfamiliar_summary, unfamiliar_warning
from ..core.workflows.cells import export_cells, export_embeddings
from ..core.workflows.predicting import predict_session_with_bundle, save_session_model
from ._layers import colour_for
from ._prediction_layers import CONFIDENCE, prediction_values
from ._workers import notify_info, notify_warning, path_row, reports_errors
from .display_options import DisplayOptions
from .annotate_panel import colour_icon
from .image_summary import ImageSummaryBox

BUNDLE = "bundle"
HEAD_CHOICES = (
    ("logistic", "Logistic regression on my annotations"),
    ("mlp", "MLP on my annotations"),
    ("knn", "kNN on my annotations"),
    (BUNDLE, "Saved model (.dinoloc file)"),
)
BUNDLE_FILES = "napari-dinoloc models (*.dinoloc);;All files (*)"


# ---- widgets ------------------------------------------------------------------------------------------------
class Legend(QTableWidget):
    """Colour, class name and number of cells predicted in it."""

    ROW_HEIGHT = 20

    def __init__(self, parent=None):
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["", "Predicted class", "Cells"])
        self.verticalHeader().hide()
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.setColumnWidth(0, 22)
        self.verticalHeader().setDefaultSectionSize(self.ROW_HEIGHT)
        self.stale = False
        self.hide()

    def set_stale(self, stale: bool, why: str = "") -> None:
        """Greyed while the predictions no longer match the cells, embeddings or classifier."""
        self.stale = stale
        self.setEnabled(not stale)
        self.setToolTip(why)

    def show_counts(self, names, colours, counts) -> None:
        self.setRowCount(len(names))
        for row, (name, colour, count) in enumerate(zip(names, colours, counts)):
            swatch = QTableWidgetItem("")
            swatch.setIcon(colour_icon(colour))
            self.setItem(row, 0, swatch)
            self.setItem(row, 1, QTableWidgetItem(name))
            number = QTableWidgetItem(str(count))
            number.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            self.setItem(row, 2, number)
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + self.ROW_HEIGHT * len(names) + 4)
        self.setVisible(bool(names))


class ExportBox(QWidget):
    """Save the per-cell CSV, the embeddings, the annotations and the trained model."""

    def __init__(self, state, head_counts: Callable[[], dict], parent=None):
        super().__init__(parent)
        self.state = state
        self._head_counts = head_counts
        buttons = (
            ("Cells CSV…", "One row per cell: centroid, area, predicted class, confidence, every class's "
                           "probability, your label and the model (docs/csv.md).",
             self.export_cells_csv, "cells.csv", "CSV (*.csv)"),
            ("Embeddings…", "The embeddings (.npz: label, vectors, signature)",
             self.export_embeddings_npz, "embeddings.npz", "NumPy archive (*.npz)"),
            ("Annotations…", "Your annotations (CSV: label, class, centroid_y, centroid_x)",
             self.export_annotations_csv, "annotations.csv", "CSV (*.csv)"),
            ("Model…", "The trained classifier with everything needed to use it on other images (.dinoloc)",
             self.save_model, "dinoloc", BUNDLE_FILES),
            ("AnnData…", "The cells, their predictions and embeddings as an AnnData file that scanpy opens "
                         "(.h5ad; docs/screens.md)",
             self.export_anndata, "h5ad", "AnnData (*.h5ad)"),
        )
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("Export"), 0, 0)
        for i, (text, tip, write, suffix, filter_) in enumerate(buttons):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, w=write, s=suffix, f=filter_: self._ask_path(w, s, f))
            grid.addWidget(button, i // 2, 1 + i % 2)

    def _ask_path(self, write, suffix: str, filter_: str) -> None:
        image = self.state.session.image
        folder = Path(self.state.image_path).parent if self.state.image_path else Path.cwd()
        default = folder / f"{image.name if image else 'image'}.{suffix}"
        path, _ = QFileDialog.getSaveFileName(self, "Export", str(default), filter_)
        if path:
            write(path)

    @reports_errors("Exporting the cells")
    def export_cells_csv(self, path: str) -> Optional[Path]:
        session, store = self.state.session, self.state.annotations
        written = export_cells(session, path, store.annotations if store else {})
        notify_info(f"Wrote {len(session.table)} cells to {written}.")
        return written

    @reports_errors("Exporting the embeddings")
    def export_embeddings_npz(self, path: str) -> Optional[Path]:
        session = self.state.session
        written = export_embeddings(session, path)
        notify_info(f"Wrote the embeddings of {len(session.embeddings.labels)} cells to {written}.")
        return written

    @reports_errors("Exporting the AnnData file")
    def export_anndata(self, path: str) -> Optional[Path]:
        session, store = self.state.session, self.state.annotations
        written = export_anndata(session, path, store.annotations if store else {})
        notify_info(f"Wrote {len(session.table)} cells with their embeddings to {written}.")
        return written

    @reports_errors("Exporting the annotations")
    def export_annotations_csv(self, path: str) -> Optional[Path]:
        store = self.state.annotations
        if store is None:
            raise DinolocError("There are no annotations yet: choose the image and click cells first.")
        written = store.write_csv(path)
        notify_info(f"Wrote {len(store.cells)} annotated cells to {written}.")
        return written

    @reports_errors("Saving the model")
    def save_model(self, path: str) -> Optional[Path]:
        written = save_session_model(self.state.session, self._head_counts(), path)
        notify_info(f"Saved the model to {written}: choose it under Classifier ▸ Saved model to use it on other images.")
        return written


class PredictPanel(QWidget):
    def __init__(self, state, runner, model_choice: Callable[[], dict] = dict, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._model_choice = model_choice  # the Model step's weights, device and settings
        self._head_counts: dict = {}       # training cells per class of the current head
        self._basis: Optional[dict] = None  # what the shown predictions were made from (stale marking)
        self._failure: Optional[str] = None  # why the last attempt to predict failed
        self._build()
        state.predictions_changed.connect(self.show_legend)
        state.annotations_changed.connect(self.show_legend)

    def _build(self) -> None:
        self.head = _head_combo()
        self.bundle_path = QLineEdit()
        self.bundle_path.setPlaceholderText("model file (.dinoloc)")
        self.bundle_path.textChanged.connect(lambda _=None: self.show_legend())
        self.bundle_row = path_row(self.bundle_path, self._browse_bundle, "Choose a saved model")
        self.bundle_row.hide()
        self.predict_button = QPushButton("Train and predict")
        self.legend = Legend()
        self.display = DisplayOptions(self.state)
        self.display.colour_box.currentIndexChanged.connect(lambda _=None: self.show_legend())
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: gray;")
        self.stale_note = QLabel("")
        self.stale_note.setWordWrap(True)
        self.stale_note.setStyleSheet("color: #e5a50a;")
        self.stale_note.hide()
        self.exports = ExportBox(self.state, lambda: dict(self._head_counts))
        self.image_summary = ImageSummaryBox(self.state, self.runner, lambda: dict(self._head_counts))

        form = QFormLayout()
        form.addRow("Classifier", self.head)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        for widget in (self.bundle_row, self.predict_button, self.stale_note, self.legend, self.summary, self.display,
                       self.image_summary, self.exports):
            layout.addWidget(widget)

        self.head.currentIndexChanged.connect(lambda _=None: self._on_head_changed())
        self.predict_button.clicked.connect(lambda _=False: self.predict())

    def _on_head_changed(self) -> None:
        is_bundle = self.head.currentData() == BUNDLE
        self.bundle_row.setVisible(is_bundle)
        self.predict_button.setText("Predict" if is_bundle else "Train and predict")
        self.show_legend()

    def _browse_bundle(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Saved model", "", BUNDLE_FILES)
        if path:
            self.bundle_path.setText(path)

    def choose(self, kind: str, bundle_path: str = "") -> None:
        self.head.setCurrentIndex(self.head.findData(kind))
        self.bundle_path.setText(bundle_path)

    # ---- work -------------------------------------------------------------------------------------------
    @reports_errors("Predicting")
    def predict(self) -> bool:
        if self.head.currentData() == BUNDLE:
            return self._predict_with_bundle()
        session, store, kind = self.state.session, self.state.annotations, self.head.currentData()
        session.require_embeddings()
        annotations = dict(store.annotations)  # a copy: clicks during training do not disturb it
        class_names = store.used_class_names()
        counts = {name: list(annotations.values()).count(name) for name in class_names}
        embeddings = session.embeddings

        def work(progress, cancel):
            return session.train_head(kind, annotations, progress=progress, cancel=cancel, class_names=class_names)

        basis = {"kind": kind, "annotations": annotations, "embeddings": embeddings}
        return self.runner.run("Training the classifier", work, lambda head: self._use_head(embeddings, head, counts, basis),
                               on_error=self._failed)

    def _predict_with_bundle(self) -> bool:
        session, path = self.state.session, self.bundle_path.text().strip()
        session.require_cells()
        if not path:
            raise DinolocError("Choose the saved model file (.dinoloc) first.")
        labels, choice = session.labels, self._model_choice()

        def work(progress, cancel):
            return predict_session_with_bundle(session, path, choice.get("weights"), choice.get("device", "auto"),
                                               choice.get("settings"), progress=progress, cancel=cancel)

        basis = {"kind": BUNDLE, "path": path}
        return self.runner.run("Predicting with the saved model", work,
                               lambda result: self._use_bundle(labels, basis, *result, path=path), on_error=self._failed)

    def _use_head(self, embeddings, head, counts: dict, basis: dict) -> None:
        if self.state.session.embeddings is not embeddings:
            notify_info("The embeddings changed while the classifier was trained: train it again.")
            return
        self._head_counts = counts
        self._made_from(dict(basis, head=head))
        self.state.use_head(head)
        self._warn_if_unfamiliar()

    def _use_bundle(self, labels, basis: dict, backbone, embeddings, bundle, path: str = "") -> None:
        if self.state.session.labels is not labels:
            notify_info("The cells changed while the model was applied: predict again.")
            return
        self._made_from(dict(basis, head=bundle.head))
        if embeddings is not None:
            self.state.use_embeddings(backbone, embeddings)
        self._head_counts = dict(bundle.class_counts)
        self.state.use_head(bundle.head, source={"bundle": path} if path else None)  # saved: stale if the file changes
        self._warn_if_unfamiliar()

    def _warn_if_unfamiliar(self) -> None:
        predictions, image = self.state.session.predictions, self.state.session.image
        warning = unfamiliar_warning(predictions, image.name if image else "") if predictions is not None else None
        if warning:
            notify_warning(warning)

    # ---- stale predictions -------------------------------------------------------------------------
    def _made_from(self, basis: dict) -> None:
        self._basis, self._failure = basis, None

    def _failed(self, error: BaseException) -> None:
        from ..core.errors import Cancelled
        from ._workers import failure_reason

        if not isinstance(error, Cancelled):  # a cancel changes nothing: the predictions still hold
            self._failure = failure_reason(error)
            self.show_legend()

    def stale_reason(self) -> str:
        """Why the predictions shown no longer match what the dock now says ("" when they do)."""
        session, basis = self.state.session, self._basis
        if session.predictions is None:
            return ""
        if self._failure:
            return f"The last prediction failed ({self._failure.rstrip('.')}): these are the previous predictions."
        if basis is None or session.head is not basis["head"]:
            return ""  # made elsewhere (fine-tuning): nothing to compare with
        kind = self.head.currentData()
        if kind != basis["kind"] or (kind == BUNDLE and self.bundle_path.text().strip() != basis["path"]):
            return f"Predictions are from the previous classifier: press {self.predict_button.text()} again."
        if kind == BUNDLE:
            return ""
        if session.embeddings is not basis["embeddings"]:
            return "Predictions are from a classifier trained on the previous embeddings: train and predict again."
        store = self.state.annotations
        if store is not None and dict(store.annotations) != basis["annotations"]:
            return "Predictions are from the previous annotations: train and predict again."
        return ""

    # ---- legend ----------------------------------------------------------------------------------------
    def show_legend(self) -> None:
        predictions = self.state.session.predictions
        why = self.stale_reason()
        self.legend.set_stale(bool(why), why)
        self.stale_note.setText(why)
        self.stale_note.setVisible(bool(why))
        if predictions is None:
            self.legend.show_counts([], [], [])
            self.summary.setText("")
            return
        colour_by = self.display.colour_box.currentData()
        values, colours, names = prediction_values(predictions, colour_by)
        counts = np.bincount(values - 1, minlength=len(names)) if len(values) else np.zeros(len(names), int)
        colours = colours or [colour_for(name, i, self.state.annotations) for i, name in enumerate(names)]
        self.legend.setHorizontalHeaderLabels(["", "Confidence" if colour_by == CONFIDENCE else "Predicted class", "Cells"])
        self.legend.show_counts(names, colours, counts)
        confidence = float(np.mean(predictions.confidence)) if len(predictions.labels) else 0.0
        self.summary.setText(f"{len(predictions.labels)} cells, mean confidence {confidence:.2f}; "
                             f"{unfamiliar_summary(predictions)}. "
                             "Hover a cell (cells layer selected) to see its class and confidence.")


def _head_combo() -> QComboBox:
    from ..core.heads import HEADS

    box = QComboBox()
    for kind, text in HEAD_CHOICES:
        box.addItem(text, kind)
        head = HEADS.get(kind)
        if head is not None and head.description:
            tip = head.description + (f"\n\nPaper: {head.paper}" if head.paper else "")
            box.setItemData(box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
    return box
