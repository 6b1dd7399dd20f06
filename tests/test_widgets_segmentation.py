"""The image panel's sizes (measured), cell stain, border choice and preview, in a real napari viewer (Xvfb)."""

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401

from napari_dinoloc.core.synthetic import make_field
from napari_dinoloc.widgets._layers import CELLS, find_layer
from napari_dinoloc.widgets.dock import DinolocWidget

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DINOLOC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))


def test_measure_preview_and_cell_stain(make_napari_viewer, qtbot):
    field = make_field(seed=2, shape=(320, 320), cell_stain=True)
    viewer = make_napari_viewer()
    for name, plane in zip(("nucleus", "protein", "tubulin"), field.image):
        viewer.add_image(plane, name=name)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    panel = dock.image_panel
    assert panel.stains() == ["nucleus", "protein", "microtubules"]
    assert panel.nucleus_diameter.value() == 0 and panel.nucleus_diameter.text() == "auto"

    panel.measure_button.click()
    areas = np.bincount(field.nuclei.ravel())[1:]
    truth = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    assert abs(panel.nucleus_diameter.value() - truth) <= 0.25 * truth
    assert panel.cell_diameter.value() == pytest.approx(2 * panel.nucleus_diameter.value(), abs=1)

    panel.cell_stain.setCurrentText("microtubules")
    found = panel.preview()
    assert "cells preview" in viewer.layers and found.cells.max() > 5
    assert found.cell_stain == "microtubules"

    panel.keep_border.setChecked(False)
    panel.segment_button.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)
    cells = find_layer(viewer, CELLS).data
    assert cells.max() > 5
    assert not np.any(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))  # border cells dropped


def test_crops_folder_opens_as_cells_with_classes(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    from napari_dinoloc.widgets.crops_input import open_crops

    rng = np.random.default_rng(0)
    for cls in ("golgi", "er"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            crop = np.zeros((2, 40, 40), np.uint16)
            crop[0, 10:30, 10:30] = 1000 + rng.integers(0, 100, (20, 20))
            crop[1, 5:35, 5:35] = 500 + rng.integers(0, 100, (30, 30))
            tifffile.imwrite(tmp_path / cls / f"c{i}.tif", crop)
    viewer = make_napari_viewer()
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    mosaic = open_crops(dock.image_panel, tmp_path)
    assert dock.state.session.labels.max() == 6 and mosaic.names[0] == "er/c0.tif"
    assert dock.state.session.image.stains == ("nucleus", "protein")
    assert sorted(dock.state.annotations.annotations.values()) == ["er"] * 3 + ["golgi"] * 3


def test_crop_stack_opens_as_cells(make_napari_viewer, qtbot, tmp_path):
    from napari_dinoloc.widgets.crops_input import open_crops

    rng = np.random.default_rng(1)
    stack = np.zeros((5, 2, 32, 32), np.float32)
    stack[:, 0, 8:24, 8:24] = 0.5 + 0.1 * rng.random((5, 16, 16))
    stack[:, 1, 4:28, 4:28] += 0.3
    np.save(tmp_path / "crops.npy", stack)
    viewer = make_napari_viewer()
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    mosaic = open_crops(dock.image_panel, tmp_path / "crops.npy")
    assert dock.state.session.labels.max() == 5 and mosaic.names[0] == "crops.npy#0"
    assert dock.image_panel.crop_stack_button.text() == "Open a crop stack…"
