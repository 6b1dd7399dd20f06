"""A small live plot for a dock: a loss on the left axis, a macro-F1 (0-1) on the right, in the napari theme."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy

LOSS_COLOUR, F1_COLOUR = "#e5954d", "#5ab4e5"


class TwinAxesPlot(FigureCanvasQTAgg):
    """The canvas both training plots share (fine-tuning per epoch, pretraining per step)."""

    def __init__(self):
        figure = Figure(figsize=(3.4, 2.3), dpi=100, layout="constrained")
        super().__init__(figure)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(210)
        self.loss_axes = figure.add_subplot(111)
        self.f1_axes = self.loss_axes.twinx()

    def style_axes(self, colours: dict, loss_label: str, f1_label: str, x_label: str) -> None:
        self.figure.set_facecolor(colours["background"])
        self.loss_axes.set_facecolor(colours["canvas"])
        for axes, label, colour in ((self.loss_axes, loss_label, LOSS_COLOUR), (self.f1_axes, f1_label, F1_COLOUR)):
            axes.set_ylabel(label, color=colour, fontsize=8)
            axes.tick_params(colors=colours["text"], labelsize=7)
            for spine in axes.spines.values():
                spine.set_color(colours["secondary"])
        self.loss_axes.set_xlabel(x_label, color=colours["text"], fontsize=8)
        self.f1_axes.set_ylim(0, 1.02)
