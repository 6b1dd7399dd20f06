"""A grid of cell thumbnails that stays fast with hundreds of cells.

A ``QListView`` in icon mode over a list model: Qt paints only the visible thumbnails, so 200 cells
cost no more than the 20 on screen. Pixmaps arrive in chunks (``set_pictures``) while the rest are
still grey; a coloured frame marks the annotated class. Clicking a thumbnail emits ``cell_clicked``,
a key press on the grid ``key_pressed`` (the gallery turns 1–9 into a class).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from qtpy.QtCore import QAbstractListModel, QModelIndex, QRect, QSize, Qt, Signal
from qtpy.QtGui import QColor, QImage, QPen, QPixmap
from qtpy.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

LABEL_ROLE = Qt.ItemDataRole.UserRole + 1
FRAME = 3          # px of the annotation frame
CAPTION = 16       # px of the caption line below each thumbnail
SPACING = 4
PLACEHOLDER = "#3a3f47"


def to_pixmap(rgb: np.ndarray) -> QPixmap:
    """(H, W, 3) uint8 -> QPixmap (the QImage is copied: the array may go away)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class ThumbnailModel(QAbstractListModel):
    """One row per cell: its label, caption, thumbnail (once computed) and annotation colour."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.labels: list[int] = []
        self.captions: list[str] = []
        self.tooltips: list[str] = []
        self.pixmaps: dict[int, QPixmap] = {}
        self.frames: dict[int, str] = {}   # label -> colour of its annotated class
        self._rows: dict[int, int] = {}

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(self.labels)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        label = self.labels[index.row()]
        if role == LABEL_ROLE:
            return label
        if role == Qt.ItemDataRole.DisplayRole:
            return self.captions[index.row()]
        if role == Qt.ItemDataRole.DecorationRole:
            return self.pixmaps.get(label)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.tooltips[index.row()] if self.tooltips else f"cell {label}"
        return None

    def set_cells(self, labels: Sequence[int], captions: Sequence[str], tooltips: Sequence[str] = ()) -> None:
        self.beginResetModel()
        self.labels = [int(label) for label in labels]
        self.captions = list(captions)
        self.tooltips = list(tooltips)
        self.pixmaps = {}
        self._rows = {label: row for row, label in enumerate(self.labels)}
        self.endResetModel()

    def set_pictures(self, labels: Sequence[int], pictures: np.ndarray) -> None:
        """Thumbnails of some of the cells: only their rows are repainted."""
        rows = []
        for label, picture in zip(labels, pictures):
            if int(label) in self._rows:
                self.pixmaps[int(label)] = to_pixmap(picture)
                rows.append(self._rows[int(label)])
        if rows:
            self.dataChanged.emit(self.index(min(rows)), self.index(max(rows)))

    def set_frames(self, frames: Mapping[int, str]) -> None:
        self.frames = {int(label): colour for label, colour in frames.items()}
        if self.labels:
            self.dataChanged.emit(self.index(0), self.index(len(self.labels) - 1))

    def row_of(self, label: int) -> Optional[int]:
        return self._rows.get(int(label))

    @property
    def complete(self) -> bool:
        """Every cell has its thumbnail."""
        return len(self.pixmaps) == len(self.labels)


class ThumbnailDelegate(QStyledItemDelegate):
    """Thumbnail, annotation frame, selection ring and a one-line caption."""

    def __init__(self, model: ThumbnailModel, size: int, parent=None):
        super().__init__(parent)
        self.model, self.size = model, size

    def sizeHint(self, option, index) -> QSize:  # noqa: N802 - Qt's name
        return QSize(self.size + 2 * FRAME, self.size + 2 * FRAME + CAPTION)

    def paint(self, painter, option, index) -> None:
        label = index.data(LABEL_ROLE)
        box = QRect(option.rect.x(), option.rect.y(), self.size + 2 * FRAME, self.size + 2 * FRAME)
        picture = QRect(box.x() + FRAME, box.y() + FRAME, self.size, self.size)
        painter.save()
        frame = self.model.frames.get(label)
        if frame:
            painter.fillRect(box, QColor(frame))
        pixmap = index.data(Qt.ItemDataRole.DecorationRole)
        if pixmap is None:
            painter.fillRect(picture, QColor(PLACEHOLDER))
        else:
            painter.drawPixmap(picture, pixmap)
        if option.state & QStyle.StateFlag.State_Selected:
            painter.setPen(QPen(QColor("#ffffff"), 2))
            painter.drawRect(box.adjusted(1, 1, -1, -1))
        painter.setPen(option.palette.text().color())
        caption = QRect(box.x(), box.bottom() + 1, box.width(), CAPTION)
        painter.drawText(caption, int(Qt.AlignmentFlag.AlignCenter), index.data(Qt.ItemDataRole.DisplayRole))
        painter.restore()


class ThumbnailGrid(QListView):
    """The grid itself: click a thumbnail for ``cell_clicked``, keys go to ``key_pressed``."""

    cell_clicked = Signal(int)
    key_pressed = Signal(str)

    def __init__(self, size: int = 96, parent=None):
        super().__init__(parent)
        self.thumbnails = ThumbnailModel(self)
        self.setModel(self.thumbnails)
        self.delegate = ThumbnailDelegate(self.thumbnails, size, self)
        self.setItemDelegate(self.delegate)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)   # one size for all: layout cost does not grow with the cells
        self.setSpacing(SPACING)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setMinimumHeight(240)
        self.clicked.connect(lambda index: self.cell_clicked.emit(int(index.data(LABEL_ROLE))))

    def set_thumbnail_size(self, size: int) -> None:
        self.delegate.size = int(size)
        self.scheduleDelayedItemsLayout()

    def selected_labels(self) -> list[int]:
        rows = sorted(index.row() for index in self.selectionModel().selectedIndexes())
        return [self.thumbnails.labels[row] for row in rows]

    def select_labels(self, labels: Sequence[int]) -> None:
        """Select the thumbnails of ``labels`` (those shown) without emitting ``cell_clicked``."""
        from qtpy.QtCore import QItemSelection, QItemSelectionModel

        selection = QItemSelection()
        for label in labels:
            row = self.thumbnails.row_of(label)
            if row is not None:
                selection.select(self.thumbnails.index(row), self.thumbnails.index(row))
        self.selectionModel().select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        rows = [self.thumbnails.row_of(label) for label in labels]
        rows = [row for row in rows if row is not None]
        if rows:
            self.selectionModel().setCurrentIndex(self.thumbnails.index(rows[0]), QItemSelectionModel.SelectionFlag.NoUpdate)
            self.scrollTo(self.thumbnails.index(rows[0]))

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        text = event.text()
        if text.isdigit() or event.key() in (Qt.Key.Key_Backspace, Qt.Key.Key_Delete):
            self.key_pressed.emit(text if text.isdigit() else "clear")
            event.accept()
            return
        super().keyPressEvent(event)
