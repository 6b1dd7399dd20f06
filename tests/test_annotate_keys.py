"""Keys in a real viewer (Xvfb): napari's paint keys never touch the plugin's cells, number keys pick
classes (1–9, then 0), n goes to the next cell, Ctrl+Z / Ctrl+Shift+Z undo and redo, Remove asks."""

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QMessageBox

from napari.utils.notifications import NotificationSeverity
from test_widgets import click_canvas, messages, open_dock, point_of, press_key, private_folders, use_truth  # noqa: F401

from napari_dinoloc.widgets import annotate_panel
from napari_dinoloc.widgets._layers import ANNOTATIONS, CELLS, find_layer

pytestmark = pytest.mark.gui
CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def press(viewer, key, modifiers=Qt.KeyboardModifier.NoModifier):
    QTest.keyClick(viewer.window._qt_viewer.canvas.native, getattr(Qt.Key, f"Key_{key}"), modifiers)


@pytest.fixture
def dock_with_cells(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    assert find_layer(viewer, CELLS) is not None
    return viewer, dock


def cell_labels(dock, n):
    return [int(label) for label in dock.state.session.table.label[:n]]


def test_napari_paint_keys_never_change_the_cells_in_or_out_of_annotate_mode(dock_with_cells):
    viewer, dock = dock_with_cells
    cells, state = find_layer(viewer, CELLS), dock.state
    before = cells.data.copy()
    first = cell_labels(dock, 1)[0]
    assert viewer.layers.selection.active is cells and not cells.editable
    for key in ("1", "2", "3", "4", "5", "7", "P", "F", "E"):  # erase, paint, polygon, fill, pick, transform
        press_key(viewer, key)
        assert cells.mode == "pan_zoom", key
        click_canvas(viewer, cells.data_to_world(point_of(state, first)))
    viewer.layers.selection.active = find_layer(viewer, ANNOTATIONS)  # the other plugin layers too
    press_key(viewer, "2")
    assert find_layer(viewer, ANNOTATIONS).mode == "pan_zoom"
    viewer.layers.selection.active = cells
    assert np.array_equal(cells.data, before) and np.array_equal(state.session.labels, before)

    dock.annotate_panel.annotate_button.click()
    store = state.annotations
    press_key(viewer, "2")
    assert dock.annotate_panel.current_class() == store.class_names[1] and cells.mode == "pan_zoom"
    click_canvas(viewer, cells.data_to_world(point_of(state, first)))
    assert store.annotations == {first: store.class_names[1]}
    assert np.array_equal(cells.data, before) and np.array_equal(state.session.labels, before)


def test_undo_and_redo_keys_in_annotate_mode(dock_with_cells):
    viewer, dock = dock_with_cells
    cells, state, panel = find_layer(viewer, CELLS), dock.state, dock.annotate_panel
    first, second = cell_labels(dock, 2)
    panel.annotate_button.click()
    press_key(viewer, "1")
    click_canvas(viewer, cells.data_to_world(point_of(state, first)))
    click_canvas(viewer, cells.data_to_world(point_of(state, second)))
    name = state.annotations.class_names[0]
    assert state.annotations.annotations == {first: name, second: name}
    assert panel.undo_button.isEnabled() and not panel.redo_button.isEnabled()

    press(viewer, "Z", CTRL)
    assert state.annotations.annotations == {first: name}
    annotated = find_layer(viewer, ANNOTATIONS).data
    assert annotated[state.session.labels == second].max() == 0  # the layer follows
    press(viewer, "Z", CTRL)
    assert state.annotations.annotations == {} and not panel.undo_button.isEnabled()
    press(viewer, "Z", CTRL | SHIFT)
    assert state.annotations.annotations == {first: name} and panel.redo_button.isEnabled()
    panel.redo_button.click()
    assert state.annotations.annotations == {first: name, second: name}
    assert np.array_equal(cells.data, state.session.labels)

    panel.annotate_button.click()  # off: Ctrl+Z is napari's again and changes no annotation
    press(viewer, "Z", CTRL)
    assert state.annotations.annotations == {first: name, second: name}


def test_remove_asks_before_dropping_annotated_cells_and_names_the_keys_that_changed(dock_with_cells, monkeypatch):
    viewer, dock = dock_with_cells
    panel, state = dock.annotate_panel, dock.state
    store = state.annotations
    names = store.class_names
    assert len(names) >= 2
    first, second = cell_labels(dock, 2)
    for label in (first, second):
        state.annotate(label, names[0])
    answers = []

    def answer(reply):
        def question(*args, **kwargs):
            answers.append(args[2])
            return reply
        return question

    panel.table.select_name(names[0])
    monkeypatch.setattr(annotate_panel.QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    panel.remove_button.click()
    assert store.class_names == names and len(store.annotations) == 2 and "2 annotated cell(s)" in answers[-1]

    monkeypatch.setattr(annotate_panel.QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    panel.remove_button.click()
    assert store.class_names == names[1:] and store.annotations == {}
    told = messages(NotificationSeverity.INFO)[-1]
    assert "2 annotated cell(s)" in told and f"{names[1]}: key 2 -> 1" in told
    panel.undo_button.click()
    assert store.class_names == names and store.annotations == {first: names[0], second: names[0]}

    panel.new_name.setText("unused")
    panel.add_button.click()
    asked = len(answers)
    panel.remove_button.click()  # no annotated cells: nothing to lose, no question
    assert len(answers) == asked and "unused" not in store.class_names


def test_ten_classes_the_tenth_has_key_0(dock_with_cells):
    viewer, dock = dock_with_cells
    panel, store = dock.annotate_panel, dock.state.annotations
    while len(store.class_names) < 11:
        panel.new_name.setText(f"class {len(store.class_names) + 1}")
        panel.add_button.click()
    tenth = store.class_names[9]
    assert [panel.table.item(row, 0).text() for row in (0, 8, 9, 10)] == ["1", "9", "0", ""]
    panel.annotate_button.click()
    press_key(viewer, "0")
    assert panel.current_class() == tenth
    press_key(viewer, "9")
    assert panel.current_class() == store.class_names[8]


def test_n_goes_to_the_next_unannotated_cell(dock_with_cells):
    viewer, dock = dock_with_cells
    state = dock.state
    dock.annotate_panel.annotate_button.click()
    annotated = cell_labels(dock, len(state.session.table) - 1)
    for label in annotated:
        state.annotate(label, state.annotations.class_names[0])
    press(viewer, "N")
    last = int(state.session.table.label[-1])
    assert state.selected == [last]
    row = state.session.table.index_of(last)
    assert np.allclose(viewer.camera.center[-2:], (state.session.table.centroid_y[row], state.session.table.centroid_x[row]))


def test_edit_cells_unlocks_the_layer_and_uses_the_edits(dock_with_cells):
    viewer, dock = dock_with_cells
    cells, state, panel = find_layer(viewer, CELLS), dock.state, dock.annotate_panel
    count = len(state.session.table)
    first = cell_labels(dock, 1)[0]
    state.annotate(first, state.annotations.class_names[0])
    panel.edit_button.click()
    assert cells.editable and cells.mode == "paint" and cells.selected_label == count + 1
    in_use = state.session.labels.copy()
    corner = next((slice(y, y + 6), slice(x, x + 6)) for y in range(0, 250, 6) for x in range(0, 250, 6)
                  if not in_use[y:y + 6, x:x + 6].any())  # background, far enough from every cell
    cells.data[corner] = count + 1  # what the brush does
    assert np.array_equal(state.session.labels, in_use)  # painting goes into a copy
    panel.edit_button.click()
    assert len(state.session.table) == count + 1 and not cells.editable
    assert state.annotations.annotations == {first: state.annotations.class_names[0]}  # annotations follow
    assert "Edited cells used" in messages(NotificationSeverity.INFO)[-1]
    press_key(viewer, "2")
    assert cells.mode == "pan_zoom"
