"""The Cell gallery dock: click to centre the viewer, annotate with keys, sort by uncertainty, next cells."""

from __future__ import annotations

import json

import torch  # noqa: F401 - torch before Qt
import numpy as np
import pytest

from napari_dinoloc.core.heads import Predictions

pytestmark = pytest.mark.gui


@pytest.fixture
def gallery(make_napari_viewer, qtbot, synthetic_field, tmp_path, monkeypatch):
    from napari_dinoloc.core.images import make_cell_image
    from napari_dinoloc.widgets._state import state_for_viewer
    from napari_dinoloc.widgets.gallery_panel import GalleryWidget

    monkeypatch.setenv("NAPARI_DINOLOC_HOME", str(tmp_path))
    field = synthetic_field
    viewer = make_napari_viewer(show=True)
    for i, stain in enumerate(field.stains):
        viewer.add_image(field.image[i], name=stain, blending="additive")
    widget = GalleryWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Cell gallery", area="right")
    state = state_for_viewer(viewer)
    state.use_image(make_cell_image(field.image.astype("float32"), field.stains, "synthetic"), None,
                    list(field.stains), list(field.class_names))
    state.use_labels(field.labels)
    state.session.predictions = made_up_predictions(state.session.table.label, state.annotations.class_names)
    state.predictions_changed.emit()
    qtbot.waitUntil(lambda: widget.loaded, timeout=10000)
    return widget


def made_up_predictions(labels, class_names) -> Predictions:
    """Every cell a different, known margin, in an order unrelated to the cell numbers."""
    rng = np.random.default_rng(1)
    n, k = len(labels), len(class_names)
    top = 1.0 / k + (1 - 1.0 / k) * rng.permutation(n) / n  # distinct top probabilities
    probabilities = np.tile(((1 - top) / (k - 1))[:, None], (1, k))
    winner = rng.integers(k, size=n)
    probabilities[np.arange(n), winner] = top
    return Predictions(np.asarray(labels).copy(), tuple(class_names), probabilities.astype(np.float32))


def click_thumbnail(qtbot, widget, row: int) -> int:
    from qtpy.QtCore import Qt

    grid = widget.grid
    index = grid.thumbnails.index(row)
    grid.scrollTo(index)
    qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=grid.visualRect(index).center())
    return widget.shown_labels[row]


def test_every_cell_gets_a_thumbnail(gallery):
    table = gallery.state.session.table
    assert sorted(gallery.shown_labels) == sorted(table.label.tolist())
    assert len(gallery.grid.thumbnails.pixmaps) == len(table)
    pixmap = gallery.grid.thumbnails.pixmaps[gallery.shown_labels[0]]
    assert (pixmap.width(), pixmap.height()) == (96, 96)


def test_clicking_a_thumbnail_centres_the_viewer_on_that_cell(gallery, qtbot):
    from napari_dinoloc.widgets._layers import camera_of

    camera, table = camera_of(gallery.viewer), gallery.state.session.table
    camera.center = (0.0, 0.0)
    label = click_thumbnail(qtbot, gallery, 3)
    row = table.index_of(label)
    assert camera.center[-2:] == pytest.approx((table.centroid_y[row], table.centroid_x[row]), abs=1e-6)
    assert gallery.state.selected == [label]


def test_a_key_on_the_gallery_annotates_the_cell_in_the_store_and_the_layer(gallery, qtbot):
    from napari_dinoloc.widgets._layers import ANNOTATIONS

    state = gallery.state
    label = click_thumbnail(qtbot, gallery, 2)
    store, labels = state.annotations, state.session.labels
    layer = gallery.viewer.layers[ANNOTATIONS]
    assert label not in store.annotations
    assert not np.any(layer.data[labels == label])
    gallery.grid.setFocus()
    qtbot.keyClick(gallery.grid, "2")
    name = store.class_names[1]
    assert store.annotations[label] == name
    layer = gallery.viewer.layers[ANNOTATIONS]
    assert set(np.unique(layer.data[labels == label])) == {0, 2}  # class-coloured rim, class 2
    saved = json.loads(store.path.read_text())
    assert {"label": label, "class": name} in [{"label": c["label"], "class": c["class"]} for c in saved["cells"]]
    assert gallery.grid.thumbnails.frames[label] == store.colour_of(name)
    row = gallery.grid.thumbnails.row_of(label)
    assert f"annotated: {name}" in gallery.grid.thumbnails.tooltips[row]
    assert gallery.grid.selected_labels() == [gallery.shown_labels[3]]  # on to the next cell
    qtbot.keyClick(gallery.grid, "1")
    assert store.annotations[gallery.shown_labels[3]] == store.class_names[0]


