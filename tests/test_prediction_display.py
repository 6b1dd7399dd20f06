"""How predictions are drawn in the viewer: rims by default, fill with an opacity, colour by confidence,
unfamiliar cells marked and warned about; rims sized for the image."""

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401

from napari.utils.notifications import NotificationSeverity

from napari_dinoloc.core.heads import Familiarity
from napari_dinoloc.core.palette import CONFIDENCE_COLOURS, confidence_bins
from napari_dinoloc.widgets._layers import ANNOTATIONS, CELLS, PREDICTED, find_layer
from napari_dinoloc.widgets._prediction_layers import UNFAMILIAR, edge_distance, find_points, outline_width, rim

from test_widgets import embed, messages, open_dock, private_folders, use_truth, wait_idle  # noqa: F401

pytestmark = pytest.mark.gui


def test_rim_width_grows_with_the_image():
    assert outline_width((256, 256)) == 1 and outline_width((1728, 1728)) == 3 and outline_width((2, 4000, 3000)) == 7


def test_rims_are_measured_inward_from_each_cell_edge():
    labels = np.zeros((20, 30), np.int32)
    labels[2:18, 2:14], labels[2:18, 14:28] = 1, 2  # two touching cells
    distance = edge_distance(labels)
    outer, inner = rim(labels, distance, 0, 2), rim(labels, distance, 2, 4)
    assert outer[2, 8] and outer[8, 13] and outer[8, 14] and not outer[8, 8]  # both sides of the shared edge
    assert inner[8, 5] and not inner[8, 3] and not inner[10, 8] and not (inner & outer).any()
    assert not rim(labels, distance, 0, 100)[labels == 0].any()


def trained_dock(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    embed(qtbot, dock)
    truth = find_layer(viewer, "ground truth cells").features
    by_class = truth.groupby("true_class")["label"].apply(list)
    for name, labels in [(n, ls) for n, ls in by_class.items() if len(ls) >= 2][:2]:
        for label in labels[:2]:
            dock.state.annotate(int(label), name)
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert dock.state.session.predictions is not None
    return viewer, dock


def test_rims_fill_opacity_and_confidence_colours(make_napari_viewer, qtbot):
    viewer, dock = trained_dock(make_napari_viewer, qtbot)
    session, options = dock.state.session, dock.predict_panel.display
    layer, labels = find_layer(viewer, PREDICTED), session.labels
    inside = labels > 0
    # Rims by default: most of each cell shows the protein, not the class colour; fully opaque.
    assert 0 < np.count_nonzero(layer.data[inside]) < 0.8 * np.count_nonzero(inside) and layer.opacity == 1.0
    # The annotation rim lies outside the predicted rim: no pixel holds both.
    assert not (find_layer(viewer, ANNOTATIONS).data.astype(bool) & layer.data.astype(bool)).any()
    assert find_layer(viewer, CELLS).contour == 1  # 256 px image

    options.style_box.setCurrentText("Filled")
    assert np.count_nonzero(layer.data[inside]) == np.count_nonzero(inside) and layer.opacity == pytest.approx(0.45)
    options.opacity.setValue(70)
    assert layer.opacity == pytest.approx(0.70)

    options.colour_box.setCurrentIndex(options.colour_box.findData("confidence"))
    predictions = session.predictions
    bins = dict(zip(predictions.labels.tolist(), confidence_bins(predictions.confidence).tolist()))
    for label in session.table.label[:5]:
        assert np.unique(layer.data[labels == label]).tolist() == [bins[int(label)]]
    expected = [[int(c[j:j + 2], 16) / 255 for j in (1, 3, 5)] for c in (CONFIDENCE_COLOURS[0], CONFIDENCE_COLOURS[-1])]
    assert np.allclose([layer.colormap.map(i)[:3] for i in (1, 5)], expected, atol=1e-3)  # unsure rose ... sure azure
    legend = dock.predict_panel.legend
    assert legend.rowCount() == len(CONFIDENCE_COLOURS) and legend.item(4, 1).text() == "confidence 0.90–1.00"
    assert sum(int(legend.item(r, 2).text()) for r in range(5)) == len(predictions.labels)


def test_unfamiliar_cells_are_marked_and_most_of_them_warn(make_napari_viewer, qtbot):
    viewer, dock = trained_dock(make_napari_viewer, qtbot)
    state = dock.state
    head = state.session.head
    assert "cells unfamiliar" in dock.predict_panel.summary.text()

    # A head whose training cells lie elsewhere: every cell of this image is unfamiliar.
    far = head.familiarity.reference + 100.0
    head.familiarity = Familiarity(far, head.familiarity.threshold)
    basis = {"kind": dock.predict_panel.head.currentData(), "annotations": dict(state.annotations.annotations),
             "embeddings": state.session.embeddings}
    dock.predict_panel._use_head(state.session.embeddings, head, {}, basis)
    predictions = state.session.predictions
    assert predictions.unfamiliar.all()
    points = find_points(viewer, UNFAMILIAR)
    assert points is not None and len(points.data) == len(predictions.labels) and not points.editable
    assert "trained on other data" in messages(NotificationSeverity.WARNING)[-1]
    assert f"{len(predictions.labels)} of {len(predictions.labels)} cells unfamiliar" in dock.predict_panel.summary.text()
    assert find_layer(viewer, CELLS).features["unfamiliar"].all()
    assert viewer.layers.selection.active is find_layer(viewer, CELLS)  # hovering still names the cell

    head.familiarity = None  # a model saved before the flag: no marks
    basis = {"kind": dock.predict_panel.head.currentData(), "annotations": dict(state.annotations.annotations),
             "embeddings": state.session.embeddings}
    dock.predict_panel._use_head(state.session.embeddings, head, {}, basis)
    assert find_points(viewer, UNFAMILIAR) is None
    assert "saved before" in dock.predict_panel.summary.text()
