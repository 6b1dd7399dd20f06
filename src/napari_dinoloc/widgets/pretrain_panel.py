"""Adapt the model to these cells: self-supervised DINO training on the image's cells, no labels needed.

The run goes through the dock's JobRunner (progress, Cancel); the loss and, when annotations exist, a
kNN macro-F1 on the annotated cells after each checkpoint arrive through signals while it runs. When it
ends, or is cancelled after a checkpoint, the model step's backbone becomes the trained teacher
(``checkpoint`` with its .safetensors file): press Embed cells there to use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget,
)

from ..core.workflows import pretraining
from ._workers import notify_info, path_row, reports_errors
from .pretrain_plot import StepPlot

CURRENT = "current"
STARTS = {
    pretraining.SHIPPED: "Shipped cell model",
    CURRENT: "Backbone of step 2",
    pretraining.SCRATCH: "Scratch (random weights)",
}
CHECKPOINT_FILES = "DINO checkpoints (*.pth);;All files (*)"
POINTS = 200  # loss points per run at most: one every total/POINTS steps


class RunRelay(QObject):
    # Emitted in the worker thread; Qt queues them to the main thread.
    loss = Signal(int, float)
    f1 = Signal(int, float)
    kept = Signal(object)  # a cancelled run's last checkpoint (JobRunner drops results of cancelled jobs)


class PretrainPanel(QWidget):
    def __init__(self, state, runner, model_panel, parent=None):
        super().__init__(parent)
        self.state, self.runner, self.model_panel = state, runner, model_panel
        self.last_run: Optional[pretraining.PretrainRun] = None
        self.relay = RunRelay()
        self._build()
        self.relay.loss.connect(self.plot.add_loss)
        self.relay.f1.connect(self._show_f1)
        self.relay.kept.connect(self._finished)
        state.image_changed.connect(self._suggest_path)

    def _build(self) -> None:
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 24 * 60)
        self.minutes.setDecimals(1)
        self.minutes.setValue(10.0)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip("Training time. Minutes give a first adaptation; hours (on a GPU: less) make a "
                                "model. A checkpoint is written every fifth of it, and kept if you press Cancel.")
        self.start_from = QComboBox()
        for key, text in STARTS.items():
            self.start_from.addItem(text, key)
        self.start_from.setToolTip("Shipped: the cell model of napari-dinoloc (offline). Backbone of step 2: the "
                                   "one chosen there (with its weights file). Scratch: random weights, needs hours.")
        self.out = QLineEdit()
        self.out.setToolTip("The training checkpoint (.pth; Resume-able from the command line); the backbone "
                            "is written beside it as .safetensors.")
        self.out_row = path_row(self.out, self._browse, "Choose where to save the model")
        self.start_button = QPushButton("Adapt the model")
        self.start_button.setToolTip("Train in the background on this image's cells (Cancel below stops it and "
                                     "keeps the last checkpoint).")
        self.plot = StepPlot(_theme_colours(self.state.viewer))
        self.summary = QLabel(pretraining.probe_text(None))
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: gray;")
        form = QFormLayout()
        form.addRow("Time", self.minutes)
        form.addRow("Start from", self.start_from)
        form.addRow("Save to", self.out_row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.start_button)
        layout.addWidget(self.plot)
        layout.addWidget(self.summary)
        self.start_button.clicked.connect(lambda _=False: self.start())
        self._suggest_path()

    # ---- choices ------------------------------------------------------------------------------------------
    def choose(self, minutes: float = 10.0, start: str = pretraining.SHIPPED, out: str = "") -> None:
        """Set the controls (tests, screenshots)."""
        self.minutes.setValue(minutes)
        self.start_from.setCurrentIndex(self.start_from.findData(start))
        if out:
            self.out.setText(out)

    def _suggest_path(self) -> None:
        """<project folder>/models/<image>-adapted.pth, unless the user chose a file."""
        from ..core.annotations import default_project_folder

        if self.out.isModified():
            return
        image = self.state.session.image
        folder = Path(self.state.project_folder or default_project_folder()) / "models"
        self.out.setText(str(folder / f"{image.name if image else 'cells'}-adapted.pth"))

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the adapted model", self.out.text(), CHECKPOINT_FILES)
        if path:
            self.out.setText(path)
            self.out.setModified(True)

    def _start_point(self) -> tuple:
        key = self.start_from.currentData()
        if key != CURRENT:
            return key, None
        return self.model_panel.spec().name, self.model_panel.weights_path()

    # ---- the run ------------------------------------------------------------------------------------------
    @reports_errors("Adapting the model")
    def start(self) -> bool:
        session = self.state.session
        session.require_cells()
        start, weights = self._start_point()
        choice = self.model_panel.model_choice()
        minutes = self.minutes.value()
        settings = pretraining.base_settings(minutes=minutes, checkpoint_minutes=max(0.1, minutes / 5),
                                             device=choice["device"])
        image, labels, out = session.image, session.labels, Path(self.out.text().strip())
        annotations = dict(self.state.annotations.annotations) if self.state.annotations else {}
        probe_settings = choice["settings"]
        relay = self.relay

        def on_step(info) -> None:
            if info.step == 1 or info.step % max(1, info.total // POINTS) == 0 or info.step == info.total:
                relay.loss.emit(info.step, info.loss)

        def on_checkpoint(step: int, teacher: Path) -> Optional[float]:
            from ..core.backbones import load_backbone

            backbone = load_backbone("checkpoint", weights=teacher, device=probe_settings.device)
            f1 = pretraining.knn_probe(backbone, image, labels, annotations, probe_settings)
            if f1 is not None:
                relay.f1.emit(step, f1)
            return f1

        def work(progress, cancel):
            cells = pretraining.session_cells(image, labels, pretraining.CROP_SIZE)
            run = pretraining.pretrain_model(cells, out, settings, start=start, weights=weights, progress=progress,
                                             cancel=cancel, on_step=on_step, on_checkpoint=on_checkpoint,
                                             keep_on_cancel=True)
            if run.stopped == "cancelled":
                relay.kept.emit(run)
            return run

        started = self.runner.run("Adapting the model", work, self._finished,
                                  on_error=lambda error: self.plot.set_title("stopped: no checkpoint was written"))
        if started:
            self.plot.clear(f"DINO on {len(session.table.label) if session.table is not None else ''} cells, "
                            f"{minutes:g} min from {STARTS[self.start_from.currentData()].lower()}")
            self.summary.setText(pretraining.probe_text(None) if not _probe_possible(annotations) else
                                 "kNN macro-F1 on the annotated cells: after the first checkpoint")
        return started

    def _show_f1(self, step: int, f1: float) -> None:
        self.plot.add_f1(step, f1)
        self.summary.setText(f"{pretraining.probe_text(f1)} (step {step})")

    def _finished(self, run: pretraining.PretrainRun) -> None:
        """The teacher becomes the backbone of step 2 at once; Embed cells there uses it."""
        self.last_run = run
        self.model_panel.choose("checkpoint")
        self.model_panel.weights.setText(str(run.teacher))
        self.plot.set_title(run.summary().split(" on ")[0])
        summary = run.summary()
        self.summary.setText(f"Saved {run.checkpoint} and its backbone {run.teacher.name}; step 2 now uses it "
                             f"(press Embed cells). {summary[0].upper()}{summary[1:]}")
        notify_info(f"Adapted model saved to {run.teacher}: step 2 ▸ Backbone now uses it; press Embed cells.")


def _probe_possible(annotations: dict) -> bool:
    return pretraining.usable_annotations(annotations) is not None


def _theme_colours(viewer) -> dict:
    from .umap_panel import napari_theme_colours

    return napari_theme_colours(viewer)
