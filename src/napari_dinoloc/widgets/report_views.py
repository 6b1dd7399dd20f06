"""What the Report panel shows: figures drawn in the napari theme (each with "Open bigger…"), and
tables that show every row without a scroll bar of their own."""

from __future__ import annotations

from typing import Callable, Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView, QDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSizePolicy, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

#: draw(figure, colours): an engine drawing function (core.evaluation.draw_*) bound to its data
Draw = Callable[[Figure, dict], None]


class ThemedFigure(FigureCanvasQTAgg):
    """A matplotlib figure in the dock, drawn again in the theme's colours whenever the theme changes."""

    def __init__(self, draw: Draw, colours: dict, height: int):
        super().__init__(Figure(figsize=(4, height / 100), dpi=100, layout="constrained"))
        self._draw = draw
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(height)
        self.restyle(colours)

    def restyle(self, colours: dict) -> None:
        self.colours = colours
        self._draw(self.figure, colours)
        self.draw_idle()


class FigureDialog(QDialog):
    """The same figure in its own resizable window, with matplotlib's zoom and save toolbar."""

    def __init__(self, title: str, draw: Draw, colours: dict, parent=None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.canvas = ThemedFigure(draw, colours, 700)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(300)
        self.canvas.setMaximumHeight(16777215)
        layout = QVBoxLayout(self)
        layout.addWidget(NavigationToolbar2QT(self.canvas, self))
        layout.addWidget(self.canvas)
        self.resize(900, 800)


class FigureSection(QWidget):
    """A caption, an "Open bigger…" button and the figure."""

    def __init__(self, caption: str, draw: Draw, colours: dict, height: int, parent=None):
        super().__init__(parent)
        self.caption, self._draw = caption, draw
        self.figure = ThemedFigure(draw, colours, height)
        self.bigger_button = QPushButton("Open bigger…")
        self.bigger_button.setToolTip("This figure in its own window: resize it, zoom, save it.")
        self.bigger_button.clicked.connect(lambda _=False: self.open_bigger())
        self.dialogs: list[FigureDialog] = []
        top = QHBoxLayout()
        top.addWidget(_caption(caption), 1)
        top.addWidget(self.bigger_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.figure)

    def restyle(self, colours: dict) -> None:
        self.figure.restyle(colours)
        for dialog in self.dialogs:
            dialog.canvas.restyle(colours)

    def open_bigger(self) -> FigureDialog:
        dialog = FigureDialog(self.caption, self._draw, self.figure.colours, self)
        self.dialogs.append(dialog)  # kept: a dialog without an owner would be collected at once
        dialog.show()
        return dialog


class FullTable(QTableWidget):
    """A read-only table as tall as its rows: the dock scrolls, not the table."""

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence], parent=None):
        super().__init__(len(rows), len(headers), parent)
        self.setHorizontalHeaderLabels(list(headers))
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                item = QTableWidgetItem(str(value))
                if j > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.setItem(i, j, item)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for j in range(1, len(headers)):
            header.setSectionResizeMode(j, QHeaderView.ResizeMode.ResizeToContents)
        self.resizeRowsToContents()
        height = header.height() + sum(self.rowHeight(i) for i in range(len(rows))) + 2 * self.frameWidth()
        self.setFixedHeight(height + 2)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def cell_text(self, row: int, column: int) -> str:
        return self.item(row, column).text()


def text_block(text: str, monospace: bool = False) -> QLabel:
    """Text that wraps with the dock and can be selected and copied."""
    label = QLabel(text)
    label.setWordWrap(not monospace)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if monospace:
        from qtpy.QtGui import QFontDatabase

        label.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    return label


def _caption(text: str) -> QLabel:
    label = QLabel(f"<b>{text}</b>")
    label.setWordWrap(True)
    return label


def confusion_height(n_classes: int) -> int:
    """Pixels of the confusion matrix in the dock: every count readable up to a dozen classes."""
    return max(320, min(760, 240 + 32 * n_classes))