def test_backspace_clears_the_annotation(gallery, qtbot):
    from qtpy.QtCore import Qt

    label = gallery.shown_labels[0]
    gallery.state.annotate(label, gallery.state.annotations.class_names[0])
    click_thumbnail(qtbot, gallery, 0)
    qtbot.keyClick(gallery.grid, Qt.Key.Key_Backspace)
    assert label not in gallery.state.annotations.annotations
    assert label not in gallery.grid.thumbnails.frames


def test_sort_by_uncertainty_orders_the_thumbnails_by_margin(gallery, qtbot):
    from napari_dinoloc.core.gallery import MARGIN

    predictions = gallery.state.session.predictions
    gallery.sort_combo.setCurrentIndex(gallery.sort_combo.findData(MARGIN))
    qtbot.waitUntil(lambda: gallery.loaded, timeout=10000)
    expected = np.asarray(predictions.labels)[np.argsort(predictions.margin, kind="stable")]
    assert gallery.shown_labels == expected.tolist()
    margins = dict(zip(predictions.labels.tolist(), predictions.margin.tolist()))
    assert gallery.grid.thumbnails.captions[0] == f"{expected[0]} · Δ {margins[expected[0]]:.2f}"


def test_a_predicted_class_shows_its_cells_most_probable_first(gallery):
    predictions = gallery.state.session.predictions
    name = str(predictions.predicted_names[0])
    gallery.show_combo.setCurrentIndex(gallery.show_combo.findData(f"predicted:{name}"))
    mine = predictions.predicted_names == name
    column = predictions.probabilities[:, list(predictions.class_names).index(name)]
    expected = np.asarray(predictions.labels)[mine][np.argsort(-column[mine], kind="stable")]
    assert gallery.shown_labels == expected.tolist()


def test_next_cells_fetches_the_most_uncertain_unannotated_ones(gallery, qtbot):
    from napari_dinoloc.core.gallery import MARGIN

    state, predictions = gallery.state, gallery.state.session.predictions
    by_margin = np.asarray(predictions.labels)[np.argsort(predictions.margin, kind="stable")].tolist()
    for label in by_margin[:3]:  # the three least certain are annotated already
        state.annotate(label, state.annotations.class_names[0])
    fetched = gallery.fetch_next_cells(count=5)
    qtbot.waitUntil(lambda: gallery.loaded, timeout=10000)
    assert gallery.shown_labels == by_margin[3:8]
    assert fetched.labels.tolist() == by_margin[3:8]
    assert gallery.show_combo.currentText() == "next to annotate"
    assert gallery.sort_combo.currentData() == MARGIN


def test_a_new_sort_keeps_the_fetched_cells(gallery, qtbot):
    from napari_dinoloc.core.gallery import SCORE

    fetched = gallery.fetch_next_cells(count=6).labels.tolist()
    gallery.sort_combo.setCurrentIndex(gallery.sort_combo.findData(SCORE))
    predictions = gallery.state.session.predictions
    confidence = dict(zip(predictions.labels.tolist(), predictions.confidence.tolist()))
    assert gallery.shown_labels == sorted(fetched, key=lambda label: -confidence[label])
    assert gallery.show_combo.currentText() == "next to annotate"


def test_the_next_cells_button_fills_the_gallery(gallery, qtbot):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(gallery.next_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: gallery.loaded, timeout=10000)
    predictions = gallery.state.session.predictions
    by_margin = np.asarray(predictions.labels)[np.argsort(predictions.margin, kind="stable")]
    assert gallery.shown_labels == by_margin[:24].tolist()


def test_a_cell_selected_in_the_viewer_is_selected_in_the_gallery(gallery):
    label = gallery.shown_labels[4]
    gallery.state.select_cells([label])
    assert gallery.grid.selected_labels() == [label]
