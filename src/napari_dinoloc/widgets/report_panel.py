"""Step 6: how good is the classifier on my annotations? Numbers and pictures, saved as a report.

Cross-validated macro-F1, per-class F1 and confusion matrix of the annotated cells (the classifier
of step 4 on the current embeddings), optionally against fine-tuning inside each fold
(``compare_frozen_vs_finetuned``), and a low-shot curve. The engine computes (``core.workflows.reports``,
in the worker) and draws (``core.evaluation.draw_*``); the panel shows the numbers as tables and the
figures in the napari theme, drawn again when the theme changes. The header's folds are the folds
the evaluations used (``folds_used``), so the header and the tables agree.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Optional

from qtpy.QtWidgets import QApplication, QCheckBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..core import defaults
from ..core.errors import DinolocError
from ..core.evaluation import draw_confusion, draw_low_shot
from ..core.workflows.reports import (
    BASELINE, CAPTIONS, EvaluationPlan, Report, baseline_line, build_report, cells_text, header_lines,
    model_description, report_text, session_plan, write_report,
)
from ._workers import notify_info, reports_errors
from .report_views import FigureSection, FullTable, confusion_height, text_block


class ReportPanel(QWidget):
    def __init__(self, state, runner, head_kind: Callable[[], str] = lambda: defaults.HEAD,
                 finetune_inputs: Optional[Callable[[], tuple]] = None, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._head_kind = head_kind              # the classifier chosen in step 4
        self._finetune_inputs = finetune_inputs  # () -> (base loader, embed settings, FinetuneSettings)
        self.report: Optional[Report] = None
        self._plan: Optional[EvaluationPlan] = None
        self._model = ""
        self._build()
        theme = getattr(getattr(state.viewer, "events", None), "theme", None)
        if theme is not None:
            theme.connect(lambda _event=None: self.restyle())

    def _build(self) -> None:
        self.folds = QSpinBox()
        self.folds.setRange(2, 20)
        self.folds.setValue(5)
        self.folds.setToolTip("Stratified folds; fewer when a class has fewer annotated cells (the report says so).")
        self.compare = QCheckBox("Compare with fine-tuning")
        self.compare.setToolTip("Also fine-tune (settings of step 5) inside each fold and score the held-out cells: "
                                "the honest before/after. Slow: one fine-tuning run per fold.")
        self.compare.setEnabled(self._finetune_inputs is not None)
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Cross-validate the classifier of step 4 on your annotated cells, "
                                        "and a low-shot curve (in the background).")
        self.save_button = QPushButton("Save report…")
        self.save_button.setToolTip("report.json and the pictures, into a folder.")
        self.copy_button = QPushButton("Copy as text")
        self.copy_button.setToolTip("The whole report as plain text, as the command line prints it.")
        self.results = QVBoxLayout()
        self.results.setContentsMargins(0, 0, 0, 0)
        self._lay_out()
        self.evaluate_button.clicked.connect(lambda _=False: self.evaluate())
        self.save_button.clicked.connect(lambda _=False: self._ask_folder())
        self.copy_button.clicked.connect(lambda _=False: QApplication.clipboard().setText(self.plain_text()))
        self._show_report()

    def _lay_out(self) -> None:
        options = QHBoxLayout()
        options.addWidget(QLabel("Folds"))
        options.addWidget(self.folds)
        options.addWidget(self.compare, 1)
        buttons = QHBoxLayout()
        for button in (self.evaluate_button, self.save_button, self.copy_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(options)
        layout.addLayout(buttons)
        layout.addLayout(self.results)

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
        self.report, self._plan, self._model = report, plan, model
        self._show_report()
        headline = ", ".join(f"{CAPTIONS.get(n, n)} {e.macro_f1:.3f}" for n, e in report.evaluations.items())
        notify_info(f"Cross-validated macro-F1: {headline}.")

    def plain_text(self) -> str:
        """The report as the command line prints it (Copy as text)."""
        return report_text(self.report, self._plan, self._model) if self.report is not None else ""

    # ---- showing -----------------------------------------------------------------------------------------
    def colours(self) -> dict:
        from .umap_panel import napari_theme_colours

        return napari_theme_colours(self.state.viewer)

    def figures(self) -> list[FigureSection]:
        return [self.results.itemAt(i).widget() for i in range(self.results.count())
                if isinstance(self.results.itemAt(i).widget(), FigureSection)]

    def restyle(self) -> None:
        """The napari theme changed: every figure is drawn again in its colours."""
        colours = self.colours()
        for section in self.figures():
            section.restyle(colours)

    def _show_report(self) -> None:
        _clear_layout(self.results)
        report = self.report
        for button in (self.save_button, self.copy_button):
            button.setEnabled(report is not None)
        if report is None:
            return
        colours, add = self.colours(), self.results.addWidget
        self.header = text_block("\n".join(header_lines(report, self._plan, self._model)))
        add(self.header)
        if report.comparison is not None:
            add(text_block(report.comparison.format_table(), monospace=True))
        if BASELINE in report.evaluations:
            add(text_block(baseline_line(report)))
        for name, evaluation in report.evaluations.items():
            self._show_evaluation(name, evaluation, colours)
        if report.curve:
            self._show_curve(report.curve, colours)

    def _show_evaluation(self, name: str, evaluation, colours: dict) -> None:
        add = self.results.addWidget
        add(text_block(f"<b>{CAPTIONS.get(name, name)}</b>: {evaluation.format_table().splitlines()[0]}"))
        counts = evaluation.cells_per_class
        add(FullTable(["class", "F1", "cells"], [(n, f"{evaluation.per_class_f1[n]:.3f}", counts[n])
                                                  for n in evaluation.class_names]))
        for note in evaluation.notes:
            add(text_block(note))
        add(FigureSection(f"Confusion matrix, {CAPTIONS.get(name, name)}", partial(_draw_confusion, evaluation),
                          colours, confusion_height(len(evaluation.class_names))))

    def _show_curve(self, curve: list, colours: dict) -> None:
        add = self.results.addWidget
        add(text_block("<b>Low-shot curve (current embeddings)</b>: macro-F1 on the held-out folds after training "
                       "on fewer annotated cells (at least one per class)"))
        add(FullTable(["training cells", "share", "macro F1", "± folds"],
                      [(cells_text(row), f"{row['share']:.0%}", f"{row['macro_f1_mean']:.3f}",
                        f"{row['macro_f1_std']:.3f}") for row in curve]))
        add(FigureSection("Low-shot curve", partial(_draw_curve, curve), colours, 300))

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


def _clear_layout(layout) -> None:
    while layout.count():
        widget = layout.takeAt(0).widget()
        if widget is not None:
            widget.deleteLater()


def _draw_confusion(evaluation, figure, colours) -> None:
    draw_confusion(figure, evaluation, colours)


def _draw_curve(curve, figure, colours) -> None:
    draw_low_shot(figure, curve, colours)
