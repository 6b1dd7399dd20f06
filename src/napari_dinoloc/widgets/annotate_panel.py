"""Step 3: the class list, and annotating cells by clicking them (keys 1–9 pick the class)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QColorDialog, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..core.annotations import KEYS, next_cell_to_annotate
from ..core.errors import DinolocError
from ._layers import ANNOTATIONS, CELLS, PREDICTED, centre_on_cell, find_layer
from ._workers import notify_info, report_error, reports_errors

CLICK_TOLERANCE = 4  # canvas pixels a press may move and still count as a click, not a pan
COLUMNS = ("Key", "", "Class", "Cells")
HELP = "click a cell: give it the selected class, right-click: clear it, 1–9: select the class, drag: pan"


class CellClicker:
    """While on: a click on a cell gives it the current class, a right-click clears it, keys 1–9
    pick the class. Drags still pan the view."""

    def __init__(self, state, current_class, pick_class):
        self.state = state
        self._current_class = current_class  # () -> class name or None
        self._pick_class = pick_class        # (key) -> None
        self.enabled = False

    @property
    def viewer(self):
        return self.state.viewer

    def enable(self) -> None:
        if self.enabled:
            return
        self.enabled = True
        self.viewer.mouse_drag_callbacks.append(self._on_press)
        for target in self._key_targets():
            for key in KEYS:
                target.bind_key(key, self._key_handler(key), overwrite=True)
        cells = find_layer(self.viewer, CELLS)
        if cells is not None:
            # Our layer active in pan/zoom mode: clicks never paint, and its 1–9 bindings win.
            self.viewer.layers.selection.active = cells
            cells.mode = "pan_zoom"
            cells.help = HELP

    def disable(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        viewer = self.viewer
        if viewer is None:
            return
        if self._on_press in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._on_press)
        for target in self._key_targets():
            for key in KEYS:
                target.bind_key(key, None)
        cells = find_layer(viewer, CELLS)
        if cells is not None and cells.help == HELP:
            cells.help = ""

    def _key_targets(self):
        layers = [find_layer(self.viewer, name) for name in (CELLS, ANNOTATIONS, PREDICTED)]
        return [self.viewer, *(layer for layer in layers if layer is not None)]

    def _key_handler(self, key: str):
        def pick(_provider):
            self._pick_class(key)

        return pick

    def watch_selection(self, cells_layer) -> None:
        """Outside annotate mode a click on a cell selects it (shift-click: add or remove), so the
        UMAP dock can highlight it."""
        if self._on_select_press not in cells_layer.mouse_drag_callbacks:
            cells_layer.mouse_drag_callbacks.append(self._on_select_press)

    def _on_press(self, viewer, event):
        if event.button in (1, 2) and not event.modifiers:
            yield from _on_click(event, lambda position: self.click(position, erase=event.button == 2))

    def _on_select_press(self, layer, event):
        if not self.enabled and event.button == 1 and layer.mode == "pan_zoom":
            yield from _on_click(event, lambda position: self.select(position, add="Shift" in event.modifiers))

    def click(self, world_position, erase: bool = False) -> Optional[int]:
        """Annotate the cell at ``world_position``; returns its label (None on background)."""
        label = self.cell_at(world_position)
        if not label:
            return None
        name = None if erase else self._current_class()
        if name is None and not erase:
            notify_info("Add a class first (type its name and press Add), then click cells.")
            return None
        try:
            self.state.annotate(label, name)
        except Exception as error:  # noqa: BLE001 - a failed save is reported, the viewer keeps running
            report_error("Annotating", error)
            return None
        if label in self.state.selected:  # the white outline would hide the class colour
            self.state.select_cells([other for other in self.state.selected if other != label])
        return label

    def select(self, world_position, add: bool = False) -> None:
        label = self.cell_at(world_position)
        selected = list(self.state.selected) if add else []
        if label and label in selected:
            selected.remove(label)
        elif label:
            selected.append(label)
        self.state.select_cells(selected)

    def cell_at(self, world_position) -> int:
        session = self.state.session
        cells = find_layer(self.viewer, CELLS)
        if session.labels is None or cells is None:
            return 0
        y, x = np.round(cells.world_to_data(world_position)[-2:]).astype(int)
        height, width = session.labels.shape
        return int(session.labels[y, x]) if 0 <= y < height and 0 <= x < width else 0


def _on_click(event, on_click):
    """Drive a napari drag callback: call ``on_click(position)`` on release unless the mouse moved
    (then it was a pan)."""
    position, start = tuple(event.position), np.asarray(event.pos, dtype=float)
    yield
    moved = False
    while event.type == "mouse_move":
        moved = moved or np.linalg.norm(np.asarray(event.pos, dtype=float) - start) > CLICK_TOLERANCE
        yield
    if not moved:
        on_click(position)


class ClassTable(QTableWidget):
    """Key, colour, name (editable) and number of annotated cells of each class."""

    def __init__(self, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().hide()
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        header = self.horizontalHeader()
        for column, mode in enumerate((QHeaderView.ResizeMode.ResizeToContents, QHeaderView.ResizeMode.Fixed,
                                       QHeaderView.ResizeMode.Stretch, QHeaderView.ResizeMode.ResizeToContents)):
            header.setSectionResizeMode(column, mode)
        self.setColumnWidth(1, 22)
        self.verticalHeader().setDefaultSectionSize(22)
        self.setMinimumHeight(24 + 22 * 4)

    def show_classes(self, store) -> None:
        self.blockSignals(True)
        current = self.current_name()
        counts = store.counts() if store is not None else {}
        classes = store.classes if store is not None else []
        self.setRowCount(len(classes))
        for row, cls in enumerate(classes):
            self.setItem(row, 0, _fixed(store.key_of(cls.name), Qt.AlignmentFlag.AlignCenter))
            swatch = _fixed("")
            swatch.setIcon(colour_icon(cls.colour))  # an icon keeps its colour when the row is selected
            swatch.setToolTip("Double-click to change the colour")
            self.setItem(row, 1, swatch)
            name = QTableWidgetItem(cls.name)
            name.setData(Qt.ItemDataRole.UserRole, cls.name)
            name.setToolTip("Double-click to rename")
            self.setItem(row, 2, name)
            self.setItem(row, 3, _fixed(str(counts.get(cls.name, 0)), Qt.AlignmentFlag.AlignRight))
        names = [c.name for c in classes]
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + 22 * min(max(len(names), 4), 10) + 4)
        self.select_name(current if current in names else (names[0] if names else None))
        self.blockSignals(False)

    def current_name(self) -> Optional[str]:
        row = self.currentRow()
        item = self.item(row, 2) if row >= 0 else None
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def select_name(self, name: Optional[str]) -> None:
        for row in range(self.rowCount()):
            if self.item(row, 2).data(Qt.ItemDataRole.UserRole) == name:
                self.selectRow(row)
                self.setCurrentCell(row, 2)
                return


class AnnotatePanel(QWidget):
    def __init__(self, state, runner, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self.clicker = CellClicker(state, self.current_class, self.pick_key)
        self._rng = np.random.default_rng(0)
        self._build()
        state.annotations_changed.connect(self.refresh)
        state.cells_changed.connect(self._on_cells_changed)
        self.refresh()

    def _build(self) -> None:
        self.table = ClassTable()
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("new class name")
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected class and its annotations")
        self.up_button, self.down_button = QPushButton("▲"), QPushButton("▼")
        for button in (self.up_button, self.down_button):
            button.setFixedWidth(28)
            button.setToolTip("Move the class (its key and its place in the model follow)")
        self.annotate_button = QPushButton("Annotate by clicking")
        self.annotate_button.setCheckable(True)
        self.annotate_button.setToolTip("Click a cell: it gets the selected class. Right-click: clear it. "
                                        "Keys 1–9 select the class. Drag to pan as usual.")
        self.next_button = QPushButton("Next cell to annotate")
        self.next_button.setToolTip("Centre the view on the unannotated cell the model is least sure about "
                                    "(smallest gap between its two most likely classes); before any model, a random one.")
        self.saved_to = QLabel()
        self.saved_to.setWordWrap(True)
        self.saved_to.setStyleSheet("color: gray;")
        folder_button = QPushButton("Folder…")
        folder_button.setToolTip("Keep annotations in a project folder instead of next to the image")

        edit_row = QHBoxLayout()
        edit_row.addWidget(self.new_name, 1)
        for widget in (self.add_button, self.remove_button, self.up_button, self.down_button):
            edit_row.addWidget(widget)
        act_row = QHBoxLayout()
        act_row.addWidget(self.annotate_button)
        act_row.addWidget(self.next_button)
        saved_row = QHBoxLayout()
        saved_row.addWidget(self.saved_to, 1)
        saved_row.addWidget(folder_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(edit_row)
        layout.addLayout(act_row)
        layout.addLayout(saved_row)

        self.add_button.clicked.connect(lambda _=False: self.add_class())
        self.new_name.returnPressed.connect(self.add_class)
        self.remove_button.clicked.connect(lambda _=False: self.remove_class())
        self.up_button.clicked.connect(lambda _=False: self.move_class(-1))
        self.down_button.clicked.connect(lambda _=False: self.move_class(+1))
        self.annotate_button.toggled.connect(self.set_annotating)
        self.next_button.clicked.connect(lambda _=False: self.next_cell())
        folder_button.clicked.connect(lambda _=False: self._choose_folder())
        self.table.itemChanged.connect(self._on_item_edited)
        self.table.cellDoubleClicked.connect(self._on_double_click)

    # ---- display --------------------------------------------------------------------------------------
    def refresh(self) -> None:
        store = self.state.annotations
        self.table.show_classes(store)
        empty = store is not None and not store.classes
        self.new_name.setPlaceholderText("first class, e.g. nucleoli; then Add" if empty else "new class name")
        self.saved_to.setText(f"Saved to {store.path}" if store is not None and store.path else
                              "Annotations are saved next to the image once it is chosen.")

    def _on_cells_changed(self) -> None:
        if self.state.session.labels is None:
            self.annotate_button.setChecked(False)
            return
        cells = find_layer(self.state.viewer, CELLS)
        if cells is not None:
            self.clicker.watch_selection(cells)
        if self.clicker.enabled:  # new layers need the key bindings too
            self.clicker.disable()
            self.clicker.enable()

    # ---- the class list -------------------------------------------------------------------------------
    def store(self):
        if self.state.annotations is None:
            raise DinolocError("Choose the image first (Image and cells: segment or use a label image); "
                               "the classes are saved with it.")
        return self.state.annotations

    def current_class(self) -> Optional[str]:
        return self.table.current_name()

    def pick_key(self, key: str) -> None:
        name = self.state.annotations.class_for_key(key) if self.state.annotations else None
        if name is not None:
            self.table.select_name(name)
            self.state.viewer.status = f"Annotating: {name}"

    @reports_errors("Adding a class")
    def add_class(self) -> None:
        name = self.state.edit_classes(self.store().add_class, self.new_name.text())
        self.new_name.clear()
        self.table.select_name(name)

    @reports_errors("Removing a class")
    def remove_class(self) -> None:
        name = self.current_class()
        if name is not None:
            dropped = self.state.edit_classes(self.store().remove_class, name)
            if dropped:
                notify_info(f"Removed the class {name!r} and its {dropped} annotated cell(s).")

    @reports_errors("Moving a class")
    def move_class(self, offset: int) -> None:
        name = self.current_class()
        if name is not None:
            self.state.edit_classes(self.store().move_class, name, offset)
            self.table.select_name(name)

    def _on_item_edited(self, item: QTableWidgetItem) -> None:
        if item.column() != 2:
            return
        old = item.data(Qt.ItemDataRole.UserRole)
        try:
            new = self.state.edit_classes(self.store().rename_class, old, item.text())
        except DinolocError as error:
            report_error("Renaming a class", error)
            self.refresh()
            return
        self.table.select_name(new)

    def _on_double_click(self, row: int, column: int) -> None:
        if column != 1:
            return
        name = self.table.item(row, 2).data(Qt.ItemDataRole.UserRole)
        colour = QColorDialog.getColor(QColor(self.store().colour_of(name)), self, f"Colour of {name}")
        if colour.isValid():
            self.state.edit_classes(self.store().set_colour, name, colour.name())

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder for annotations")
        if folder:
            self.state.set_project_folder(folder)

    # ---- annotating -----------------------------------------------------------------------------------
    @reports_errors("Annotating")
    def set_annotating(self, on: bool) -> None:
        if on and self.state.session.labels is None:
            self.annotate_button.setChecked(False)
            raise DinolocError("There are no cells yet: segment the image or use a label image first.")
        (self.clicker.enable if on else self.clicker.disable)()
        self.annotate_button.setText("Annotating… (click cells)" if on else "Annotate by clicking")

    @reports_errors("Finding the next cell")
    def next_cell(self) -> Optional[int]:
        session = self.state.session
        session.require_cells()
        label = next_cell_to_annotate(session.table.label, self.store().annotations, session.predictions, self._rng)
        if label is None:
            notify_info("Every cell is annotated.")
            return None
        self._centre_on(label)
        self.state.select_cells([label])
        if not self.annotate_button.isChecked():
            self.annotate_button.setChecked(True)
        return label

    def _centre_on(self, label: int) -> None:
        centre_on_cell(self.state.viewer, self.state.session.table, label)


def colour_icon(colour: str, size: int = 12):
    from qtpy.QtGui import QIcon, QPixmap

    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(colour))
    icon = QIcon(pixmap)
    icon.addPixmap(pixmap, QIcon.Mode.Selected)  # no selection tint: the colour stays readable
    return icon


def _fixed(text: str, align=None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if align is not None:
        item.setTextAlignment(int(align | Qt.AlignmentFlag.AlignVCenter))
    return item
