"""Step 8 of the dock: patch colours laid over the image, and a click giving the similar-patches map."""

import numpy as np
from test_widgets import open_dock, use_truth, wait_idle

from napari_dinoloc._sample_data import synthetic_layers
from napari_dinoloc.widgets.dock import DinolocWidget


def test_patch_colours_and_similar_patches_lie_over_the_image(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    dock.model_panel.choose("random-tiny")
    panel = dock.patch_map_panel
    assert panel.show_pca(region=(0, 0, 256, 256))
    wait_idle(qtbot, dock)
    layer = viewer.layers["patch colours (PCA)"]
    assert layer.rgb and layer.data.shape == (8, 8, 3)  # twice the grid (4) of a 32-px, patch-8 model
    assert np.allclose(layer.scale[-2:], (32, 32)) and np.allclose(layer.translate[-2:], (15.5, 15.5))
    assert layer.data[panel.patches.foreground].max() > 0.5 and not layer.data[~panel.patches.foreground].any()
    # a click on a cell patch gives the similarity heat map, 1 at that patch
    row, col = np.argwhere(panel.patches.foreground)[0]
    panel.click_similar.setChecked(True)
    assert panel._on_click in viewer.mouse_drag_callbacks

    class Click:
        position = (row * 32 + 16, col * 32 + 16)

    panel._on_click(viewer, Click())
    similar = viewer.layers["similar patches"]
    assert similar.data.shape == (8, 8) and similar.data[row, col] > 0.999
    assert np.allclose(similar.translate[-2:], layer.translate[-2:])
    panel.click_similar.setChecked(False)
    assert panel._on_click not in viewer.mouse_drag_callbacks


def test_the_visible_region_follows_the_camera(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)  # napari updates the view's corners when the canvas draws
    for data, kwargs, kind in synthetic_layers(1, shape=(256, 256), n_cells=15):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock, name="DINO localization")
    use_truth(dock)
    viewer.reset_view()
    qtbot.wait(300)
    y0, x0, y1, x1 = whole = dock.patch_map_panel.visible_region()
    assert y0 < 128 < y1 and x0 < 128 < x1 and max(y1 - y0, x1 - x0) >= 200  # (most of) the image is in view
    viewer.camera.center = (64, 64)
    viewer.camera.zoom *= 8
    qtbot.wait(300)
    y0, x0, y1, x1 = dock.patch_map_panel.visible_region()
    assert y0 < 64 < y1 and x0 < 64 < x1  # around the new centre
    assert (y1 - y0) * (x1 - x0) < (whole[2] - whole[0]) * (whole[3] - whole[1]) / 16  # 8x zoom: a small part
