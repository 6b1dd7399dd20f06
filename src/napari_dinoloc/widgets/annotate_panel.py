"""Step 3: the class list, and annotating cells by clicking them (keys 1–9 and 0 pick the class,
n goes to the next cell, Ctrl+Z / Ctrl+Shift+Z undo and redo)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QColorDialog, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMessageBox,
    QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..core.annotations import KEYS, key_changes, next_cell_to_annotate
from ..core.errors import DinolocError
from ._layers import CELLS, centre_on_cell, find_layer
from ._workers import notify_info, report_error, reports_errors
from .cell_clicker import NEXT_KEY, REDO_KEY, UNDO_KEY, CellClicker
from .cell_editing import CellEditor

COLUMNS = ("Key", "", "Class", "Cells")


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
        keys = {key: (lambda key=key: self.pick_key(key)) for key in KEYS}
        keys.update({UNDO_KEY: self.undo, REDO_KEY: self.redo, NEXT_KEY: self.next_cell})
        self.clicker = CellClicker(state, self.current_class, keys)
        self.editor = CellEditor(state)
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
        self.remove_button.setToolTip("Remove the selected class and its annotations (asks first; Undo brings them back)")
        self.up_button, self.down_button = QPushButton("▲"), QPushButton("▼")
        for button in (self.up_button, self.down_button):
            button.setFixedWidth(28)
            button.setToolTip("Move the class (its key and its place in the model follow)")
        self.annotate_button = QPushButton("Annotate by clicking")
        self.annotate_button.setCheckable(True)
        self.annotate_button.setToolTip("Click a cell: it gets the selected class. Right-click: clear it. "
                                        "Keys 1–9 and 0 select the class, n: next cell, Ctrl+Z / Ctrl+Shift+Z: "
                                        "undo / redo. Drag to pan as usual.")
        self.next_button = QPushButton("Next cell to annotate")
        self.next_button.setToolTip("Centre the view on the unannotated cell the model is least sure about "
                                    "(smallest gap between its two most likely classes); before any model, a random one. "
                                    "Key: n (while annotating).")
        self.undo_button, self.redo_button = QPushButton("Undo"), QPushButton("Redo")
        self.edit_button = QPushButton("Edit cells")
        self.edit_button.setCheckable(True)
        self.edit_button.setToolTip("Correct the cells with napari's paint, fill and erase tools; turn off to use "
                                    "the edited cells. Otherwise the cells layer cannot be painted.")
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
        tool_row = QHBoxLayout()
        for widget in (self.undo_button, self.redo_button):
            tool_row.addWidget(widget)
        tool_row.addStretch(1)
        tool_row.addWidget(self.edit_button)
        saved_row = QHBoxLayout()
        saved_row.addWidget(self.saved_to, 1)
        saved_row.addWidget(folder_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(edit_row)
        layout.addLayout(act_row)
        layout.addLayout(tool_row)
        layout.addLayout(saved_row)

        self.add_button.clicked.connect(lambda _=False: self.add_class())
        self.new_name.returnPressed.connect(self.add_class)
        self.remove_button.clicked.connect(lambda _=False: self.remove_class())
        self.up_button.clicked.connect(lambda _=False: self.move_class(-1))
        self.down_button.clicked.connect(lambda _=False: self.move_class(+1))
        self.annotate_button.toggled.connect(self.set_annotating)
        self.next_button.clicked.connect(lambda _=False: self.next_cell())
        self.undo_button.clicked.connect(lambda _=False: self.undo())
        self.redo_button.clicked.connect(lambda _=False: self.redo())
        self.edit_button.toggled.connect(self.set_editing)
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
        for button, text, verb in ((self.undo_button, store and store.undo_text(), "Undo"),
                                   (self.redo_button, store and store.redo_text(), "Redo")):
            button.setEnabled(bool(text))
            keys = "Ctrl+Z" if verb == "Undo" else "Ctrl+Shift+Z"
            button.setToolTip(f"{verb}: {text} ({keys} while annotating)" if text else f"Nothing to {verb.lower()}")

    def _on_cells_changed(self) -> None:
        if self.editor.editing:  # new cells from elsewhere: edits of the old ones are dropped
            self.editor.editing = False
            self.edit_button.blockSignals(True)
            self.edit_button.setChecked(False)
            self.edit_button.blockSignals(False)
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
        name, store = self.current_class(), self.store()
        if name is None:
            return
        count = store.counts().get(name, 0)
        if count and QMessageBox.question(
                self, "Remove a class", f"Remove the class {name!r}? Its {count} annotated cell(s) lose their class.\n"
                "(Undo brings them back.)", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No) != QMessageBox.StandardButton.Yes:
            return
        before = store.class_names
        dropped = self.state.edit_classes(store.remove_class, name)
        changes = key_changes(before, store.class_names)
        if dropped or changes:
            notify_info(f"Removed the class {name!r}" + (f" and the class of {dropped} annotated cell(s)" if dropped else "")
                        + (f". Keys changed: {'; '.join(changes)}." if changes else "."))

    @reports_errors("Moving a class")
    def move_class(self, offset: int) -> None:
        name, store = self.current_class(), self.store()
        if name is not None:
            before = store.class_names
            self.state.edit_classes(store.move_class, name, offset)
            self.table.select_name(name)
            changes = key_changes(before, store.class_names)
            if changes:
                self.state.viewer.status = f"Keys changed: {'; '.join(changes)}"

    @reports_errors("Undo")
    def undo(self) -> Optional[str]:
        return self._step(self.store().undo, "Undone", "Nothing to undo.")

    @reports_errors("Redo")
    def redo(self) -> Optional[str]:
        return self._step(self.store().redo, "Redone", "Nothing to redo.")

    def _step(self, step, done: str, nothing: str) -> Optional[str]:
        what = self.state.edit_classes(step)
        self.state.viewer.status = f"{done}: {what}" if what else nothing
        return what

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
        if on:
            self.edit_button.setChecked(False)  # clicks annotate, they never paint
        (self.clicker.enable if on else self.clicker.disable)()
        self.annotate_button.setText("Annotating… (click cells)" if on else "Annotate by clicking")

    def set_editing(self, on: bool) -> None:
        try:
            if on:
                self.annotate_button.setChecked(False)
                self.editor.start()
                self.state.viewer.status = "Editing the cells: paint (2), fill (4), erase (1); turn 'Edit cells' off to use them"
            else:
                message = self.editor.finish()
                if message:
                    notify_info(message)
        except Exception as error:  # noqa: BLE001 - reported; the cells layer stays locked
            report_error("Editing the cells", error)
            self.edit_button.blockSignals(True)
            self.edit_button.setChecked(False)
            self.edit_button.blockSignals(False)

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
