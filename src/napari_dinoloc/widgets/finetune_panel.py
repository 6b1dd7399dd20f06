"""Step 5: fine-tune the backbone on the annotated cells, watch it learn, then use or save it.

The engine does the work (``core.finetune``); this panel collects the settings, runs it through the
dock's JobRunner and shows the loss and validation macro-F1 of every epoch as they come. Nothing in
the session changes until "Use for all cells": a cancelled or unused run leaves the current
backbone, embeddings and classifier as they were.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import QObject, Signal
from qtpy.QtGui import QDoubleValidator
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
    QVBoxLayout, QWidget,
)

from ..core import defaults
from ..core.errors import DinolocError
from ..core.finetune import FinetuneSettings
from ..core.workflows import finetuning as workflow
from ..core.workflows.finetuning import (
    LEVEL_LABELS, FinetuneRun, epochs_title, require_run, run_summary, start_title,
)
from ..core.workflows.training import check_classes
from ._plots import F1_COLOUR, LOSS_COLOUR, TwinAxesPlot
from ._workers import notify_info, notify_warning, reports_errors

DEFAULTS = FinetuneSettings()
BUNDLE_FILES = "napari-dinoloc models (*.dinoloc);;All files (*)"
EMPTY_PLOT = "Loss and validation macro-F1\nappear here, one point per epoch."
USE_TIP = "Embed every cell again with the fine-tuned backbone and predict with its classifier."


# ---- the live plot -------------------------------------------------------------------------------------
class EpochRelay(QObject):
    # Emitted in the worker thread by the engine's on_epoch; Qt queues it to the main thread.
    epoch_done = Signal(int, float, float)


class LivePlot(TwinAxesPlot):
    """Training loss (left axis) and validation macro-F1 (right axis, 0-1) per epoch."""

    def __init__(self, colours: dict):
        super().__init__()
        (self.loss_line,) = self.loss_axes.plot([], [], "o-", color=LOSS_COLOUR, markersize=3, label="training loss")
        (self.f1_line,) = self.f1_axes.plot([], [], "s-", color=F1_COLOUR, markersize=3, label="validation macro-F1")
        # Epoch 0, the frozen backbone, competes in early stopping: its score is the line to beat.
        self.frozen_line = self.f1_axes.axhline(0, color=F1_COLOUR, linestyle=":", linewidth=1, visible=False)
        self.frozen_text = self.f1_axes.text(1.0, 0, "frozen ", color=F1_COLOUR, fontsize=7, ha="right", va="bottom",
                                             transform=self.f1_axes.get_yaxis_transform(), visible=False)
        self.message = self.loss_axes.text(0.5, 0.5, EMPTY_PLOT, transform=self.loss_axes.transAxes,
                                           ha="center", va="center", fontsize=8)
        self._style(colours)
        self.clear()

    def _style(self, colours: dict, x_label: str = "epoch", loss_label: str = "loss") -> None:
        self.colours = colours
        self.style_axes(colours, loss_label, "val. macro-F1", x_label)
        self.loss_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.message.set_color(colours["text"])
        self._title_colour = colours["text"]

    def clear(self, title: str = "") -> None:
        for line in (self.loss_line, self.f1_line):
            line.set_data([], [])
        for artist in (self.frozen_line, self.frozen_text):
            artist.set_visible(False)
        self._style(self.colours)
        self.message.set_visible(True)
        self.set_title(title)

    def add_point(self, epoch: int, loss: float, f1: float) -> None:
        self.message.set_visible(False)
        for line, value in ((self.loss_line, loss), (self.f1_line, f1)):
            line.set_data([*line.get_xdata(), epoch], [*line.get_ydata(), value])
        self._fit_axes()
        self.draw_idle()

    def show_run(self, result) -> None:
        """A finished run: its epochs (training loss, validation macro-F1), or, head only, the head's
        held-out log-loss and macro-F1 against the training cells it was fitted on."""
        self.clear(epochs_title(result))
        if result.head_curve:
            self._style(self.colours, "training cells", "val. log-loss")
            rows, x = result.head_curve, "train_cells"
            losses = [row["val_loss"] for row in rows]
        else:
            rows, x = result.history, "epoch"
            losses = [row["train_loss"] for row in rows]
        if not rows:
            return
        self.message.set_visible(False)
        self.loss_line.set_data([row[x] for row in rows], losses)
        self.f1_line.set_data([row[x] for row in rows], [row["val_f1"] for row in rows])
        self._fit_axes()
        if "initial_val_f1" in result.metrics:
            self.show_frozen(result.metrics["initial_val_f1"])
        self.draw_idle()

    def epochs(self) -> list[int]:
        return [int(x) for x in self.loss_line.get_xdata()]

    def set_title(self, title: str) -> None:
        self.loss_axes.set_title(title, fontsize=8, color=self._title_colour)
        self.draw_idle()

    def show_frozen(self, f1: float) -> None:
        """The validation macro-F1 before training (known once the run is done)."""
        self.frozen_line.set_ydata([f1, f1])
        self.frozen_text.set_y(f1)
        for artist in (self.frozen_line, self.frozen_text):
            artist.set_visible(True)
        self.draw_idle()

    def _fit_axes(self) -> None:
        xs, losses = self.loss_line.get_xdata(), [v for v in self.loss_line.get_ydata() if v > 0 and np.isfinite(v)]
        pad = 0.5 if min(xs) >= 1 and max(xs) - min(xs) < 40 else 0.05 * max(max(xs) - min(xs), 1)
        self.loss_axes.set_xlim(min(xs) - pad, max(xs) + pad)
        # A diverging first epoch would flatten every later point on a linear axis.
        spread = max(losses) / min(losses) if losses else 1.0
        self.loss_axes.set_yscale("log" if spread > 30 else "linear")
        self.loss_axes.relim()
        self.loss_axes.autoscale_view(scalex=False)


# ---- the panel ------------------------------------------------------------------------------------------
class FinetunePanel(QWidget):
    def __init__(self, state, runner, model_choice: Callable[[], dict] = dict,
                 head_kind: Callable[[], str] = lambda: defaults.HEAD, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._model_choice = model_choice  # the Model step's device and batch size
        self._head_kind = head_kind        # the classifier chosen in step 4
        self.last_run: Optional[FinetuneRun] = None
        self.relay = EpochRelay()
        self._build()
        self.relay.epoch_done.connect(self.plot.add_point)
        state.embeddings_changed.connect(self._limit_blocks)

    def _build(self) -> None:
        self.level = QComboBox()
        for level, text in LEVEL_LABELS.items():
            self.level.addItem(text, level)
        self.level.setToolTip("Head only: seconds. Last N blocks: about one embedding pass per epoch. "
                              "Whole backbone: 2-3x that, with smaller rates for earlier blocks.")
        self.blocks = _spin(1, 48, DEFAULTS.blocks, "How many transformer blocks from the top are trained.")
        self.epochs = _spin(1, 500, DEFAULTS.epochs, f"At most this many; training stops early when the validation "
                                                      f"macro-F1 has not improved for {DEFAULTS.patience} epochs.")
        self.lr = QLineEdit(f"{DEFAULTS.lr:g}")
        self.lr.setValidator(_rate_validator())
        self.lr.setToolTip(f"Learning rate of the backbone; the classifier trained with it gets "
                           f"{DEFAULTS.head_lr / DEFAULTS.lr:g}x. Pretrained DINO weights: 1e-4; random weights need about 1e-3.")
        self.start_button = QPushButton("Fine-tune")
        self.start_button.setToolTip("Train on the annotated cells in the background (Cancel below stops it; "
                                     "the current model stays in use until you press Use for all cells).")
        self.use_button = QPushButton("Use for all cells")
        self.use_button.setToolTip(USE_TIP)
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("The fine-tuned backbone and its classifier as one .dinoloc file "
                                    "(step 4 ▸ Saved model uses it on other images).")
        self.plot = LivePlot(_theme_colours(self.state.viewer))
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: gray;")
        self._lay_out()
        self._connect()
        self._show_level()
        self._show_run()

    def _lay_out(self) -> None:
        self.form = form = QFormLayout()
        form.addRow("Train", self.level)
        form.addRow("Blocks (N)", self.blocks)
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.lr)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.use_button, self.save_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.summary)

    def _connect(self) -> None:
        self.level.currentIndexChanged.connect(lambda _=None: self._show_level())
        self.start_button.clicked.connect(lambda _=False: self.start())
        self.use_button.clicked.connect(lambda _=False: self.use_for_all_cells())
        self.save_button.clicked.connect(lambda _=False: self._ask_save_path())

    def _show_level(self) -> None:
        """Only the controls the chosen level uses: head only trains no backbone (no epochs, no rate)."""
        level = self.level.currentData()
        for control, used in ((self.blocks, level == "last-blocks"), (self.epochs, level != "head"),
                              (self.lr, level != "head")):
            control.setEnabled(used)  # hidden, but also disabled for anything that reads it
            for widget in (control, self.form.labelForField(control)):
                widget.setVisible(used)

    def _limit_blocks(self) -> None:
        """At most as many blocks as the current backbone has (the spin box then says so itself)."""
        depth = len(getattr(getattr(self.state.session.backbone, "model", None), "blocks", ()))
        if depth:
            self.blocks.setMaximum(depth)

    def _show_run(self) -> None:
        """The last finished run: its curve, its summary, and its buttons (never for a diverged run)."""
        run = self.last_run
        usable = run is not None and not run.result.diverged
        for button in (self.use_button, self.save_button):
            button.setEnabled(usable)
        refused = "" if usable or run is None else f"Not offered: {run.result.divergence}"
        self.use_button.setToolTip(refused or USE_TIP)
        self.summary.setStyleSheet(f"color: {'#e5954d' if refused else 'gray'};")
        if run is None:
            self.summary.setText("")
            self.plot.clear()
        else:
            self.summary.setText(run_summary(run.result))
            self.plot.show_run(run.result)

    # ---- choices -----------------------------------------------------------------------------------------
    def choose(self, level: str = "last-blocks", blocks: int = DEFAULTS.blocks, epochs: int = DEFAULTS.epochs,
               lr: float = DEFAULTS.lr) -> None:
        """Set the controls (tests, screenshots)."""
        self.level.setCurrentIndex(self.level.findData(level))
        self.blocks.setValue(blocks)
        self.epochs.setValue(epochs)
        self.lr.setText(f"{lr:g}")

    def settings(self) -> FinetuneSettings:
        lr = _positive_rate(self.lr.text())
        return replace(DEFAULTS, level=self.level.currentData(), blocks=self.blocks.value(), epochs=self.epochs.value(),
                       lr=lr, head_lr=lr * DEFAULTS.head_lr / DEFAULTS.lr, head_kind=self._head_kind()).checked()

    def starting_point(self):
        """(() -> the backbone fine-tuning starts from, embedding settings of the current embeddings)."""
        return workflow.starting_point(self.state.session, self._model_choice().get("settings"))

    def inputs(self) -> tuple:
        """(base backbone loader, embedding settings, FinetuneSettings): what a run with these controls uses."""
        return (*self.starting_point(), self.settings())

    # ---- fine-tuning -------------------------------------------------------------------------------------
    @reports_errors("Fine-tuning")
    def start(self) -> bool:
        session, store = self.state.session, self.state.annotations
        settings = self.settings()
        load_base, embed_settings = self.starting_point()
        annotations = dict(store.annotations)  # a copy: clicks during training do not change this run
        check_classes(annotations, store.used_class_names())
        cells = [(session.image, session.labels, annotations)]
        on_epoch = self.relay.epoch_done.emit

        def work(progress, cancel):
            return workflow.finetune_run(cells, load_base, embed_settings, settings, progress, cancel, on_epoch)

        started = self.runner.run("Fine-tuning", work, self._finished, on_error=self._stopped)
        if started:
            self.plot.clear(start_title(settings))
        return started

    def _finished(self, run: FinetuneRun) -> None:
        self.last_run, result = run, run.result
        self._show_run()
        if result.diverged:
            notify_warning(f"{result.divergence} (Use for all cells and Save are not offered for this run.)")
            return
        notify_info(f"Fine-tuning done: {run_summary(result)} Press Use for all cells to predict with it, or save it.")

    def _stopped(self, error) -> None:
        """Cancelled or failed: the last finished run's curve comes back, with its summary."""
        self._show_run()
        if self.last_run is None:
            self.plot.set_title("stopped: nothing was changed")

    # ---- using and saving the result -----------------------------------------------------------------------
    @reports_errors("Using the fine-tuned model")
    def use_for_all_cells(self) -> bool:
        session, run = self.state.session, require_run(self.last_run)
        session.require_cells()
        workflow.check_fits(run, session.image.stains)
        labels = session.labels

        def work(progress, cancel):
            return workflow.embed_with_run(session, run, progress, cancel)

        return self.runner.run("Embedding with the fine-tuned backbone", work,
                               lambda done: self._use(labels, run, *done))

    def _use(self, labels, run: FinetuneRun, backbone, embeddings) -> None:
        if self.state.session.labels is not labels:
            notify_info("The cells changed meanwhile: press Use for all cells again.")
            return
        self.state.use_embeddings(backbone, embeddings)
        self.state.use_head(run.result.head)
        notify_info(f"Predicting with the fine-tuned model: {len(embeddings.labels)} cells embedded again "
                    f"(weights {backbone.weights_hash[:22]}…).")

    def _ask_save_path(self) -> None:
        image = self.state.session.image
        folder = Path(self.state.image_path).parent if self.state.image_path else Path.cwd()
        default = folder / f"{image.name if image else 'model'}-finetuned.dinoloc"
        path, _ = QFileDialog.getSaveFileName(self, "Save the fine-tuned model", str(default), BUNDLE_FILES)
        if path:
            self.save_model(path)

    @reports_errors("Saving the fine-tuned model")
    def save_model(self, path: str) -> bool:
        run = require_run(self.last_run)

        def work(progress, cancel):
            return workflow.save_run(run, path, progress=progress, cancel=cancel)

        return self.runner.run("Saving the fine-tuned model", work, _saved)


# ---- texts -------------------------------------------------------------------------------------------------
def _saved(path) -> None:
    notify_info(f"Saved the fine-tuned model to {path}: choose it under step 4 ▸ Saved model to use it on other images.")


# ---- small helpers ----------------------------------------------------------------------------------------
def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _rate_validator() -> QDoubleValidator:
    validator = QDoubleValidator(1e-9, 1.0, 12)
    validator.setNotation(QDoubleValidator.Notation.ScientificNotation)
    return validator


def _positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise DinolocError(f"The learning rate must be a positive number such as 1e-4 (got {text!r}).")
    return value


def _theme_colours(viewer) -> dict:
    from .umap_panel import napari_theme_colours

    return napari_theme_colours(viewer)
