"""The live plot of a pretraining run: DINO loss per step (left axis), kNN macro-F1 at checkpoints (right)."""

from __future__ import annotations

from ._plots import F1_COLOUR, LOSS_COLOUR, TwinAxesPlot
EMPTY_PLOT = "The DINO loss appears here as the run goes;\nwith annotations, the kNN macro-F1 at each checkpoint."


class StepPlot(TwinAxesPlot):
    def __init__(self, colours: dict):
        super().__init__()
        (self.loss_line,) = self.loss_axes.plot([], [], "-", color=LOSS_COLOUR, linewidth=1.2, label="DINO loss")
        (self.f1_line,) = self.f1_axes.plot([], [], "s-", color=F1_COLOUR, markersize=4, label="kNN macro-F1")
        self.message = self.loss_axes.text(0.5, 0.5, EMPTY_PLOT, transform=self.loss_axes.transAxes,
                                           ha="center", va="center", fontsize=8)
        self.style_axes(colours, "DINO loss", "kNN macro-F1", "step")
        self.message.set_color(colours["text"])
        self._title_colour = colours["text"]
        self.clear()

    def clear(self, title: str = "") -> None:
        for line in (self.loss_line, self.f1_line):
            line.set_data([], [])
        self.message.set_visible(True)
        self.set_title(title)

    def add_loss(self, step: int, loss: float) -> None:
        self._append(self.loss_line, step, loss)

    def add_f1(self, step: int, f1: float) -> None:
        self._append(self.f1_line, step, f1)

    def steps(self) -> list[int]:
        return [int(x) for x in self.loss_line.get_xdata()]

    def f1_points(self) -> list[tuple[int, float]]:
        return [(int(x), float(y)) for x, y in zip(self.f1_line.get_xdata(), self.f1_line.get_ydata())]

    def set_title(self, title: str) -> None:
        self.loss_axes.set_title(title, fontsize=8, color=self._title_colour)
        self.draw_idle()

    def _append(self, line, x, y) -> None:
        self.message.set_visible(False)
        line.set_data([*line.get_xdata(), x], [*line.get_ydata(), y])
        last = max([*self.loss_line.get_xdata(), *self.f1_line.get_xdata(), 1])
        self.loss_axes.set_xlim(0, last * 1.02 + 0.5)
        self.loss_axes.relim()
        self.loss_axes.autoscale_view(scalex=False)
        self.draw_idle()
