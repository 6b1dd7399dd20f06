"""Segmenting again after predicting, in a shown window: the predicted-class layer goes in the same turn as
the other layers change their colours. napari flushes vispy's GL queue when a layer is removed; in Qt's
compositing context (not the canvas's) that flush failed and dropped the new colour textures, so the next
paint raised 'Could not find texture with id' (see widgets/_canvas.py). Run in a shown viewer, where the
canvas really draws, so such an error fails this test."""

import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401
from napari.layers import Labels

from napari_dinoloc.widgets._canvas import remove_layer_safely
from napari_dinoloc.widgets._layers import CELLS, PREDICTED, find_layer
from napari_dinoloc.widgets.dock import DinolocWidget
from napari_dinoloc._sample_data import synthetic_layers
from test_reopen_widget import annotate_two_classes
from test_widgets import embed, segment, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):  # the home folder is conftest's private_home
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


def test_segmenting_again_after_predicting_in_a_shown_window(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in synthetic_layers(1, shape=(256, 256), n_cells=15):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock, name="DINO localization")
    segment(qtbot, dock)
    embed(qtbot, dock)
    annotate_two_classes(viewer, dock.state)
    for attempt in range(3):
        dock.predict_panel.choose("logistic")
        dock.predict_panel.predict_button.click()
        wait_idle(qtbot, dock)
        assert isinstance(find_layer(viewer, PREDICTED), Labels), attempt
        qtbot.wait(200)  # the canvas draws the predictions
        segment(qtbot, dock)
        qtbot.wait(200)  # and draws again after the predicted layer went
        assert find_layer(viewer, PREDICTED) is None and find_layer(viewer, CELLS) is not None
        assert dock.state.session.predictions is None
        embed(qtbot, dock)


def test_removing_a_layer_makes_the_canvas_current_first():
    calls = []

    class Canvas:
        def set_current(self):
            calls.append("canvas current")

    class Layers:
        def remove(self, layer):
            calls.append(f"removed {layer}")

    class Viewer:
        layers = Layers()
        window = type("Window", (), {"_qt_viewer": type("QtViewer", (), {"canvas": type("VispyCanvas", (), {
            "_scene_canvas": Canvas()})()})()})()

    remove_layer_safely(Viewer(), "predicted class")
    assert calls == ["canvas current", "removed predicted class"]
    Viewer.window = None  # no window (headless use): the layer still goes
    calls.clear()
    remove_layer_safely(Viewer(), "cells")
    assert calls == ["removed cells"]
