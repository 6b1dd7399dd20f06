"""Step 6: how good is the classifier on my annotations? Numbers and pictures, saved as a report.

Cross-validated macro-F1, per-class F1 and confusion matrix of the annotated cells (the classifier
of step 4 on the current embeddings), optionally against fine-tuning inside each fold
(``compare_frozen_vs_finetuned``), and a low-shot curve. The engine computes and draws everything
(``core.workflows.reports``, matplotlib Agg, in the worker); the panel shows the PNGs and the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qtpy.QtCore import QRect, QSize
from qtpy.QtGui import QFontDatabase, QPainter, QPixmap
from qtpy.QtWidgets import (
    QCheckBox, QFileDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout,
    QWidget,
)

from ..core import defaults
from ..core.errors import DinolocError
from ..core.workflows.reports import (
    CAPTIONS, EvaluationPlan, Report, build_report, model_description, report_text, session_plan, write_report,
)
from ._workers import notify_info, reports_errors


# ---- widgets ----------------------------------------------------------------------------------------------
class Picture(QWidget):
    """A PNG scaled to the panel's width, never above its own size, keeping its aspect ratio."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.pixmap = QPixmap()
        policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)

    def show_file(self, path) -> None:
        self.pixmap = QPixmap(str(path))
        self.updateGeometry()
        self.update()

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        if self.pixmap.isNull():
            return 0
        shown = min(width, self.pixmap.width())
        return round(shown * self.pixmap.height() / self.pixmap.width())

    def sizeHint(self) -> QSize:
        return QSize(200, self.heightForWidth(200))  # small: the dock's width decides

    def paintEvent(self, event) -> None:
        if self.pixmap.isNull():
            return
        width = min(self.width(), self.pixmap.width())
        height = self.heightForWidth(width)
        target = QRect((self.width() - width) // 2, 0, width, height)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawPixmap(target, self.pixmap)
        painter.end()


class ReportPanel(QWidget):
    def __init__(self, state, runner, head_kind: Callable[[], str] = lambda: defaults.HEAD,
                 finetune_inputs: Optional[Callable[[], tuple]] = None, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._head_kind = head_kind              # the classifier chosen in step 4
        self._finetune_inputs = finetune_inputs  # () -> (base loader, embed settings, FinetuneSettings)
        self.report: Optional[Report] = None
        self._build()

    def _build(self) -> None:
        self.folds = QSpinBox()
        self.folds.setRange(2, 20)
        self.folds.setValue(5)
        self.folds.setToolTip("Stratified folds; fewer when a class has fewer annotated cells.")
        self.compare = QCheckBox("Compare with fine-tuning")
        self.compare.setToolTip("Also fine-tune (settings of step 5) inside each fold and score the held-out cells: "
                                "the honest before/after. Slow: one fine-tuning run per fold.")
        self.compare.setEnabled(self._finetune_inputs is not None)
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Cross-validate the classifier of step 4 on your annotated cells, "
                                        "and a low-shot curve (in the background).")
        self.save_button = QPushButton("Save report…")
        self.save_button.setToolTip("report.json and the pictures, into a folder.")
        self.text = _table_box()
        self.pictures = QVBoxLayout()
        self.pictures.setContentsMargins(0, 0, 0, 0)
        self._lay_out()
        self.evaluate_button.clicked.connect(lambda _=False: self.evaluate())
        self.save_button.clicked.connect(lambda _=False: self._ask_folder())
        self._show_report()

    def _lay_out(self) -> None:
        options = QHBoxLayout()
        options.addWidget(QLabel("Folds"))
        options.addWidget(self.folds)
        options.addWidget(self.compare, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.evaluate_button)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(options)
        layout.addLayout(buttons)
        layout.addWidget(self.text)
        layout.addLayout(self.pictures)

    # ---- work --------------------------------------------------------------------------------------------
    @reports_errors("Evaluating")
    def evaluate(self) -> bool:
        plan = self.plan()
        model = model_description(self.state.session)
        return self.runner.run("Evaluating", lambda progress, cancel: build_report(plan, progress, cancel),
                               lambda report: self._use_report(report, plan, model))

    def plan(self) -> EvaluationPlan:
        session, store = self.state.session, self.state.annotations
        session.require_embeddings()
        fine_tune = self._finetune_inputs() if self.compare.isChecked() else None
        return session_plan(session, dict(store.annotations), store.used_class_names(), self._head_kind(),
                            self.folds.value(), fine_tune)

    def _use_report(self, report: Report, plan: EvaluationPlan, model: str) -> None:
        self.report = report
        self.text.setPlainText(report_text(report, plan, model))
        self._show_report()
        headline = ", ".join(f"{CAPTIONS.get(n, n)} {e.macro_f1:.3f}" for n, e in report.evaluations.items())
        notify_info(f"Cross-validated macro-F1: {headline}.")

    def _show_report(self) -> None:
        _clear_layout(self.pictures)
        report = self.report
        self.save_button.setEnabled(report is not None)
        self.text.setVisible(report is not None)
        for caption, path in (report.pictures.items() if report else ()):
            title = QLabel(caption)
            title.setStyleSheet("color: gray;")
            picture = Picture()
            picture.show_file(path)
            self.pictures.addWidget(title)
            self.pictures.addWidget(picture)

    # ---- saving ------------------------------------------------------------------------------------------
    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the report into")
        if folder:
            self.save_report(folder)

    @reports_errors("Saving the report")
    def save_report(self, folder) -> Optional[list]:
        if self.report is None:
            raise DinolocError("No report yet: press Evaluate first.")
        written = write_report(folder, self.report)
        notify_info(f"Saved the report ({len(written)} files) to {Path(folder)}.")
        return written


def _table_box() -> QPlainTextEdit:
    box = QPlainTextEdit()
    box.setReadOnly(True)
    box.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    font.setPointSize(max(font.pointSize() - 1, 7))
    box.setFont(font)
    box.setFixedHeight(180)
    box.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # wide tables scroll, not the dock
    return box


def _clear_layout(layout) -> None:
    while layout.count():
        widget = layout.takeAt(0).widget()
        if widget is not None:
            widget.deleteLater()
