"""Step 4: a classifier (trained on the annotations or loaded from a model bundle), the
predicted class of every cell with a legend, and the exports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
    QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..core.errors import DinolocError
from ._layers import colour_for
from .annotate_panel import colour_icon
from ._workers import notify_info, reports_errors

BUNDLE = "bundle"
HEAD_CHOICES = (
    ("logistic", "Logistic regression on my annotations"),
    ("mlp", "MLP on my annotations"),
    ("knn", "kNN on my annotations"),
    (BUNDLE, "Saved model (.dinoloc file)"),
)
BUNDLE_FILES = "napari-dinoloc models (*.dinoloc);;All files (*)"


class Legend(QTableWidget):
    """Colour, class name and number of cells predicted in it."""

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
        self.verticalHeader().setDefaultSectionSize(20)
        self.hide()

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
        header = self.horizontalHeader().sizeHint().height()
        self.setFixedHeight(header + 20 * len(names) + 4)
        self.setVisible(bool(names))


class PredictPanel(QWidget):
    def __init__(self, state, runner, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._build()
        state.predictions_changed.connect(self.show_legend)
        state.annotations_changed.connect(self.show_legend)

    def _build(self) -> None:
        from ..core.heads import HEADS

        self.head = QComboBox()
        for kind, text in HEAD_CHOICES:
            self.head.addItem(text, kind)
            head = HEADS.get(kind)
            if head is not None and head.description:
                tip = head.description + (f"\n\nPaper: {head.paper}" if head.paper else "")
                self.head.setItemData(self.head.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.bundle_path = QLineEdit()
        self.bundle_path.setPlaceholderText("model file (.dinoloc)")
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(lambda _=False: self._browse_bundle())
        self.bundle_row = QWidget()
        row = QHBoxLayout(self.bundle_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bundle_path, 1)
        row.addWidget(browse)
        self.bundle_row.hide()
        self.predict_button = QPushButton("Train and predict")
        self.legend = Legend()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: gray;")
        self.export_cells = QPushButton("Cells CSV…")
        self.export_cells.setToolTip("One row per cell: centroid, area, predicted class, confidence, every class's "
                                     "probability, your label and the model (docs/csv.md).")
        self.export_embeddings = QPushButton("Embeddings…")
        self.export_embeddings.setToolTip("The embeddings (.npz: label, vectors, signature)")
        self.export_annotations = QPushButton("Annotations…")
        self.export_annotations.setToolTip("Your annotations (CSV: label, class, centroid_y, centroid_x)")

        form = QFormLayout()
        form.addRow("Classifier", self.head)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.bundle_row)
        layout.addWidget(self.predict_button)
        layout.addWidget(self.legend)
        layout.addWidget(self.summary)
        exports = QHBoxLayout()
        exports.addWidget(QLabel("Export"))
        for button in (self.export_cells, self.export_embeddings, self.export_annotations):
            exports.addWidget(button)
        layout.addLayout(exports)

        self.head.currentIndexChanged.connect(lambda _=None: self._on_head_changed())
        self.predict_button.clicked.connect(lambda _=False: self.predict())
        self.export_cells.clicked.connect(lambda _=False: self._export(self.export_cells_csv, "cells.csv", "CSV (*.csv)"))
        self.export_embeddings.clicked.connect(
            lambda _=False: self._export(self.export_embeddings_npz, "embeddings.npz", "NumPy archive (*.npz)"))
        self.export_annotations.clicked.connect(
            lambda _=False: self._export(self.export_annotations_csv, "annotations.csv", "CSV (*.csv)"))

    def _on_head_changed(self) -> None:
        is_bundle = self.head.currentData() == BUNDLE
        self.bundle_row.setVisible(is_bundle)
        self.predict_button.setText("Predict" if is_bundle else "Train and predict")

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
        session = self.state.session
        session._require_embeddings()
        embeddings = session.embeddings
        work = self._bundle_work() if self.head.currentData() == BUNDLE else self._training_work()
        return self.runner.run("Training the classifier" if self.head.currentData() != BUNDLE else "Loading the model",
                               work, lambda head: self._apply(embeddings, head))

    def _training_work(self):
        session, store, kind = self.state.session, self.state.annotations, self.head.currentData()
        annotations = dict(store.annotations)  # a copy: clicks during training do not disturb it
        class_names = store.used_class_names()

        def work(progress, cancel):
            return session.train_head(kind, annotations, progress=progress, cancel=cancel, class_names=class_names)

        return work

    def _bundle_work(self):
        session = self.state.session
        path = self.bundle_path.text().strip()
        if not path:
            raise DinolocError("Choose the saved model file (.dinoloc) first.")

        def work(progress, cancel):
            from ..core.bundle import check_bundle_fits, load_bundle

            bundle = load_bundle(path)
            check_bundle_fits(bundle, session.image.stains)
            check_bundle_matches(bundle, session.embeddings.signature)
            return bundle.head

        return work

    def _apply(self, embeddings, head) -> None:
        if self.state.session.embeddings is not embeddings:
            notify_info("The embeddings changed while the classifier was made: predict again.")
            return
        self.state.use_head(head)

    # ---- legend ----------------------------------------------------------------------------------------
    def show_legend(self) -> None:
        predictions = self.state.session.predictions
        if predictions is None:
            self.legend.show_counts([], [], [])
            self.summary.setText("")
            return
        names = list(predictions.class_names)
        counts = np.bincount(predictions.predicted, minlength=len(names))
        colours = [colour_for(name, i, self.state.annotations) for i, name in enumerate(names)]
        self.legend.show_counts(names, colours, counts)
        confidence = float(np.mean(predictions.confidence)) if len(predictions.labels) else 0.0
        self.summary.setText(f"{len(predictions.labels)} cells, mean confidence {confidence:.2f}. "
                             "Hover a cell (cells layer selected) to see its class and confidence.")

    # ---- exports -----------------------------------------------------------------------------------------
    def _export(self, write, suffix: str, filter_: str) -> None:
        image = self.state.session.image
        folder = Path(self.state.image_path).parent if self.state.image_path else Path.cwd()
        default = folder / f"{image.name if image else 'image'}.{suffix}"
        path, _ = QFileDialog.getSaveFileName(self, "Export", str(default), filter_)
        if path:
            write(path)

    @reports_errors("Exporting the cells")
    def export_cells_csv(self, path: str) -> Optional[Path]:
        from ..core.table import write_table

        session, store = self.state.session, self.state.annotations
        session._require_cells()
        class_names = session.predictions.class_names if session.predictions is not None else ()
        written = write_table(path, session.rows(store.annotations if store else {}), class_names)
        notify_info(f"Wrote {len(session.table)} cells to {written}.")
        return written

    @reports_errors("Exporting the embeddings")
    def export_embeddings_npz(self, path: str) -> Optional[Path]:
        from ..core.embedding_files import save_embeddings

        session = self.state.session
        session._require_embeddings()
        written = save_embeddings(path, [(session.image.name, session.embeddings)])
        notify_info(f"Wrote the embeddings of {len(session.embeddings.labels)} cells to {written}.")
        return written

    @reports_errors("Exporting the annotations")
    def export_annotations_csv(self, path: str) -> Optional[Path]:
        store = self.state.annotations
        if store is None:
            raise DinolocError("There are no annotations yet: choose the image and click cells first.")
        written = store.write_csv(path)
        notify_info(f"Wrote {len(store.cells)} annotated cells to {written}.")
        return written


def check_bundle_matches(bundle, signature: dict) -> None:
    """A saved head only fits embeddings made with its backbone and channel strategy."""
    wanted = {"backbone": getattr(bundle, "backbone_name", None), "strategy": getattr(bundle, "strategy", None)}
    wrong = {k: v for k, v in wanted.items() if v and signature.get(k) and signature[k] != v}
    if wrong:
        made = ", ".join(f"{k} {v!r}" for k, v in wanted.items() if v)
        have = ", ".join(f"{k} {signature.get(k)!r}" for k in wanted)
        raise DinolocError(f"This model was made with {made}, but the cells were embedded with {have}: "
                           "choose the model's backbone and channel strategy under Model, embed the cells, then predict again.")
