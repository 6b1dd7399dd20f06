"""Reopening an image (a new dock on the sample, or the same file opened again) brings back its
cells, annotations and predictions without segmenting again."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_dinoloc.core.pipeline import Session
from napari_dinoloc.widgets._layers import ANNOTATIONS, CELLS, PREDICTED, find_layer
from test_widgets import cells_of_true_class, embed, messages, open_dock, segment, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DINOLOC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))
    notification_manager.records.clear()


def forbid_segmenting(monkeypatch) -> None:
    def segmented_again(*args, **kwargs):
        raise AssertionError("the cells were segmented again instead of restored")

    monkeypatch.setattr(Session, "find_cells", segmented_again)
    monkeypatch.setattr(Session, "segment", segmented_again)


def wait_restored(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.image_panel.restorer.busy, timeout=20000)


def annotate_two_classes(viewer, state) -> dict:
    groups = {name: cells for name, cells in cells_of_true_class(viewer, state).items()
              if name in state.annotations.class_names}
    clicked = {}
    for name, members in list(groups.items())[:2]:
        for label, _ in members[:2]:
            state.annotate(label, name)
            clicked[label] = name
    assert len(set(clicked.values())) == 2
    return clicked


def test_a_new_dock_on_the_same_image_restores_cells_annotations_and_predictions(make_napari_viewer, qtbot, monkeypatch):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    state = dock.state
    dock.image_panel.measure()  # sizes in the controls: they come back with the cells
    sizes = (dock.image_panel.nucleus_diameter.value(), dock.image_panel.cell_diameter.value())
    assert sizes[0] > 0
    segment(qtbot, dock)
    embed(qtbot, dock)
    annotations = annotate_two_classes(viewer, state)
    dock.predict_panel.choose("logistic")
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    labels, predictions = state.session.labels.copy(), state.session.predictions
    assert predictions is not None
    viewer.close()

    forbid_segmenting(monkeypatch)
    notification_manager.records.clear()
    viewer2, dock2 = open_dock(make_napari_viewer, qtbot)  # the same sample, a new viewer and dock
    state2 = dock2.state
    assert state2.session.labels is None  # restored after the layer events, not inside them
    wait_restored(qtbot, dock2)
    assert np.array_equal(state2.session.labels, labels)
    restored = state2.session.predictions
    assert restored is not None and restored.class_names == predictions.class_names
    assert np.array_equal(restored.labels, predictions.labels)
    assert np.allclose(restored.probabilities, predictions.probabilities)
    assert state2.annotations.annotations == annotations
    for layer in (CELLS, ANNOTATIONS, PREDICTED):
        assert find_layer(viewer2, layer) is not None, layer
    note = dock2.image_panel.restored_note.text()
    assert note.startswith(f"Restored {len(np.unique(labels)) - 1} cells and predictions from ") and "stale" not in note
    assert note in messages(NotificationSeverity.INFO)
    assert (dock2.image_panel.nucleus_diameter.value(), dock2.image_panel.cell_diameter.value()) == sizes
    assert dock2.predict_panel.legend.rowCount() == len(predictions.class_names)
    assert not messages(NotificationSeverity.ERROR)

    # One more annotation, then reopened: the predictions come back marked stale.
    unannotated = next(int(label) for label in state2.session.table.label if int(label) not in annotations)
    state2.annotate(unannotated, next(iter(annotations.values())))
    viewer2.close()
    viewer3, dock3 = open_dock(make_napari_viewer, qtbot)
    wait_restored(qtbot, dock3)
    assert dock3.state.session.predictions is not None
    assert "the predictions are stale (your annotations changed since)" in dock3.image_panel.restored_note.text()


def test_the_same_file_opened_again_gets_its_cells_back(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import tifffile

    from napari_dinoloc._sample_data import synthetic_layers
    from napari_dinoloc.widgets.dock import DinolocWidget

    (image, _, _), _ = synthetic_layers(1, shape=(256, 256), n_cells=15)[:2]
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, image)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari")
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    segment(qtbot, dock)
    labels = dock.state.session.labels.copy()
    assert (tmp_path / "field.tif.dinoloc-analysis.npz").exists()

    forbid_segmenting(monkeypatch)
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari")
    assert find_layer(viewer, CELLS) is None  # restored after the layer events, not inside them
    wait_restored(qtbot, dock)
    assert np.array_equal(dock.state.session.labels, labels)
    assert find_layer(viewer, CELLS) is not None
    assert dock.image_panel.restored_note.text().startswith(f"Restored {int(labels.max())} cells from ")
    assert not messages(NotificationSeverity.ERROR)
