"""Step 4's per-image summary: class counts and fractions of each image, its CSV, and
"Predict a folder…", which runs the batch ``dinoloc predict`` runs, off the main thread."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem,
    QVBoxLayout, QWidget,
)

from ..core.image_summary import SUFFIX, session_summary
from ._workers import notify_info, notify_warning, reports_errors

DEFAULT_CELLS_CSV = "dinoloc_cells.csv"


class SummaryTable(QTableWidget):
    """One row per image: its cells, then "count (percent)" of every class."""

    ROW_HEIGHT = 20

    def __init__(self, parent=None):
        super().__init__(0, 0, parent)
        self.verticalHeader().hide()
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.verticalHeader().setDefaultSectionSize(self.ROW_HEIGHT)
        self.rows: list[dict] = []
        self.hide()

    def show_rows(self, rows: list[dict], class_names) -> None:
        self.rows = list(rows)
        names = list(class_names)
        self.setColumnCount(2 + len(names))
        self.setHorizontalHeaderLabels(["Image", "Cells", *names])
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            cells = [str(row["image"]), str(row["cells"])]
            cells += [f"{row[f'n_{name}']} ({100 * float(row[f'fraction_{name}']):.0f} %)" for name in names]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.setItem(r, c, item)
        # room for the horizontal scroll bar too: with many classes it would hide the last row
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + self.ROW_HEIGHT * min(len(rows), 8) + 4
                            + self.horizontalScrollBar().sizeHint().height())
        self.setVisible(bool(rows))


class ImageSummaryBox(QWidget):
    def __init__(self, state, runner, head_counts: Callable[[], dict], parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._head_counts = head_counts
        self.title = QLabel("Per image")
        self.table = SummaryTable()
        self.folder_button = QPushButton("Predict a folder…")
        self.folder_button.setToolTip("Predict every image of a folder with this classifier, as dinoloc predict does: "
                                      "a per-cell CSV and a per-image summary CSV (class counts and fractions).")
        self.csv_button = QPushButton("Summary CSV…")
        self.csv_button.setToolTip("This image's cells per class and their fractions (CSV).")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.title, 1)
        row.addWidget(self.folder_button)
        row.addWidget(self.csv_button)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(row)
        column.addWidget(self.table)
        self.folder_button.clicked.connect(lambda _=False: self._ask_folder())
        self.csv_button.clicked.connect(lambda _=False: self._ask_csv())
        state.predictions_changed.connect(self.show_current)

    def show_current(self) -> None:
        """The current image's row, after every new prediction."""
        predictions = self.state.session.predictions
        if predictions is None:
            self.table.show_rows([], [])
            return
        self.title.setText("Per image (this image)")
        self.table.show_rows(session_summary(self.state.session).rows(), predictions.class_names)

    # ---- the current image ---------------------------------------------------------------------------
    def _ask_csv(self) -> None:
        image = self.state.session.image
        folder = Path(self.state.image_path).parent if self.state.image_path else Path.cwd()
        default = folder / f"{image.name if image else 'image'}{SUFFIX}"
        path, _ = QFileDialog.getSaveFileName(self, "Per-image summary", str(default), "CSV (*.csv)")
        if path:
            self.export_summary_csv(path)

    @reports_errors("Exporting the per-image summary")
    def export_summary_csv(self, path: str) -> Optional[Path]:
        written = session_summary(self.state.session).write(path)
        notify_info(f"Wrote the class counts and fractions of {self.state.session.image.name} to {written}.")
        return written

    # ---- a folder ------------------------------------------------------------------------------------
    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to predict")
        if not folder:
            return
        out, _ = QFileDialog.getSaveFileName(self, "Per-cell CSV to write", str(Path(folder) / DEFAULT_CELLS_CSV),
                                             "CSV (*.csv)")
        if out:
            self.predict_folder(folder, out)

    @reports_errors("Predicting a folder")
    def predict_folder(self, folder, out) -> bool:
        """Every image of ``folder`` through the batch of ``dinoloc predict`` with the current classifier:
        ``out`` (per cell) and the per-image summary beside it, in a worker with progress and Cancel."""
        from ..core.batch import RunOptions, Skips, image_jobs
        from ..core.workflows.predicting import predict_with_model, session_prediction_model

        session = self.state.session
        session.require_embeddings()
        model = session_prediction_model(session, self._head_counts(), RunOptions(stains=session.image.stains))
        jobs, skips, cache = image_jobs([folder]), Skips(), session.cache

        def work(progress, cancel):
            return predict_with_model(jobs, model, out, cache=cache, progress=progress, cancel=cancel, skips=skips)

        def done(result) -> None:
            self.title.setText(f"Per image ({Path(folder).name})")
            self.table.show_rows(result.images, model.head.class_names)
            notify_info(f"Wrote {result.cells} cells of {len(result.images)} images to {result.path} "
                        f"and their class counts and fractions to {result.summary_path}.")
            if skips:
                notify_warning("Left out: " + "; ".join(skips.lines()))

        return self.runner.run(f"Predicting {len(jobs)} images", work, done)
